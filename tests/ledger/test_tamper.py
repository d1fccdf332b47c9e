"""Tampering with the stored log is always reported by ``ledger-audit verify``.

A log is built through the store and checkpointed, exported and verified (the auditor keeps its
state). Then, with the triggers disabled as a database superuser would disable them (SQLite:
``DROP TRIGGER``; PostgreSQL: ``ALTER TABLE ... DISABLE TRIGGER ALL``), one entry is changed,
deleted, inserted or moved; the log is exported again, and the installed ``ledger-audit``
script, run as a subprocess, must exit 1 and write evidence — for every position and field
hypothesis picks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity.db import create_engine
from keys.note import parse_verifier_key
from ledger.audit import AuditState, verify_log
from ledger.checkpoints import issue_checkpoint, verifier_keys
from ledger.entries import Entry, decode_entry, encode_entry
from ledger.errors import TamperingDetected
from ledger.export import ExportReader, export
from ledger.merkle import leaf_hash
from ledger.store import LedgerStore
from tests.conftest import make_settings
from tests.ledger.test_store import (
    ORIGIN,
    Ticking,
    act,
    append,
    economy_events,
    ledger_engine,
    make_keyring,
)

SCRIPT = Path(sys.executable).parent / "ledger-audit"
SHIFT = 1_000_000  # moves indexes out of the way, so a shift never collides midway


@dataclass(frozen=True)
class Built:
    """A checkpointed, exported and verified log."""

    entries: list[bytes]
    keys: list[str]
    state: str


def build(store: LedgerStore, directory: Path) -> Built:
    keyring = make_keyring(directory / "keys")
    events = economy_events(28, seed=21)
    for event in events[:15]:
        append(store, event)
    issue_checkpoint(store, keyring, origin=ORIGIN)
    for event in events[15:]:
        append(store, event)
    issue_checkpoint(store, keyring, origin=ORIGIN)
    path = directory / "first.export"
    export(store, path, origin=ORIGIN)
    keys = verifier_keys(keyring, ORIGIN)
    state = directory / "state.json"
    result = audit(path, keys, state, directory / "unused-evidence.json")
    assert result.returncode == 0, result.stdout + result.stderr
    entries = [item.data for item in store.entries(0, store.head().size)]
    assert len(set(entries)) == len(entries)  # every entry is distinct: a move is a change
    return Built(entries, keys, state.read_text())


def audit(path: Path, keys: list[str], state: Path, evidence: Path) -> Any:
    command: list[str | Path] = [SCRIPT, "verify", "--export", path, "--state", state]
    command += ["--evidence", evidence, "--json"]
    for key in keys:
        command += ["--key", key]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def disable_triggers(conn: sa.Connection) -> None:
    if conn.dialect.name == "sqlite":
        for trigger in (
            "ledger_entries_no_update",
            "ledger_entries_no_delete",
            "ledger_head_forward",
        ):
            conn.exec_driver_sql(f"DROP TRIGGER {trigger}")
    else:
        for table in ("ledger_entries", "ledger_head"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DISABLE TRIGGER ALL")


def _set(conn: sa.Connection, index: int, data: bytes) -> None:
    conn.execute(
        sa.text("UPDATE ledger_entries SET data = :data, leaf_hash = :leaf WHERE idx = :idx"),
        {"data": data, "leaf": leaf_hash(data), "idx": index},
    )


def _shift(conn: sa.Connection, start: int, by: int) -> None:
    conn.execute(
        sa.text("UPDATE ledger_entries SET idx = idx + :s WHERE idx >= :i"),
        {"s": SHIFT, "i": start},
    )
    conn.execute(
        sa.text("UPDATE ledger_entries SET idx = idx - :s + :by WHERE idx >= :s"),
        {"s": SHIFT, "by": by},
    )
    conn.execute(sa.text("UPDATE ledger_head SET size = size + :by"), {"by": by})


def changed_field(data: bytes, field: str, bit: int) -> bytes:
    """The entry with one field changed, still a valid encoding, or one bit flipped."""
    entry = decode_entry(data)
    if field == "bit":
        position = bit % (len(data) * 8)
        return (
            data[: position // 8]
            + bytes([data[position // 8] ^ (1 << position % 8)])
            + data[position // 8 + 1 :]
        )
    if field == "recorded_at":
        return encode_entry(dataclasses.replace(entry, recorded_at=entry.recorded_at + 1 + bit))
    event: Any = entry.event  # any of the five kinds
    names = [f.name for f in dataclasses.fields(event)]
    if field == "amount":
        name: str = next(n for n in ("points", "value", "version") if n in names)
        new = dataclasses.replace(event, **{name: getattr(event, name) + 1 + bit % 100})
    elif field == "who" and "pseudonym" in names:
        new = dataclasses.replace(event, pseudonym=f"ff{bit:030x}")  # no pseudonym of the log
    elif field == "who" and "partner" in names:
        new = dataclasses.replace(event, partner=f"partner-{bit}")
    else:  # announcements and catalogues name nobody: change their payload
        name = "public_key" if "public_key" in names else "document"
        new = dataclasses.replace(event, **{name: getattr(event, name) + b"!"})
    return encode_entry(Entry(entry.recorded_at, new))


def tamper(
    conn: sa.Connection, entries: list[bytes], operation: str, p: int, q: int, field: str
) -> str:
    """Apply one tampering to the stored log; returns a description for failure messages."""
    disable_triggers(conn)
    if operation == "change":
        data = changed_field(entries[p], field, q)
        assert data != entries[p]
        _set(conn, p, data)
        return f"changed {field} of entry {p}"
    if operation == "delete":
        conn.execute(sa.text("DELETE FROM ledger_entries WHERE idx = :i"), {"i": p})
        _shift(conn, p + 1, -1)
        return f"deleted entry {p}"
    if operation == "insert":
        data = encode_entry(Entry(decode_entry(entries[p]).recorded_at, act(3, 40, 5000 + q)))
        _shift(conn, p, 1)
        conn.execute(
            sa.text(
                "INSERT INTO ledger_entries (idx, kind, pseudonym, data, leaf_hash, created_at) "
                "VALUES (:idx, 1, :who, :data, :leaf, CURRENT_TIMESTAMP)"
            ),
            {"idx": p, "who": f"{3:032x}", "data": data, "leaf": leaf_hash(data)},
        )
        return f"inserted an entry at {p}"
    q = (p + 1 + q % (len(entries) - 1)) % len(entries)  # any other entry
    _set(conn, p, entries[q])
    _set(conn, q, entries[p])
    return f"swapped entries {p} and {q}"


def tampered_run(
    store: LedgerStore, built: Built, directory: Path, operation: str, p: int, q: int, field: str
) -> None:
    with store.engine.begin() as conn:
        what = tamper(conn, built.entries, operation, p, q, field)
    path = directory / "second.export"
    export(store, path, origin=ORIGIN)
    state = directory / "state.json"
    state.write_text(built.state)
    evidence = directory / "evidence.json"
    result = audit(path, built.keys, state, evidence)
    assert result.returncode == 1, f"{what}: {result.stdout} {result.stderr}"
    summary = json.loads(result.stdout)
    document = json.loads(evidence.read_text())
    assert document["rule"] == summary["rule"]
    assert document["kind"] in ("tampering", "economy")
    assert document["checkpoints"] or document["entries"]
    # The state was not advanced by a failed run.
    assert state.read_text() == built.state


operations = st.sampled_from(["change", "delete", "insert", "reorder"])
fields = st.sampled_from(["amount", "who", "recorded_at", "bit"])


# --- SQLite -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Built]:
    directory = tmp_path_factory.mktemp("template")
    engine = ledger_engine(f"sqlite:///{directory / 'ledger.db'}", directory)
    built = build(LedgerStore(engine, clock=Ticking()), directory)
    engine.dispose()  # the last connection to close checkpoints the WAL into the file
    assert not (directory / "ledger.db-wal").exists()
    return directory / "ledger.db", built


@settings(
    max_examples=24,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    operation=operations, position=st.integers(0, 10**6), other=st.integers(0, 10**6), field=fields
)
def test_sqlite_tampering_is_reported(
    template: tuple[Path, Built],
    tmp_path_factory: pytest.TempPathFactory,
    operation: str,
    position: int,
    other: int,
    field: str,
) -> None:
    database, built = template
    directory = tmp_path_factory.mktemp("tampered")
    shutil.copyfile(database, directory / "ledger.db")
    settings_ = make_settings(directory, ledger_database_url=f"sqlite:///{directory / 'ledger.db'}")
    engine = create_engine(settings_.ledger_url, settings_)
    try:
        store = LedgerStore(engine)
        tampered_run(
            store, built, directory, operation, position % len(built.entries), other, field
        )
    finally:
        engine.dispose()


def test_the_library_pinpoints_a_change(template: tuple[Path, Built], tmp_path: Path) -> None:
    """Beside the exit code: the evidence names the one entry that changed, with its bytes."""
    database, built = template
    shutil.copyfile(database, tmp_path / "ledger.db")
    settings_ = make_settings(tmp_path, ledger_database_url=f"sqlite:///{tmp_path / 'ledger.db'}")
    engine = create_engine(settings_.ledger_url, settings_)
    store = LedgerStore(engine)
    with engine.begin() as conn:
        tamper(conn, built.entries, "change", 9, 0, "amount")
    export(store, tmp_path / "ledger.export", origin=ORIGIN)
    engine.dispose()
    reader = ExportReader(tmp_path / "ledger.export")
    with pytest.raises(TamperingDetected) as caught:
        verify_log(
            reader,
            reader.checkpoints,
            [parse_verifier_key(key) for key in built.keys],
            origin=reader.origin,
            state=AuditState.loads(built.state),
        )
    evidence = caught.value.to_json()
    assert evidence["rule"] == "root-mismatch"
    assert evidence["changed_range"] == [9, 10]
    assert [e["index"] for e in evidence["entries"]] == [9]


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("operation", "field"),
    [("change", "amount"), ("change", "who"), ("delete", ""), ("insert", ""), ("reorder", "")],
)
def test_postgresql_tampering_is_reported(
    postgres_url: str, tmp_path: Path, operation: str, field: str
) -> None:
    engine = ledger_engine(postgres_url, tmp_path)
    try:
        store = LedgerStore(engine, clock=Ticking())
        built = build(store, tmp_path)
        position = int(hashlib.sha256(operation.encode()).hexdigest(), 16) % len(built.entries)
        tampered_run(store, built, tmp_path, operation, position, 7, field)
    finally:
        engine.dispose()
