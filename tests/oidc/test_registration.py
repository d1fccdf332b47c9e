"""Dynamic client registration (RFC 7591) behind an initial access token."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.oidc.browser import Citizen
from tests.oidc.conftest import OAuth2Client, Provider

TOKEN = "initial-access-token-9f3c2a7d61e8b4"


@pytest.fixture
def op(provider_factory: Callable[..., Provider]) -> Provider:
    return provider_factory(registration_token=TOKEN)


def post(op: Provider, body: Any, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(op.url + "/register", json=body, headers=headers)


def test_register_then_sign_in(op: Provider) -> None:
    metadata = httpx.get(op.url + "/.well-known/openid-configuration").json()
    assert metadata["registration_endpoint"] == op.url + "/register"
    response = post(
        op,
        {
            "redirect_uris": ["https://rp.example/cb"],
            "client_name": "A registered app",
            "scope": "openid",
            "token_endpoint_auth_method": "client_secret_basic",
        },
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["client_id"].startswith("dyn-")
    assert len(body["client_secret"]) >= 43
    assert body["client_secret_expires_at"] == 0
    client = OAuth2Client(
        body["client_id"],
        body["client_secret"],
        scope="openid",
        redirect_uri="https://rp.example/cb",
        code_challenge_method="S256",
    )
    citizen = Citizen(op.url)
    try:
        from authlib.common.security import generate_token

        verifier = generate_token(48)
        url, _ = client.create_authorization_url(op.url + "/authorize", code_verifier=verifier)
        location = citizen.go(url, "https://rp.example/cb").headers["location"]
        token = client.fetch_token(
            op.token_url, authorization_response=location, code_verifier=verifier
        )
        info = httpx.get(
            op.url + "/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"}
        )
        assert set(info.json()) == {"sub"}  # entitled to nothing but its pseudonym
    finally:
        citizen.close()
        client.close()


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"redirect_uris": ["https://rp.example/cb#frag"]}, "invalid_redirect_uri"),
        ({"redirect_uris": ["http://rp.example/cb"]}, "invalid_redirect_uri"),
        (
            {"redirect_uris": ["https://rp.example/cb"], "claims": ["birthdate"]},
            "invalid_client_metadata",
        ),
        (
            {"redirect_uris": ["https://rp.example/cb"], "scope": "openid acts:write"},
            "invalid_client_metadata",
        ),
        (
            {"redirect_uris": ["https://rp.example/cb"], "client_id": "mine"},
            "invalid_client_metadata",
        ),
        ({"redirect_uris": ["https://rp.example/cb"], "colour": "blue"}, "invalid_client_metadata"),
        (["not", "an", "object"], "invalid_client_metadata"),
    ],
)
def test_refusals(op: Provider, body: Any, error: str) -> None:
    response = post(op, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error


def test_initial_access_token_required(op: Provider) -> None:
    assert post(op, {"redirect_uris": ["https://rp.example/cb"]}, token=None).status_code == 401
    assert post(op, {"redirect_uris": ["https://rp.example/cb"]}, token="wrong").status_code == 401


def test_disabled_without_a_token(provider: Provider) -> None:
    assert httpx.post(provider.url + "/register", json={}).status_code in (404, 405)
    metadata = httpx.get(provider.url + "/.well-known/openid-configuration").json()
    assert "registration_endpoint" not in metadata
