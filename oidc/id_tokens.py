"""ID tokens (OpenID Connect Core 1.0 §2, §3.1.3.6), signed with pyjwt by the keyring's active
key for the client's registered ``id_token_signed_response_alg`` (RS256 by default)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import jwt

from keys.keyring import Keyring
from keys.model import Purpose

PURPOSE_FOR_ALG = {
    "RS256": Purpose.OIDC_RS256,
    "PS256": Purpose.OIDC_PS256,
    "ES256": Purpose.OIDC_ES256,
}
ID_TOKEN_TTL_SECONDS = 300


def token_hash(value: str) -> str:
    """``at_hash``/``c_hash`` (§3.1.3.6): the left half of SHA-256 of the ASCII value, base64url
    (SHA-256 fits every algorithm offered here: RS256, PS256, ES256)."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")


def sign(keyring: Keyring, alg: str, claims: Mapping[str, Any], typ: str | None = None) -> str:
    kid, key = keyring.signing_key(PURPOSE_FOR_ALG[alg])
    headers: dict[str, Any] = {"kid": kid}
    if typ:
        headers["typ"] = typ
    return jwt.encode(dict(claims), key, algorithm=alg, headers=headers)


def issue_id_token(
    keyring: Keyring,
    *,
    alg: str,
    issuer: str,
    client_id: str,
    sub: str,
    now: datetime,
    auth_time: datetime,
    acr: str,
    amr: Iterable[str],
    sid: str,
    nonce: str | None = None,
    access_token: str | None = None,
    claims: Mapping[str, Any] | None = None,
) -> str:
    iat = int(now.timestamp())
    body: dict[str, Any] = {
        "iss": issuer,
        "sub": sub,
        "aud": client_id,
        "exp": iat + ID_TOKEN_TTL_SECONDS,
        "iat": iat,
        "auth_time": int(auth_time.timestamp()),
        "acr": acr,
        "amr": list(amr),
        "sid": sid,
        "jti": secrets.token_urlsafe(16),
    }
    if nonce is not None:
        body["nonce"] = nonce
    if access_token is not None:
        body["at_hash"] = token_hash(access_token)
    if claims:
        body.update({k: v for k, v in claims.items() if k not in body})
    return sign(keyring, alg, body)
