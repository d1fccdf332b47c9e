"""Concurrent appends: several OS processes and threads on one PostgreSQL never fork the log,
leave no gap and credit an idempotency key once; an appender killed with SIGKILL loses nothing
it acknowledged, and the log still verifies."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from keys.note import parse_verifier_key
from ledger.audit import verify_log
from ledger.checkpoints import issue_checkpoint, verifier_keys
from ledger.entries import ActCredited, CatalogueChanged, decode_entry
from ledger.export import ExportReader, export
from ledger.group_commit import GroupCommitAppender
from ledger.merkle import MemoryTree, leaf_hash
from ledger.store import AppendRequest, IdempotencyKey, LedgerStore
from tests.ledger.test_store import ORIGIN, act, ledger_engine, make_keyring

ROOT = Path(__file__).resolve().parents[2]
SHARED_KEYS = 15  # appends // 3


def _key(name: str) -> IdempotencyKey:
    return IdempotencyKey("lignes-azur", name, hashlib.sha256(name.encode()).digest())


def _worker(url: str, worker: int, threads: int, appends: int) -> list[tuple[str, int, bytes]]:
    """One server process: threads appending through a group-commit appender and directly.

    Returns ``(idempotency key, index, leaf hash)`` for every acknowledged append.
    """
    engine = sa.create_engine(url, pool_size=threads + 2, isolation_level="READ COMMITTED")
    store = LedgerStore(engine)
    acknowledged: list[tuple[str, int, bytes]] = []
    lock = threading.Lock()

    def run(thread: int) -> None:
        for n in range(appends):
            # Every process and thread also sends the shared keys: one credit each.
            shared = n % 3 == 0
            name = f"shared-{n // 3}" if shared else f"w{worker}-t{thread}-{n}"
            event = act(9, 5, 10**6 + n // 3) if shared else act(n % 5, 1 + n % 7, n)
            if n % 4 == 1:  # some straight through the store, most through the appender
                (outcome,) = store.append_many([AppendRequest(event, _key(name))])
                assert not isinstance(outcome, Exception)
                result = outcome
            else:
                result = appender.append(event, idempotency=_key(name))
            with lock:
                acknowledged.append((name, result.index, result.leaf_hash))

    with GroupCommitAppender(store) as appender:
        workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    engine.dispose()
    return acknowledged


def _check_log(store: LedgerStore) -> MemoryTree:
    """No gap, no fork: indexes 0..n-1 once each, leaf hashes of the bytes, every stored node
    and the head's root recomputed from the entries."""
    head = store.head()
    logged = store.entries(0, head.size + 10)
    assert [item.index for item in logged] == list(range(head.size))
    assert all(item.leaf_hash == leaf_hash(item.data) for item in logged)
    tree = MemoryTree.from_leaf_hashes(item.leaf_hash for item in logged)
    assert head.root == tree.root()
    with store.engine.connect() as conn:
        for level, index, value in conn.exec_driver_sql(
            "SELECT level, idx, hash FROM ledger_nodes"
        ):
            assert tree.subtree(level, index) == bytes(value)
    return tree


@pytest.mark.postgres
def test_processes_and_threads_append_without_fork_or_gap(
    postgres_url: str, tmp_path: Path
) -> None:
    engine = ledger_engine(postgres_url, tmp_path)
    store = LedgerStore(engine)
    url = (
        make_url(postgres_url)
        .set(drivername="postgresql+psycopg")
        .render_as_string(hide_password=False)
    )
    processes, threads, appends = 3, 4, 45
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [pool.submit(_worker, url, w, threads, appends) for w in range(processes)]
        acknowledged = [item for future in futures for item in future.result(timeout=120)]
    tree = _check_log(store)
    assert len(acknowledged) == processes * threads * appends
    # Every acknowledged append is in the log as acknowledged.
    for _, index, leaf in acknowledged:
        assert tree.leaf_hash(index) == leaf
    # A shared key was credited once, and everyone who sent it got that one answer.
    by_key: dict[str, set[int]] = {}
    for name, index, _ in acknowledged:
        by_key.setdefault(name, set()).add(index)
    assert all(len(indexes) == 1 for indexes in by_key.values())
    assert tree.size == len(by_key)
    shared = {name for name in by_key if name.startswith("shared-")}
    assert len(shared) == SHARED_KEYS
    credited_to_nine = [
        item
        for item in store.entries(0, tree.size)
        if isinstance(item.entry.event, ActCredited) and item.entry.event.pseudonym == f"{9:032x}"
    ]
    assert len(credited_to_nine) == SHARED_KEYS
    assert store.balance(f"{9:032x}") == 5 * SHARED_KEYS
    engine.dispose()


# --- crash --------------------------------------------------------------------------------------

CHILD = r"""
import sys, threading
import sqlalchemy as sa
from identity.db import create_engine
from ledger.group_commit import GroupCommitAppender
from ledger.store import LedgerStore
from tests.conftest import make_settings
from tests.ledger.test_store import act, idem
from pathlib import Path

url, directory = sys.argv[1], Path(sys.argv[2])
settings = make_settings(directory, ledger_database_url=url)
store = LedgerStore(create_engine(settings.ledger_url, settings))
lock = threading.Lock()

def run(thread):
    with GroupCommitAppender(store) as appender:
        n = 0
        while True:
            appended = appender.append(act(n % 3, 2, n), idempotency=idem(f"c{thread}-{n}"))
            with lock:
                sys.stdout.write(f"{appended.index} {appended.leaf_hash.hex()}\n")
                sys.stdout.flush()
            n += 1

for thread in range(4):
    threading.Thread(target=run, args=(thread,), daemon=True).start()
threading.Event().wait()
"""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def crash_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_sigkill_loses_nothing_acknowledged(crash_url: str, tmp_path: Path) -> None:
    engine = ledger_engine(crash_url, tmp_path)  # migrated before the child starts
    LedgerStore(engine).append(CatalogueChanged(1, b"{}"))  # acts are priced by a catalogue
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, crash_url, str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 60
    while len(acknowledged) < 400 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        acknowledged.append(line)
    os.kill(child.pid, signal.SIGKILL)  # mid-load: appends are in flight
    rest, errors = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, errors
    acknowledged += rest.splitlines(keepends=True)
    acknowledged = [line for line in acknowledged if line.endswith("\n")]  # printed in full
    assert len(acknowledged) >= 400, errors

    store = LedgerStore(engine)
    tree = _check_log(store)
    for line in acknowledged:
        index, leaf = line.split()
        assert tree.leaf_hash(int(index)) == bytes.fromhex(leaf)
    # After the restart the log goes on and verifies, balances included.
    store.append(act(1, 1, 10**6))
    keyring = make_keyring(tmp_path / "keys")
    issue_checkpoint(store, keyring, origin=ORIGIN)
    export(store, tmp_path / "after-crash.export", origin=ORIGIN)
    reader = ExportReader(tmp_path / "after-crash.export")
    report = verify_log(
        reader,
        reader.checkpoints,
        [parse_verifier_key(key) for key in verifier_keys(keyring, ORIGIN)],
        origin=ORIGIN,
        tree_size=reader.tree_size,
        balances=reader.balances,
    )
    assert report.entries == tree.size + 1
    events = [decode_entry(item.data).event for item in store.entries(0, report.entries)]
    assert report.credited == sum(e.points for e in events if isinstance(e, ActCredited))
    engine.dispose()
