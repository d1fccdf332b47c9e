"""Revocation lookups on the request path (``oidc.tables.AsyncPgRevocationList``) against a
real PostgreSQL: answers, batching, the URL's options, fail-closed on a cut connection or a
locked table, the retry of a connection cut while idle, and the ledger API on top."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict

from identity import migrate
from identity.db import create_engine
from keys.keyring import utc_now
from oidc.tables import (
    AsyncPgReplayCache,
    AsyncPgRevocationList,
    ReplayStoreError,
    RevocationStoreError,
    SqlRevocationList,
)
from tests.conftest import make_settings
from tests.oidc.conftest import Provider, clock, provider_factory  # noqa: F401 - fixtures

#: How the lookups' connections are told apart in ``pg_stat_activity`` (their last statement).
LOOKUP = "%FROM revoked_token WHERE jti = ANY%"


class CountingList(AsyncPgRevocationList):
    """Records the size of every batch sent to the database."""

    def __init__(self, engine: sa.Engine, **kwargs: Any) -> None:
        super().__init__(engine, **kwargs)
        self.batches: list[int] = []

    async def _execute(self, conn: psycopg.AsyncConnection[Any], items: list[str]) -> list[bool]:
        self.batches.append(len(items))
        return await super()._execute(conn, items)


def _migrated(url: str, tmp_path: Path) -> sa.Engine:
    engine = create_engine(url, make_settings(tmp_path, identity_database_url=url))
    migrate.upgrade(migrate.Store.IDENTITY, engine)
    return engine


@pytest.fixture
def engine(postgres_url: str, tmp_path: Path) -> Iterator[sa.Engine]:
    engine = _migrated(postgres_url, tmp_path)
    yield engine
    engine.dispose()


def _revoke(engine: sa.Engine, jti: str) -> None:
    now = utc_now()
    SqlRevocationList(engine).revoke(jti, "partner", now + timedelta(minutes=5), now)


def look_up(revocations: AsyncPgRevocationList, *jtis: str) -> list[bool]:
    """The answers to ``jtis``, asked one after the other; the list is closed afterwards."""

    async def run() -> list[bool]:
        try:
            return [await revocations.is_revoked(jti) for jti in jtis]
        finally:
            await revocations.aclose()

    return asyncio.run(run())


def _observer(engine: sa.Engine) -> psycopg.Connection[Any]:
    """A plain connection to the test database, outside the engine's pool."""
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(url, autocommit=True)


def _lookup_backends(observer: psycopg.Connection[Any], *, waiting: bool = False) -> list[int]:
    rows = observer.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND query LIKE %s"
        + (" AND wait_event_type = 'Lock'" if waiting else ""),
        (LOOKUP,),
    ).fetchall()
    return [int(row[0]) for row in rows]


def _terminate(observer: psycopg.Connection[Any], pids: list[int]) -> None:
    """End these backends, and wait until they are gone."""
    for pid in pids:
        gone = observer.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
        assert gone == (True,), pid


def test_the_connections_keep_the_urls_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """The database URL's ``options`` (its search_path...) reach the lookups' connections, as
    they reach the engine's, followed by the store's own; connect timeout and keepalives too."""
    seen: list[str] = []

    async def connect(conninfo: str, **kwargs: Any) -> psycopg.AsyncConnection[Any]:
        seen.append(conninfo)
        raise psycopg.OperationalError("not connecting in this test")

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", connect)
    engine = sa.create_engine(
        "postgresql+psycopg://postgres@127.0.0.1:9/nothing?options=-csearch_path%3Dx"
    )
    revocations = AsyncPgRevocationList(engine, timeout=1.5)

    with pytest.raises(RevocationStoreError):
        look_up(revocations, "jti-1")
    engine.dispose()
    params = conninfo_to_dict(seen[0])
    assert params["options"] == "-csearch_path=x -c default_transaction_read_only=on"
    assert (params["dbname"], params["port"]) == ("nothing", "9")
    assert params["connect_timeout"] == "2"
    assert params["keepalives"] == "1"


@pytest.mark.postgres
def test_lookups_read_the_schema_the_url_names(postgres_url: str, tmp_path: Path) -> None:
    """Identity tables in a schema of their own, chosen by the URL's search_path, next to a
    decoy ``public.revoked_token``: the lookups read the URL's schema, as the engine does."""
    plain = sa.make_url(postgres_url).set(drivername="postgresql")
    with psycopg.connect(plain.render_as_string(hide_password=False), autocommit=True) as admin:
        admin.execute("CREATE SCHEMA nicecard")
        admin.execute("CREATE TABLE public.revoked_token (jti text PRIMARY KEY)")
        admin.execute("INSERT INTO public.revoked_token VALUES ('decoy-jti')")
    url = sa.make_url(postgres_url).update_query_dict({"options": "-csearch_path=nicecard"})
    engine = _migrated(url.render_as_string(hide_password=False), tmp_path)
    _revoke(engine, "revoked-jti")
    revocations = AsyncPgRevocationList(engine)

    try:
        assert look_up(revocations, "revoked-jti", "decoy-jti") == [True, False]
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT to_regclass('revoked_token')")).scalar() == (
                "revoked_token"  # the schema's own, not public's ("public.revoked_token")
            )
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_revoked_and_not_revoked(engine: sa.Engine) -> None:
    _revoke(engine, "revoked-jti")
    revocations = AsyncPgRevocationList(engine)

    assert look_up(revocations, "revoked-jti", "live-jti") == [True, False]


@pytest.mark.postgres
def test_concurrent_lookups_share_few_statements(engine: sa.Engine) -> None:
    """500 concurrent lookups, one jti in five revoked (and some asked twice): every answer
    right, in a handful of statements rather than 500."""
    jtis = [f"jti-{n}" for n in range(400)] + [f"jti-{n}" for n in range(0, 400, 4)]
    revoked = {f"jti-{n}" for n in range(0, 400, 5)}
    for jti in revoked:
        _revoke(engine, jti)
    revocations = CountingList(engine, writers=2)

    async def lookups() -> list[bool]:
        try:
            return list(await asyncio.gather(*(revocations.is_revoked(j) for j in jtis)))
        finally:
            await revocations.aclose()

    assert asyncio.run(lookups()) == [jti in revoked for jti in jtis]
    assert sum(revocations.batches) == len(jtis)
    assert len(revocations.batches) <= 4, revocations.batches


@pytest.mark.postgres
def test_a_revocation_is_seen_by_the_next_lookup(engine: sa.Engine) -> None:
    """No answer is cached: a token revoked between two lookups (on the same, kept connection)
    is revoked at the second."""
    revocations = AsyncPgRevocationList(engine, writers=1)

    async def around_a_revocation() -> list[bool]:
        try:
            answers = [await revocations.is_revoked("jti-1")]
            await asyncio.to_thread(_revoke, engine, "jti-1")
            answers.append(await revocations.is_revoked("jti-1"))
            answers.append(await revocations.is_revoked("jti-2"))
            return answers
        finally:
            await revocations.aclose()

    assert asyncio.run(around_a_revocation()) == [False, True, False]


@pytest.mark.postgres
def test_a_locked_table_fails_lookups_closed_within_the_timeout(engine: sa.Engine) -> None:
    """While ``revoked_token`` is locked (a migration, VACUUM FULL), lookups raise
    RevocationStoreError once their batch's time is up, never "not revoked", and leave no
    statement waiting on the server; once the lock is released, lookups are answered."""
    _revoke(engine, "revoked-jti")
    revocations = AsyncPgRevocationList(engine, writers=1, timeout=0.3)
    observer, locker = _observer(engine), _observer(engine)

    async def scenario() -> tuple[list[BaseException | bool], float, list[int], bool, bool]:
        try:
            assert not await revocations.is_revoked("warm-up")
            with locker.transaction():
                locker.execute("LOCK TABLE revoked_token IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                failed = await asyncio.gather(
                    *(revocations.is_revoked(j) for j in ["revoked-jti", "live-1", "live-2"]),
                    return_exceptions=True,
                )
                elapsed = time.monotonic() - started
                still_waiting = _lookup_backends(observer, waiting=True)
            return (
                failed,
                elapsed,
                still_waiting,
                await revocations.is_revoked("revoked-jti"),
                await revocations.is_revoked("live-1"),
            )
        finally:
            await revocations.aclose()

    try:
        failed, elapsed, still_waiting, revoked, live = asyncio.run(scenario())
    finally:
        observer.close()
        locker.close()
    assert all(isinstance(answer, RevocationStoreError) for answer in failed), failed
    assert elapsed < 3, elapsed
    assert still_waiting == []
    assert (revoked, live) == (True, False)


@pytest.mark.postgres
def test_a_connection_cut_while_idle_is_replaced_transparently(engine: sa.Engine) -> None:
    """The first lookup after the kept connection was cut (a restart, a failover) is answered,
    on a new connection: a read may run twice."""
    _revoke(engine, "revoked-jti")
    revocations = CountingList(engine, writers=1)
    observer = _observer(engine)

    async def scenario() -> tuple[list[int], list[bool], list[int]]:
        try:
            assert not await revocations.is_revoked("warm-up")  # a connection, kept idle
            cut = _lookup_backends(observer)
            _terminate(observer, cut)
            answers = [await revocations.is_revoked(j) for j in ["revoked-jti", "live-1"]]
            return cut, answers, _lookup_backends(observer)
        finally:
            await revocations.aclose()

    try:
        cut, answers, now_used = asyncio.run(scenario())
    finally:
        observer.close()
    assert answers == [True, False]
    assert len(cut) == 1
    assert len(now_used) == 1
    assert now_used != cut
    assert revocations.batches == [1, 1, 1, 1]  # warm-up, the cut attempt, its retry, live-1


@pytest.mark.postgres
def test_a_cut_connection_fails_waiting_lookups_closed_then_reconnects(engine: sa.Engine) -> None:
    """Lookups waiting on a statement whose connection is killed are run once more on a new
    connection; when that cannot answer either (the table stays locked past the deadline),
    they raise RevocationStoreError (never "not revoked"); the next lookup is answered."""
    _revoke(engine, "revoked-jti")
    revocations = CountingList(engine, writers=1, timeout=2)
    observer, locker = _observer(engine), _observer(engine)

    async def scenario() -> tuple[list[BaseException | bool], bool, bool]:
        try:
            assert not await revocations.is_revoked("warm-up")  # a connection, kept idle
            with locker.transaction():  # the next statement waits for this lock
                locker.execute("LOCK TABLE revoked_token IN ACCESS EXCLUSIVE MODE")
                waiting = asyncio.gather(
                    *(revocations.is_revoked(j) for j in ["revoked-jti", "live-1", "live-2"]),
                    return_exceptions=True,
                )
                deadline = time.monotonic() + 10
                while not (pids := _lookup_backends(observer, waiting=True)):
                    assert time.monotonic() < deadline, "the lookup never waited for the lock"
                    await asyncio.sleep(0.02)
                for pid in pids:
                    observer.execute("SELECT pg_terminate_backend(%s)", (pid,))
                failed = await waiting
            return (
                failed,
                await revocations.is_revoked("revoked-jti"),
                await revocations.is_revoked("live-1"),
            )
        finally:
            await revocations.aclose()

    try:
        failed, revoked, live = asyncio.run(scenario())
    finally:
        observer.close()
        locker.close()
    assert all(isinstance(answer, RevocationStoreError) for answer in failed), failed
    assert revocations.batches[1:3] == [3, 3]  # the killed statement, then its retry
    assert (revoked, live) == (True, False)


def test_an_unreachable_database_fails_closed() -> None:
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:9/nothing")
    revocations = AsyncPgRevocationList(engine)

    with pytest.raises(RevocationStoreError):
        look_up(revocations, "jti-1")
    engine.dispose()


@pytest.mark.postgres
def test_the_replay_cache_never_runs_an_insert_twice(engine: sa.Engine) -> None:
    """Unlike a lookup, a replay-cache batch is not retried when its kept connection was cut
    (the insert may have been applied), and a locked table fails it within the timeout: both
    raise ReplayStoreError (503 at the token endpoint); a later use works."""
    cache = AsyncPgReplayCache(engine, writers=1, timeout=0.3)
    observer, locker = _observer(engine), _observer(engine)
    inserts = "%INTO client_assertion_jti%"

    async def use(jti: str) -> None:
        await cache.use("partner", jti, utc_now() + timedelta(minutes=5), utc_now())

    async def scenario() -> list[BaseException | None]:
        try:
            await use("warm-up")
            pids = observer.execute(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE %s", (inserts,)
            ).fetchall()
            _terminate(observer, [int(row[0]) for row in pids])
            outcomes = list(await asyncio.gather(use("after-cut"), return_exceptions=True))
            with locker.transaction():
                locker.execute("LOCK TABLE client_assertion_jti IN ACCESS EXCLUSIVE MODE")
                outcomes += await asyncio.gather(use("while-locked"), return_exceptions=True)
            await use("after-cut")  # not recorded by the failed batch: accepted now
            return outcomes
        finally:
            await cache.aclose()

    try:
        outcomes = asyncio.run(scenario())
    finally:
        observer.close()
        locker.close()
    assert [type(outcome) for outcome in outcomes] == [ReplayStoreError, ReplayStoreError]


@pytest.mark.postgres
def test_aclose_closes_the_connections(engine: sa.Engine) -> None:
    revocations = AsyncPgRevocationList(engine, writers=2)
    observer = _observer(engine)

    async def lookups_then_close() -> tuple[int, int]:
        await asyncio.gather(*(revocations.is_revoked(f"jti-{n}") for n in range(50)))
        opened = len(_lookup_backends(observer))
        await revocations.aclose()
        deadline = time.monotonic() + 5
        while (left := len(_lookup_backends(observer))) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return opened, left

    try:
        opened, left = asyncio.run(lookups_then_close())
    finally:
        observer.close()
    assert opened >= 1
    assert left == 0


# -- through the ledger API -------------------------------------------------------------------


def _token(provider: Provider, secret: str) -> str:
    answer = httpx.post(
        provider.token_url,
        data={"grant_type": "client_credentials", "scope": "acts:write"},
        auth=("transit", secret),
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


def _post_act(provider: Provider, token: str) -> httpx.Response:
    # An empty act: refused as invalid once the caller is authenticated, with no ledger write.
    return httpx.post(
        provider.url + "/v1/acts", json={}, headers={"Authorization": f"Bearer {token}"}
    )


@pytest.mark.postgres
def test_ledger_api_refuses_a_revoked_token_and_fails_closed(
    provider_factory: Callable[..., Provider],  # noqa: F811
    postgres_url: str,
) -> None:
    """The partner API on a PostgreSQL identity database: a revoked token is refused at once
    (401); a lookup connection cut while idle is replaced unseen; while the revocation list
    cannot be read (locked past the lookups' timeout), a valid token gets 503, then works
    again."""
    provider = provider_factory(identity_database_url=postgres_url)
    assert provider.app.state.oidc.async_revocations is not None
    secret = provider.register("transit", scope="acts:write")
    assert secret is not None
    token, other = _token(provider, secret), _token(provider, secret)
    assert _post_act(provider, token).status_code == 422

    revoked = httpx.post(provider.url + "/revoke", data={"token": token}, auth=("transit", secret))
    assert revoked.status_code == 200, revoked.text
    refused = _post_act(provider, token)
    assert refused.status_code == 401, refused.text
    assert refused.json()["type"].endswith("/problems/invalid-token")
    assert _post_act(provider, other).status_code == 422

    url = sa.make_url(postgres_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False), autocommit=True) as observer:
        cut = _lookup_backends(observer)
        assert cut
        _terminate(observer, cut)
        assert _post_act(provider, other).status_code == 422  # answered on a new connection
        assert _post_act(provider, token).status_code == 401
        assert not set(_lookup_backends(observer)) & set(cut)

        provider.app.state.oidc.async_revocations.timeout = 0.3
        with psycopg.connect(url.render_as_string(hide_password=False)) as locker:
            locker.execute("LOCK TABLE revoked_token IN ACCESS EXCLUSIVE MODE")
            unavailable = _post_act(provider, other)
        assert unavailable.status_code == 503, unavailable.text
        assert unavailable.json()["type"].endswith("/problems/ledger-unavailable")
    assert _post_act(provider, other).status_code == 422
    assert _post_act(provider, token).status_code == 401
