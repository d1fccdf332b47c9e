"""Mounting the ledger's API: who calls (bearer tokens from the OpenID Provider) and which ledger
pseudonym a partner's pairwise ``sub`` stands for.

The ledger defines the interfaces (:class:`ledger.api.Authenticator`,
:class:`ledger.api.SubjectDirectory`); this module implements them with the OpenID Provider and
the identity store, so the ledger never imports either.

Partner subjects: a partner (an OpenID client) knows a citizen by the pairwise ``sub`` of its
sector. When a citizen signs in to a client, :func:`remember_subject` stores
``(sector, SHA-256(sub)) -> account`` in ``partner_subject`` (migration 0005); an act posted for
that ``sub`` is mapped through it to the account's ledger pseudonym. Deleting the account deletes
the rows (``ON DELETE CASCADE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from identity.http_errors import LEDGER_PROBLEMS, ledger_problem
from identity.points_web import router as points_router
from identity.tables import Account
from ledger.api import (
    Caller,
    LedgerService,
    Presented,
    Unauthenticated,
    ledger_router,
)
from ledger.catalogue import DEFAULT_CATALOGUE, CatalogueCache, load_catalogue, publish_catalogue
from ledger.checkpoints import issue_checkpoint
from ledger.errors import LedgerError, LedgerStoreError
from ledger.store import LedgerStore
from oidc.clients import Client
from oidc.code_flow import CodeFlow
from oidc.dpop import ALGS as DPOP_ALGS
from oidc.errors import OAuthError
from oidc.pairwise import sector_of
from oidc.provider import OpenIDProvider
from oidc.tables import RevocationStoreError

log = logging.getLogger("nicecard.ledger")

_metadata = sa.MetaData()
partner_subject = sa.Table(
    "partner_subject",
    _metadata,
    sa.Column("sector", sa.String(255), primary_key=True),
    sa.Column("sub_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("account_id", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
"""Created by ``identity/migrations/versions/0005_partner_subjects.py``."""

_account = Account.__table__  # type: ignore[attr-defined]


def _sub_hash(sub: str) -> bytes:
    return hashlib.sha256(sub.encode("utf-8")).digest()


def classify(error: LedgerError) -> tuple[int, str]:
    """The status and problem slug of a ledger error, from ``http_errors.LEDGER_PROBLEMS``."""
    for cls in type(error).__mro__:
        if cls in LEDGER_PROBLEMS:
            return LEDGER_PROBLEMS[cls]
    return 400, "ledger-error"


class TokenAuthenticator:
    """Bearer access tokens (RFC 6750) verified by the OpenID Provider.

    A client-credentials token (``sub == client_id``) is a partner; a token issued through the
    code flow is a citizen, whose grant names the account and so the ledger pseudonym.
    """

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    async def authenticate(
        self, authorization: str | None, presented: Presented | None = None
    ) -> Caller:
        scheme, _, token = (authorization or "").partition(" ")
        scheme, token = scheme.lower(), token.strip()
        if scheme not in ("bearer", "dpop") or not token:
            raise Unauthenticated("a Bearer or DPoP access token is required")
        provider: OpenIDProvider = self._app.state.oidc
        try:
            claims = provider.verifier.verify(token)
            verifier = provider.token_endpoint.dpop
            assert verifier is not None  # the provider always verifies DPoP
            await verifier.check_bound(
                scheme=scheme,
                token=token,
                bound=(claims.extra.get("cnf") or {}).get("jkt"),
                proof=presented.dpop if presented else None,
                method=presented.method if presented else "",
                url=provider.issuer + (presented.path if presented else ""),
            )
            if await _revoked(provider, claims.jti):
                raise Unauthenticated("access token is not valid")
            if claims.sub == claims.client_id:
                return Caller(scopes=claims.scope, partner=claims.client_id)
            flow: CodeFlow = self._app.state.code_flow
            _, grant = await run_in_threadpool(flow.access_token_grant, token)
        except OAuthError:
            raise Unauthenticated("access token is not valid") from None
        pseudonym = await run_in_threadpool(self._pseudonym, grant.account_id)
        if pseudonym is None:
            raise Unauthenticated("access token is not valid")
        return Caller(scopes=claims.scope, pseudonym=pseudonym)

    def _pseudonym(self, account_id: str) -> str | None:
        engine: sa.Engine = self._app.state.runtime.identity_engine
        with engine.connect() as conn:
            value = conn.execute(
                sa.select(_account.c.ledger_pseudonym).where(_account.c.id == account_id)
            ).scalar_one_or_none()
        return None if value is None else str(value)


async def _revoked(provider: OpenIDProvider, jti: str) -> bool:
    """Whether the access token ``jti`` is revoked: batched on asyncio connections on
    PostgreSQL, in a worker thread otherwise. Fails closed: when the list cannot be read, the
    request fails with :class:`LedgerStoreError` (503, retry later), never as not revoked."""
    try:
        if provider.async_revocations is not None:
            return await provider.async_revocations.is_revoked(jti)
        return await run_in_threadpool(provider.revocations.is_revoked, jti)
    except (RevocationStoreError, sa.exc.SQLAlchemyError) as exc:
        # The driver's error class only: SQLAlchemy's message would carry the jti.
        error = str(exc) if isinstance(exc, RevocationStoreError) else type(exc).__name__
        log.warning("revocation list unavailable", extra={"error": error})
        raise LedgerStoreError("access tokens cannot be checked now; retry later") from None


class PartnerSubjects:
    """A partner's pairwise subjects -> ledger pseudonyms, through ``partner_subject``.

    Found mappings are kept in memory for ``ttl`` seconds (a mapping never changes; an account
    deleted meanwhile may still be credited for that long, and the ledger holds pseudonyms
    only), so a partner posting acts one by one costs one database read per citizen a minute,
    not one per act. Unknown subjects are not cached: a citizen's first sign-in counts at once.
    """

    def __init__(self, app: FastAPI, *, ttl: float = 60.0, size: int = 100_000) -> None:
        self._app = app
        self._ttl = ttl
        self._size = size
        self._known: dict[tuple[str, bytes], tuple[str, float]] = {}

    async def pseudonyms(self, partner: str, subjects: Sequence[str]) -> Mapping[str, str]:
        provider: OpenIDProvider = self._app.state.oidc
        client = await provider.directory.get(partner)
        if client is None:
            return {}
        sector = sector_of(client)
        now = time.monotonic()
        found: dict[str, str] = {}
        missing: dict[bytes, str] = {}
        for sub in subjects:
            digest = _sub_hash(sub)
            cached = self._known.get((sector, digest))
            if cached is not None and cached[1] > now:
                found[sub] = cached[0]
            else:
                missing[digest] = sub
        if not missing:
            return found
        engine: sa.Engine = self._app.state.runtime.identity_engine

        def read() -> list[tuple[bytes, str]]:
            p = partner_subject
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(p.c.sub_hash, _account.c.ledger_pseudonym)
                    .join(_account, _account.c.id == p.c.account_id)
                    .where(p.c.sector == sector, p.c.sub_hash.in_(sorted(missing)))
                ).all()
            return [(bytes(row[0]), str(row[1])) for row in rows]

        rows = await run_in_threadpool(read)
        if len(self._known) + len(rows) > self._size:
            self._known.clear()
        for digest, pseudonym in rows:
            found[missing[digest]] = pseudonym
            self._known[sector, digest] = (pseudonym, now + self._ttl)
        return found


def _remember(engine: sa.Engine, sector: str, sub: str, account_id: str, now: datetime) -> None:
    p = partner_subject
    with engine.begin() as conn:
        exists = conn.execute(
            sa.select(p.c.account_id).where(p.c.sector == sector, p.c.sub_hash == _sub_hash(sub))
        ).first()
        if exists is None:
            conn.execute(
                p.insert().values(
                    sector=sector, sub_hash=_sub_hash(sub), account_id=account_id, created_at=now
                )
            )


async def remember_subject(request: Request, client: Client, account_id: str) -> None:
    """Record which account the client's sector knows by its pairwise ``sub`` (at sign-in)."""
    app = request.app
    flow: CodeFlow = app.state.code_flow
    sub = flow.subject(client, account_id)
    with contextlib.suppress(sa.exc.IntegrityError):  # a concurrent sign-in stored it
        await run_in_threadpool(
            _remember,
            app.state.runtime.identity_engine,
            sector_of(client),
            sub,
            account_id,
            app.state.clock(),
        )


def mount_ledger(app: FastAPI) -> None:
    """Add the ledger routes; at start, publish the catalogue file if it changed."""
    app.include_router(ledger_router())
    app.include_router(points_router)
    inner = app.router.lifespan_context

    async def on_unauthenticated(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LedgerError)
        response = ledger_problem(request, exc)
        # RFC 6750 §3 and RFC 9449 §7.1: both schemes this API accepts.
        algs = " ".join(DPOP_ALGS)
        response.headers["WWW-Authenticate"] = (
            f'Bearer error="invalid_token", DPoP error="invalid_token", algs="{algs}"'
        )
        return response

    app.add_exception_handler(Unauthenticated, on_unauthenticated)

    @contextlib.asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            runtime = app_.state.runtime
            settings = app_.state.settings
            store = LedgerStore(runtime.ledger_engine, clock=app_.state.clock)
            catalogue = load_catalogue(settings.catalogue_file or DEFAULT_CATALOGUE)
            try:
                published = await run_in_threadpool(publish_catalogue, store, catalogue)
            except LedgerStoreError:
                if settings.is_development:
                    raise
                # Stay up so /readyz can say the ledger store is not migrated; the catalogue
                # is published at the next start (or by 'nicecard catalogue load').
                log.warning("acts catalogue not published; run 'nicecard db upgrade'")
            else:
                log.info("acts catalogue in force", extra={"version": published.version})
            app_.state.ledger = LedgerService(
                store=store,
                keyring=runtime.keyring,
                origin=settings.effective_ledger_origin,
                authenticator=TokenAuthenticator(app_),
                subjects=PartnerSubjects(app_),
                catalogue=CatalogueCache(store),
                classify=classify,
                problem_base=settings.issuer + "/problems/",
                clock=app_.state.clock,
            )
            ticker = asyncio.create_task(_checkpoints(app_.state.ledger, settings))
            try:
                yield state
            finally:
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                await run_in_threadpool(app_.state.ledger.close)  # its group-commit thread

    app.router.lifespan_context = lifespan


async def _checkpoints(service: Any, settings: Any) -> None:
    """Sign a checkpoint every NICECARD_CHECKPOINT_SECONDS when the log grew, so partners'
    receipts get inclusion proofs without anyone asking (issuing is a no-op otherwise)."""
    while True:
        await asyncio.sleep(settings.checkpoint_seconds)
        try:
            await run_in_threadpool(
                issue_checkpoint, service.store, service.keyring, origin=service.origin
            )
        except LedgerError as exc:
            log.warning("periodic checkpoint failed", extra={"error": type(exc).__name__})
