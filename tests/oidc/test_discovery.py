"""Provider metadata (OpenID Connect Discovery 1.0; RFC 8414): truthful and complete for what
the provider does now, and built from one function."""

from __future__ import annotations

import httpx

from oidc.clients import AuthMethod
from oidc.discovery import ProviderFeatures, provider_metadata
from tests.oidc.conftest import Provider

MACHINE_MEMBERS = {
    "issuer",
    "jwks_uri",
    "token_endpoint",
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "introspection_endpoint",
    "introspection_endpoint_auth_methods_supported",
    "introspection_endpoint_auth_signing_alg_values_supported",
    "revocation_endpoint",
    "revocation_endpoint_auth_methods_supported",
    "revocation_endpoint_auth_signing_alg_values_supported",
}


def test_discovery_document(provider: Provider) -> None:
    response = httpx.get(provider.url + "/.well-known/openid-configuration")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    metadata = response.json()
    issuer = provider.url
    code_flow = {
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "response_types_supported": ["code"],
        "authorization_endpoint": f"{issuer}/authorize",
        "userinfo_endpoint": f"{issuer}/userinfo",
        "end_session_endpoint": f"{issuer}/logout",
        "pushed_authorization_request_endpoint": f"{issuer}/par",
        "code_challenge_methods_supported": ["S256"],
        "subject_types_supported": ["pairwise"],
    }
    assert {k: metadata[k] for k in code_flow} == code_flow
    machine = {k: v for k, v in metadata.items() if k not in code_flow}
    assert {k: machine[k] for k in machine if k in MACHINE_MEMBERS} == {
        "issuer": issuer,
        "jwks_uri": f"{issuer}/jwks",
        "token_endpoint": f"{issuer}/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "PS256", "RS256"],
        "introspection_endpoint": f"{issuer}/introspect",
        "introspection_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "introspection_endpoint_auth_signing_alg_values_supported": ["ES256", "PS256", "RS256"],
        "revocation_endpoint": f"{issuer}/revoke",
        "revocation_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "revocation_endpoint_auth_signing_alg_values_supported": ["ES256", "PS256", "RS256"],
    }


def test_every_advertised_endpoint_answers(provider: Provider) -> None:
    metadata = httpx.get(provider.url + "/.well-known/openid-configuration").json()
    assert metadata["issuer"] == provider.app.state.settings.issuer  # Discovery §4.3
    assert httpx.get(metadata["jwks_uri"]).status_code == 200
    for name in ("token_endpoint", "introspection_endpoint", "revocation_endpoint"):
        url = metadata[name]
        assert url.startswith(metadata["issuer"] + "/")
        # Unauthenticated: an OAuth error from the endpoint itself, not a 404.
        response = httpx.post(url, data={"token": "x", "grant_type": "client_credentials"})
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"] == "invalid_client"
    for name, values in metadata.items():
        if name.endswith("signing_alg_values_supported"):
            assert "none" not in values
            assert not [v for v in values if v.startswith("HS")]


def test_nothing_is_advertised_that_is_not_there(provider: Provider) -> None:
    metadata = httpx.get(provider.url + "/.well-known/openid-configuration").json()
    for absent in ("registration_endpoint",):
        assert absent not in metadata
    assert metadata["backchannel_logout_supported"] is True


def test_builder_follows_the_features() -> None:
    bare = provider_metadata(
        ProviderFeatures(
            issuer="https://id.example",
            introspection_path=None,
            revocation_path=None,
            token_endpoint_auth_methods=(AuthMethod.CLIENT_SECRET_BASIC,),
        )
    )
    assert "introspection_endpoint" not in bare
    assert "revocation_endpoint" not in bare
    assert bare["token_endpoint_auth_methods_supported"] == ["client_secret_basic"]
    assert "token_endpoint_auth_signing_alg_values_supported" not in bare

    extended = provider_metadata(
        ProviderFeatures(
            issuer="https://id.example",
            grant_types=("authorization_code", "refresh_token", "client_credentials"),
            response_types=("code",),
            token_endpoint_auth_methods=tuple(AuthMethod),
            scopes=("openid", "acts:write"),
            extra={"authorization_endpoint": "https://id.example/authorize"},
        )
    )
    assert extended["response_types_supported"] == ["code"]
    assert extended["scopes_supported"] == ["openid", "acts:write"]
    assert extended["authorization_endpoint"] == "https://id.example/authorize"
    assert "none" in extended["token_endpoint_auth_methods_supported"]
    assert "none" not in extended["introspection_endpoint_auth_methods_supported"]
