"""Clients registered under the FAPI 2.0 Security Profile (``security_profile = "fapi2"``), over
real HTTP: PAR with private_key_jwt, PKCE S256, DPoP-bound codes and tokens, ``iss`` in the
response, refresh tokens bound to the DPoP key and not rotated, no RS256 anywhere; and the
registrations the profile refuses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from authlib.common.security import generate_token
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from oidc.clients import AuthMethod, GrantType, SecurityProfile, client_from_metadata
from oidc.dpop import access_token_hash, jwk_thumbprint
from tests.oidc.browser import Citizen
from tests.oidc.conftest import (
    ASSERTION_TYPE,
    ClientKey,
    Provider,
    decode_unverified,
    es256_key,
    rsa_key,
)
from tests.oidc.test_dpop import http_proof

CB = "https://bank.example/cb"
REGISTRATION_TOKEN = "initial-access-token-7a9d3f0c2e14b8"


@dataclass
class Fapi:
    """A FAPI 2.0 client: its assertion key, its DPoP key, and the provider it talks to."""

    provider: Provider
    client_id: str
    key: ClientKey
    dpop: ec.EllipticCurvePrivateKey

    @property
    def jkt(self) -> str:
        return jwk_thumbprint(ECAlgorithm.to_jwk(self.dpop.public_key(), as_dict=True))

    def auth(self, **claims: Any) -> dict[str, str]:
        """private_key_jwt parameters; the assertion's ``aud`` is the issuer unless overridden."""
        aud = claims.pop("aud", self.provider.url)
        return {
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.key.assertion(self.client_id, aud, **claims),
        }

    def proof(self, url: str, method: str = "POST", **claims: Any) -> str:
        return http_proof(self.dpop, method, url, **claims)

    def par(
        self, verifier: str, *, dpop: bool = True, auth: dict[str, str] | None = None, **extra: str
    ) -> httpx.Response:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": CB,
            "scope": "openid offline_access",
            "state": "fapi-state",
            "nonce": "fapi-nonce",
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
            **extra,
        }
        params = {k: v for k, v in params.items() if v != ""}
        url = self.provider.url + "/par"
        headers = {"DPoP": self.proof(url)} if dpop else {}
        return httpx.post(url, data={**params, **(auth or self.auth())}, headers=headers)

    def code(self, citizen: Citizen, verifier: str) -> dict[str, list[str]]:
        """Push, authorize through the browser; the authorization response's parameters."""
        pushed = self.par(verifier)
        assert pushed.status_code == 201, pushed.text
        assert pushed.json()["expires_in"] <= 60
        query = urlencode(
            {"client_id": self.client_id, "request_uri": pushed.json()["request_uri"]}
        )
        location = citizen.go(f"{self.provider.url}/authorize?{query}", CB).headers["location"]
        return parse_qs(urlsplit(location).query)

    def token(self, data: dict[str, str], *, proof: str | None = None) -> httpx.Response:
        url = self.provider.token_url
        headers = {"DPoP": proof if proof is not None else self.proof(url)}
        if proof == "":
            headers = {}
        return httpx.post(url, data={**data, **self.auth()}, headers=headers)

    def exchange(self, code: str, verifier: str, **kwargs: Any) -> httpx.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CB,
            "code_verifier": verifier,
        }
        return self.token(data, **kwargs)


def register_fapi(
    provider: Provider, client_id: str = "bank", key: ClientKey | None = None, **metadata: Any
) -> Fapi:
    """Register through the validated path (as the clients file and the CLI do)."""
    key = key or es256_key()
    client = client_from_metadata(
        {
            "client_id": client_id,
            "client_name": "Banque de la Baie",
            "security_profile": "fapi2",
            "grant_types": ["authorization_code", "refresh_token"],
            "redirect_uris": [CB],
            "scope": "openid offline_access",
            "jwks": {"keys": [key.public_jwk()]},
            **metadata,
        }
    )
    provider.registry.add(client)
    return Fapi(provider, client_id, key, ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def citizen(provider: Provider) -> Iterator[Citizen]:
    person = Citizen(provider.url)
    yield person
    person.close()


@pytest.fixture
def bank(provider: Provider) -> Fapi:
    return register_fapi(provider)


def test_the_whole_flow(provider: Provider, citizen: Citizen, bank: Fapi) -> None:
    verifier = generate_token(48)
    response = bank.code(citizen, verifier)
    assert response["iss"] == [provider.url]  # RFC 9207
    assert response["state"] == ["fapi-state"]
    code = response["code"][0]

    other = ec.generate_private_key(ec.SECP256R1())
    wrong_key = bank.exchange(code, verifier, proof=http_proof(other, "POST", provider.token_url))
    assert wrong_key.status_code == 400  # the code is bound to the key of the proof sent to /par
    assert wrong_key.json()["error"] == "invalid_grant"

    response = bank.code(citizen, verifier)
    token = bank.exchange(response["code"][0], verifier)
    assert token.status_code == 200, token.text
    body = token.json()
    assert body["token_type"] == "DPoP"
    at_header, at_claims = decode_unverified(body["access_token"])
    assert at_header["alg"] == "ES256"
    assert at_claims["cnf"] == {"jkt": bank.jkt}
    id_header, id_claims = decode_unverified(body["id_token"])
    assert id_header["alg"] == "ES256"
    assert id_claims["nonce"] == "fapi-nonce"

    userinfo = provider.url + "/userinfo"
    access = body["access_token"]
    info = httpx.get(
        userinfo,
        headers={
            "Authorization": f"DPoP {access}",
            "DPoP": bank.proof(userinfo, "GET", ath=access_token_hash(access)),
        },
    )
    assert info.status_code == 200, info.text
    assert info.json()["sub"] == id_claims["sub"]

    refresh = body["refresh_token"]
    data = {"grant_type": "refresh_token", "refresh_token": refresh}
    for _ in range(2):  # not rotated (FAPI 2.0 §5.3.2.1 item 9): the same token works again
        refreshed = bank.token(data)
        assert refreshed.status_code == 200, refreshed.text
        assert "refresh_token" not in refreshed.json()
        assert decode_unverified(refreshed.json()["access_token"])[1]["cnf"] == {"jkt": bank.jkt}
    without_proof = bank.token(data, proof="")
    assert without_proof.status_code == 400
    assert without_proof.json()["error"] == "invalid_dpop_proof"
    stolen = bank.token(data, proof=http_proof(other, "POST", provider.token_url))
    assert stolen.status_code == 400  # bound to the DPoP key of the code exchange
    assert stolen.json()["error"] == "invalid_grant"


def test_authorization_rules(provider: Provider, citizen: Citizen, bank: Fapi) -> None:
    verifier = generate_token(48)
    direct = (
        provider.url
        + "/authorize?"
        + urlencode(
            {
                "response_type": "code",
                "client_id": "bank",
                "redirect_uri": CB,
                "scope": "openid",
                "code_challenge": create_s256_code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
    )
    query = parse_qs(urlsplit(citizen.client.get(direct).headers["location"]).query)
    assert query["error"] == ["invalid_request"]  # PAR is required
    assert query["iss"] == [provider.url]

    def refused(response: httpx.Response, error: str) -> None:
        assert response.status_code == 400, response.text
        assert response.json()["error"] == error

    refused(bank.par(verifier, redirect_uri=""), "invalid_request")  # redirect_uri required
    refused(bank.par(verifier, request="eyJhbGciOiJub25lIn0.e30."), "request_not_supported")
    refused(bank.par(verifier, response_type="code id_token"), "unsupported_response_type")
    refused(bank.par(verifier, code_challenge_method="plain"), "invalid_request")
    refused(bank.par(verifier, code_challenge="", code_challenge_method=""), "invalid_request")
    other = ec.generate_private_key(ec.SECP256R1())
    other_jkt = jwk_thumbprint(ECAlgorithm.to_jwk(other.public_key(), as_dict=True))
    refused(bank.par(verifier, dpop_jkt=other_jkt), "invalid_request")  # RFC 9449 §10.1
    assert bank.par(verifier, dpop_jkt=bank.jkt).status_code == 201
    assert bank.par(verifier, dpop=False).status_code == 201  # a proof at /par is optional


def test_client_assertions(provider: Provider, bank: Fapi) -> None:
    verifier = generate_token(48)
    token_endpoint = bank.auth(aud=provider.token_url)
    listed = bank.auth(aud=[provider.url])
    for auth in (token_endpoint, listed):  # FAPI 2.0 §5.3.2.1 item 8: the issuer, as a string
        response = bank.par(verifier, auth=auth)
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"
    assert bank.par(verifier).status_code == 201

    signer = register_fapi(provider, "rsa-bank", key=rsa_key())
    rs256 = signer.par(verifier, auth=signer.auth(alg="RS256"))
    assert rs256.status_code == 401  # §5.4.1: PS256 or ES256 only
    assert signer.par(verifier, auth=signer.auth(alg="PS256")).status_code == 201

    # An ordinary private_key_jwt client keeps accepting the token endpoint as aud.
    ordinary = es256_key()
    provider.register_key("partner", ordinary)
    response = httpx.post(
        provider.token_url,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": ordinary.assertion("partner", provider.token_url),
        },
    )
    assert response.status_code == 200, response.text


def test_token_endpoint_rules(provider: Provider, citizen: Citizen, bank: Fapi, clock: Any) -> None:
    verifier = generate_token(48)
    code = bank.code(citizen, verifier)["code"][0]
    without_proof = bank.exchange(code, verifier, proof="")
    assert without_proof.status_code == 400  # RFC 9449 §5.2, FAPI 2.0 §5.3.2.1 item 4
    assert without_proof.json()["error"] == "invalid_dpop_proof"

    code = bank.code(citizen, verifier)["code"][0]
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(rsa_private.public_key(), as_dict=True)
    rs256_proof = jwt.encode(
        {
            "jti": generate_token(16),
            "htm": "POST",
            "htu": provider.token_url,
            "iat": int(time.time()),
        },
        rsa_private,
        algorithm="RS256",
        headers={"typ": "dpop+jwt", "jwk": jwk},
    )
    rs256 = bank.exchange(code, verifier, proof=rs256_proof)
    assert rs256.status_code == 400  # §5.4.1
    assert rs256.json()["error"] == "invalid_dpop_proof"

    code = bank.code(citizen, verifier)["code"][0]
    clock.advance(61)  # codes live 60 s at most (§5.3.2.2 item 12)
    late = bank.exchange(
        code, verifier, proof=bank.proof(provider.token_url, iat=int(time.time()) + 61)
    )
    assert late.status_code == 400
    assert late.json()["error"] == "invalid_grant"


def test_a_record_that_bypassed_registration_is_still_held_to_the_profile(
    provider: Provider, citizen: Citizen
) -> None:
    """A client stored without validation (an old row, a manual edit) with the profile but
    none of its settings: the endpoints apply the profile all the same."""
    key = es256_key()
    provider.register_key(
        "loose",
        key,
        scope="openid",
        grants=(GrantType.AUTHORIZATION_CODE,),
        redirect_uris=(CB,),
        security_profile=SecurityProfile.FAPI2,
        id_token_signed_response_alg="RS256",
    )
    loose = Fapi(provider, "loose", key, ec.generate_private_key(ec.SECP256R1()))
    verifier = generate_token(48)
    direct = (
        provider.url
        + "/authorize?"
        + urlencode(
            {
                "response_type": "code",
                "client_id": "loose",
                "scope": "openid",
                "code_challenge": create_s256_code_challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
    )
    query = parse_qs(urlsplit(citizen.client.get(direct).headers["location"]).query)
    assert query["error"] == ["invalid_request"]
    code = loose.code(citizen, verifier)["code"][0]
    assert loose.exchange(code, verifier, proof="").json()["error"] == "invalid_dpop_proof"
    code = loose.code(citizen, verifier)["code"][0]
    signed_rs256 = loose.exchange(code, verifier)
    assert signed_rs256.status_code == 500
    assert signed_rs256.json()["error"] == "server_error"


# -- registration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ({"token_endpoint_auth_method": "client_secret_basic"}, "must be private_key_jwt"),
        ({"token_endpoint_auth_method": "none"}, "must be private_key_jwt"),
        ({"dpop_bound_access_tokens": False}, "dpop_bound_access_tokens must be true"),
        (
            {"require_pushed_authorization_requests": False},
            "require_pushed_authorization_requests must be true",
        ),
        ({"id_token_signed_response_alg": "RS256"}, "id_token_signed_response_alg"),
        ({"userinfo_signed_response_alg": "RS256"}, "userinfo_signed_response_alg"),
        ({"token_endpoint_auth_signing_alg": "RS256"}, "token_endpoint_auth_signing_alg"),
        ({"redirect_uris": ["http://127.0.0.1:9/cb"]}, "redirect_uris must be https"),
        ({"response_types": ["code id_token"]}, "only 'code'"),
        ({"security_profile": "fapi1"}, "security_profile: one of fapi2"),
    ],
    ids=[
        "secret",
        "public",
        "no-dpop",
        "no-par",
        "rs256-id-token",
        "rs256-userinfo",
        "rs256-assertions",
        "http-redirect",
        "hybrid",
        "unknown-profile",
    ],
)
def test_inconsistent_registrations_are_refused(
    provider_factory: Any, metadata: dict[str, Any], reason: str
) -> None:
    op = provider_factory(registration_token=REGISTRATION_TOKEN)
    body = {
        "security_profile": "fapi2",
        "redirect_uris": [CB],
        "scope": "openid",
        "jwks": {"keys": [es256_key().public_jwk()]},
        **metadata,
    }
    response = httpx.post(
        op.url + "/register", json=body, headers={"Authorization": f"Bearer {REGISTRATION_TOKEN}"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"] in ("invalid_client_metadata", "invalid_redirect_uri")
    assert reason in response.json()["error_description"]


def test_registration_fills_in_the_profile(provider_factory: Any) -> None:
    op = provider_factory(registration_token=REGISTRATION_TOKEN)
    rs256_key = {**rsa_key().public_jwk(), "alg": "RS256"}
    headers = {"Authorization": f"Bearer {REGISTRATION_TOKEN}"}
    body: dict[str, Any] = {
        "security_profile": "fapi2",
        "redirect_uris": [CB],
        "scope": "openid offline_access",
        "grant_types": ["authorization_code", "refresh_token"],
        "jwks": {"keys": [rs256_key]},
    }
    refused = httpx.post(op.url + "/register", json=body, headers=headers)
    assert refused.status_code == 400
    assert "jwks keys must be for PS256, ES256" in refused.json()["error_description"]
    body["jwks"] = {"keys": [es256_key().public_jwk()]}
    response = httpx.post(op.url + "/register", json=body, headers=headers)
    assert response.status_code == 201, response.text
    registered = response.json()
    assert "client_secret" not in registered
    assert registered["security_profile"] == "fapi2"
    assert registered["token_endpoint_auth_method"] == AuthMethod.PRIVATE_KEY_JWT.value
    assert registered["require_pushed_authorization_requests"] is True
    assert registered["dpop_bound_access_tokens"] is True
    assert registered["id_token_signed_response_alg"] == "ES256"
    stored = op.registry.get(registered["client_id"])
    assert stored is not None
    assert stored.fapi2
