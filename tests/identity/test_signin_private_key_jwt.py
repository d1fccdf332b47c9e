"""FranceConnect client authentication with private_key_jwt (RFC 7523), against a standalone
simulator that knows only our published public key, and JWKS refetch on a provider rotation."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from identity.app import create_app
from identity.fcsim import SimulatorClient, SimulatorConfig, create_simulator
from identity.runtime import open_runtime
from keys.model import Purpose
from tests.conftest import _free_port, make_settings, serve
from tests.identity.signin_helpers import sign_in


@pytest.fixture
def private_key_jwt_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("var")
    fc_port, our_port = _free_port(), _free_port()
    fc_issuer = f"http://127.0.0.1:{fc_port}/api/v2"
    settings = make_settings(
        data_dir,
        issuer=f"http://127.0.0.1:{our_port}",
        fc_simulator=False,
        fc_issuer=fc_issuer,
        fc_client_id="nicecard-pkjwt",
        fc_auth_method="private_key_jwt",
    )
    with open_runtime(settings) as runtime:  # development: creates our keys
        our_jwks = runtime.keyring.jwks([Purpose.FC_CLIENT])
    assert our_jwks["keys"]
    assert all("d" not in k for k in our_jwks["keys"])
    simulator = create_simulator(
        SimulatorConfig(
            issuer=fc_issuer,
            clients=(
                SimulatorClient(
                    client_id="nicecard-pkjwt",
                    redirect_uris=(f"{settings.issuer}/auth/franceconnect/callback",),
                    post_logout_redirect_uris=(
                        f"{settings.issuer}/auth/franceconnect/logout-callback",
                    ),
                    jwks=our_jwks,
                    id_token_signed_response_alg="RS256",
                    userinfo_signed_response_alg="RS256",
                ),
            ),
            sub_secret=secrets.token_bytes(32),
        )
    )
    with serve(simulator, port=fc_port), serve(create_app(settings), port=our_port) as base:
        yield base


def test_sign_in_with_private_key_jwt_and_rs256(private_key_jwt_service: str) -> None:
    with httpx.Client(base_url=private_key_jwt_service, follow_redirects=False) as client:
        response = sign_in(client, "nicois")
        assert response.status_code == 303, response.text
        assert 'id="logout"' in client.get("/").text


def test_our_client_keys_are_published(private_key_jwt_service: str) -> None:
    jwks = httpx.get(f"{private_key_jwt_service}/auth/franceconnect/jwks").json()
    assert [k["alg"] for k in jwks["keys"]] == ["ES256", "ES256"]  # active and next
    assert all(set(k) <= {"kty", "crv", "x", "y", "kid", "use", "alg"} for k in jwks["keys"])
