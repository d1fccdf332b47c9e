"""``nicecard ledger export|checkpoint|keys`` and ``ledger-audit`` on what they produce: the
operator's half and the auditor's half of an audit, as separate processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from identity.runtime import open_runtime
from ledger.entries import ActCredited, CatalogueChanged
from ledger.store import LedgerStore
from tests.conftest import make_settings

BIN = Path(sys.executable).parent


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "NICECARD_DATA_DIR": str(tmp_path / "var")}
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_export_then_audit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var")
    with open_runtime(settings) as runtime:  # development: migrations and keys
        store = LedgerStore(runtime.ledger_engine)
        store.append(CatalogueChanged(1, b'{"tram_ride": 10}'))
        for n in range(5):
            store.append(
                ActCredited(
                    "a" * 32,
                    "transit",
                    "tram_ride",
                    10,
                    1,
                    1_790_000_000 + n,
                    hashlib.sha256(b"ride %d" % n).digest(),
                )
            )
    keys = _run(tmp_path, "nicecard", "ledger", "keys")
    assert keys.returncode == 0, keys.stderr
    key = keys.stdout.split()[0]
    assert key.startswith("127.0.0.1/ledger+")
    checkpoint = _run(tmp_path, "nicecard", "ledger", "checkpoint")
    assert checkpoint.returncode == 0, checkpoint.stderr
    assert checkpoint.stdout.splitlines()[:2] == ["127.0.0.1/ledger", "6"]
    exported = _run(tmp_path, "nicecard", "ledger", "export", "ledger.export")
    assert exported.returncode == 0, exported.stderr
    verified = _run(
        tmp_path, "ledger-audit", "verify", "--export", "ledger.export", "--key", key, "--json"
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    wrong_key = _run(
        tmp_path,
        "ledger-audit",
        "verify",
        "--export",
        "ledger.export",
        "--key",
        "127.0.0.1/ledger+00000000+AXsxnxA8Gcrvr9vD7Iu0ArqNa5uiqw4wKmLQ/uMIhbCI",
    )
    assert wrong_key.returncode in (1, 2)
