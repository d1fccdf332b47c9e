"""Token introspection (RFC 7662) and revocation (RFC 7009) of JWT access tokens, over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from keys.model import Purpose
from oidc.clients import AuthMethod, GrantType
from oidc.errors import InvalidToken
from tests.oidc.conftest import Clock, Provider, decode_unverified, es256_key, pretty


def _token(provider: Provider, client_id: str, secret: str | None, scope: str = "") -> str:
    assert secret is not None
    data = {"grant_type": "client_credentials"}
    if scope:
        data["scope"] = scope
    response = httpx.post(provider.token_url, data=data, auth=(client_id, secret))
    assert response.status_code == 200, pretty(response)
    token: str = response.json()["access_token"]
    return token


def _introspect(provider: Provider, token: str, auth: tuple[str, str | None]) -> httpx.Response:
    client_id, secret = auth
    assert secret is not None
    return httpx.post(provider.url + "/introspect", data={"token": token}, auth=(client_id, secret))


def _revoke(provider: Provider, token: str, auth: tuple[str, str | None]) -> httpx.Response:
    client_id, secret = auth
    assert secret is not None
    return httpx.post(provider.url + "/revoke", data={"token": token}, auth=(client_id, secret))


@pytest.fixture
def partner(provider: Provider) -> tuple[str, str | None]:
    return "partner", provider.register("partner", scope="acts:write")


def test_introspection_of_an_active_token(
    provider: Provider, partner: tuple[str, str | None]
) -> None:
    token = _token(provider, *partner, scope="acts:write")
    response = _introspect(provider, token, partner)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    _, claims = decode_unverified(token)
    assert body == {
        "active": True,
        "token_type": "Bearer",
        "client_id": "partner",
        "sub": "partner",
        "aud": provider.url,
        "iss": provider.url,
        "exp": claims["exp"],
        "iat": claims["iat"],
        "jti": claims["jti"],
        "scope": "acts:write",
    }


def test_inactive_tokens(provider: Provider, partner: tuple[str, str | None], clock: Clock) -> None:
    for garbage in ("x", "a.b.c", "eyJhbGciOiJub25lIn0.e30."):
        assert _introspect(provider, garbage, partner).json() == {"active": False}
    # A token of the right shape signed by a key that is not ours.
    _, claims = decode_unverified(_token(provider, *partner))
    forged = jwt.encode(
        claims,
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"typ": "at+jwt", "kid": "not-ours"},
    )
    assert _introspect(provider, forged, partner).json() == {"active": False}
    # Expired by the provider's clock.
    token = _token(provider, *partner)
    clock.advance(301)
    assert _introspect(provider, token, partner).json() == {"active": False}


def test_a_client_cannot_introspect_the_tokens_of_another(
    provider: Provider, partner: tuple[str, str | None]
) -> None:
    other = ("other", provider.register("other"))
    token = _token(provider, *partner)
    assert _introspect(provider, token, other).json() == {"active": False}
    assert _introspect(provider, token, partner).json()["active"] is True


def test_introspection_needs_a_confidential_client(
    provider: Provider, partner: tuple[str, str | None]
) -> None:
    token = _token(provider, *partner)
    anonymous = httpx.post(provider.url + "/introspect", data={"token": token})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_client"
    provider.register(
        "spa",
        AuthMethod.NONE,
        grants=(GrantType.AUTHORIZATION_CODE,),
        redirect_uris=("https://app.example/cb",),
    )
    public = httpx.post(provider.url + "/introspect", data={"token": token, "client_id": "spa"})
    assert public.status_code == 401, pretty(public)
    assert public.json()["error"] == "invalid_client"
    wrong = httpx.post(provider.url + "/introspect", data={"token": token}, auth=("partner", "x"))
    assert wrong.status_code == 401
    missing = httpx.post(provider.url + "/introspect", data={}, auth=("partner", partner[1] or ""))
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"


def test_introspection_with_private_key_jwt(provider: Provider) -> None:
    key = es256_key()
    provider.register_key("rs", key)
    secret = provider.register("partner")
    token = _token(provider, "partner", secret)
    response = httpx.post(
        provider.url + "/introspect",
        data={
            "token": token,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": key.assertion("rs", provider.url),
        },
    )
    assert response.status_code == 200, pretty(response)
    assert response.json() == {"active": False}  # not its token, not its audience


def test_revocation(provider: Provider, partner: tuple[str, str | None]) -> None:
    token = _token(provider, *partner)
    response = _revoke(provider, token, partner)
    assert response.status_code == 200, pretty(response)
    assert response.headers["cache-control"] == "no-store"
    assert _introspect(provider, token, partner).json() == {"active": False}
    # Revoking again, or revoking nonsense, is still a 200 (RFC 7009 §2.2).
    assert _revoke(provider, token, partner).status_code == 200
    assert _revoke(provider, "garbage", partner).status_code == 200
    # An unknown token_type_hint is ignored (RFC 7009 §2.1).
    other = _token(provider, *partner)
    hinted = httpx.post(
        provider.url + "/revoke",
        data={"token": other, "token_type_hint": "id_token"},
        auth=("partner", partner[1] or ""),
    )
    assert hinted.status_code == 200, pretty(hinted)
    assert _introspect(provider, other, partner).json() == {"active": False}
    # A fresh token is not affected.
    assert _introspect(provider, _token(provider, *partner), partner).json()["active"] is True


def test_revoking_the_token_of_another_client_is_refused(
    provider: Provider, partner: tuple[str, str | None]
) -> None:
    other = ("other", provider.register("other"))
    token = _token(provider, *partner)
    response = _revoke(provider, token, other)
    assert response.status_code == 400, pretty(response)
    assert response.json()["error"] == "invalid_grant"
    assert _introspect(provider, token, partner).json()["active"] is True


def test_revocation_needs_client_authentication(
    provider: Provider, partner: tuple[str, str | None]
) -> None:
    token = _token(provider, *partner)
    response = httpx.post(provider.url + "/revoke", data={"token": token})
    assert response.status_code == 401
    assert _introspect(provider, token, partner).json()["active"] is True


def test_resource_side_verification_honours_revocation(
    provider: Provider, partner: tuple[str, str | None]
) -> None:
    """What a resource endpoint does with a bearer token: verify, then check the list."""
    op = provider.app.state.oidc
    token = _token(provider, *partner)
    claims = op.verifier.verify(token, audience=provider.url)
    assert not op.revocations.is_revoked(claims.jti)
    with pytest.raises(InvalidToken):
        op.verifier.verify(token, audience="https://another-api.example")
    _revoke(provider, token, partner)
    assert op.revocations.is_revoked(claims.jti)


def test_revocation_list_keeps_a_jti_only_until_the_token_expires(
    provider: Provider, partner: tuple[str, str | None], clock: Clock
) -> None:
    op = provider.app.state.oidc
    token = _token(provider, *partner)
    _revoke(provider, token, partner)
    jti = decode_unverified(token)[1]["jti"]
    assert op.revocations.purge(clock()) == 0
    assert op.revocations.is_revoked(jti)
    assert op.revocations.purge(clock() + timedelta(seconds=301)) == 1
    assert not op.revocations.is_revoked(jti)


def test_tokens_survive_a_key_rotation(provider: Provider, partner: tuple[str, str | None]) -> None:
    keyring = provider.app.state.runtime.keyring
    before = _token(provider, *partner)
    old_kid = decode_unverified(before)[0]["kid"]
    keyring.rotate(Purpose.OIDC_ES256)
    after = _token(provider, *partner)
    assert decode_unverified(after)[0]["kid"] != old_kid
    assert _introspect(provider, before, partner).json()["active"] is True
    assert _introspect(provider, after, partner).json()["active"] is True
    keyring.destroy(old_kid)
    assert _introspect(provider, before, partner).json() == {"active": False}


def test_many_concurrent_introspections_with_uncached_clients(
    provider_factory: Callable[..., Provider],
) -> None:
    """Authlib runs in worker threads and authenticates through the event loop, which may
    need a thread for the database: more concurrent requests than worker threads must not
    deadlock (the database work has a limiter of its own)."""
    provider = provider_factory(client_cache_seconds=0)
    secret = provider.register("partner")
    assert secret is not None
    token = _token(provider, "partner", secret)

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            responses = await asyncio.gather(
                *(
                    http.post(
                        provider.url + "/introspect",
                        data={"token": token},
                        auth=("partner", secret),
                    )
                    for _ in range(80)
                )
            )
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 80
