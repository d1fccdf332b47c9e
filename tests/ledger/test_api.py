"""The ledger's HTTP API over real HTTP: partners record acts for citizens who signed in through
the FranceConnect simulator; citizens read their points and verify a receipt offline."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from keys.note import parse_verifier_key
from ledger.checkpoint import open_checkpoint
from ledger.checkpoints import verifier_keys
from oidc.clients import AuthMethod, GrantType
from tests.oidc.browser import Citizen
from tests.oidc.conftest import (  # noqa: F401 - fixtures
    OAuth2Client,
    Provider,
    clock,
    provider_factory,
)
from tests.oidc.test_code_flow import TRANSIT_CB, sign_in

CATALOGUE = """
[acts.tram_ride]
points = 2
max_per_day = 2
max_per_month = 3
partners = ["transit"]

[acts.recycling_dropoff]
points = 5
max_per_day = 1
max_per_month = 4
partners = ["recycling"]
valid_from = 2020-01-01
"""

AUDIT = Path(sys.executable).parent / "ledger-audit"


@dataclass
class World:
    provider: Provider
    citizen_token: str
    sub: str
    partner_token: str

    @property
    def url(self) -> str:
        return self.provider.url

    def post(self, body: Any, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.partner_token}"}
        if isinstance(body, bytes):
            return httpx.post(self.url + "/v1/acts", content=body, headers=headers, **kwargs)
        return httpx.post(self.url + "/v1/acts", json=body, headers=headers, **kwargs)

    def me(self, path: str) -> httpx.Response:
        return httpx.get(
            self.url + "/v1/me/" + path, headers={"Authorization": f"Bearer {self.citizen_token}"}
        )


def client_token(provider: Provider, client_id: str, secret: str, scope: str) -> str:
    response = httpx.post(
        provider.token_url,
        data={"grant_type": "client_credentials", "scope": scope},
        auth=(client_id, secret),
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def act(sub: str, key: str, *, kind: str = "tram_ride", when: datetime | None = None) -> Any:
    moment = when or datetime.now(UTC) - timedelta(minutes=1)
    return {
        "sub": sub,
        "type": kind,
        "occurred_at": moment.isoformat().replace("+00:00", "Z"),
        "evidence_digest": "sha256:" + hashlib.sha256(key.encode()).hexdigest(),
        "idempotency_key": key,
    }


@pytest.fixture
def world(provider_factory: Callable[..., Provider], tmp_path: Path) -> Iterator[World]:  # noqa: F811
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(CATALOGUE)
    provider = provider_factory(catalogue_file=catalogue)
    secret = provider.register(
        "transit",
        AuthMethod.CLIENT_SECRET_BASIC,
        scope="openid points acts:write",
        grants=(GrantType.AUTHORIZATION_CODE, GrantType.CLIENT_CREDENTIALS),
        redirect_uris=(TRANSIT_CB,),
        client_name="Transit",
    )
    assert secret is not None
    rp = OAuth2Client(
        "transit",
        secret,
        scope="openid points",
        redirect_uri=TRANSIT_CB,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    )
    person = Citizen(provider.url)
    try:
        token, _ = sign_in(provider, person, rp, TRANSIT_CB)
        access = str(token["access_token"])
        sub = httpx.get(
            provider.url + "/userinfo", headers={"Authorization": f"Bearer {access}"}
        ).json()["sub"]
        yield World(provider, access, sub, client_token(provider, "transit", secret, "acts:write"))
    finally:
        rp.close()
        person.close()


def problem_type(response: httpx.Response | dict[str, Any]) -> str:
    body = response.json() if isinstance(response, httpx.Response) else response
    return str(body["type"]).rsplit("/problems/", 1)[1]


def test_partner_records_acts_and_citizen_verifies_a_receipt(world: World, tmp_path: Path) -> None:
    when = datetime.now(UTC) - timedelta(minutes=1)
    first = world.post(act(world.sub, "ride-1", when=when))
    assert first.status_code == 201, first.text
    receipt = first.json()
    assert receipt["points"] == 2
    assert receipt["replayed"] is False
    assert len(receipt["leaf_hash"]) == 64
    assert receipt["proof_url"] == f"/ledger/proof/inclusion?index={receipt['index']}"

    again = world.post(act(world.sub, "ride-1", when=when))
    assert again.status_code == 201
    assert again.json()["index"] == receipt["index"]
    assert again.json()["replayed"] is True
    assert world.me("balance").json() == {"points": 2}  # credited once

    conflict = world.post(act(world.sub, "ride-1", when=datetime.now(UTC) - timedelta(hours=1)))
    assert conflict.status_code == 409
    assert problem_type(conflict) == "idempotency-conflict"

    history = world.me("history").json()["entries"]
    assert [e["index"] for e in history] == [receipt["index"]]
    assert history[0]["act_type"] == "tram_ride"
    assert "pseudonym" not in history[0]

    # The public checkpoint verifies with the ledger's note key.
    checkpoint = httpx.get(world.url + "/ledger/checkpoint")
    assert checkpoint.status_code == 200
    assert checkpoint.headers["content-type"].startswith("text/plain")
    settings = world.provider.app.state.settings
    origin = settings.effective_ledger_origin
    keys = verifier_keys(world.provider.app.state.runtime.keyring, origin)
    opened = open_checkpoint(
        checkpoint.content, [parse_verifier_key(k) for k in keys], origin=origin
    )
    assert opened.size > receipt["index"]

    # Now a checkpoint covers the act: the replay carries an inclusion proof.
    proved = world.post(act(world.sub, "ride-1", when=when)).json()["inclusion_proof"]
    assert proved["tree_size"] == opened.size
    proof = httpx.get(world.url + receipt["proof_url"]).json()
    assert proof["hashes"] == proved["hashes"]

    download = world.me(f"receipts/{receipt['index']}")
    assert download.status_code == 200, download.text
    path = tmp_path / "receipt.tlog-proof"
    path.write_bytes(download.content)
    checked = subprocess.run(
        [str(AUDIT), "receipt", str(path), *(f"--key={k}" for k in keys)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # A receipt of an entry that is not the citizen's: the catalogue entry (index 0).
    assert world.me("receipts/0").status_code == 404
    assert problem_type(world.me("receipts/0")) == "entry-not-found"


def test_caps_entitlements_and_subjects(world: World) -> None:
    today = datetime.now(UTC) - timedelta(minutes=1)
    yesterday = today - timedelta(days=1)
    batch = world.post(
        {
            "acts": [
                act(world.sub, "a", when=today),
                act(world.sub, "b", when=today),
                act(world.sub, "c", when=today),  # over the daily cap of 2
                act(world.sub, "d", kind="recycling_dropoff"),  # transit may not attest it
                act("somebody-else", "e"),
                act(world.sub, "f", kind="teleportation"),
                {"sub": world.sub},
                act(world.sub, "a", when=today),  # repeats the first act
            ]
        }
    )
    assert batch.status_code == 207, batch.text
    results = batch.json()["results"]
    assert [r["status"] for r in results] == [201, 201, 409, 403, 422, 422, 422, 201]
    assert [problem_type(r["problem"]) for r in results[2:7]] == [
        "cap-exceeded",
        "act-not-allowed",
        "unknown-subject",
        "act-type-unknown",
        "invalid-act",
    ]
    assert results[7]["index"] == results[0]["index"]
    assert world.me("balance").json() == {"points": 4}

    # The monthly cap (3) is reached by one more act on another day, when the month allows it.
    if yesterday.month == today.month:
        ok = world.post(act(world.sub, "g", when=yesterday))
        assert ok.status_code == 201
        capped = world.post(act(world.sub, "h", when=yesterday))
        assert capped.status_code == 409
        assert problem_type(capped) == "cap-exceeded"


def test_tokens_and_bad_bodies_get_problems_never_500(world: World) -> None:
    no_token = httpx.post(world.url + "/v1/acts", json=act(world.sub, "x"))
    assert no_token.status_code == 401
    assert no_token.headers["www-authenticate"].startswith("Bearer")
    assert problem_type(no_token) == "invalid-token"
    assert world.post(act(world.sub, "x"), token="not-a-token").status_code == 401

    citizen = world.post(act(world.sub, "x"), token=world.citizen_token)
    assert citizen.status_code == 403
    assert problem_type(citizen) == "insufficient-scope"
    partner_as_citizen = httpx.get(
        world.url + "/v1/me/balance", headers={"Authorization": f"Bearer {world.partner_token}"}
    )
    assert partner_as_citizen.status_code == 403

    bad_digest = {**act(world.sub, "y"), "evidence_digest": "sha256:abc"}
    cases: list[tuple[Any, int, str]] = [
        (b"{not json", 422, "invalid-act"),
        (b"[]", 422, "invalid-act"),
        ({**act(world.sub, "y"), "occurred_at": 12}, 422, "invalid-act"),
        ({**act(world.sub, "y"), "occurred_at": "2026-13-45T00:00:00Z"}, 422, "invalid-act"),
        ({**act(world.sub, "y"), "occurred_at": "yesterday"}, 422, "invalid-act"),
        (bad_digest, 422, "invalid-act"),
        ({"acts": []}, 422, "invalid-act"),
        ({"acts": [act(world.sub, f"k{i}") for i in range(501)]}, 413, "batch-too-large"),
        (b" " * (1 << 20) + b"{}", 413, "request-too-large"),
        (act(world.sub, "z", when=datetime.now(UTC) + timedelta(days=1)), 422, "invalid-act"),
    ]
    for body, status, slug in cases:
        response = world.post(body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert problem_type(response) == slug

    assert httpx.get(world.url + "/ledger/proof/inclusion?index=zz").status_code == 400
    assert httpx.get(world.url + "/ledger/proof/inclusion?index=99&size=1").status_code == 400
    assert httpx.get(world.url + "/ledger/proof/consistency?from=1&to=1").status_code == 200
    assert httpx.get(world.url + "/ledger/tile/0/000.p/1").status_code == 200
    assert httpx.get(world.url + "/ledger/tile/entries/000.p/1").status_code == 404
    assert httpx.get(world.url + "/ledger/tile/nonsense").status_code == 404


def test_a_client_gone_mid_body_is_no_server_error(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A partner that disconnects while sending its body (every load generator does when it
    stops) is logged at info, not as an unhandled ASGI error."""
    url = httpx.URL(world.url)
    head = (
        f"POST /v1/acts HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Authorization: Bearer {world.partner_token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with caplog.at_level(logging.INFO):
        with socket.create_connection((url.host, url.port or 80)) as sock:
            sock.sendall(head.encode() + b'{"acts": [')
            time.sleep(0.3)  # the server has authenticated and is waiting for the rest
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any(r.getMessage() == "client disconnected" for r in caplog.records):
                break
            time.sleep(0.05)
    assert any(r.getMessage() == "client disconnected" for r in caplog.records)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_auditor_verifies_online(world: World, tmp_path: Path) -> None:
    """ledger-audit verify --url: auditor client credentials (scope audit), export over HTTP."""
    provider = world.provider
    secret = provider.register("dpo-auditor", scope="audit")
    assert secret is not None
    partner_only = provider.register("not-an-auditor", scope="acts:write")
    settings = provider.app.state.settings
    key = verifier_keys(provider.app.state.runtime.keyring, settings.effective_ledger_origin)[0]
    audit = str(Path(sys.executable).parent / "ledger-audit")
    env = {"PATH": os.environ["PATH"], "LEDGER_AUDIT_CLIENT_SECRET": secret}
    ok = subprocess.run(
        [
            audit,
            "verify",
            "--url",
            provider.url,
            "--client-id",
            "dpo-auditor",
            "--key",
            key,
            "--json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert partner_only is not None
    refused = subprocess.run(
        [audit, "verify", "--url", provider.url, "--client-id", "not-an-auditor", "--key", key],
        cwd=tmp_path,
        env={**env, "LEDGER_AUDIT_CLIENT_SECRET": partner_only},
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    anonymous = httpx.get(provider.url + "/ledger/export")
    assert anonymous.status_code == 401
