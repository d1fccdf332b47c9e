"""DPoP proof checks (RFC 9449 §4.3), as the token endpoint and userinfo will run them."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from oidc.dpop import access_token_hash, jwk_thumbprint, verify_proof
from oidc.errors import InvalidDPoPProof

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
    ],
    ids=["method", "url", "old", "typ", "private-jwk"],
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
