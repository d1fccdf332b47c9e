"""The ledger's HTTP API: partners record acts, citizens read their points, anyone audits.

Routes (FastAPI, mounted by the composition root with :func:`ledger_router`):

- ``POST /v1/acts`` (partner token, scope ``acts:write``): one act, or ``{"acts": [...]}`` with
  1..500 acts. A single act answers ``201`` with its receipt or a problem detail. A batch
  answers ``207`` with one result per act, in order: acts are judged one by one (one refused act
  does not hold back the others), and the accepted ones are appended in one transaction.
  Each result is ``{"status": 201, ...receipt}`` or ``{"status": <4xx>, "problem": {...}}``.
  The same (partner, ``idempotency_key``) returns the first receipt (``"replayed": true``) and
  never credits twice; with a different act it is refused (``idempotency-conflict``). A refused
  act is not remembered: sending it again is judged again. A receipt carries an inclusion proof
  once a checkpoint covers the entry: never for an entry the request itself appended (no
  checkpoint can cover it before its transaction commits), and for a replay when one does.
- ``GET /ledger/checkpoint`` (public, ``text/plain``): the newest signed checkpoint, issued first
  if the log grew (:func:`ledger.checkpoints.issue_checkpoint` keeps them consistent).
- ``GET /ledger/proof/inclusion?index=&size=`` and ``GET /ledger/proof/consistency?from=&to=``
  (public, JSON, hashes in base64). Without ``size``, the inclusion proof is to the newest
  checkpoint, whose note is returned with it.
- ``GET /ledger/tile/<L>/<N>[.p/<W>]`` (public, C2SP tlog-tiles hash tiles). Entry bundles
  (``tile/entries/...``) are not served here: entries name pseudonyms and their acts, which only
  auditors (``nicecard ledger export``) and each citizen (their receipts) may read.
- ``GET /v1/me/balance``, ``/v1/me/history``, ``/v1/me/receipts/{index}`` (citizen token, scope
  ``points``): a receipt is a C2SP tlog-proof file for one of the citizen's own entries.

The ledger does not know who calls: the composition root supplies an :class:`Authenticator`
(bearer token -> :class:`Caller`) and a :class:`SubjectDirectory` (a partner's pairwise ``sub``
-> ledger pseudonym). Every error is a :class:`~ledger.errors.LedgerError`; the composition root
turns them into RFC 7807 problem details (see :func:`classify` users).

How an act is recorded: what depends only on the act and the catalogue (the catalogue rule,
the partner's entitlement, validity dates, a known subject, a time not in the future) is judged
on the event loop; the acts that pass go to the process's
:class:`~ledger.group_commit.GroupCommitAppender` with their idempotency keys and caps
(:class:`~ledger.store.ActCaps`). Its writer thread appends whatever concurrent requests queued
in one transaction, and judges there, under the ledger's head lock, what depends on the log: an
idempotency key answered before (replay or conflict) and the per-pseudonym daily and monthly
caps. So two server processes never credit one key twice nor let a cap be passed, and under load
one commit carries many requests. The catalogue in force is re-read at most every
``catalogue_refresh`` seconds per process: for that long after ``nicecard catalogue load`` an
act may still be priced by the version before, which its entry names (auditors accept any
version logged before the act).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

import sqlalchemy as sa
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from keys.keyring import Keyring
from ledger.catalogue import FUTURE_SKEW, Catalogue, CatalogueCache
from ledger.checkpoints import issue_checkpoint, latest_checkpoint, receipt
from ledger.entries import ActCredited, describe_entry
from ledger.errors import AppendRejected, LedgerError, TileError
from ledger.export import export
from ledger.group_commit import GroupCommitAppender
from ledger.store import (
    ActCaps,
    Appended,
    AppendRequest,
    IdempotencyKey,
    LedgerStore,
    LoggedEntry,
)
from ledger.tables import idempotency_table
from ledger.tiles import ENTRIES, Tile

__all__ = [
    "MAX_BATCH",
    "Authenticator",
    "BatchTooLarge",
    "BodyTooLarge",
    "Caller",
    "EntryNotFound",
    "InsufficientScope",
    "InvalidAct",
    "InvalidParameter",
    "LedgerService",
    "Presented",
    "SubjectDirectory",
    "Unauthenticated",
    "UnknownSubject",
    "caller_with",
    "ledger_router",
    "presented",
    "read_body",
]

MAX_BATCH = 500
MAX_BODY = 1 << 20
"""Bytes of a request body the partner and wallet APIs read (a full batch of acts is ~150 KB)."""
ACTS_WRITE = "acts:write"
POINTS = "points"
AUDIT = "audit"

_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_EVIDENCE = re.compile(r"sha256:([0-9a-f]{64})")
_KEY = re.compile(r"[!-~]{1,255}")
_ACT_FIELDS = frozenset({"sub", "type", "occurred_at", "evidence_digest", "idempotency_key"})


# --- errors (mapped to problem types by the composition root) --------------------------------


class Unauthenticated(LedgerError):
    """The bearer access token is missing, invalid, expired or revoked."""


class InsufficientScope(LedgerError):
    """The access token does not carry the scope this endpoint needs."""


class InvalidAct(LedgerError):
    """The act or request body is malformed."""


class BatchTooLarge(LedgerError):
    """The batch holds more acts than allowed."""


class BodyTooLarge(LedgerError):
    """The request body is larger than the API accepts."""


class UnknownSubject(LedgerError):
    """The partner's subject identifier names no citizen known to the ledger."""


class EntryNotFound(LedgerError):
    """No such entry among the caller's own."""


class InvalidParameter(LedgerError):
    """A query parameter is missing or malformed."""


# --- what the composition root provides -------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who calls: a partner (its client id) or a citizen (their ledger pseudonym), with scopes."""

    scopes: frozenset[str]
    partner: str | None = None
    pseudonym: str | None = None


@dataclass(frozen=True)
class Presented:
    """What a sender-constrained token is checked against (RFC 9449): the request's method and
    path, and its ``DPoP`` proof header if any."""

    method: str
    path: str
    dpop: str | None


class Authenticator(Protocol):
    async def authenticate(
        self, authorization: str | None, presented: Presented | None = None
    ) -> Caller:
        """The caller of an ``Authorization`` header (``Bearer`` or, with a proof, ``DPoP``);
        raises :class:`Unauthenticated`."""
        ...


def presented(request: Request) -> Presented:
    """The request as a DPoP proof must name it."""
    return Presented(request.method, request.url.path, request.headers.get("dpop"))


class SubjectDirectory(Protocol):
    async def pseudonyms(self, partner: str, subjects: Sequence[str]) -> Mapping[str, str]:
        """The ledger pseudonyms of the ``sub`` values ``partner`` knows; unknown ones omitted."""
        ...


Classify = Callable[[LedgerError], tuple[int, str]]


@dataclass
class LedgerService:
    """Everything the routes need, built by the composition root (inside the event loop).

    It starts the process's :class:`~ledger.group_commit.GroupCommitAppender`; :meth:`close`
    stops it once the server stopped taking requests.
    """

    store: LedgerStore
    keyring: Keyring
    origin: str
    authenticator: Authenticator
    subjects: SubjectDirectory
    catalogue: CatalogueCache
    classify: Classify
    problem_base: str
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    catalogue_refresh: float = 1.0
    """Seconds a process prices acts with the catalogue it read before looking again."""
    appender: GroupCommitAppender = field(init=False, repr=False)
    _in_force: tuple[float, Catalogue] | None = field(init=False, default=None, repr=False)
    _reading: asyncio.Lock = field(init=False, repr=False, default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.appender = GroupCommitAppender(self.store)

    def close(self) -> None:
        """Append what is queued, then stop the appender's writer thread."""
        self.appender.close()

    async def catalogue_in_force(self) -> Catalogue:
        """The catalogue in force, read again once ``catalogue_refresh`` seconds have passed
        (one read at a time; :class:`~ledger.catalogue.CatalogueError` if none was published)."""
        cached = self._in_force
        if cached is not None and time.monotonic() - cached[0] < self.catalogue_refresh:
            return cached[1]
        async with self._reading:
            cached = self._in_force
            if cached is not None and time.monotonic() - cached[0] < self.catalogue_refresh:
                return cached[1]
            started = time.monotonic()
            catalogue = await run_in_threadpool(self.catalogue.get)
            self._in_force = (started, catalogue)
            return catalogue


# --- acts -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Act:
    sub: str
    act_type: str
    occurred_at: datetime
    evidence: bytes
    key: str
    digest: bytes


def _parse_act(raw: object) -> _Act:
    if not isinstance(raw, dict):
        raise InvalidAct("an act is a JSON object")
    missing = sorted(_ACT_FIELDS - set(raw))
    if missing:
        raise InvalidAct("missing: " + ", ".join(missing))
    extra = sorted(set(raw) - _ACT_FIELDS)
    if extra:
        raise InvalidAct("unknown fields: " + ", ".join(extra)[:200])
    sub, act_type, when, evidence, key = (
        raw["sub"],
        raw["type"],
        raw["occurred_at"],
        raw["evidence_digest"],
        raw["idempotency_key"],
    )
    if not isinstance(sub, str) or not 1 <= len(sub) <= 255:
        raise InvalidAct("sub must be a string of 1..255 characters")
    if not isinstance(act_type, str) or not 1 <= len(act_type) <= 64:
        raise InvalidAct("type must be a string")
    if not isinstance(when, str) or not _RFC3339.fullmatch(when):
        raise InvalidAct("occurred_at must be an RFC 3339 date-time with an offset")
    try:
        occurred_at = datetime.fromisoformat(when.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidAct("occurred_at is not a valid date-time") from None
    if not isinstance(evidence, str) or not (match := _EVIDENCE.fullmatch(evidence)):
        raise InvalidAct('evidence_digest must be "sha256:" and 64 lowercase hex digits')
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidAct("idempotency_key must be 1..255 printable ASCII characters")
    canonical = json.dumps(
        [sub, act_type, int(occurred_at.timestamp()), evidence], separators=(",", ":")
    ).encode()
    return _Act(
        sub,
        act_type,
        occurred_at,
        bytes.fromhex(match.group(1)),
        key,
        hashlib.sha256(canonical).digest(),
    )


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refused with :class:`BodyTooLarge` once it passes ``limit`` bytes,
    declared or sent: nothing larger is held in memory."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes")
    return bytes(body)


def _parse_body(body: bytes) -> tuple[bool, list[object]]:
    """``(is_batch, raw acts)``; raises :class:`InvalidAct` or :class:`BatchTooLarge`."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidAct("the body is not JSON") from None
    if isinstance(data, dict) and "acts" in data:
        acts = data["acts"]
        if set(data) != {"acts"} or not isinstance(acts, list) or not acts:
            raise InvalidAct('a batch is {"acts": [...]} with at least one act')
        if len(acts) > MAX_BATCH:
            raise BatchTooLarge(f"at most {MAX_BATCH} acts per request")
        return True, acts
    if not isinstance(data, dict):
        raise InvalidAct("the body is one act object or {'acts': [...]}")
    return False, [data]


def _answers(
    store: LedgerStore, keys: Sequence[IdempotencyKey]
) -> dict[str, Appended | AppendRejected]:
    """The first answers to those of ``keys`` (one partner's) that were answered before; a key
    first used for another act maps to its :class:`~ledger.errors.IdempotencyConflict`."""
    t = idempotency_table
    partner = keys[0].partner
    with store.engine.connect() as conn:
        known = set(
            conn.execute(
                sa.select(t.c.key).where(
                    t.c.partner == partner, t.c.key.in_(sorted({k.key for k in keys}))
                )
            ).scalars()
        )
    answers: dict[str, Appended | AppendRejected] = {}
    for key in keys:
        if key.key not in known:
            continue
        try:
            found = store.find_idempotent(key)
        except AppendRejected as exc:
            answers[key.key] = exc
        else:
            if found is not None:
                answers[key.key] = found
    return answers


def _inclusion_proofs(service: LedgerService, indexes: set[int]) -> dict[int, dict[str, Any]]:
    """Inclusion proofs of the entries a checkpoint covers, to the newest checkpoint."""
    checkpoint = latest_checkpoint(service.store)
    if checkpoint is None:
        return {}
    return {
        index: {
            "tree_size": checkpoint.size,
            "hashes": _b64(service.store.inclusion_proof(index, checkpoint.size)),
            "checkpoint": checkpoint.note.decode("utf-8"),
        }
        for index in sorted(indexes)
        if index < checkpoint.size
    }


def _receipt(logged: Appended, proof: dict[str, Any] | None) -> dict[str, Any]:
    event = logged.entry.event
    assert isinstance(event, ActCredited)
    return {
        "status": 201,
        "index": logged.index,
        "leaf_hash": logged.leaf_hash.hex(),
        "points": event.points,
        "catalogue_version": event.catalogue,
        "replayed": logged.replayed,
        "inclusion_proof": proof,
        "proof_url": f"/ledger/proof/inclusion?index={logged.index}",
    }


def _judge(
    act: _Act,
    key: IdempotencyKey,
    *,
    partner: str,
    catalogue: Catalogue,
    pseudonyms: Mapping[str, str],
    now: datetime,
) -> AppendRequest:
    """The append a new act asks for, with the caps the store judges under its head lock;
    raises the :class:`LedgerError` that refuses the act whatever the log holds."""
    if act.occurred_at > now + FUTURE_SKEW:
        raise InvalidAct("occurred_at is in the future")
    rule = catalogue.rule(act.act_type)
    rule.check(partner, act.occurred_at)
    pseudonym = pseudonyms.get(act.sub)
    if pseudonym is None:
        raise UnknownSubject("no citizen is known to this partner by that sub")
    event = ActCredited(
        pseudonym=pseudonym,
        partner=partner,
        act_type=rule.act_type,
        points=rule.points,
        catalogue=catalogue.version,
        occurred_at=int(act.occurred_at.timestamp()),
        evidence=act.evidence,
    )
    return AppendRequest(event, key, ActCaps(rule.max_per_day, rule.max_per_month, FUTURE_SKEW))


@dataclass(frozen=True)
class _Submitted:
    """The act's append is the ``position``-th request submitted."""

    position: int


@dataclass(frozen=True)
class _Refused:
    """The act is refused with ``error``, unless ``key`` was answered before (replayed)."""

    error: LedgerError
    key: IdempotencyKey


_Step = _Submitted | _Refused | LedgerError | int
"""Per act: its append, its refusal, its error, or (int) the earlier act of the batch it repeats."""


def _plan(
    partner: str,
    acts: list[_Act | LedgerError],
    *,
    catalogue: Catalogue,
    pseudonyms: Mapping[str, str],
    now: datetime,
) -> tuple[list[_Step], list[AppendRequest]]:
    steps: list[_Step] = []
    requests: list[AppendRequest] = []
    first_of_key: dict[str, tuple[int, bytes]] = {}
    for position, act in enumerate(acts):
        if isinstance(act, LedgerError):
            steps.append(act)
            continue
        if act.key in first_of_key:
            earlier, digest = first_of_key[act.key]
            steps.append(
                earlier
                if digest == act.digest
                else InvalidAct("idempotency_key repeated in the batch for another act")
            )
            continue
        first_of_key[act.key] = (position, act.digest)
        try:
            key = IdempotencyKey(partner, act.key, act.digest)
        except LedgerError as exc:
            steps.append(exc)
            continue
        try:
            request = _judge(
                act, key, partner=partner, catalogue=catalogue, pseudonyms=pseudonyms, now=now
            )
        except LedgerError as exc:
            steps.append(_Refused(exc, key))
            continue
        steps.append(_Submitted(len(requests)))
        requests.append(request)
    return steps, requests


async def _record(
    service: LedgerService,
    partner: str,
    acts: list[_Act | LedgerError],
    pseudonyms: Mapping[str, str],
) -> list[dict[str, Any] | LedgerError]:
    """Judge the acts, append the accepted ones in one group-commit transaction, and answer."""
    catalogue = await service.catalogue_in_force()
    steps, requests = _plan(
        partner, acts, catalogue=catalogue, pseudonyms=pseudonyms, now=service.clock()
    )
    outcomes = await asyncio.wrap_future(service.appender.submit_many(requests)) if requests else []
    refused = [step.key for step in steps if isinstance(step, _Refused)]
    answers = await run_in_threadpool(_answers, service.store, refused) if refused else {}

    answered: list[Appended | LedgerError | int] = []
    for step in steps:
        if isinstance(step, _Submitted):
            answered.append(outcomes[step.position])
        elif isinstance(step, _Refused):
            answered.append(answers.get(step.key.key, step.error))
        else:
            answered.append(step)
    replayed = {a.index for a in answered if isinstance(a, Appended) and a.replayed}
    proofs = await run_in_threadpool(_inclusion_proofs, service, replayed) if replayed else {}
    results: list[dict[str, Any] | LedgerError] = []
    for answer in answered:
        if isinstance(answer, int):
            results.append(results[answer])
        elif isinstance(answer, Appended):
            results.append(_receipt(answer, proofs.get(answer.index)))
        else:
            results.append(answer)
    return results


def _problem(service: LedgerService, error: LedgerError) -> dict[str, Any]:
    status, slug = service.classify(error)
    title = (type(error).__doc__ or slug).strip().splitlines()[0]
    return {
        "status": status,
        "problem": {
            "type": service.problem_base + slug,
            "title": title,
            "status": status,
            "detail": str(error),
        },
    }


# --- routes -----------------------------------------------------------------------------------


def _service(request: Request) -> LedgerService:
    service: LedgerService = request.app.state.ledger
    return service


async def caller_with(request: Request, authorization: str | None, scope: str) -> Caller:
    """The authenticated caller, who must hold ``scope`` (raises Unauthenticated or
    InsufficientScope)."""
    caller = await _service(request).authenticator.authenticate(authorization, presented(request))
    if scope not in caller.scopes:
        raise InsufficientScope(f"the access token lacks the scope {scope!r}")
    return caller


def _integer(value: str | None, name: str, *, low: int = 0) -> int:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 19:
        raise InvalidParameter(f"{name} must be a non-negative integer")
    number = int(value)
    if number < low:
        raise InvalidParameter(f"{name} must be at least {low}")
    return number


def _b64(hashes: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode("ascii") for h in hashes]


AuthorizationHeader = Annotated[str | None, Header()]


async def post_acts(request: Request) -> Response:
    """``POST /v1/acts``: a plain Starlette route, as the partners' hot path (FastAPI's
    dependency solving costs more per request than recording an act; it is not in OpenAPI)."""
    caller = await caller_with(request, request.headers.get("authorization"), ACTS_WRITE)
    if caller.partner is None:
        raise InsufficientScope("only a partner's client-credentials token may record acts")
    partner = caller.partner
    service = _service(request)
    batch, raw = _parse_body(await read_body(request))
    acts: list[_Act | LedgerError] = []
    for item in raw:
        try:
            acts.append(_parse_act(item))
        except LedgerError as exc:
            acts.append(exc)
    if not batch and isinstance(acts[0], LedgerError):
        raise acts[0]
    subs = sorted({a.sub for a in acts if isinstance(a, _Act)})
    pseudonyms = await service.subjects.pseudonyms(partner, subs) if subs else {}
    results = await _record(service, partner, acts, pseudonyms)
    if not batch:
        (result,) = results
        if isinstance(result, LedgerError):
            raise result
        return JSONResponse(result, status_code=201)
    body = [_problem(service, r) if isinstance(r, LedgerError) else r for r in results]
    return JSONResponse({"results": body}, status_code=207)


async def export_file(request: Request, authorization: AuthorizationHeader = None) -> Response:
    """The whole log as an export file (``ledger/export.py``), for auditors (scope ``audit``):
    entries name pseudonyms, so this is not public; ``ledger-audit verify --url`` reads it."""
    await caller_with(request, authorization, AUDIT)
    service = _service(request)

    def build() -> Path:
        issue_checkpoint(service.store, service.keyring, origin=service.origin)
        handle, name = tempfile.mkstemp(prefix="ledger-", suffix=".export")
        os.close(handle)
        export(service.store, Path(name), origin=service.origin)
        return Path(name)

    path = await run_in_threadpool(build)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(path.unlink, missing_ok=True),
    )


async def checkpoint(request: Request) -> Response:
    service = _service(request)
    stored = await run_in_threadpool(
        issue_checkpoint, service.store, service.keyring, origin=service.origin
    )
    return Response(
        stored.note,
        media_type="text/plain; charset=utf-8",
        headers={"Cache-Control": "no-cache"},
    )


async def inclusion(
    request: Request, index: str | None = None, size: str | None = None
) -> Response:
    service = _service(request)
    leaf = _integer(index, "index")

    def prove() -> dict[str, Any]:
        note: str | None = None
        if size is None:
            stored = issue_checkpoint(service.store, service.keyring, origin=service.origin)
            tree_size, note = stored.size, stored.note.decode("utf-8")
        else:
            tree_size = _integer(size, "size", low=1)
        hashes = service.store.inclusion_proof(leaf, tree_size)
        body: dict[str, Any] = {"index": leaf, "tree_size": tree_size, "hashes": _b64(hashes)}
        if note is not None:
            body["checkpoint"] = note
        return body

    return JSONResponse(await run_in_threadpool(prove))


async def consistency(
    request: Request,
    first: Annotated[str | None, Query(alias="from")] = None,
    second: Annotated[str | None, Query(alias="to")] = None,
) -> Response:
    service = _service(request)
    size1 = _integer(first, "from", low=1)
    size2 = _integer(second, "to", low=1)
    hashes = await run_in_threadpool(service.store.consistency_proof, size1, size2)
    return JSONResponse({"from": size1, "to": size2, "hashes": _b64(hashes)})


async def tile(request: Request, path: str) -> Response:
    service = _service(request)
    parsed = Tile.parse("tile/" + path)
    if parsed.level == ENTRIES:
        raise TileError("entry bundles are not public: auditors use the export")
    data = await run_in_threadpool(service.store.tile, parsed)
    cache = "public, max-age=31536000, immutable" if not parsed.is_partial else "no-cache"
    return Response(data, media_type="application/octet-stream", headers={"Cache-Control": cache})


async def balance(request: Request, authorization: AuthorizationHeader = None) -> Response:
    pseudonym = _citizen(await caller_with(request, authorization, POINTS))
    points = await run_in_threadpool(_service(request).store.balance, pseudonym)
    return JSONResponse({"points": points}, headers={"Cache-Control": "no-store"})


async def history(
    request: Request,
    authorization: AuthorizationHeader = None,
    before: str | None = None,
    limit: str | None = None,
) -> Response:
    pseudonym = _citizen(await caller_with(request, authorization, POINTS))
    start = None if before is None else _integer(before, "before")
    count = 50 if limit is None else min(_integer(limit, "limit", low=1), 200)
    found = await run_in_threadpool(
        lambda: _service(request).store.history(pseudonym, before=start, limit=count)
    )
    return JSONResponse(
        {"entries": [describe_for_citizen(e) for e in found]}, headers={"Cache-Control": "no-store"}
    )


async def receipt_file(
    request: Request, index: str, authorization: AuthorizationHeader = None
) -> Response:
    pseudonym = _citizen(await caller_with(request, authorization, POINTS))
    leaf = _integer(index, "index")
    data = await run_in_threadpool(own_receipt, _service(request), pseudonym, leaf)
    return receipt_response(data, leaf)


def own_receipt(service: LedgerService, pseudonym: str, leaf: int) -> bytes:
    """The C2SP tlog-proof receipt of one of ``pseudonym``'s entries (a checkpoint is signed
    first if none covers it yet)."""
    logged = service.store.entry(leaf)
    if logged is None or logged.entry.pseudonym != pseudonym:
        raise EntryNotFound("no such entry among yours")
    issue_checkpoint(service.store, service.keyring, origin=service.origin)
    return receipt(service.store, leaf).to_bytes()


def receipt_response(data: bytes, leaf: int) -> Response:
    return Response(
        data,
        media_type="text/plain; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="receipt-{leaf}.tlog-proof"',
            "Cache-Control": "no-store",
        },
    )


def ledger_router() -> APIRouter:
    """The ledger's routes; they find their :class:`LedgerService` at ``app.state.ledger``."""
    router = APIRouter()
    router.add_route("/v1/acts", post_acts, methods=["POST"], include_in_schema=False)
    router.add_api_route("/ledger/checkpoint", checkpoint, methods=["GET"], tags=["audit"])
    router.add_api_route("/ledger/export", export_file, methods=["GET"], tags=["audit"])
    router.add_api_route("/ledger/proof/inclusion", inclusion, methods=["GET"], tags=["audit"])
    router.add_api_route("/ledger/proof/consistency", consistency, methods=["GET"], tags=["audit"])
    router.add_api_route("/ledger/tile/{path:path}", tile, methods=["GET"], tags=["audit"])
    router.add_api_route("/v1/me/balance", balance, methods=["GET"], tags=["citizens"])
    router.add_api_route("/v1/me/history", history, methods=["GET"], tags=["citizens"])
    router.add_api_route(
        "/v1/me/receipts/{index}", receipt_file, methods=["GET"], tags=["citizens"]
    )
    return router


def _citizen(caller: Caller) -> str:
    if caller.pseudonym is None:
        raise InsufficientScope("this endpoint needs a citizen's access token")
    return caller.pseudonym


def describe_for_citizen(logged: LoggedEntry) -> dict[str, Any]:
    body = describe_entry(logged.entry)
    body.pop("pseudonym", None)
    return {"index": logged.index, "leaf_hash": logged.leaf_hash.hex(), **body}
