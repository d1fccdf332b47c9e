"""DPoP proofs (RFC 9449): checking a proof and computing the key it binds to.

:func:`verify_proof` follows §4.3: a JWT with ``typ: dpop+jwt``, an asymmetric ``alg`` from the
allow-list, a public ``jwk`` in the header (no private members) whose key verifies the
signature, ``jti``, ``htm`` equal to the request method, ``htu`` equal to the request URL
without query and fragment, ``iat`` within a window, ``ath`` = SHA-256 of the access token when
one is presented, and a ``jti`` never seen before (the caller's replay check, shared by every
server process). It returns the key's RFC 7638 thumbprint (``jkt``), which access tokens carry
as ``cnf.jkt`` (§6) and codes and refresh tokens are bound to.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import jwt
from starlette.concurrency import run_in_threadpool

from keys.keyring import Clock
from oidc.errors import InvalidDPoPProof, InvalidToken
from oidc.tables import ReplayedAssertion, SqlReplayCache

ALGS = ("ES256", "PS256", "RS256")
PROOF_WINDOW_SECONDS = 60
_PRIVATE = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}

ReplayCheck = Callable[[str, str, float], None]
"""(jkt, jti, expires_at) → None, or raises if this jti was seen for this key."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3 over the required members of an EC or RSA public key."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or any(m not in jwk for m in members):
        raise InvalidDPoPProof("the proof's jwk is not a supported public key")
    canonical = json.dumps({m: jwk[m] for m in members}, sort_keys=True, separators=(",", ":"))
    return _b64(hashlib.sha256(canonical.encode()).digest())


def access_token_hash(token: str) -> str:
    return _b64(hashlib.sha256(token.encode("ascii")).digest())


def _numeric(value: object) -> bool:
    """A JSON number usable as a NumericDate (not a boolean, NaN or an infinity)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _normalized(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path, "", ""))


def verify_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: float,
    replay: ReplayCheck,
    access_token: str | None = None,
    algs: Collection[str] = ALGS,
) -> str:
    """Check a DPoP proof for this request; returns the bound key's thumbprint (``jkt``).

    ``algs`` narrows the allow-list (FAPI 2.0 clients: PS256 and ES256 only)."""
    try:
        header = jwt.get_unverified_header(proof)
    except jwt.PyJWTError:
        raise InvalidDPoPProof("the DPoP proof is not a JWT") from None
    if header.get("typ") != "dpop+jwt":
        raise InvalidDPoPProof("the DPoP proof must have typ dpop+jwt")
    alg, jwk = header.get("alg"), header.get("jwk")
    if alg not in ALGS or alg not in algs:
        raise InvalidDPoPProof("the DPoP proof's alg is not allowed")
    if not isinstance(jwk, dict) or _PRIVATE & set(jwk):
        raise InvalidDPoPProof("the DPoP proof must carry a public jwk")
    jkt = jwk_thumbprint(jwk)
    try:
        key = jwt.PyJWK(jwk, algorithm=str(alg)).key
        claims: dict[str, Any] = jwt.decode(
            proof,
            key,
            algorithms=[str(alg)],
            # Time is checked below against the injected clock only (§4.3: the iat window).
            options={
                "require": ["jti", "htm", "htu", "iat"],
                "verify_aud": False,
                "verify_iat": False,
                "verify_exp": False,
                "verify_nbf": False,
            },
        )
    except jwt.PyJWTError:
        raise InvalidDPoPProof("the DPoP proof's signature or claims are invalid") from None
    if claims["htm"] != method:
        raise InvalidDPoPProof("htm does not match the request method")
    if _normalized(str(claims["htu"])) != _normalized(url):
        raise InvalidDPoPProof("htu does not match the request URL")
    iat = claims["iat"]
    if not _numeric(iat) or abs(now - iat) > PROOF_WINDOW_SECONDS:
        raise InvalidDPoPProof("the DPoP proof is too old or from the future")
    nbf, exp = claims.get("nbf", now), claims.get("exp", now)
    if not _numeric(nbf) or not _numeric(exp):
        raise InvalidDPoPProof("the DPoP proof's nbf and exp must be NumericDates")
    if nbf > now + PROOF_WINDOW_SECONDS or exp <= now - PROOF_WINDOW_SECONDS:
        raise InvalidDPoPProof("the DPoP proof is not valid now (nbf, exp)")
    if access_token is not None and claims.get("ath") != access_token_hash(access_token):
        raise InvalidDPoPProof("ath does not match the access token")
    replay(jkt, str(claims["jti"]), iat + 2 * PROOF_WINDOW_SECONDS)
    return jkt


class DPoPVerifier:
    """:func:`verify_proof` with the shared replay store (every server process sees every
    ``jti``), run off the event loop."""

    def __init__(self, replay: SqlReplayCache, clock: Clock) -> None:
        self._cache = replay
        self._clock = clock

    def _replay(self, jkt: str, jti: str, until: float) -> None:
        try:
            self._cache.use("dpop:" + jkt, jti, datetime.fromtimestamp(until, UTC), self._clock())
        except ReplayedAssertion:
            raise InvalidDPoPProof("the DPoP proof was already used") from None

    async def check(
        self,
        proof: str,
        *,
        method: str,
        url: str,
        access_token: str | None = None,
        algs: Collection[str] = ALGS,
    ) -> str:
        now = self._clock().timestamp()
        return await run_in_threadpool(
            lambda: verify_proof(
                proof,
                method=method,
                url=url,
                now=now,
                replay=self._replay,
                access_token=access_token,
                algs=algs,
            )
        )

    async def check_bound(
        self,
        *,
        scheme: str,
        token: str,
        bound: str | None,
        proof: str | None,
        method: str,
        url: str,
        algs: Collection[str] = ALGS,
    ) -> None:
        """RFC 9449 §7 at a resource server: a token bound to the key thumbprint ``bound``
        needs the ``DPoP`` scheme and a proof made with that key for this request (with
        ``ath``); an unbound token must not be sent with the ``DPoP`` scheme. Raises
        :class:`~oidc.errors.InvalidToken` (or :class:`InvalidDPoPProof` for a bad proof)."""
        if bound is None:
            if scheme == "dpop":
                raise InvalidToken("this access token is not DPoP-bound")
            return
        if scheme != "dpop" or proof is None:
            raise InvalidToken("this access token is DPoP-bound: use the DPoP scheme and a proof")
        jkt = await self.check(proof, method=method, url=url, access_token=token, algs=algs)
        if jkt != bound:
            raise InvalidToken("the DPoP proof is not made with the token's key")
