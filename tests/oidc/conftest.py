"""A running OpenID Provider over real HTTP, its clock, and clients registered in its store."""

from __future__ import annotations

import dataclasses
import json
import secrets
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
import pytest
from authlib.deprecate import AuthlibDeprecationWarning
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from identity.app import create_app
from identity.settings import Settings
from keys.keyring import utc_now
from oidc.clients import AuthMethod, Client, GrantType, parse_scope
from oidc.secrets import generate_client_secret, hash_client_secret
from oidc.tables import SqlClientRegistry
from tests.conftest import serve

with warnings.catch_warnings():
    # Authlib 1.9 announces at import that its httpx integration moves to "httpx2" (not a
    # dependency here); nothing else is silenced.
    warnings.filterwarnings(
        "ignore", "The httpx module is deprecated", category=AuthlibDeprecationWarning
    )
    from authlib.integrations.httpx_client import OAuth2Client

__all__ = ["OAuth2Client"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class Clock:
    """The application's clock: real time plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return utc_now() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


@dataclass
class ClientKey:
    """A client's key pair: the private key signs assertions, the JWK is registered."""

    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    kid: str

    @property
    def alg(self) -> str:
        return "ES256" if isinstance(self.private, ec.EllipticCurvePrivateKey) else "RS256"

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk: dict[str, Any] = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig"}

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def assertion(
        self, client_id: str, aud: str | list[str], *, alg: str | None = None, **claims: Any
    ) -> str:
        """A client assertion (RFC 7523 §3) signed with pyjwt; ``claims`` override defaults
        (a value of None removes the claim)."""
        now = int(utc_now().timestamp())
        body: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": aud,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "exp": now + 120,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, self.private, algorithm=alg or self.alg, headers={"kid": self.kid})


def es256_key() -> ClientKey:
    return ClientKey(ec.generate_private_key(ec.SECP256R1()), kid=secrets.token_hex(4))


def rsa_key() -> ClientKey:
    return ClientKey(
        rsa.generate_private_key(public_exponent=65537, key_size=2048), kid=secrets.token_hex(4)
    )


@dataclass
class Provider:
    """The served application and what tests need to drive it."""

    url: str
    app: FastAPI
    clock: Clock

    @property
    def token_url(self) -> str:
        return self.url + "/token"

    @property
    def registry(self) -> SqlClientRegistry:
        return SqlClientRegistry(self.app.state.runtime.identity_engine, utc_now)

    def register(
        self,
        client_id: str,
        method: AuthMethod = AuthMethod.CLIENT_SECRET_BASIC,
        *,
        scope: str = "acts:write deposits:write",
        grants: tuple[GrantType, ...] = (GrantType.CLIENT_CREDENTIALS,),
        **fields: Any,
    ) -> str | None:
        """Register a client straight in the store; returns its generated secret, if any."""
        secret = generate_client_secret() if method.uses_secret else None
        response_types = (
            frozenset({"code"}) if GrantType.AUTHORIZATION_CODE in grants else frozenset()
        )
        client = Client(
            client_id=client_id,
            token_endpoint_auth_method=method,
            grant_types=frozenset(grants),
            response_types=response_types,
            scope=parse_scope(scope),
            secret_hash=hash_client_secret(secret) if secret else None,
            **fields,
        )
        self.registry.add(client)
        return secret

    def register_key(self, client_id: str, key: ClientKey, **fields: Any) -> None:
        self.register(
            client_id, AuthMethod.PRIVATE_KEY_JWT, jwks={"keys": [key.public_jwk()]}, **fields
        )

    def update(self, client_id: str, **changes: Any) -> None:
        client = self.registry.get(client_id)
        assert client is not None
        self.registry.update(dataclasses.replace(client, **changes))
        self.app.state.oidc.directory.forget(client_id)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider_factory(
    settings_factory: Callable[..., Settings], free_port: int, clock: Clock
) -> Iterator[Callable[..., Provider]]:
    """Start the provider (once per test) with extra settings; stopped at the end of the test."""
    stack: list[Any] = []

    def start(**overrides: Any) -> Provider:
        settings = settings_factory(issuer=f"http://127.0.0.1:{free_port}", **overrides)
        app = create_app(settings, clock=clock)
        server = serve(app, port=free_port)
        url = server.__enter__()
        stack.append(server)
        return Provider(url, app, clock)

    yield start
    for server in reversed(stack):
        server.__exit__(None, None, None)


@pytest.fixture
def provider(provider_factory: Callable[..., Provider]) -> Provider:
    return provider_factory()


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return header, claims


def pretty(response: Any) -> str:
    try:
        return json.dumps(response.json())
    except ValueError:
        return str(response.text)
