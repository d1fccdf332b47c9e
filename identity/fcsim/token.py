"""The token endpoint (OpenID Connect Core 1.0 §3.1.3; RFC 6749 §4.1.3, §5) and client
authentication as FranceConnect v2 accepts it: ``client_secret_post`` (RFC 6749 §2.3.1) or
``private_key_jwt`` (OpenID Connect Core 1.0 §9, RFC 7523 §2.2 and §3).

A client assertion must be signed by a key of the client's registered JWKS, with
``iss = sub = client_id``, ``aud`` the token endpoint or the issuer, ``exp`` in the future (by the
simulator's clock) and a ``jti`` never seen before. Every authentication failure is the same
``invalid_client`` (401), so the answer is no oracle.
"""

import hmac
from typing import Any

import jwt
from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

from identity.fcsim.config import API_PREFIX, ASSERTION_ALGS, SimulatorClient
from identity.fcsim.errors import InvalidClient, InvalidRequest, UnsupportedGrantType
from identity.fcsim.provider import NO_STORE
from identity.fcsim.simulator import Simulator

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_KTY_OF_ALG = {"ES": "EC", "RS": "RSA", "PS": "RSA"}
#: compared against when the client is unknown or has no secret (constant work either way)
_DUMMY_SECRET = b"fcsim-dummy-secret-for-constant-time-comparison"


def _authenticate(sim: Simulator, form: dict[str, str]) -> SimulatorClient:
    if "client_assertion" in form or "client_assertion_type" in form:
        return _authenticate_assertion(sim, form)
    client = sim.config.client(form.get("client_id", ""))
    secret = client.client_secret if client is not None else None
    given = form.get("client_secret", "").encode("utf-8")
    matches = hmac.compare_digest(given, secret.encode("utf-8") if secret else _DUMMY_SECRET)
    if client is None or secret is None or not matches:
        raise InvalidClient("client authentication failed")
    return client


def _authenticate_assertion(sim: Simulator, form: dict[str, str]) -> SimulatorClient:
    """RFC 7523 §3: the assertion's checks, with the simulator's clock for ``exp``/``nbf``."""
    failed = InvalidClient("client authentication failed")
    assertion = form.get("client_assertion", "")
    if form.get("client_assertion_type") != JWT_BEARER or not assertion:
        raise failed
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise failed from None
    client_id = unverified.get("iss")
    client = sim.config.client(client_id) if isinstance(client_id, str) else None
    if client is None or client.jwks is None:
        raise failed
    if form.get("client_id", client.client_id) != client.client_id:
        raise failed
    alg = header.get("alg")
    if alg not in ASSERTION_ALGS:
        raise failed
    claims = _verify_with_jwks(assertion, str(alg), header.get("kid"), client.jwks, sim)
    now = sim.store.now()
    if claims["iss"] != client.client_id or claims["sub"] != client.client_id:
        raise failed
    if not isinstance(claims["exp"], int | float) or claims["exp"] <= now:
        raise failed
    if isinstance(claims.get("nbf"), int | float) and claims["nbf"] > now + 5:
        raise failed
    jti = claims["jti"]
    if not isinstance(jti, str) or not sim.store.first_use_of_jti(
        client.client_id, jti, claims["exp"]
    ):
        raise failed
    return client


def _verify_with_jwks(
    assertion: str, alg: str, kid: Any, jwks: dict[str, Any], sim: Simulator
) -> dict[str, Any]:
    """Try the client's keys that fit ``kid`` and ``alg``; the first that verifies wins."""
    kty = _KTY_OF_ALG[alg[:2]]
    for entry in jwks.get("keys", []):
        if entry.get("kty") != kty or (kid is not None and entry.get("kid") != kid):
            continue
        if entry.get("alg", alg) != alg or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry, algorithm=alg)
            claims: dict[str, Any] = jwt.decode(
                assertion,
                key.key,
                algorithms=[alg],
                audience=[sim.config.endpoint("token"), sim.config.issuer],
                options={
                    "require": ["iss", "sub", "aud", "exp", "jti"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            continue
        return claims
    raise InvalidClient("client authentication failed")


def token_router(sim: Simulator) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)

    @router.post("/token")
    async def token(request: Request) -> JSONResponse:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise InvalidRequest("the body must be application/x-www-form-urlencoded")
        raw = await request.form()
        repeated = [name for name in raw if len(raw.getlist(name)) > 1]
        if repeated:
            raise InvalidRequest("parameters must not be repeated (RFC 6749 §3.2)")
        form = {name: value for name, value in raw.items() if isinstance(value, str)}
        if request.headers.get("authorization"):
            raise InvalidClient("use client_secret_post or private_key_jwt, not a header")
        client = _authenticate(sim, form)
        grant_type = form.get("grant_type")
        if not grant_type:
            raise InvalidRequest("grant_type is required")
        if grant_type != "authorization_code":
            raise UnsupportedGrantType("only authorization_code is supported")
        code = form.get("code")
        if not code:
            raise InvalidRequest("code is required")
        grant = sim.store.redeem_code(code, client.client_id, form.get("redirect_uri"))
        access_token, _ = sim.store.issue_access_token(code, grant)
        body = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 60,
            "id_token": sim.id_token(grant, access_token),
            "scope": " ".join(grant.request.scopes),
        }
        return JSONResponse(body, headers=NO_STORE)

    return router
