"""The auditor: the verification library over bytes (no database) and the ``ledger-audit`` CLI.

Logs here are built in memory (entries encoded as the store encodes them, checkpoints signed as
the store signs them), so every way a log can be wrong is easy to make.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from keys.note import NoteSigner
from ledger.audit import AuditState, EntryList, verify_log, verify_receipt
from ledger.audit_cli import app
from ledger.checkpoint import Checkpoint, TlogProof, sign_checkpoint
from ledger.entries import (
    ActCredited,
    CatalogueChanged,
    CoinCount,
    CoinsDeposited,
    DenominationAnnounced,
    Entry,
    Event,
    SpentCoin,
    WithdrawalDebited,
    decode_entry,
    encode_entry,
)
from ledger.errors import (
    AuditError,
    CheckpointError,
    EconomyViolation,
    ProofError,
    TamperingDetected,
)
from ledger.export import write_export
from ledger.merkle import MemoryTree, leaf_hash, leaf_hashes, verify_consistency
from tests.ledger.test_store import (
    ORIGIN,
    T0,
    act,
    denomination,
    economy_events,
    encoded,
    pseudonym,
)

LOG = NoteSigner.from_private_key(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
KEY = LOG.verifier
OTHER = NoteSigner.from_private_key(
    ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
)
SCRIPT = Path(sys.executable).parent / "ledger-audit"
NOW = int(T0.timestamp())


def tree_of(entries: Sequence[bytes]) -> MemoryTree:
    return MemoryTree.from_leaf_hashes(leaf_hashes(entries))


def signed(entries: Sequence[bytes], size: int, signer: NoteSigner = LOG) -> bytes:
    root = tree_of(entries[:size]).root()
    return sign_checkpoint(Checkpoint(ORIGIN, size, root), [signer])


def balances_of(entries: Sequence[bytes]) -> list[tuple[str, int]]:
    """The balances the store would hold after these entries."""
    balances: dict[str, int] = {}
    for data in entries:
        event = decode_entry(data).event
        if isinstance(event, ActCredited):
            balances[event.pseudonym] = balances.get(event.pseudonym, 0) + event.points
        elif isinstance(event, WithdrawalDebited):
            balances[event.pseudonym] -= event.points
    return sorted(balances.items())


def verify(
    entries: Sequence[bytes],
    checkpoints: Sequence[bytes],
    *,
    balances: list[tuple[str, int]] | None = None,
    state: AuditState | None = None,
    tree_size: int | None = None,
) -> Any:
    return verify_log(
        EntryList(entries),
        checkpoints,
        [KEY],
        origin=ORIGIN,
        tree_size=tree_size,
        balances=balances,
        state=state,
    )


@pytest.fixture(scope="module")
def economy() -> list[bytes]:
    return encoded(economy_events(300, seed=11))


# --- a log that verifies ----------------------------------------------------------------------


def test_a_consistent_log_verifies(economy: list[bytes]) -> None:
    checkpoints = [signed(economy, size) for size in (1, 100, 257, len(economy))]
    progress: list[int] = []
    report = verify_log(
        EntryList(economy),
        checkpoints,
        [KEY],
        origin=ORIGIN,
        tree_size=len(economy),
        balances=balances_of(economy),
        progress=progress.append,
    )
    events = [decode_entry(data).event for data in economy]
    credited = sum(e.points for e in events if isinstance(e, ActCredited))
    debited = sum(e.points for e in events if isinstance(e, WithdrawalDebited))
    assert report.entries == len(economy)
    assert report.root == tree_of(economy).root()
    assert report.checkpoints == 4
    assert report.uncovered == 0
    assert (report.credited, report.debited) == (credited, debited)
    assert report.balances_total == credited - debited
    assert report.deposited == sum(e.points for e in events if isinstance(e, CoinsDeposited))
    assert sum(report.kinds.values()) == len(economy)
    assert report.kinds["catalogue_changed"] == 1
    assert progress[-1] == len(economy)
    assert report.state.verified_size == len(economy)
    assert len(report.state.checkpoints) == 4
    summary = report.to_json()
    assert summary["status"] == "ok"
    assert json.loads(json.dumps(summary)) == summary


def test_entries_beyond_the_newest_checkpoint_are_reported_uncovered(
    economy: list[bytes],
) -> None:
    report = verify(economy, [signed(economy, 200)])
    assert report.newest_checkpoint_size == 200
    assert report.uncovered == len(economy) - 200


def test_the_state_carries_over(economy: list[bytes]) -> None:
    first = verify(economy[:150], [signed(economy, 150)])
    state = AuditState.loads(json.dumps(first.state.to_json()))
    assert state == first.state
    second = verify(economy, [signed(economy, len(economy))], state=state)
    assert [
        Checkpoint.parse(n.decode().split("\n\n")[0] + "\n").size for n in second.state.checkpoints
    ] == [150, len(economy)]
    with pytest.raises(ValueError):
        AuditState.loads('{"format": "something else"}')
    with pytest.raises(CheckpointError):
        verify(economy, [], state=AuditState(origin="another.example/log"))


def test_two_processes_give_the_same_report(economy: list[bytes]) -> None:
    checkpoints = [signed(economy, len(economy))]
    alone = verify_log(EntryList(economy), checkpoints, [KEY], origin=ORIGIN)
    shared = verify_log(EntryList(economy), checkpoints, [KEY], origin=ORIGIN, jobs=2)
    assert shared == alone


# --- tampering and inconsistency --------------------------------------------------------------


def test_a_forged_or_foreign_checkpoint_is_tampering(economy: list[bytes]) -> None:
    with pytest.raises(TamperingDetected) as forged:
        verify(economy, [signed(economy, 10, OTHER)])
    assert forged.value.rule == "bad-checkpoint"
    foreign = sign_checkpoint(Checkpoint("elsewhere.example/log", 10, b"\0" * 32), [LOG])
    with pytest.raises(TamperingDetected, match="origin"):
        verify(economy, [foreign])


def test_a_fork_is_tampering(economy: list[bytes]) -> None:
    honest = signed(economy, 100)
    fork = sign_checkpoint(Checkpoint(ORIGIN, 100, b"\x01" * 32), [LOG])
    with pytest.raises(TamperingDetected) as caught:
        verify(economy, [honest, fork])
    assert caught.value.rule == "fork"
    assert [c["note"] for c in caught.value.evidence["checkpoints"]] == [
        honest.decode(),
        fork.decode(),
    ]


def test_missing_entries_and_rollback(economy: list[bytes]) -> None:
    with pytest.raises(TamperingDetected) as missing:
        verify(economy[:50], [signed(economy, 60)])
    assert missing.value.rule == "missing-entries"
    state = verify(economy, [signed(economy, len(economy))]).state
    with pytest.raises(TamperingDetected) as rollback:
        verify(economy[:200], [signed(economy, 200)], state=state)
    assert rollback.value.rule == "rollback"
    with pytest.raises(TamperingDetected) as count:
        verify(economy, [signed(economy, 100)], tree_size=len(economy) + 1)
    assert count.value.rule == "entry-count"


def test_a_changed_entry_is_pinpointed(economy: list[bytes]) -> None:
    checkpoint = signed(economy, len(economy))
    state = verify(economy, [checkpoint]).state
    changed = list(economy)
    entry = decode_entry(changed[123])
    assert isinstance(entry.event, ActCredited)
    bigger = replace(entry.event, points=entry.event.points + 1000)
    changed[123] = encode_entry(Entry(entry.recorded_at, bigger))
    with pytest.raises(TamperingDetected) as caught:
        verify(changed, [checkpoint], state=state)
    error = caught.value
    assert error.rule == "root-mismatch"
    assert error.evidence["changed_range"] == [123, 124]
    assert error.evidence["entries"] == [
        {
            "index": 123,
            "data": base64.b64encode(changed[123]).decode(),
            "leaf_hash": base64.b64encode(leaf_hash(changed[123])).decode(),
        }
    ]
    assert error.evidence["checkpoints"][0]["note"] == checkpoint.decode()
    # Without a state, the checkpoints bound the range.
    with pytest.raises(TamperingDetected) as bounded:
        verify(changed, [signed(economy, 100), signed(economy, 200), checkpoint])
    assert bounded.value.evidence["changed_range"] == [100, 200]


def test_an_older_checkpoint_inconsistent_with_the_newest(economy: list[bytes]) -> None:
    """The log signed size 150, then rewrote entry 10 and signed size 300 over the new history:
    the evidence is both notes and the consistency proof the entries give."""
    old = signed(economy, 150)
    state = verify(economy[:150], [old]).state
    rewritten = list(economy)
    rewritten[10] = encode_entry(Entry(NOW, act(5, 99, 10_000)))
    new = signed(rewritten, len(rewritten))
    with pytest.raises(TamperingDetected) as caught:
        verify(rewritten, [new], state=state)
    error = caught.value
    assert error.rule == "inconsistent-checkpoints"
    notes = [c["note"] for c in error.evidence["checkpoints"]]
    assert notes == [old.decode(), new.decode()]
    proof = error.evidence["consistency_proof"]
    nodes = [base64.b64decode(node) for node in proof["proof"]]
    root1 = base64.b64decode(proof["recomputed_root1"])
    root2 = tree_of(rewritten).root()
    verify_consistency(150, len(rewritten), nodes, root1, root2)
    with pytest.raises(ProofError):
        verify_consistency(150, len(rewritten), nodes, tree_of(economy[:150]).root(), root2)


# --- the economy ------------------------------------------------------------------------------


TENS = denomination(10)
SHORT = DenominationAnnounced(b"short-lived key", 10, 0, NOW - 3600, NOW - 3600, NOW)
COIN = b"\x07" * 32
BASE: list[Event] = [CatalogueChanged(1, b"{}"), TENS, act(1, 30, 1)]
WITHDRAW = WithdrawalDebited(pseudonym(1), 10, (CoinCount(TENS.denomination, 1),))
DEPOSIT = CoinsDeposited("shop", 10, b"\x09" * 32, (SpentCoin(TENS.denomination, COIN),))

VIOLATIONS: dict[str, list[Event]] = {
    "unknown-catalogue": [
        CatalogueChanged(1, b"{}"),
        replace(act(1), catalogue=2),
    ],
    "catalogue-version": [*BASE, CatalogueChanged(3, b"{}")],
    "unknown-denomination": [
        *BASE,
        WithdrawalDebited(pseudonym(1), 10, (CoinCount(b"\x05" * 32, 1),)),
    ],
    "denomination-reannounced": [*BASE, TENS],
    "denomination-not-valid": [
        *BASE,
        SHORT,
        WithdrawalDebited(pseudonym(1), 10, (CoinCount(SHORT.denomination, 1),)),
    ],
    "withdrawal-total": [
        *BASE,
        WithdrawalDebited(pseudonym(1), 20, (CoinCount(TENS.denomination, 1),)),
    ],
    "negative-balance": [
        *BASE,
        WithdrawalDebited(pseudonym(1), 40, (CoinCount(TENS.denomination, 4),)),
    ],
    "deposit-total": [*BASE, WITHDRAW, CoinsDeposited("shop", 11, b"\0" * 32, DEPOSIT.coins)],
    "double-spend": [*BASE, WITHDRAW, WITHDRAW, DEPOSIT, DEPOSIT],
    "overspent-denomination": [*BASE, DEPOSIT],
}


@pytest.mark.parametrize("rule", sorted(VIOLATIONS))
def test_economy_rules(rule: str) -> None:
    entries = encoded(VIOLATIONS[rule])
    with pytest.raises(EconomyViolation) as caught:
        verify(entries, [signed(entries, len(entries))])
    error = caught.value
    assert error.rule == rule
    (offending,) = error.evidence["entries"]
    assert base64.b64decode(offending["data"]) == entries[offending["index"]]
    assert offending["decoded"]["kind"]


def test_a_malformed_entry_is_reported() -> None:
    entries = [*encoded(BASE), b"\x01\x01 not an act"]
    with pytest.raises(EconomyViolation) as caught:
        verify(entries, [signed(entries, len(entries))])
    assert caught.value.rule == "malformed-entry"
    assert caught.value.evidence["entries"][0]["index"] == 3


def test_the_service_balances_must_match_the_log(economy: list[bytes]) -> None:
    checkpoints = [signed(economy, len(economy))]
    balances = balances_of(economy)
    verify(economy, checkpoints, balances=balances)
    first, points = balances[0]
    with pytest.raises(EconomyViolation) as total:
        verify(economy, checkpoints, balances=[(first, points + 1), *balances[1:]])
    assert total.value.rule == "points-equation"
    (second, other) = balances[1]
    swapped = [(first, points - 1), (second, other + 1), *balances[2:]]
    with pytest.raises(EconomyViolation) as moved:
        verify(economy, checkpoints, balances=swapped)
    assert moved.value.rule == "balances-mismatch"
    assert moved.value.evidence["pseudonym"] == first


# --- receipts ---------------------------------------------------------------------------------


def _receipt(entries: list[bytes], index: int, size: int, signer: NoteSigner = LOG) -> TlogProof:
    tree = tree_of(entries[:size])
    proof = tuple(tree.inclusion_proof(index, size))
    return TlogProof(index, proof, signed(entries, size, signer), extra=entries[index])


def test_receipts(economy: list[bytes]) -> None:
    good = _receipt(economy, 42, 100)
    verified = verify_receipt(good.to_bytes(), [KEY], origin=ORIGIN)
    assert verified.entry == decode_entry(economy[42])
    assert verified.checkpoint.size == 100
    swapped = TlogProof(42, good.inclusion_proof, good.checkpoint, extra=economy[43])
    with pytest.raises(TamperingDetected) as inclusion:
        verify_receipt(swapped.to_bytes(), [KEY], origin=ORIGIN)
    assert inclusion.value.rule == "receipt-inclusion"
    with pytest.raises(TamperingDetected) as signature:
        verify_receipt(_receipt(economy, 42, 100, OTHER).to_bytes(), [KEY], origin=ORIGIN)
    assert signature.value.rule == "receipt-checkpoint"
    bare = TlogProof(42, good.inclusion_proof, good.checkpoint)
    with pytest.raises(ProofError):
        verify_receipt(bare.to_bytes(), [KEY], origin=ORIGIN)
    with pytest.raises(ProofError):
        verify_receipt(b"not a proof", [KEY], origin=ORIGIN)


# --- the CLI ----------------------------------------------------------------------------------


def write(path: Path, entries: list[bytes], checkpoints: list[bytes]) -> Path:
    with path.open("wb") as out:
        write_export(
            out,
            origin=ORIGIN,
            tree_size=len(entries),
            checkpoints=checkpoints,
            entries=[entries],
            balances=balances_of(entries),
        )
    return path


def cli(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def test_cli_verify(economy: list[bytes], tmp_path: Path) -> None:
    export = write(tmp_path / "ledger.export", economy, [signed(economy, len(economy))])
    state = tmp_path / "state.json"
    result = cli("verify", "--export", export, "--key", KEY.to_text(), "--state", state, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "ok"
    assert summary["entries"] == len(economy)
    assert AuditState.loads(state.read_text()).verified_size == len(economy)
    table = cli("verify", "--export", export, "--key", KEY.to_text(), "--state", state)
    assert table.exit_code == 0
    assert "Ledger verified" in table.stdout
    assert str(len(economy)) in table.stdout


def test_cli_writes_evidence(economy: list[bytes], tmp_path: Path) -> None:
    changed = list(economy)
    changed[7] = encode_entry(Entry(NOW, act(3, 50, 777)))
    export = write(tmp_path / "ledger.export", changed, [signed(economy, len(economy))])
    evidence = tmp_path / "evidence.json"
    result = cli(
        "verify", "--export", export, "--key", KEY.to_text(), "--evidence", evidence, "--json"
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout)["rule"] == "root-mismatch"
    document = json.loads(evidence.read_text())
    assert document["format"] == "nicecard-ledger-evidence v1"
    assert document["kind"] == "tampering"
    assert document["checkpoints"][0]["note"] == signed(economy, len(economy)).decode()
    assert len(document["export"]["sha256"]) == 64


@pytest.mark.parametrize(
    "problem", ["bad-key", "no-key", "missing-file", "malformed-export", "bad-state"]
)
def test_cli_usage_errors_exit_2(economy: list[bytes], tmp_path: Path, problem: str) -> None:
    export = write(tmp_path / "ledger.export", economy, [signed(economy, len(economy))])
    args: list[str | Path] = ["verify", "--export", export, "--key", KEY.to_text()]
    if problem == "bad-key":
        args[-1] = "not+a+key"
    elif problem == "no-key":
        args = args[:-2]
    elif problem == "missing-file":
        args[2] = tmp_path / "missing.export"
    elif problem == "malformed-export":
        export.write_bytes(export.read_bytes()[:-40])
    else:
        (tmp_path / "state.json").write_text("{not json")
        args += ["--state", tmp_path / "state.json"]
    result = cli(*args)
    assert result.exit_code == 2, result.output


def test_cli_receipt(economy: list[bytes], tmp_path: Path) -> None:
    path = tmp_path / "receipt.tlog-proof"
    path.write_bytes(_receipt(economy, 5, 50).to_bytes())
    ok = cli("receipt", path, "--key", KEY.to_text(), "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["entry"]["kind"] == decode_entry(economy[5]).kind.name.lower()
    forged = tmp_path / "forged.tlog-proof"
    forged.write_bytes(_receipt(economy, 5, 50, OTHER).to_bytes())
    evidence = tmp_path / "receipt-evidence.json"
    bad = cli("receipt", forged, "--key", KEY.to_text(), "--evidence", evidence)
    assert bad.exit_code == 1
    assert json.loads(evidence.read_text())["rule"] == "receipt-checkpoint"
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"garbage")
    assert cli("receipt", garbage, "--key", KEY.to_text()).exit_code == 2


def test_the_installed_script(economy: list[bytes], tmp_path: Path) -> None:
    export = write(tmp_path / "ledger.export", economy, [signed(economy, len(economy))])
    result = subprocess.run(
        [SCRIPT, "verify", "--export", export, "--key", KEY.to_text(), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["root"] == base64.b64encode(tree_of(economy).root()).decode()


def test_audit_errors_present_themselves() -> None:
    error = EconomyViolation("negative-balance", "entry 3: the balance would fall to -5", {"a": 1})
    assert isinstance(error, AuditError)
    assert error.to_json() == {
        "kind": "economy",
        "rule": "negative-balance",
        "message": "entry 3: the balance would fall to -5",
        "a": 1,
    }
