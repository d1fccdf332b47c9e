"""The reference partner SDK: check a payment offline, deposit it, fetch statements.

A partner (a shop, a cinema: an OAuth client holding the scope ``deposits:write``) asks a
citizen's wallet to pay a :class:`~ledger.wallet.PaymentRequest` and receives the deposit body
that :func:`ledger.wallet.pay` makes. :meth:`PartnerClient.verify_payment` checks that body
without asking the ledger (only the published denominations, fetched once and cached): each
coin's denomination is published and accepts deposits, its blind signature verifies, its
permission names this partner, order and amount, no coin appears twice, and the values add up.
Only a deposit tells whether a coin was spent before: the ledger, not the partner, sees every
spent coin. :meth:`PartnerClient.deposit` spends the coins and returns the receipt, and
:meth:`PartnerClient.statement` the reimbursement statement, both signed notes checked under
the ledger key the partner pins, and checked to say what was asked.

Errors (all :class:`~ledger.errors.LedgerError`)::

    PartnerError
    ├── PaymentRefused     the payment does not verify (``code``: what failed, ``coin``: which)
    ├── LedgerRefused      the ledger answered an error (``status``, ``code``: problem slug)
    └── InvalidLedgerAnswer  the answer is malformed, does not verify, or says something else
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote_plus

import httpx

from keys.note import NoteVerifier
from ledger.coins import (
    MAX_COINS,
    Coin,
    CoinError,
    Denomination,
    DepositReceipt,
    Statement,
    StatementLine,
    b64decode,
    open_receipt,
    open_statement,
)
from ledger.errors import LedgerError
from ledger.wallet import PaymentRequest, fetch_denominations

__all__ = [
    "DEPOSITS_SCOPE",
    "ClientCredentials",
    "InvalidLedgerAnswer",
    "LedgerRefused",
    "PartnerClient",
    "PartnerError",
    "PaymentRefused",
    "VerifiedReceipt",
    "VerifiedStatement",
    "client_credentials_token",
    "discover_token_endpoint",
]

DEPOSITS_SCOPE = "deposits:write"
PERMISSION_SKEW = 300
"""Seconds a permission may be dated in the future (the ledger allows the same)."""

_PAYMENT_FIELDS = frozenset({"order", "amount", "coins"})
_COIN_FIELDS = frozenset(
    {"denomination", "coin_pub", "randomizer", "signature", "signed_at", "permission"}
)
_PERMISSION_SIZE = 64
_TOKEN_MARGIN = 30  # renew an access token this many seconds before it expires


class PartnerError(LedgerError):
    """The partner SDK could not do what was asked."""


class PaymentRefused(PartnerError):
    """A payment does not verify.

    ``code`` names what failed, with the ledger's problem slugs where the ledger has one:
    ``malformed-payment``, ``not-this-payment`` (another order or amount than requested),
    ``duplicate-coin``, ``unknown-denomination``, ``denomination-expired``, ``invalid-coin``,
    ``invalid-permission``, ``amount-mismatch``. ``coin`` is the index of the coin at fault.
    """

    def __init__(self, code: str, message: str, coin: int | None = None) -> None:
        where = f"coin {coin}: " if coin is not None else ""
        super().__init__(f"{code}: {where}{message}")
        self.code = code
        self.coin = coin


class LedgerRefused(PartnerError):
    """The ledger answered an error; ``code`` is its RFC 7807 problem type slug."""

    def __init__(self, status: int, code: str, detail: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.body = body


class InvalidLedgerAnswer(PartnerError):
    """The ledger's answer is malformed, its signature does not verify under the pinned key, or
    it says something else than what was asked."""


@dataclass(frozen=True)
class VerifiedReceipt:
    """A deposit receipt checked under the ledger key; keep ``note``, it proves the deposit
    (``ledger-audit receipt`` checks it against the log)."""

    receipt: DepositReceipt
    note: str
    replayed: bool


@dataclass(frozen=True)
class VerifiedStatement:
    """A statement checked under the ledger key, its lines adding up to its total."""

    statement: Statement
    note: str


# --- access tokens ----------------------------------------------------------------------------


def discover_token_endpoint(http: httpx.Client, issuer: str) -> str:
    """The token endpoint from ``issuer``'s OpenID Connect Discovery document, whose
    ``issuer`` must be exactly ``issuer`` (OpenID Connect Discovery 1.0 §4.3)."""
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    metadata = _json(http.get(url))
    if not isinstance(metadata, dict) or metadata.get("issuer") != issuer:
        raise InvalidLedgerAnswer(f"the discovery document at {url} is for another issuer")
    endpoint = metadata.get("token_endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise InvalidLedgerAnswer("the discovery document names no token endpoint")
    return endpoint


def client_credentials_token(
    http: httpx.Client,
    token_endpoint: str,
    client_id: str,
    secret: str,
    scope: str = DEPOSITS_SCOPE,
) -> tuple[str, int | None]:
    """An access token and its lifetime in seconds, by the ``client_credentials`` grant with
    ``client_secret_basic`` (RFC 6749 §4.4; §2.3.1: id and secret form-urlencoded first)."""
    auth = (quote_plus(client_id, safe=""), quote_plus(secret, safe=""))
    answer = _json(
        http.post(
            token_endpoint,
            data={"grant_type": "client_credentials", "scope": scope},
            auth=auth,
        ),
        oauth=True,
    )
    token = answer.get("access_token") if isinstance(answer, dict) else None
    if not isinstance(token, str) or not token:
        raise InvalidLedgerAnswer("the token endpoint answered no access token")
    lifetime = answer.get("expires_in")
    return token, lifetime if isinstance(lifetime, int) and lifetime > 0 else None


class ClientCredentials:
    """A token provider: call it for a partner access token, obtained from the token endpoint
    found by discovery and kept until shortly before it expires."""

    def __init__(
        self,
        http: httpx.Client,
        issuer: str,
        client_id: str,
        secret: str,
        *,
        scope: str = DEPOSITS_SCOPE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.http = http
        self.issuer = issuer
        self.client_id = client_id
        self._secret = secret
        self.scope = scope
        self.clock = clock
        self._endpoint: str | None = None
        self._token: str | None = None
        self._expires = 0.0

    def __call__(self) -> str:
        now = self.clock()
        if self._token is None or now >= self._expires:
            if self._endpoint is None:
                self._endpoint = discover_token_endpoint(self.http, self.issuer)
            token, lifetime = client_credentials_token(
                self.http, self._endpoint, self.client_id, self._secret, self.scope
            )
            self._token = token
            self._expires = now + max((lifetime or 300) - _TOKEN_MARGIN, 1)
        return self._token

    def forget(self) -> None:
        """Drop the cached token (after the ledger refused it)."""
        self._token = None


# --- the client -------------------------------------------------------------------------------


class PartnerClient:
    """A partner's side of the coins API over ``http`` (whose ``base_url`` is the service).

    ``token`` is an access token or a provider of one (such as :class:`ClientCredentials`).
    ``client_id``, when given, must be the partner named in receipts and statements (a
    :class:`ClientCredentials` provider gives it). ``clock`` gives Unix seconds.
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        origin: str,
        ledger_key: NoteVerifier,
        token: str | Callable[[], str],
        client_id: str | None = None,
        clock: Callable[[], float] = time.time,
        cache_seconds: float = 600.0,
        refetch_seconds: float = 60.0,
    ) -> None:
        self.http = http
        self.origin = origin
        self.ledger_key = ledger_key
        self._token = token
        if client_id is None and isinstance(token, ClientCredentials):
            client_id = token.client_id
        self.client_id = client_id
        self.clock = clock
        self.cache_seconds = cache_seconds
        self.refetch_seconds = refetch_seconds
        self._denominations: dict[bytes, Denomination] = {}
        self._fetched_at: float | None = None

    # -- denominations -------------------------------------------------------------------------

    def denominations(self, *, refresh: bool = False) -> list[Denomination]:
        """The published denominations, checked like a wallet checks them (signed list, each
        announcement in the log); fetched again after ``cache_seconds``."""
        now = self.clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self.cache_seconds
        if refresh or stale:
            try:
                items = fetch_denominations(
                    self.http, origin=self.origin, ledger_key=self.ledger_key
                )
            except LedgerError as exc:
                raise InvalidLedgerAnswer(f"denominations: {exc}") from None
            self._denominations = {d.id: d for d in items}
            self._fetched_at = now
        return list(self._denominations.values())

    def _denomination(self, denomination: bytes) -> Denomination | None:
        self.denominations()
        found = self._denominations.get(denomination)
        fetched = self._fetched_at or 0.0
        if found is None and self.clock() - fetched >= self.refetch_seconds:
            self.denominations(refresh=True)  # a key published since the last fetch
            found = self._denominations.get(denomination)
        return found

    # -- payments ------------------------------------------------------------------------------

    def verify_payment(self, body: Any, request: PaymentRequest) -> None:
        """Check offline that ``body`` pays ``request`` to this partner; raises PaymentRefused.

        Nothing tells offline whether a coin was spent before: deposit to find out.
        """
        now = int(self.clock())
        if not isinstance(body, dict) or set(body) != _PAYMENT_FIELDS:
            raise PaymentRefused("malformed-payment", "a payment is {order, amount, coins}")
        if self.client_id is not None and request.partner != self.client_id:
            raise PaymentRefused("not-this-payment", f"the request is {request.partner}'s")
        if body["order"] != request.order:
            raise PaymentRefused("not-this-payment", f"it pays order {body['order']!r}")
        amount = body["amount"]
        if type(amount) is not int or amount != request.amount:
            raise PaymentRefused("not-this-payment", f"it pays {amount!r} points")
        raw_coins = body["coins"]
        if not isinstance(raw_coins, list) or not 1 <= len(raw_coins) <= MAX_COINS:
            raise PaymentRefused("malformed-payment", f"coins must be a list of 1..{MAX_COINS}")
        paid = [_paid_coin(raw, i) for i, raw in enumerate(raw_coins)]
        seen: set[bytes] = set()
        for i, (coin, _, _) in enumerate(paid):
            if coin.coin in seen:
                raise PaymentRefused("duplicate-coin", "this coin appears twice", i)
            seen.add(coin.coin)
        total = 0
        for i, (coin, signed_at, permission) in enumerate(paid):
            denomination = self._denomination(coin.denomination)
            if denomination is None:
                raise PaymentRefused(
                    "unknown-denomination", f"denomination {coin.denomination.hex()} is unknown", i
                )
            if not denomination.withdraw_from <= now < denomination.deposit_until:
                raise PaymentRefused(
                    "denomination-expired", "its denomination does not accept deposits now", i
                )
            try:
                coin.check_signature(denomination.key)
            except CoinError:
                raise PaymentRefused(
                    "invalid-coin", "the denomination's blind signature does not verify", i
                ) from None
            if signed_at > now + PERMISSION_SKEW:
                raise PaymentRefused("invalid-permission", "the permission is dated ahead", i)
            try:
                coin.check_permission(
                    request.partner, request.order, request.amount, signed_at, permission
                )
            except CoinError:
                raise PaymentRefused(
                    "invalid-permission",
                    f"the permission is not the coin's for {request.partner}, order "
                    f"{request.order}, {request.amount} points",
                    i,
                ) from None
            total += denomination.value
        if total != request.amount:
            raise PaymentRefused(
                "amount-mismatch", f"the coins are worth {total} points, not {request.amount}"
            )

    def deposit(self, body: Any) -> VerifiedReceipt:
        """Deposit a payment (best checked with :meth:`verify_payment` first) and return the
        ledger's receipt, checked under the pinned key to name this order, amount and coins.
        A lost answer is retried once; the ledger answers a replay with the same receipt."""
        try:
            response = self.http.post("/v1/deposits", json=body, headers=self._headers())
        except httpx.TransportError:
            response = self.http.post("/v1/deposits", json=body, headers=self._headers())
        answer = self._answer(response)
        try:
            note = answer["receipt"]
            if not isinstance(note, str):
                raise TypeError("receipt is not a string")
            receipt = open_receipt(note, [self.ledger_key], self.origin)
            fields = (answer["entry_index"], answer["leaf_hash"], answer["partner"])
            expected = (body["order"], body["amount"], len(body["coins"]))
        except (KeyError, TypeError) as exc:
            raise InvalidLedgerAnswer(f"malformed deposit answer: {exc}") from None
        except CoinError as exc:
            raise InvalidLedgerAnswer(f"the receipt does not verify: {exc}") from None
        if (receipt.order, receipt.amount, receipt.coins) != expected:
            raise InvalidLedgerAnswer("the receipt is for another order, amount or coins")
        self._check_partner(receipt.partner)
        if fields != (receipt.entry_index, receipt.leaf_hash.hex(), receipt.partner):
            raise InvalidLedgerAnswer("the deposit answer disagrees with its signed receipt")
        return VerifiedReceipt(receipt, note, bool(answer.get("replayed", False)))

    # -- statements ----------------------------------------------------------------------------

    def statement(self, start: datetime, end: datetime) -> VerifiedStatement:
        """This partner's deposits in ``[start, end)`` (aware datetimes), signed by the ledger,
        checked to cover that period, name this partner and add up."""
        if start.tzinfo is None or end.tzinfo is None:
            raise ValueError("start and end must carry a time zone")
        response = self.http.get(
            "/v1/partners/me/statements",
            params={"from": start.isoformat(), "to": end.isoformat()},
            headers=self._headers(),
        )
        answer = self._answer(response)
        try:
            note = answer["statement"]
            if not isinstance(note, str):
                raise TypeError("statement is not a string")
            statement = open_statement(note, [self.ledger_key], self.origin)
            listed = tuple(
                StatementLine(
                    d["entry_index"], d["order"], d["amount"], d["coins"], d["deposited_at"]
                )
                for d in answer["deposits"]
            )
            fields = (answer["partner"], answer["from"], answer["to"], answer["total"], listed)
        except (KeyError, TypeError) as exc:
            raise InvalidLedgerAnswer(f"malformed statement answer: {exc}") from None
        except CoinError as exc:
            raise InvalidLedgerAnswer(f"the statement does not verify: {exc}") from None
        if (statement.start, statement.end) != (int(start.timestamp()), int(end.timestamp())):
            raise InvalidLedgerAnswer("the statement covers another period")
        self._check_partner(statement.partner)
        signed = (
            statement.partner,
            statement.start,
            statement.end,
            statement.total,
            statement.deposits,
        )
        if fields != signed:
            raise InvalidLedgerAnswer("the statement answer disagrees with its signed note")
        return VerifiedStatement(statement, note)

    # -- plumbing ------------------------------------------------------------------------------

    def _check_partner(self, partner: str) -> None:
        if self.client_id is not None and partner != self.client_id:
            raise InvalidLedgerAnswer(f"the ledger's answer names another partner, {partner!r}")

    def _headers(self) -> dict[str, str]:
        token = self._token if isinstance(self._token, str) else self._token()
        return {"Authorization": f"Bearer {token}"}

    def _answer(self, response: httpx.Response) -> Any:
        if response.status_code == 401 and isinstance(self._token, ClientCredentials):
            self._token.forget()  # the next call gets a new token
        return _json(response)


def _paid_coin(raw: Any, i: int) -> tuple[Coin, int, bytes]:
    if not isinstance(raw, dict) or set(raw) != _COIN_FIELDS:
        fields = ", ".join(sorted(_COIN_FIELDS))
        raise PaymentRefused("malformed-payment", f"a coin is {{{fields}}}", i)
    signed_at = raw["signed_at"]
    if isinstance(signed_at, bool) or not isinstance(signed_at, int) or not 0 <= signed_at < 2**63:
        raise PaymentRefused("malformed-payment", "signed_at must be a Unix time in seconds", i)
    try:
        coin = Coin.from_json({k: raw[k] for k in _COIN_FIELDS - {"signed_at", "permission"}})
        permission = b64decode(raw["permission"], "permission", _PERMISSION_SIZE)
    except CoinError as exc:
        raise PaymentRefused("malformed-payment", str(exc), i) from None
    return coin, signed_at, permission


def _json(response: httpx.Response, *, oauth: bool = False) -> Any:
    """The JSON answer, or LedgerRefused with the RFC 7807 slug (RFC 6749 ``error`` for the
    token endpoint)."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code >= 400:
        code, detail = "error", response.reason_phrase
        if isinstance(answer, dict):
            if oauth:
                code = str(answer.get("error") or code)
                detail = str(answer.get("error_description") or detail)
            else:
                code = str(answer.get("type") or code).rsplit("/", 1)[-1]
                detail = str(answer.get("detail") or answer.get("title") or detail)
        raise LedgerRefused(response.status_code, code, detail, answer)
    if answer is None:
        raise InvalidLedgerAnswer(f"{response.request.url} answered no JSON")
    return answer
