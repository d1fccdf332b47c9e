"""private_key_jwt when the request names its client (``client_id``, RFC 7521 §4.2) and the
client registered one key its assertions can use: the key is known before the assertion is
read, so pyjwt reads it once. Every rule of ``test_client_auth.py`` still holds on that path.
"""

from __future__ import annotations

from typing import Any

import httpx
import jwt
import pytest

from tests.oidc.conftest import (
    ASSERTION_TYPE,
    ClientKey,
    Provider,
    decode_unverified,
    es256_key,
    pretty,
    rsa_key,
)


def _named(provider: Provider, assertion: str, client_id: str = "partner") -> httpx.Response:
    return httpx.post(
        provider.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
        timeout=10,
    )


def _refused(response: httpx.Response, fragment: str) -> None:
    assert response.status_code == 401, pretty(response)
    assert response.json()["error"] == "invalid_client"
    assert fragment in response.json()["error_description"], pretty(response)


@pytest.mark.parametrize("registered_alg", [None, "ES256"])
def test_named_client_with_one_key(provider: Provider, registered_alg: str | None) -> None:
    key = es256_key()
    provider.register_key("partner", key, token_endpoint_auth_signing_alg=registered_alg)
    assertion = key.assertion("partner", provider.url)
    response = _named(provider, assertion)
    assert response.status_code == 200, pretty(response)
    assert decode_unverified(response.json()["access_token"])[1]["sub"] == "partner"
    _refused(_named(provider, assertion), "replay")


def test_named_client_refuses_other_algs(provider: Provider) -> None:
    key = es256_key()
    provider.register_key("partner", key)
    _, claims = decode_unverified(key.assertion("partner", provider.url))
    unsigned = jwt.encode(claims, key="", algorithm="none")
    _refused(_named(provider, unsigned), "alg")
    hs256 = jwt.encode(claims, key="a-shared-secret-of-32-bytes-or-more!", algorithm="HS256")
    _refused(_named(provider, hs256), "alg")


def test_named_client_registered_alg_is_enforced(provider: Provider) -> None:
    key = rsa_key()
    provider.register_key("partner", key, token_endpoint_auth_signing_alg="PS256")
    assert _named(provider, key.assertion("partner", provider.url, alg="PS256")).is_success
    _refused(_named(provider, key.assertion("partner", provider.url, alg="RS256")), "PS256")


def test_named_client_whose_key_fits_two_algs(provider: Provider) -> None:
    key = rsa_key()  # RS256 and PS256: the header's alg picks
    provider.register_key("partner", key)
    for alg in ("RS256", "PS256"):
        response = _named(provider, key.assertion("partner", provider.url, alg=alg))
        assert response.status_code == 200, pretty(response)


def test_named_client_wrong_key_or_kid(provider: Provider) -> None:
    mine, theirs = es256_key(), es256_key()
    provider.register_key("partner", mine)
    forged = ClientKey(theirs.private, kid=mine.kid)
    _refused(_named(provider, forged.assertion("partner", provider.url)), "signature")
    other_kid = ClientKey(mine.private, kid="unknown")
    _refused(_named(provider, other_kid.assertion("partner", provider.url)), "kid")


def test_named_client_is_the_assertions_subject(provider: Provider) -> None:
    partner, other = es256_key(), es256_key()
    provider.register_key("partner", partner)
    provider.register_key("other", other)
    # Signed by partner for partner, but the request names "other": other's key does not verify.
    _refused(
        _named(provider, partner.assertion("partner", provider.url), client_id="other"),
        "signature",
    )
    # Signed by other's key, claiming partner as issuer: the claims must name "other".
    _refused(_named(provider, other.assertion("partner", provider.url), client_id="other"), "iss")
    _refused(
        _named(provider, other.assertion("other", provider.url, sub="partner"), client_id="other"),
        "sub",
    )


def test_named_client_claims(provider: Provider, clock: Any) -> None:
    key = es256_key()
    provider.register_key("partner", key)
    now = int(clock().timestamp())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"jti": None}, "jti"),
        ({"exp": None}, "exp"),
        ({"iat": now - 600, "exp": now - 120}, "expired"),
        ({"exp": now + 7200}, "ahead"),
        ({"nbf": now + 300}, "nbf"),
    ]
    for claims, fragment in cases:
        _refused(_named(provider, key.assertion("partner", provider.url, **claims)), fragment)
    _refused(_named(provider, key.assertion("partner", "https://other-op.example")), "aud")
    _refused(_named(provider, "not.a.jwt"), "JWT")


def test_named_client_key_change_takes_effect(provider: Provider) -> None:
    old, new = es256_key(), es256_key()
    provider.register_key("partner", old)
    assert _named(provider, old.assertion("partner", provider.url)).is_success
    provider.update("partner", jwks={"keys": [new.public_jwk()]})
    _refused(_named(provider, old.assertion("partner", provider.url)), "signature")
    assert _named(provider, new.assertion("partner", provider.url)).is_success


def test_unknown_or_secret_client_named(provider: Provider) -> None:
    key = es256_key()
    provider.register_key("partner", key)
    provider.register("basic")
    _refused(_named(provider, key.assertion("partner", provider.url), client_id="ghost"), "sub")
    _refused(_named(provider, key.assertion("basic", provider.url), client_id="basic"), "failed")
