"""The coins HTTP API: denominations, withdrawals (citizens), deposits and statements (partners).

Routes (mounted by the composition root with :func:`coins_router`; ``app.state.mint`` is the
:class:`~ledger.mint.Mint`, ``app.state.ledger`` the :class:`~ledger.api.LedgerService` whose
authenticator names the caller):

- ``GET /v1/denominations`` (public): ``{"denominations": [...], "signed": <signed note>}``;
  each denomination carries its SPKI, value, windows and its announcement entry and index.
- ``POST /v1/wallet/withdrawals`` (citizen token, scope ``points:redeem``):
  ``{"request_id": "...", "coins": [{"denomination": <hex id>, "blinded_message": <b64url>}]}``
  answers ``201`` ``{"request_id", "points", "entry_index", "leaf_hash", "blind_signatures"}``
  (in request order); the same request again answers ``200`` with the same body and
  ``"replayed": true``, and debits nothing.
- ``POST /v1/deposits`` (partner token, scope ``deposits:write``):
  ``{"order": "...", "amount": n, "coins": [{"denomination", "coin_pub", "randomizer",
  "signature", "signed_at", "permission"}]}`` answers ``201``
  ``{"partner", "order", "amount", "coins", "entry_index", "leaf_hash", "deposited_at",
  "receipt": <signed note>}``; a replay answers ``200`` with the same receipt.
- ``GET /v1/partners/me/statements?from=&to=`` (partner token, scope ``deposits:write``):
  RFC 3339 times; the deposits made in ``[from, to)`` and the statement signed by the ledger.

Every refusal is a :class:`~ledger.errors.LedgerError` that the composition root turns into an
RFC 7807 problem; nothing is recorded for a refused request.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ledger.api import InsufficientScope, InvalidParameter, caller_with, read_body
from ledger.coins import Coin, CoinError, b64decode, b64encode, hex_id
from ledger.mint import MalformedCoinRequest, Mint, PaidCoin

__all__ = ["DEPOSITS_WRITE", "POINTS_REDEEM", "coins_router"]

POINTS_REDEEM = "points:redeem"
DEPOSITS_WRITE = "deposits:write"

_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_NO_STORE = {"Cache-Control": "no-store"}


def _mint(request: Request) -> Mint:
    mint: Mint = request.app.state.mint
    return mint


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_body(request)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise MalformedCoinRequest("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise MalformedCoinRequest("the request body is a JSON object")
    return body


def _list(body: dict[str, Any], name: str) -> list[Any]:
    items = body.get(name)
    if not isinstance(items, list) or not items:
        raise MalformedCoinRequest(f"{name} must be a non-empty list")
    return items


async def denominations(request: Request) -> JSONResponse:
    items, note = await run_in_threadpool(_mint(request).signed_denominations)
    return JSONResponse(
        {"denominations": [d.to_json() for d in items], "signed": note},
        headers={"Cache-Control": "public, max-age=60"},
    )


async def withdraw(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> JSONResponse:
    caller = await caller_with(request, authorization, POINTS_REDEEM)
    if caller.pseudonym is None:
        raise InsufficientScope("only a citizen's access token may withdraw")
    body = await _body(request)
    request_id = body.get("request_id")
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise MalformedCoinRequest("request_id must be 16..64 characters of [A-Za-z0-9_-]")
    items = []
    try:
        for raw in _list(body, "coins"):
            if not isinstance(raw, dict) or set(raw) != {"denomination", "blinded_message"}:
                raise MalformedCoinRequest("a coin is {denomination, blinded_message}")
            items.append(
                (hex_id(raw["denomination"]), b64decode(raw["blinded_message"], "blinded_message"))
            )
    except CoinError as exc:
        raise MalformedCoinRequest(str(exc)) from None
    done = await run_in_threadpool(_mint(request).withdraw, caller.pseudonym, request_id, items)
    answer: dict[str, Any] = {
        "request_id": done.request_id,
        "points": done.points,
        "entry_index": done.entry_index,
        "leaf_hash": done.leaf_hash.hex(),
        "blind_signatures": [b64encode(s) for s in done.signatures],
    }
    if done.replayed:
        answer["replayed"] = True
    return JSONResponse(answer, status_code=200 if done.replayed else 201, headers=_NO_STORE)


def _paid(raw: Any) -> PaidCoin:
    fields = {"denomination", "coin_pub", "randomizer", "signature", "signed_at", "permission"}
    if not isinstance(raw, dict) or set(raw) != fields:
        raise MalformedCoinRequest("a coin is {" + ", ".join(sorted(fields)) + "}")
    signed_at = raw["signed_at"]
    if isinstance(signed_at, bool) or not isinstance(signed_at, int) or not 0 <= signed_at < 2**63:
        raise MalformedCoinRequest("signed_at must be a Unix time in seconds")
    try:
        coin = Coin.from_json({k: raw[k] for k in fields - {"signed_at", "permission"}})
        return PaidCoin(coin, signed_at, b64decode(raw["permission"], "permission", 64))
    except CoinError as exc:
        raise MalformedCoinRequest(str(exc)) from None


async def deposit(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> JSONResponse:
    caller = await caller_with(request, authorization, DEPOSITS_WRITE)
    if caller.partner is None:
        raise InsufficientScope("only a partner's client-credentials token may deposit")
    body = await _body(request)
    order, amount = body.get("order"), body.get("amount")
    if not isinstance(order, str):
        raise MalformedCoinRequest("order must be a string")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount < 2**63:
        raise MalformedCoinRequest("amount must be a positive integer")
    coins = [_paid(raw) for raw in _list(body, "coins")]
    done = await run_in_threadpool(_mint(request).deposit, caller.partner, order, amount, coins)
    r = done.receipt
    answer: dict[str, Any] = {
        "partner": r.partner,
        "order": r.order,
        "amount": r.amount,
        "coins": r.coins,
        "entry_index": r.entry_index,
        "leaf_hash": r.leaf_hash.hex(),
        "deposited_at": r.deposited_at,
        "receipt": done.note,
    }
    if done.replayed:
        answer["replayed"] = True
    return JSONResponse(answer, status_code=200 if done.replayed else 201, headers=_NO_STORE)


def _time(value: str | None, name: str) -> datetime:
    if value is None or len(value) > 40:
        raise InvalidParameter(f"{name} must be an RFC 3339 time")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidParameter(f"{name} must be an RFC 3339 time") from None
    if when.tzinfo is None:
        raise InvalidParameter(f"{name} must carry a time zone (Z or +hh:mm)")
    return when


async def statements(
    request: Request,
    start: Annotated[str | None, Query(alias="from")] = None,
    end: Annotated[str | None, Query(alias="to")] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    caller = await caller_with(request, authorization, DEPOSITS_WRITE)
    if caller.partner is None:
        raise InsufficientScope("only a partner's client-credentials token has statements")
    first, last = _time(start, "from"), _time(end, "to")
    if last <= first:
        raise InvalidParameter("to must come after from")
    statement, note = await run_in_threadpool(_mint(request).statement, caller.partner, first, last)
    return JSONResponse(
        statement.to_json(note),
        headers=_NO_STORE,
    )


def coins_router() -> APIRouter:
    """The coins routes (see the module docstring)."""
    router = APIRouter()
    router.add_api_route("/v1/denominations", denominations, methods=["GET"])
    router.add_api_route("/v1/wallet/withdrawals", withdraw, methods=["POST"])
    router.add_api_route("/v1/deposits", deposit, methods=["POST"])
    router.add_api_route("/v1/partners/me/statements", statements, methods=["GET"])
    return router
