"""The OpenID Provider's tables in the identity database, and the stores that use them.

Own metadata (like ``keys.store``), created by the identity migrations (revision 0003):

- ``oauth_client``: registrations; a secret only as its SHA-256 digest (``oidc.secrets``).
- ``client_assertion_jti``: the ``jti`` of every accepted private_key_jwt assertion until it
  expires, keyed by a digest of (client_id, jti). The primary key makes replay detection hold
  across every server process sharing the database (RFC 7523 §3 item 7).
- ``revoked_token``: the ``jti`` of revoked JWT access tokens until they expire (RFC 7009 §2;
  a self-contained token cannot be deleted, so it is listed until it dies by itself).

Expired rows are purged now and then by whichever process writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

import psycopg
import psycopg.errors
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy.exc import IntegrityError

from keys.keyring import Clock
from oidc.clients import (
    AuthMethod,
    Client,
    ClientExists,
    ClientNotFound,
    GrantType,
    SecurityProfile,
    format_scope,
    parse_scope,
)

metadata = sa.MetaData()

oauth_client = sa.Table(
    "oauth_client",
    metadata,
    sa.Column("client_id", sa.String(255), primary_key=True),
    sa.Column("client_name", sa.String(200), nullable=False),
    sa.Column("token_endpoint_auth_method", sa.String(32), nullable=False),
    sa.Column("registration", sa.JSON, nullable=False),
    sa.Column("secret_hash", sa.LargeBinary(32)),
    sa.Column("secret_rotated_at", sa.DateTime(timezone=True)),
    sa.Column("source", sa.String(8), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

client_assertion_jti = sa.Table(
    "client_assertion_jti",
    metadata,
    sa.Column("digest", sa.LargeBinary(32), primary_key=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
)

revoked_token = sa.Table(
    "revoked_token",
    metadata,
    sa.Column("jti", sa.String(128), primary_key=True),
    sa.Column("client_id", sa.String(255), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
)

#: Purge expired rows once every this many writes (per process).
PURGE_EVERY = 1000


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; every time stored is UTC.
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- clients ----------------------------------------------------------------------------------


def _registration(client: Client) -> dict[str, Any]:
    return {
        "grant_types": sorted(g.value for g in client.grant_types),
        "response_types": sorted(client.response_types),
        "redirect_uris": list(client.redirect_uris),
        "post_logout_redirect_uris": list(client.post_logout_redirect_uris),
        "backchannel_logout_uri": client.backchannel_logout_uri,
        "scope": format_scope(client.scope),
        "claims": sorted(client.claims),
        "sector_identifier_uri": client.sector_identifier_uri,
        "id_token_signed_response_alg": client.id_token_signed_response_alg,
        "userinfo_signed_response_alg": client.userinfo_signed_response_alg,
        "token_endpoint_auth_signing_alg": client.token_endpoint_auth_signing_alg,
        "jwks": dict(client.jwks) if client.jwks is not None else None,
        "jwks_uri": client.jwks_uri,
        "require_pushed_authorization_requests": client.require_pushed_authorization_requests,
        "dpop_bound_access_tokens": client.dpop_bound_access_tokens,
        "security_profile": client.security_profile.value if client.security_profile else None,
    }


def _client(row: sa.Row[Any]) -> Client:
    m = row._mapping
    reg: dict[str, Any] = m["registration"]
    return Client(
        client_id=m["client_id"],
        token_endpoint_auth_method=AuthMethod(m["token_endpoint_auth_method"]),
        client_name=m["client_name"],
        grant_types=frozenset(GrantType(g) for g in reg.get("grant_types", ())),
        response_types=frozenset(reg.get("response_types", ())),
        redirect_uris=tuple(reg.get("redirect_uris", ())),
        post_logout_redirect_uris=tuple(reg.get("post_logout_redirect_uris", ())),
        backchannel_logout_uri=reg.get("backchannel_logout_uri"),
        scope=parse_scope(reg.get("scope", "")),
        claims=frozenset(reg.get("claims", ())),
        sector_identifier_uri=reg.get("sector_identifier_uri"),
        id_token_signed_response_alg=reg.get("id_token_signed_response_alg", "RS256"),
        userinfo_signed_response_alg=reg.get("userinfo_signed_response_alg"),
        token_endpoint_auth_signing_alg=reg.get("token_endpoint_auth_signing_alg"),
        jwks=reg.get("jwks"),
        jwks_uri=reg.get("jwks_uri"),
        require_pushed_authorization_requests=bool(
            reg.get("require_pushed_authorization_requests", False)
        ),
        dpop_bound_access_tokens=bool(reg.get("dpop_bound_access_tokens", False)),
        security_profile=(
            SecurityProfile(reg["security_profile"]) if reg.get("security_profile") else None
        ),
        secret_hash=None if m["secret_hash"] is None else bytes(m["secret_hash"]),
        secret_rotated_at=_aware(m["secret_rotated_at"]),
        source=m["source"],
        created_at=_aware(m["created_at"]),
        updated_at=_aware(m["updated_at"]),
    )


def _row(client: Client, now: datetime) -> dict[str, Any]:
    return {
        "client_id": client.client_id,
        "client_name": client.client_name,
        "token_endpoint_auth_method": client.token_endpoint_auth_method.value,
        "registration": _registration(client),
        "secret_hash": client.secret_hash,
        "secret_rotated_at": client.secret_rotated_at,
        "source": client.source,
        "created_at": client.created_at or now,
        "updated_at": now,
    }


class SqlClientRegistry:
    """:class:`oidc.clients.ClientRegistry` on the ``oauth_client`` table."""

    def __init__(self, engine: sa.Engine, clock: Clock) -> None:
        self._engine = engine
        self._clock = clock
        self._select = sa.select(oauth_client).where(
            oauth_client.c.client_id == sa.bindparam("client_id")
        )

    def get(self, client_id: str) -> Client | None:
        with self._engine.connect() as conn:
            row = conn.execute(self._select, {"client_id": client_id}).first()
        return None if row is None else _client(row)

    def all_clients(self) -> list[Client]:
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(oauth_client).order_by(oauth_client.c.client_id))
            return [_client(r) for r in rows]

    def add(self, client: Client) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(oauth_client.insert().values(**_row(client, self._clock())))
        except IntegrityError:
            raise ClientExists(client.client_id) from None

    def update(self, client: Client) -> None:
        row = _row(client, self._clock())
        del row["created_at"]
        with self._engine.begin() as conn:
            result = conn.execute(
                oauth_client.update()
                .where(oauth_client.c.client_id == client.client_id)
                .values(**row)
            )
            if result.rowcount != 1:
                raise ClientNotFound(client.client_id)

    def remove(self, client_id: str) -> None:
        with self._engine.begin() as conn:
            result = conn.execute(
                oauth_client.delete().where(oauth_client.c.client_id == client_id)
            )
            if result.rowcount != 1:
                raise ClientNotFound(client_id)

    def sync_file_clients(self, clients: Sequence[Client]) -> None:
        wanted = {c.client_id: c for c in clients}
        now = self._clock()
        with self._engine.begin() as conn:
            existing = {
                r.client_id: _client(r)
                for r in conn.execute(sa.select(oauth_client).with_for_update())
            }
            for client_id, old in existing.items():
                if old.source == "file" and client_id not in wanted:
                    conn.execute(oauth_client.delete().where(oauth_client.c.client_id == client_id))
            for client_id, new in wanted.items():
                old_client = existing.get(client_id)
                if old_client is None:
                    conn.execute(oauth_client.insert().values(**_row(new, now)))
                    continue
                keep_secret = new.token_endpoint_auth_method.uses_secret
                merged = _row(new, now)
                merged["secret_hash"] = old_client.secret_hash if keep_secret else None
                merged["secret_rotated_at"] = old_client.secret_rotated_at if keep_secret else None
                merged["created_at"] = old_client.created_at or now
                conn.execute(
                    oauth_client.update()
                    .where(oauth_client.c.client_id == client_id)
                    .values(**merged)
                )


# -- batched statements on psycopg's asyncio connections --------------------------------------

#: At most this many values go into one statement.
MAX_BATCH = 256

#: TCP keepalives on the batchers' connections, unless the database URL sets them: a connection
#: cut while idle (a firewall, a failover) is found dead within about a minute instead of at
#: its next statement.
KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

Item = TypeVar("Item")
Conn = psycopg.AsyncConnection[Any]


class _AsyncPgBatcher(ABC, Generic[Item]):
    """One statement for many concurrent requests, on psycopg's asyncio connections, no threads.

    A request adds its item to the pending list and waits for its answer (a bool). At most
    ``writers`` tasks take up to :data:`MAX_BATCH` pending items at a time and answer them with
    one statement (:meth:`_execute`), each on an autocommit connection of its own, kept idle
    between bursts; the next batch forms while one is in flight, so the cost per request falls
    as load rises. (Measured: SQLAlchemy's asyncio layer was ten times slower under
    concurrency, and one statement per request spent more time in the driver than the
    signature check of a request.)

    Fail closed: when a batch fails (the database is unreachable, the connection was cut, the
    statement errs) or is not answered within ``timeout`` seconds (a locked table, a half-open
    connection), its connection is closed and every request of the batch fails with
    ``store_error``; the next batch connects again. The deadline covers taking a connection
    (``connect_timeout`` is set too) and running the statement; on expiry psycopg cancels the
    statement on the server (on a dead connection it gives that up to 10 s before dropping
    it). ``timeout`` is read at every batch. Only when :attr:`retry_kept` (a read, safe to run
    twice), a batch that fails with :class:`psycopg.OperationalError` on a connection kept
    from an earlier batch, which may have been cut while idle, runs once more on a new
    connection, within the same deadline.

    The connections take the database URL's parameters, its ``options`` (``search_path``...)
    followed by the batcher's own, and :data:`KEEPALIVES` unless the URL sets them.
    """

    #: raised to every request of a batch the database did not answer
    store_error: ClassVar[type[Exception]]
    #: whether a batch failing on a kept connection runs once more on a new one
    retry_kept: ClassVar[bool] = False

    def __init__(
        self, engine: sa.Engine, *, writers: int, options: str, timeout: float = 5.0
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        url = engine.url.set(drivername="postgresql")
        params = conninfo_to_dict(url.render_as_string(hide_password=False))
        params["options"] = " ".join(str(o) for o in (params.get("options"), options) if o) or None
        params.setdefault("connect_timeout", max(2, math.ceil(timeout)))  # libpq's minimum
        for name, value in KEEPALIVES.items():
            params.setdefault(name, value)
        self._conninfo = make_conninfo("", **params)
        #: seconds a batch may take, connecting included; read at every batch
        self.timeout = timeout
        self._max_writers = writers
        self._writers: set[asyncio.Task[None]] = set()
        self._idle: list[Conn] = []
        self._pending: list[tuple[Item, asyncio.Future[bool]]] = []

    async def _ask(self, item: Item) -> bool:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bool] = loop.create_future()
        self._pending.append((item, answer))
        if len(self._writers) < self._max_writers:
            writer = loop.create_task(self._write())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return await answer

    def _screen(
        self, batch: list[tuple[Item, asyncio.Future[bool]]]
    ) -> list[tuple[Item, asyncio.Future[bool]]]:
        """The requests of ``batch`` that need the database (by default all); answer the
        others here, before any connection is taken."""
        return batch

    @abstractmethod
    async def _execute(self, conn: Conn, items: list[Item]) -> list[bool]:
        """The answers to ``items``, in their order, from one statement on ``conn``."""

    async def _write(self) -> None:
        conn: Conn | None = None
        try:
            while self._pending:
                batch = self._screen(self._pending[:MAX_BATCH])
                del self._pending[:MAX_BATCH]
                try:
                    async with asyncio.timeout(self.timeout):
                        conn, answers = await self._answer(conn, [item for item, _ in batch])
                except Exception as exc:  # the database's, a timeout, or a bug: every request
                    # of the batch gets the store's error (fail closed), none waits forever
                    conn = None  # closed by _answer
                    for _, answer in batch:
                        _fail(answer, self.store_error(type(exc).__name__))
                    continue
                for (_, answer), value in zip(batch, answers, strict=True):
                    _settle(answer, value)
        finally:
            # Leave the writers now, in the step that found nothing pending: a done-callback
            # runs a loop pass later, and a request in between would see the set full, start
            # no writer and wait for a request that may never come.
            self._writers.discard(asyncio.current_task())
            if conn is not None:
                self._idle.append(conn)

    async def _answer(self, conn: Conn | None, items: list[Item]) -> tuple[Conn, list[bool]]:
        """The answers to ``items`` and the connection that gave them: ``conn``, else an idle
        one, else a new one. Whatever fails or interrupts it closes the connection first."""
        if conn is None and self._idle:
            conn = self._idle.pop()
        retry = self.retry_kept and conn is not None
        while True:
            try:
                if conn is None:
                    conn = await self._connect()
                return conn, await self._execute(conn, items)
            except BaseException as exc:
                if conn is not None:
                    await conn.close()  # no network wait: libpq only sends its goodbye
                    conn = None
                if not (retry and isinstance(exc, psycopg.OperationalError)):
                    raise
                retry = False

    async def _connect(self) -> Conn:
        return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)

    async def aclose(self) -> None:
        if self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)
        while self._idle:
            await self._idle.pop().close()


def _settle(answer: asyncio.Future[bool], value: bool) -> None:
    if not answer.done():  # the request may have been cancelled meanwhile
        answer.set_result(value)


def _fail(answer: asyncio.Future[bool], error: Exception) -> None:
    if not answer.done():
        answer.set_exception(error)


def _on_psycopg(engine: sa.Engine) -> bool:
    """Whether the asyncio stores can serve ``engine``'s database: PostgreSQL through psycopg
    (SQLite goes through a worker thread)."""
    return engine.dialect.name == "postgresql" and engine.url.get_driver_name() == "psycopg"


# -- assertion replay -------------------------------------------------------------------------


class ReplayedAssertion(Exception):
    """This (client_id, jti) was already used by an assertion that has not expired."""


def jti_digest(client_id: str, jti: str) -> bytes:
    """The stored key of an assertion: SHA-256 over the client id and the jti (fixed size)."""
    return hashlib.sha256(
        client_id.encode("utf-8") + b"\x00" + jti.encode("utf-8", "surrogatepass")
    ).digest()


class SqlReplayCache:
    """Remembers assertion ``jti`` values until they expire; a second use raises
    :class:`ReplayedAssertion`. The insert is the check: two processes racing on one ``jti``
    cannot both succeed (the loser waits for the winner's commit, then fails)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._writes = itertools.count(1)
        self._insert = client_assertion_jti.insert()

    def use(self, client_id: str, jti: str, expires_at: datetime, now: datetime) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    self._insert, {"digest": jti_digest(client_id, jti), "expires_at": expires_at}
                )
        except IntegrityError:
            raise ReplayedAssertion from None
        if next(self._writes) % PURGE_EVERY == 0:
            self.purge(now)

    def purge(self, now: datetime) -> int:
        with self._engine.begin() as conn:
            result = conn.execute(
                client_assertion_jti.delete().where(client_assertion_jti.c.expires_at < now)
            )
            return int(result.rowcount)


class ReplayStoreError(Exception):
    """The replay store could not record a ``jti`` (the database is unreachable...)."""


class AsyncPgReplayCache(_AsyncPgBatcher[tuple[bytes, datetime]]):
    """:class:`SqlReplayCache` for the request path on PostgreSQL, without threads.

    Concurrent requests' ``jti`` values are written together (:class:`_AsyncPgBatcher`): one
    prepared statement per batch (``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING
    RETURNING digest``); a ``jti`` the statement did not insert was there already, and so is a
    replay (within a batch, the first request with a ``jti`` wins). The unique key still
    decides between server processes. A batch that fails or outlasts ``timeout`` raises
    :class:`ReplayStoreError` to its requests, and is never run again: the insert may have
    been applied, and a second run would call every ``jti`` of the batch a replay.

    The connections commit with ``synchronous_commit = off`` unless ``durable``: PostgreSQL
    applies each batch (and the unique check) at once, but writes its commit record to disk a
    moment later (at most three ``wal_writer_delay``, 0.6 s by default). Only a crash of the
    database server inside that moment can forget a ``jti``, and only assertions used within
    it could then be replayed, until their ``exp``. That is the trade made for the token
    endpoint's throughput (``bench/README.md``); every other write keeps the durable commit.
    RFC 7523 §3 item 7 makes replay detection a MAY; an in-memory cache forgets it all.
    """

    store_error = ReplayStoreError

    def __init__(
        self, engine: sa.Engine, *, writers: int = 2, durable: bool = False, timeout: float = 5.0
    ) -> None:
        options = "" if durable else "-c synchronous_commit=off"
        super().__init__(engine, writers=writers, options=options, timeout=timeout)
        self._inserted = 0
        self._now: datetime | None = None
        table = client_assertion_jti.name
        self._insert = (
            f"INSERT INTO {table} (digest, expires_at) "  # noqa: S608 (a constant table name)
            "SELECT * FROM unnest(%(digests)s::bytea[], %(expires)s::timestamptz[]) "
            "ON CONFLICT (digest) DO NOTHING RETURNING digest"
        )
        self._purge = f"DELETE FROM {table} WHERE expires_at < %(now)s"  # noqa: S608

    async def use(self, client_id: str, jti: str, expires_at: datetime, now: datetime) -> None:
        """Record the ``jti``; :class:`ReplayedAssertion` if it was recorded before."""
        self._now = now
        if not await self._ask((jti_digest(client_id, jti), expires_at)):
            raise ReplayedAssertion

    def _screen(
        self, batch: list[tuple[tuple[bytes, datetime], asyncio.Future[bool]]]
    ) -> list[tuple[tuple[bytes, datetime], asyncio.Future[bool]]]:
        first: dict[bytes, tuple[tuple[bytes, datetime], asyncio.Future[bool]]] = {}
        for item, answer in batch:
            if item[0] in first:
                _settle(answer, False)  # a replay within the batch
            else:
                first[item[0]] = (item, answer)
        return list(first.values())

    async def _execute(self, conn: Conn, items: list[tuple[bytes, datetime]]) -> list[bool]:
        cursor = await conn.execute(
            self._insert,
            {
                "digests": [digest for digest, _ in items],
                "expires": [expires_at for _, expires_at in items],
            },
            prepare=True,
        )
        inserted = {bytes(row[0]) for row in await cursor.fetchall()}
        await self._maybe_purge(conn, len(inserted))
        return [digest in inserted for digest, _ in items]

    async def _maybe_purge(self, conn: Conn, inserted: int) -> None:
        before = self._inserted // PURGE_EVERY
        self._inserted += inserted
        if self._inserted // PURGE_EVERY != before and self._now is not None:
            await conn.execute(self._purge, {"now": self._now})


def async_replay_cache(engine: sa.Engine) -> AsyncPgReplayCache | None:
    """The asyncio replay cache when the identity database is PostgreSQL (through psycopg);
    None otherwise (SQLite goes through a worker thread)."""
    return AsyncPgReplayCache(engine) if _on_psycopg(engine) else None


# -- revoked access tokens --------------------------------------------------------------------


class SqlRevocationList:
    """Revoked JWT access tokens by ``jti`` until their ``exp`` (RFC 7009 §2)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._writes = itertools.count(1)
        self._select = sa.select(revoked_token.c.jti).where(
            revoked_token.c.jti == sa.bindparam("jti")
        )

    def revoke(self, jti: str, client_id: str, expires_at: datetime, now: datetime) -> None:
        """List ``jti`` as revoked; revoking twice is not an error."""
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    revoked_token.insert().values(
                        jti=jti, client_id=client_id, revoked_at=now, expires_at=expires_at
                    )
                )
        except IntegrityError:
            pass
        if next(self._writes) % PURGE_EVERY == 0:
            self.purge(now)

    def is_revoked(self, jti: str) -> bool:
        with self._engine.connect() as conn:
            return conn.execute(self._select, {"jti": jti}).first() is not None

    def purge(self, now: datetime) -> int:
        with self._engine.begin() as conn:
            result = conn.execute(revoked_token.delete().where(revoked_token.c.expires_at < now))
            return int(result.rowcount)


class RevocationStoreError(Exception):
    """The revocation list could not be read (the database is unreachable...): the token must
    be refused for now (503), never taken as not revoked."""


class AsyncPgRevocationList(_AsyncPgBatcher[str]):
    """:meth:`SqlRevocationList.is_revoked` for the request path on PostgreSQL, without threads.

    Concurrent requests' ``jti`` values are looked up together (:class:`_AsyncPgBatcher`): one
    prepared ``SELECT jti ... WHERE jti = ANY(...)`` per batch, on read-only connections. No
    answer is cached: a revocation committed before a lookup's statement starts is seen by it.
    A lookup that cannot be answered within ``timeout`` seconds raises
    :class:`RevocationStoreError` (fail closed). Being a read, a batch that fails on a
    connection kept idle (cut meanwhile: a restart, a failover) runs once more on a new
    connection before failing.
    """

    store_error = RevocationStoreError
    retry_kept = True

    def __init__(self, engine: sa.Engine, *, writers: int = 2, timeout: float = 5.0) -> None:
        super().__init__(
            engine,
            writers=writers,
            options="-c default_transaction_read_only=on",
            timeout=timeout,
        )
        self._select = (
            f"SELECT jti FROM {revoked_token.name} "  # noqa: S608 (a constant table name)
            "WHERE jti = ANY(%(jtis)s::text[])"
        )

    async def is_revoked(self, jti: str) -> bool:
        return await self._ask(jti)

    async def _execute(self, conn: Conn, items: list[str]) -> list[bool]:
        cursor = await conn.execute(self._select, {"jtis": items}, prepare=True)
        found = {str(row[0]) for row in await cursor.fetchall()}
        return [jti in found for jti in items]


def async_revocation_list(engine: sa.Engine) -> AsyncPgRevocationList | None:
    """The asyncio revocation lookups when the identity database is PostgreSQL (through
    psycopg); None otherwise (SQLite goes through a worker thread)."""
    return AsyncPgRevocationList(engine) if _on_psycopg(engine) else None
