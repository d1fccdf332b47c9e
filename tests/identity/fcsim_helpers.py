"""Helpers for the FranceConnect simulator tests: a movable clock, registered service providers
(both client authentication methods, both signing algorithms) and a browser that walks the code
flow over real HTTP, following redirects by hand."""

from __future__ import annotations

import json
import re
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from identity.fcsim import SimulatorClient

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SUB = re.compile(r"^[0-9a-f]{64}v1$")


class FakeClock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServiceProvider:
    """A registered client and what it needs to authenticate at the token endpoint."""

    client: SimulatorClient
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None
    assertion_alg: str = ""

    @property
    def client_id(self) -> str:
        return self.client.client_id

    @property
    def redirect_uri(self) -> str:
        return self.client.redirect_uris[0]

    @property
    def method(self) -> str:
        return "private_key_jwt" if self.private_key is not None else "client_secret_post"

    def assertion(self, audience: str, **overrides: Any) -> str:
        assert self.private_key is not None
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "exp": now + 60,
            "iat": now,
            "jti": secrets.token_hex(16),
        }
        claims.update(overrides)
        return jwt.encode(
            claims, self.private_key, algorithm=self.assertion_alg, headers={"kid": "sp-key"}
        )

    def credentials(self, token_endpoint: str) -> dict[str, str]:
        if self.private_key is None:
            assert self.client.client_secret is not None
            return {"client_id": self.client_id, "client_secret": self.client.client_secret}
        return {
            "client_id": self.client_id,
            "client_assertion_type": JWT_BEARER,
            "client_assertion": self.assertion(token_endpoint),
        }


def _public_jwks(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, alg: str) -> dict[str, Any]:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    else:
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": "sp-key", "alg": alg, "use": "sig"}]}


def make_providers() -> tuple[ServiceProvider, ...]:
    """Four service providers: each authentication method with each signing algorithm (the
    two ``private_key_jwt`` ones sign ID token and UserInfo with different algorithms)."""

    def uris(name: str) -> dict[str, Any]:
        return {
            "redirect_uris": (f"https://{name}.example/callback",),
            "post_logout_redirect_uris": (f"https://{name}.example/logged-out?from=fc",),
        }

    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        ServiceProvider(
            SimulatorClient("sp-secret-es256", client_secret=secrets.token_hex(32), **uris("a"))
        ),
        ServiceProvider(
            SimulatorClient(
                "sp-secret-rs256",
                client_secret=secrets.token_hex(32),
                id_token_signed_response_alg="RS256",
                userinfo_signed_response_alg="RS256",
                **uris("b"),
            )
        ),
        ServiceProvider(
            SimulatorClient(
                "sp-jwt-es256",
                jwks=_public_jwks(ec_key, "ES256"),
                userinfo_signed_response_alg="RS256",
                **uris("c"),
            ),
            ec_key,
            "ES256",
        ),
        ServiceProvider(
            SimulatorClient(
                "sp-jwt-rs256",
                jwks=_public_jwks(rsa_key, "RS256"),
                id_token_signed_response_alg="RS256",
                **uris("d"),
            ),
            rsa_key,
            "RS256",
        ),
    )


def query(location: str) -> dict[str, str]:
    """The query parameters of a redirect target, one value each."""
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query, keep_blank_values=True).items()}


class Browser:
    """One browser (its own cookie jar) talking to the simulator at ``issuer``."""

    def __init__(self, issuer: str, timeout: float = 10.0) -> None:
        self.issuer = issuer
        self.http = httpx.Client(follow_redirects=False, timeout=timeout)
        self.state = secrets.token_hex(32)
        self.nonce = secrets.token_hex(32)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def endpoint(self, name: str) -> str:
        return f"{self.issuer}/{name}"

    def authorize(
        self, sp: ServiceProvider, method: str = "GET", /, **params: str | None
    ) -> httpx.Response:
        values: dict[str, str | None] = {
            "response_type": "code",
            "client_id": sp.client_id,
            "redirect_uri": sp.redirect_uri,
            "scope": "openid identite_pivot email preferred_username",
            "acr_values": "eidas1",
            "state": self.state,
            "nonce": self.nonce,
        }
        values.update(params)
        sent = {k: v for k, v in values.items() if v is not None}
        if method == "POST":
            return self.http.post(self.endpoint("authorize"), data=sent)
        return self.http.get(self.endpoint("authorize"), params=sent)

    def submit_login(
        self, interaction_url: str, login: str, password: str = "123", action: str = "login"
    ) -> httpx.Response:
        page = self.http.get(interaction_url)
        assert page.status_code == 200, page.text
        match = re.search(r'<form method="post" action="([^"]+)"', page.text)
        assert match is not None
        data = {"login": login, "password": password, "action": action}
        return self.http.post(match.group(1), data=data)

    def sign_in(self, sp: ServiceProvider, login: str, **params: str | None) -> dict[str, str]:
        """Authorize, log in as ``login`` if asked to, and return the callback's parameters."""
        response = self.authorize(sp, **params)
        assert response.status_code == 303, response.text
        location = response.headers["location"]
        if location.startswith(self.endpoint("interaction/")):
            response = self.submit_login(location, login)
            assert response.status_code == 303, response.text
            location = response.headers["location"]
        assert location.startswith(sp.redirect_uri + "?"), location
        return query(location)

    def token(self, sp: ServiceProvider, code: str, /, **overrides: str) -> httpx.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": sp.redirect_uri,
            **sp.credentials(self.endpoint("token")),
        }
        data.update(overrides)
        return self.http.post(self.endpoint("token"), data=data)

    def tokens(self, sp: ServiceProvider, login: str, **params: str | None) -> dict[str, Any]:
        callback = self.sign_in(sp, login, **params)
        response = self.token(sp, callback["code"])
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def userinfo(self, access_token: str) -> httpx.Response:
        return self.http.get(
            self.endpoint("userinfo"), headers={"Authorization": f"Bearer {access_token}"}
        )

    def verify(self, token: str, alg: str, audience: str) -> dict[str, Any]:
        """Check a JWT's signature against the published JWKS, by ``kid``, with ``alg`` only."""
        keys = jwt.PyJWKSet.from_dict(self.http.get(self.endpoint("jwks")).json())
        kid = jwt.get_unverified_header(token)["kid"]
        claims: dict[str, Any] = jwt.decode(
            token, keys[kid].key, algorithms=[alg], audience=audience, issuer=self.issuer
        )
        return claims
