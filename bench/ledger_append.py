"""Appends per second through the ledger library on PostgreSQL, next to pgbench's plain INSERTs.

    NICECARD_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python bench/ledger_append.py [--seconds 5] [--no-idempotency]

In a fresh database (created and dropped here), with the ledger migrations applied:

- ``append``: one entry per transaction (lock the head, insert, update, commit), 1 and 16
  threads: the naive chain every append waits in;
- ``append_many``: batches of 100 and 1000 entries per transaction, one thread;
- ``GroupCommitAppender``: 16 and 64 threads each appending one entry at a time, the writer
  thread committing whatever is queued in one transaction.

Every entry is an act credited to one of 10,000 pseudonyms (so a balance upsert each), with an
idempotency key (unless ``--no-idempotency``). Beside them: pgbench's single-row INSERT rate into
a scratch table (``pgbench -n -c 16 -j 2 -T 10 -f script.sql``) in the same run, and the ratio.
The goal is at least half the plain insert rate through the library.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from _harness import drop_database, fresh_database, pgbench_tps
from sqlalchemy.engine import make_url

from identity import migrate
from ledger.entries import ActCredited
from ledger.group_commit import GroupCommitAppender
from ledger.store import AppendRequest, IdempotencyKey, LedgerStore

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PGBENCH = "/usr/lib/postgresql/15/bin/pgbench"
PSEUDONYMS = [secrets.token_hex(16) for _ in range(10_000)]


class Requests:
    """An endless, thread-safe supply of append requests (acts with fresh idempotency keys)."""

    def __init__(self, idempotency: bool) -> None:
        self._idempotency = idempotency
        self._counter = 0
        self._lock = threading.Lock()
        self._events = [
            ActCredited(
                PSEUDONYMS[i % len(PSEUDONYMS)],
                "lignes-azur",
                "tram_ride",
                5,
                1,
                1_790_000_000 + i,
                hashlib.sha256(b"%d" % i).digest(),
            )
            for i in range(4096)
        ]

    def next(self) -> AppendRequest:
        with self._lock:
            self._counter += 1
            n = self._counter
        key = None
        if self._idempotency:
            key = IdempotencyKey("lignes-azur", f"bench-{n}", hashlib.sha256(b"%d" % n).digest())
        return AppendRequest(self._events[n % len(self._events)], key)


def timed(url: sa.URL, seconds: float, threads: int, work: Callable[[], int]) -> float:
    """Appends per second when ``threads`` threads call ``work`` (returns appends made)."""
    settle(url)
    counts = [0] * threads
    deadline = time.perf_counter() + seconds

    def run(slot: int) -> None:
        while time.perf_counter() < deadline:
            counts[slot] += work()

    workers = [threading.Thread(target=run, args=(slot,)) for slot in range(threads)]
    begin = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - begin)


def settle(url: sa.URL) -> None:
    """Let the server catch up between runs (vacuum, analyze, checkpoint), so background work
    left by one run does not slow the next one down."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("VACUUM ANALYZE")
        conn.exec_driver_sql("CHECKPOINT")
    engine.dispose()


def pgbench_rate(url: sa.URL, seconds: int) -> float:
    """pgbench's transactions per second for one single-row INSERT per transaction."""
    if not Path(PGBENCH).exists() and not shutil.which("pgbench"):
        raise SystemExit("pgbench is not installed")
    binary = PGBENCH if Path(PGBENCH).exists() else "pgbench"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE bench_scratch (id bigserial PRIMARY KEY, v bigint NOT NULL, "
            "payload bytea NOT NULL)"
        )
    engine.dispose()
    script = (
        "\\set v random(1, 1000000000)\n"
        "INSERT INTO bench_scratch (v, payload) VALUES (:v, '\\x" + "ab" * 170 + "'::bytea);\n"
    )
    return pgbench_tps(url, script, seconds, binary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NICECARD_TEST_POSTGRES_URL", DEFAULT_URL))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    parser.add_argument("--no-idempotency", action="store_true")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["single", "batch", "group"],
        default=["single", "batch", "group"],
    )
    args = parser.parse_args()

    base = make_url(args.url).set(drivername="postgresql+psycopg")
    name = f"ledger_bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    url = make_url(fresh_database(admin, name))
    engine = sa.create_engine(url, pool_size=70, max_overflow=0, isolation_level="READ COMMITTED")
    try:
        migrate.upgrade(migrate.Store.LEDGER, engine)
        store = LedgerStore(engine)
        requests = Requests(idempotency=not args.no_idempotency)
        seconds = args.seconds
        results: list[tuple[str, float]] = []

        def single() -> int:
            request = requests.next()
            store.append(request.event, idempotency=request.idempotency)
            return 1

        def batch(size: int) -> Callable[[], int]:
            def work() -> int:
                store.append_many([requests.next() for _ in range(size)])
                return size

            return work

        if "single" in args.modes:
            for threads in (1, 16):
                label = f"append, 1 entry per transaction, {threads} thread{'s' * (threads > 1)}"
                results.append((label, timed(url, seconds, threads, single)))
        if "batch" in args.modes:
            for size in (100, 1000):
                label = f"append_many, batches of {size}, 1 thread"
                results.append((label, timed(url, seconds, 1, batch(size))))
        for threads in (16, 64) if "group" in args.modes else ():
            with GroupCommitAppender(store) as appender:

                def grouped(appender: GroupCommitAppender = appender) -> int:
                    request = requests.next()
                    appender.append(request.event, idempotency=request.idempotency)
                    return 1

                rate = timed(url, seconds, threads, grouped)
            results.append((f"GroupCommitAppender, {threads} threads", rate))
        head = store.head()
        settle(url)
        insert_rate = pgbench_rate(url, args.pgbench_seconds)
    finally:
        engine.dispose()
        drop_database(admin, name)
        admin.dispose()

    keys = "without" if args.no_idempotency else "with"
    print(f"ledger appends on PostgreSQL ({keys} idempotency keys), {os.cpu_count()} CPUs")
    print(f"{'mode':<48} {'appends/s':>10} {'vs pgbench':>11}")
    for label, rate in results:
        print(f"{label:<48} {rate:>10,.0f} {rate / insert_rate:>10.2f}x")
    label = "pgbench, 1 INSERT per transaction, 16 clients"
    print(f"{label:<48} {insert_rate:>10,.0f} {1:>10.2f}x")
    print(f"log size after the run: {head.size:,} entries")


if __name__ == "__main__":
    main()
