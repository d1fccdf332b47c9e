"""DPoP proof checks (RFC 9449 §4.3), as the token endpoint and userinfo will run them."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from oidc.dpop import access_token_hash, jwk_thumbprint, verify_proof
from oidc.errors import InvalidDPoPProof
from tests.oidc.conftest import Provider

KEY = ec.generate_private_key(ec.SECP256R1())
JWK: dict[str, Any] = ECAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
URL = "https://id.example/token"


def proof(**overrides: Any) -> str:
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": JWK}
    header.update(overrides.pop("header", {}))
    claims: dict[str, Any] = {
        "jti": str(time.time_ns()),
        "htm": "POST",
        "htu": URL,
        "iat": int(time.time()),
    }
    claims.update(overrides)
    return jwt.encode(claims, KEY, algorithm="ES256", headers=header)


class Replay:
    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, jkt: str, jti: str, _until: float) -> None:
        if (jkt, jti) in self.seen:
            raise InvalidDPoPProof("replayed")
        self.seen.add((jkt, jti))


def check(token: str, **kwargs: Any) -> str:
    params: dict[str, Any] = {"method": "POST", "url": URL, "now": time.time(), "replay": Replay()}
    params.update(kwargs)
    return verify_proof(token, **params)


def test_valid_proof_gives_the_key_thumbprint() -> None:
    assert check(proof()) == jwk_thumbprint(JWK)
    assert check(proof(htu=URL + "?ignored=1")) == jwk_thumbprint(JWK)


def test_replay_is_refused() -> None:
    replay = Replay()
    token = proof()
    check(token, replay=replay)
    with pytest.raises(InvalidDPoPProof):
        check(token, replay=replay)


def test_access_token_binding() -> None:
    token = proof(ath=access_token_hash("the-access-token"))
    assert check(token, access_token="the-access-token")
    with pytest.raises(InvalidDPoPProof):
        check(proof(ath=access_token_hash("another")), access_token="the-access-token")
    with pytest.raises(InvalidDPoPProof):
        check(proof(), access_token="the-access-token")


@pytest.mark.parametrize(
    "bad",
    [
        {"htm": "GET"},
        {"htu": "https://id.example/other"},
        {"iat": int(time.time()) - 3600},
        {"header": {"typ": "JWT"}},
        {"header": {"jwk": {**JWK, "d": "private"}}},
        {"iat": float("nan")},
        {"iat": True},
        {"nbf": int(time.time()) + 3600},
        {"exp": int(time.time()) - 3600},
    ],
    ids=["method", "url", "old", "typ", "private-jwk", "nan-iat", "bool-iat", "nbf", "exp"],
)
def test_refusals(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidDPoPProof):
        check(proof(**bad))


def test_hmac_and_none_are_refused() -> None:
    claims = {"jti": "x", "htm": "POST", "htu": URL, "iat": int(time.time())}
    for token in (
        jwt.encode(
            claims,
            "secret-secret-secret-secret-secret",
            algorithm="HS256",
            headers={"typ": "dpop+jwt", "jwk": JWK},
        ),
        jwt.encode(claims, None, algorithm="none", headers={"typ": "dpop+jwt", "jwk": JWK}),
    ):
        with pytest.raises(InvalidDPoPProof):
            check(token)
    with pytest.raises(InvalidDPoPProof):
        check("not-a-jwt")


# -- over HTTP ------------------------------------------------------------------------------


def http_proof(key: ec.EllipticCurvePrivateKey, method: str, url: str, **claims: Any) -> str:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    body: dict[str, Any] = {
        "jti": str(time.time_ns()),
        "htm": method,
        "htu": url,
        "iat": int(time.time()),
    }
    body.update(claims)
    return jwt.encode(body, key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": jwk})


def test_client_credentials_bound_to_a_key(provider: Provider) -> None:
    secret = provider.register("dpop-partner", scope="acts:write")
    assert secret is not None
    key = ec.generate_private_key(ec.SECP256R1())
    proof_value = http_proof(key, "POST", provider.token_url)
    data = {"grant_type": "client_credentials", "scope": "acts:write"}
    first = httpx.post(
        provider.token_url, data=data, auth=("dpop-partner", secret), headers={"DPoP": proof_value}
    )
    assert first.status_code == 200, first.text
    assert first.json()["token_type"] == "DPoP"
    claims = jwt.decode(first.json()["access_token"], options={"verify_signature": False})
    assert claims["cnf"]["jkt"] == jwk_thumbprint(
        ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    )
    replayed = httpx.post(
        provider.token_url, data=data, auth=("dpop-partner", secret), headers={"DPoP": proof_value}
    )
    assert replayed.status_code == 400
    assert replayed.json()["error"] == "invalid_dpop_proof"
    bound = first.json()["access_token"]
    acts_url = provider.url + "/v1/acts"
    # A bound token is never accepted as a bearer token (RFC 9449 §7.2): no downgrade.
    as_bearer = httpx.post(
        acts_url, json={"acts": []}, headers={"Authorization": f"Bearer {bound}"}
    )
    assert as_bearer.status_code == 401
    # With the DPoP scheme and a fresh proof for this request, the ledger API takes it.
    ath = access_token_hash(bound)

    def acts(proof_value: str, token: str = bound) -> httpx.Response:
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof_value}
        return httpx.post(acts_url, json={"acts": []}, headers=headers)

    good = http_proof(key, "POST", acts_url, ath=ath)
    assert acts(good).status_code == 422  # authenticated; the empty batch is what is refused
    assert acts(good).status_code == 401  # the same proof again: replayed
    assert acts(http_proof(key, "POST", provider.url + "/v1/deposits", ath=ath)).status_code == 401
    assert acts(http_proof(key, "GET", acts_url, ath=ath)).status_code == 401
    assert acts(http_proof(key, "POST", acts_url)).status_code == 401  # no ath
    other = ec.generate_private_key(ec.SECP256R1())
    assert acts(http_proof(other, "POST", acts_url, ath=ath)).status_code == 401
    # An unbound token sent with the DPoP scheme is refused too.
    plain = httpx.post(provider.token_url, data=data, auth=("dpop-partner", secret)).json()
    unbound = plain["access_token"]
    proof_unbound = http_proof(key, "POST", acts_url, ath=access_token_hash(unbound))
    assert acts(proof_unbound, unbound).status_code == 401


def test_code_flow_with_dpop(provider: Provider) -> None:
    from authlib.common.security import generate_token
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    from tests.oidc.browser import Citizen
    from tests.oidc.test_code_flow import TRANSIT_CB, register_rp

    secret = register_rp(provider, "transit", TRANSIT_CB, frozenset({"age_over_18"}))
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    jkt = jwk_thumbprint(ECAlgorithm.to_jwk(key.public_key(), as_dict=True))
    citizen = Citizen(provider.url)
    try:

        def code() -> tuple[str, str]:
            verifier = generate_token(48)
            params = {
                "response_type": "code",
                "client_id": "transit",
                "redirect_uri": TRANSIT_CB,
                "scope": "openid age",
                "state": "s",
                "dpop_jkt": jkt,
                "code_challenge": create_s256_code_challenge(verifier),
                "code_challenge_method": "S256",
            }
            url = provider.url + "/authorize?" + urlencode(params)
            location = citizen.go(url, TRANSIT_CB).headers["location"]
            return parse_qs(urlsplit(location).query)["code"][0], verifier

        def exchange(
            code_value: str, verifier: str, signer: ec.EllipticCurvePrivateKey
        ) -> httpx.Response:
            return httpx.post(
                provider.token_url,
                auth=("transit", secret),
                data={
                    "grant_type": "authorization_code",
                    "code": code_value,
                    "redirect_uri": TRANSIT_CB,
                    "code_verifier": verifier,
                },
                headers={"DPoP": http_proof(signer, "POST", provider.token_url)},
            )

        wrong = exchange(*code(), other)
        assert wrong.status_code == 400
        assert wrong.json()["error"] == "invalid_grant"
        token = exchange(*code(), key)
        assert token.status_code == 200, token.text
        access = token.json()["access_token"]
        assert token.json()["token_type"] == "DPoP"
        userinfo_url = provider.url + "/userinfo"
        ok = httpx.get(
            userinfo_url,
            headers={
                "Authorization": f"DPoP {access}",
                "DPoP": http_proof(key, "GET", userinfo_url, ath=access_token_hash(access)),
            },
        )
        assert ok.status_code == 200, ok.text
        as_bearer = httpx.get(userinfo_url, headers={"Authorization": f"Bearer {access}"})
        assert as_bearer.status_code == 401
        stolen = httpx.get(
            userinfo_url,
            headers={
                "Authorization": f"DPoP {access}",
                "DPoP": http_proof(other, "GET", userinfo_url, ath=access_token_hash(access)),
            },
        )
        assert stolen.status_code == 401
    finally:
        citizen.close()
