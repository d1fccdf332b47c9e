"""The ``nicecard`` command line, run as a newcomer or an operator would run it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from keys.model import Purpose

NICECARD = str(Path(sys.executable).parent / "nicecard")


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ["PATH"],
        "NICECARD_DATA_DIR": str(tmp_path / "var"),
        "COLUMNS": "200",
        **env,
    }
    return subprocess.run(
        [NICECARD, *args],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


def test_db_upgrade_then_keys_lifecycle(tmp_path: Path) -> None:
    kek = base64.b64encode(os.urandom(32)).decode()
    prod = {
        "NICECARD_MODE": "production",
        "NICECARD_ISSUER": "https://id.nicecotedazur.example",
        "NICECARD_FC_SIMULATOR": "false",
        "NICECARD_FC_ISSUER": "https://oidc.franceconnect.gouv.fr/api/v2",
        "NICECARD_FC_CLIENT_SECRET": base64.b64encode(os.urandom(32)).decode(),
        "NICECARD_KEK": kek,
    }
    upgraded = run(tmp_path, "db", "upgrade", **prod)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "identity: at revision" in upgraded.stdout

    init = run(tmp_path, "keys", "init", **prod)
    assert init.returncode == 0, init.stderr
    assert init.stdout.count("created") == 2 * len(Purpose)

    listed = json.loads(run(tmp_path, "keys", "list", "--json", **prod).stdout)
    active = {r["purpose"]: r["kid"] for r in listed if r["state"] == "active"}
    nxt = {r["purpose"]: r["kid"] for r in listed if r["state"] == "next"}

    rotated = run(tmp_path, "keys", "rotate", "oidc-rs256", **prod)
    assert rotated.returncode == 0, rotated.stderr
    assert nxt["oidc-rs256"] in rotated.stdout

    jwks = json.loads(run(tmp_path, "keys", "jwks", **prod).stdout)
    kids = {k["kid"] for k in jwks["keys"]}
    assert active["oidc-rs256"] in kids  # retired, still published for the overlap
    assert all("d" not in k for k in jwks["keys"])

    refused = run(tmp_path, "keys", "rotate", "pairwise-subject", **prod)
    assert refused.returncode == 1
    assert "force" in refused.stderr

    destroyed = run(tmp_path, "keys", "destroy", active["oidc-rs256"], **prod)
    assert destroyed.returncode == 0, destroyed.stderr
    jwks_after = json.loads(run(tmp_path, "keys", "jwks", **prod).stdout)
    assert active["oidc-rs256"] not in {k["kid"] for k in jwks_after["keys"]}

    wrong_kek = run(
        tmp_path,
        "keys",
        "jwks",
        **{**prod, "NICECARD_KEK": base64.b64encode(os.urandom(32)).decode()},
    )
    assert wrong_kek.returncode == 0  # public keys need no decryption
    sign_refused = run(
        tmp_path,
        "keys",
        "rotate",
        "oidc-es256",
        **{**prod, "NICECARD_KEK": base64.b64encode(os.urandom(32)).decode()},
    )
    assert sign_refused.returncode == 1  # the keyring never mixes two key-encryption keys
    assert "another key-encryption key" in sign_refused.stderr


def test_production_refusal_names_the_setting(tmp_path: Path) -> None:
    result = run(tmp_path, "keys", "list", NICECARD_MODE="production")
    assert result.returncode == 2
    assert "NICECARD_ISSUER must be an https URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_fc_sim_runs_standalone(tmp_path: Path) -> None:
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    clients = tmp_path / "sim-clients.json"
    clients.write_text(
        json.dumps(
            [
                {
                    "client_id": "allo-mairie-test",
                    "client_secret": "a-long-enough-test-secret-value",
                    "redirect_uris": ["http://127.0.0.1:7000/cb"],
                }
            ]
        )
    )
    env = {
        "PATH": os.environ["PATH"],
        "NICECARD_DATA_DIR": str(tmp_path / "var"),
        "NICECARD_FC_SIMULATOR_CLIENTS_FILE": str(clients),
    }
    process = subprocess.Popen(
        [NICECARD, "fc-sim", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v2/.well-known/openid-configuration"
        deadline = time.monotonic() + 20
        while True:
            try:
                metadata = httpx.get(url).json()
                break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert metadata["issuer"] == f"http://127.0.0.1:{port}/api/v2"
        # An unknown client gets an error page; the registered extra client does not.
        authorize = f"http://127.0.0.1:{port}/api/v2/authorize"
        common = {"response_type": "code", "scope": "openid", "state": "s" * 64, "nonce": "n" * 64}
        unknown = httpx.get(
            authorize, params={**common, "client_id": "nobody", "redirect_uri": "http://x/cb"}
        )
        assert unknown.status_code == 400
        known = httpx.get(
            authorize,
            params={
                **common,
                "client_id": "allo-mairie-test",
                "redirect_uri": "http://127.0.0.1:7000/cb",
            },
        )
        assert known.status_code in (200, 302, 303)
    finally:
        process.terminate()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream:
                stream.close()


def test_fc_sim_refuses_production(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "fc-sim",
        NICECARD_MODE="production",
        NICECARD_ISSUER="https://id.example",
        NICECARD_FC_SIMULATOR="false",
        NICECARD_FC_ISSUER="https://oidc.franceconnect.gouv.fr/api/v2",
        NICECARD_FC_CLIENT_SECRET=base64.b64encode(os.urandom(32)).decode(),
        NICECARD_KEK=base64.b64encode(os.urandom(32)).decode(),
    )
    assert result.returncode == 2
    assert "development mode only" in result.stderr
