"""A hostile FranceConnect for the attack tests: a real OpenID provider over HTTP whose answers
a test bends one way at a time (wrong nonce, alg none, HS256 with the public key, ...).

It is not a stand-in for FranceConnect (the simulator in identity/fcsim is); it is the attacker.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_EC_KEY = ec.generate_private_key(ec.SECP256R1())


def _jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algorithm = ECAlgorithm if alg == "ES256" else RSAAlgorithm
    jwk: dict[str, Any] = algorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return jwk


@dataclass
class Scenario:
    """What the provider does wrong this time (everything right by default)."""

    state: str | None = None  # replace the state in the authorization response
    iss_param: str | None = None  # the RFC 9207 iss in the authorization response
    id_claims: dict[str, Any] = field(default_factory=dict)  # overrides of id_token claims
    userinfo_claims: dict[str, Any] = field(default_factory=dict)
    #: "none", "hs256-public", "other-key", "unknown-kid", "rs256",
    #: "rotated" (signed by a new key that the JWKS now lists)
    id_token: str | None = None
    userinfo: str | None = None  # "json" (not signed), "500"
    drop_acr: bool = False


class HostileProvider:
    def __init__(self, issuer: str, client_id: str) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.scenario = Scenario()
        self.pending: dict[str, dict[str, str]] = {}
        self.app = self._build()

    def _sign(self, claims: dict[str, Any]) -> str:
        mode = self.scenario.id_token
        if mode == "none":
            return jwt.encode(claims, None, algorithm="none")
        if mode == "hs256-public":
            # The classic confusion: the RSA public key used as an HMAC secret.
            public_pem = RSA_KEY.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return _hs256(claims, public_pem, kid="rsa-1")
        if mode == "other-key":
            return jwt.encode(claims, OTHER_EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
        if mode == "unknown-kid":
            return jwt.encode(claims, EC_KEY, algorithm="ES256", headers={"kid": "nobody"})
        if mode == "rotated":
            return jwt.encode(claims, OTHER_EC_KEY, algorithm="ES256", headers={"kid": "ec-2"})
        if mode == "rs256":
            return jwt.encode(claims, RSA_KEY, algorithm="RS256", headers={"kid": "rsa-1"})
        return jwt.encode(claims, EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})

    def _build(self) -> FastAPI:
        app = FastAPI()
        base = self.issuer

        @app.get("/api/v2/.well-known/openid-configuration")
        def discovery() -> dict[str, Any]:
            return {
                "issuer": base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "userinfo_endpoint": f"{base}/userinfo",
                "jwks_uri": f"{base}/jwks",
                "end_session_endpoint": f"{base}/session/end",
            }

        @app.get("/api/v2/jwks")
        def jwks() -> dict[str, Any]:
            keys = [_jwk(EC_KEY, "ec-1", "ES256"), _jwk(RSA_KEY, "rsa-1", "RS256")]
            if self.scenario.id_token == "rotated":
                keys.append(_jwk(OTHER_EC_KEY, "ec-2", "ES256"))
            return {"keys": keys}

        @app.get("/api/v2/authorize")
        def authorize(request: Request) -> Response:
            q = request.query_params
            code = secrets.token_hex(16)
            self.pending[code] = {"nonce": q["nonce"]}
            params = {"code": code, "state": self.scenario.state or q["state"]}
            params["iss"] = self.scenario.iss_param or base
            return RedirectResponse(f"{q['redirect_uri']}?{urlencode(params)}", status_code=302)

        @app.post("/api/v2/token")
        async def token(request: Request) -> Response:
            form = await request.form()
            pending = self.pending.pop(str(form["code"]), None)
            if pending is None:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            now = int(time.time())
            claims: dict[str, Any] = {
                "iss": base,
                "aud": self.client_id,
                "sub": "a" * 64 + "v1",
                "iat": now,
                "exp": now + 60,
                "nonce": pending["nonce"],
                "acr": "eidas1",
            }
            if self.scenario.drop_acr:
                del claims["acr"]
            claims.update(self.scenario.id_claims)
            return JSONResponse(
                {
                    "access_token": "at-" + secrets.token_hex(8),
                    "token_type": "Bearer",
                    "expires_in": 60,
                    "id_token": self._sign(claims),
                }
            )

        @app.get("/api/v2/userinfo")
        def userinfo() -> Response:
            claims: dict[str, Any] = {
                "iss": base,
                "aud": self.client_id,
                "sub": "a" * 64 + "v1",
                "given_name": "Hostile",
                "family_name": "Provider",
            }
            claims.update(self.scenario.userinfo_claims)
            if self.scenario.userinfo == "json":
                return JSONResponse(claims)
            if self.scenario.userinfo == "500":
                return JSONResponse({"error": "boom"}, status_code=500)
            token = jwt.encode(claims, EC_KEY, algorithm="ES256", headers={"kid": "ec-1"})
            return Response(token, media_type="application/jwt")

        return app


def _hs256(claims: dict[str, Any], secret: bytes, kid: str) -> str:
    """pyjwt refuses to HMAC with a PEM key (as it should); build the token by hand."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"
