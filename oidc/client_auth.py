"""Client authentication at the token, introspection and revocation endpoints.

Methods (RFC 6749 §2.3, RFC 7591 §2, OpenID Connect Core §9):

- ``client_secret_basic``: HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1);
- ``client_secret_post``: ``client_id`` and ``client_secret`` in the body (RFC 6749 §2.3.1);
- ``private_key_jwt``: a JWT signed with the client's key (RFC 7523 §2.2, §3), verified with
  pyjwt; the key is picked by ``kid`` from the registered ``jwks`` or from ``jwks_uri``
  (fetched, cached, fetched again once when a ``kid`` is unknown), or is the only registered
  key the client can use when the request names the client; ``alg`` from an allow-list
  (ES256, PS256, RS256: never ``none`` or HMAC); ``aud`` the issuer or the token endpoint;
  ``exp`` required and at most :data:`MAX_ASSERTION_LIFETIME` ahead; each ``jti`` accepted
  once, across every server process (the replay store inserts it under a unique key);
- ``none``: a public client names itself with ``client_id`` (RFC 6749 §2.1).

For FAPI 2.0 clients (:attr:`oidc.clients.Client.fapi2`) an assertion must be PS256 or ES256
(FAPI 2.0 Security Profile §5.4.1) and its ``aud`` the issuer, as a string (§5.3.2.1 item 8,
against audience injection).

A request uses exactly one method (RFC 6749 §2.3: "MUST NOT use more than one") and the method
must be the one the client registered. Failures raise :class:`oidc.errors.InvalidClient`;
secret failures all say the same thing, so they reveal nothing about which clients exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.api_jws import PyJWS

from keys.keyring import Clock, utc_now
from oidc.clients import ASSERTION_ALGS, AuthMethod, Client, ClientDirectory
from oidc.errors import InvalidClient, InvalidRequest
from oidc.secrets import verify_client_secret
from oidc.tables import ReplayedAssertion

#: RFC 7523 §2.2 ``client_assertion_type``.
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: An assertion may not expire later than this after it is received (seconds): RFC 7523 §3
#: lets the server refuse an ``exp`` "unreasonably far in the future"; one hour is what common
#: client libraries sign for (Authlib: 3600 s) and bounds how long a ``jti`` is kept.
MAX_ASSERTION_LIFETIME = 3600
#: Clock skew tolerated on ``exp``, ``nbf`` and ``iat`` (seconds).
LEEWAY = 30
#: The largest assertion accepted (an RS256 assertion with a 4096-bit key is under 1.5 KiB).
MAX_ASSERTION_LENGTH = 8192
MAX_JTI_LENGTH = 255
#: A JWK Set fetched from ``jwks_uri`` is kept this long (seconds) ...
JWKS_URI_TTL = 300.0
#: ... and fetched again on an unknown ``kid`` at most this often (seconds).
JWKS_URI_REFETCH_INTERVAL = 10.0
MAX_JWKS_BYTES = 65536

ReplayCheck = Callable[[str, str, datetime], Awaitable[None]]
"""``(client_id, jti, keep_until)``: raise :class:`oidc.tables.ReplayedAssertion` if seen."""

JwksFetch = Callable[[str], Awaitable[Mapping[str, Any]]]
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class ClientCredentials:
    """What a request presents to authenticate its client."""

    method: AuthMethod
    client_id: str | None
    secret: str | None = field(default=None, repr=False)
    assertion: str | None = field(default=None, repr=False)


def _basic(authorization: str) -> tuple[str, str]:
    """RFC 6749 §2.3.1 / RFC 7617: base64 of ``urlencode(id) ":" urlencode(secret)``."""
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidClient("malformed HTTP Basic credentials") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise InvalidClient("malformed HTTP Basic credentials")
    try:
        client_id = unquote_plus(client_id, errors="strict")
        secret = unquote_plus(secret, errors="strict")
    except UnicodeDecodeError:
        raise InvalidClient("malformed HTTP Basic credentials") from None
    if not client_id or not secret:
        raise InvalidClient("malformed HTTP Basic credentials")
    return client_id, secret


def read_client_credentials(
    params: Mapping[str, str], authorization: str | None
) -> ClientCredentials:
    """The one authentication method a request uses, with its credentials.

    ``params`` are the request's parameters (each at most once, empty ones dropped);
    ``authorization`` the ``Authorization`` header, if any (only ``Basic`` counts here).
    """
    basic = authorization is not None and authorization[:6].lower() == "basic "
    post = "client_secret" in params
    assertion = "client_assertion" in params or "client_assertion_type" in params
    if basic + post + assertion > 1:
        raise InvalidRequest("the client used more than one authentication method")
    client_id = params.get("client_id")
    if basic:
        assert authorization is not None
        basic_id, secret = _basic(authorization)
        if client_id is not None and client_id != basic_id:
            raise InvalidRequest("client_id does not match the HTTP Basic credentials")
        return ClientCredentials(AuthMethod.CLIENT_SECRET_BASIC, basic_id, secret=secret)
    if post:
        if client_id is None:
            raise InvalidRequest("client_id is required with client_secret")
        return ClientCredentials(
            AuthMethod.CLIENT_SECRET_POST, client_id, secret=params["client_secret"]
        )
    if assertion:
        kind = params.get("client_assertion_type")
        value = params.get("client_assertion")
        if kind is None or value is None:
            raise InvalidRequest("client_assertion and client_assertion_type go together")
        if kind != CLIENT_ASSERTION_TYPE:
            raise InvalidClient(f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}")
        return ClientCredentials(AuthMethod.PRIVATE_KEY_JWT, client_id, assertion=value)
    if client_id is None:
        raise InvalidClient("client authentication is required")
    return ClientCredentials(AuthMethod.NONE, client_id)


# -- client keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Jwk:
    kid: str | None
    alg: str | None
    key: PublicKey

    def fits(self, alg: str) -> bool:
        if self.alg is not None and self.alg != alg:
            return False
        if alg == "ES256":
            return isinstance(self.key, ec.EllipticCurvePublicKey) and isinstance(
                self.key.curve, ec.SECP256R1
            )
        return isinstance(self.key, rsa.RSAPublicKey) and self.key.key_size >= 2048


def _parse_jwks(jwks: Mapping[str, Any]) -> list[_Jwk]:
    """The usable public signing keys of a JWK Set; others (encryption keys, unknown types,
    anything holding private members) are skipped."""
    keys = jwks.get("keys")
    parsed: list[_Jwk] = []
    if not isinstance(keys, list):
        return parsed
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or "d" in jwk:
            continue
        try:
            key: Any
            if jwk.get("kty") == "EC":
                key = ECAlgorithm.from_jwk(jwk)
            elif jwk.get("kty") == "RSA":
                key = RSAAlgorithm.from_jwk(jwk)
            else:
                continue
        except (jwt.PyJWTError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            continue
        kid, alg = jwk.get("kid"), jwk.get("alg")
        parsed.append(
            _Jwk(
                kid if isinstance(kid, str) else None,
                alg if isinstance(alg, str) else None,
                key,
            )
        )
    return parsed


_NO_MATCHING_KEY = "no registered key of the client matches the assertion's kid and alg"


def _select(keys: list[_Jwk], kid: str | None, alg: str) -> PublicKey | None:
    candidates = [k for k in keys if k.fits(alg) and (kid is None or k.kid == kid)]
    return candidates[0].key if len(candidates) == 1 else None


async def fetch_jwks(uri: str, *, timeout: float = 5.0) -> Mapping[str, Any]:
    """GET a client's ``jwks_uri`` (no redirects, bounded size, JSON object)."""
    async with (
        httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http,
        http.stream("GET", uri, headers={"Accept": "application/json"}) as response,
    ):
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("JWK Set too large")
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("not a JWK Set")
    return data


class ClientKeys:
    """The verification keys of private_key_jwt clients, parsed once per process.

    Registered ``jwks`` are parsed when a client is first seen (and again when its
    registration changes); ``jwks_uri`` sets are fetched, kept :data:`JWKS_URI_TTL` seconds,
    and fetched again when an assertion names an unknown ``kid`` (at most once every
    :data:`JWKS_URI_REFETCH_INTERVAL` seconds, so unknown kids cannot make us hammer the URI).
    """

    def __init__(
        self,
        fetch: JwksFetch = fetch_jwks,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._monotonic = monotonic
        self._inline: dict[str, tuple[Mapping[str, Any], list[_Jwk]]] = {}
        self._remote: dict[str, tuple[float, list[_Jwk]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def key(self, client: Client, kid: str | None, alg: str) -> PublicKey:
        if client.jwks is not None:
            key = _select(self._registered(client.client_id, client.jwks), kid, alg)
        elif client.jwks_uri is not None:
            key = await self._remote_key(client.jwks_uri, kid, alg)
        else:
            key = None
        if key is None:
            raise InvalidClient(_NO_MATCHING_KEY)
        return key

    def only_key(self, client: Client, algs: Collection[str]) -> tuple[str, _Jwk] | None:
        """The one ``(alg, key)`` the client's assertions can use, when its registered ``jwks``
        leave exactly one with ``algs`` (then the assertion's header does not pick the key)."""
        if client.jwks is None:
            return None
        usable = [
            (alg, jwk)
            for jwk in self._registered(client.client_id, client.jwks)
            for alg in algs
            if jwk.fits(alg)
        ]
        return usable[0] if len(usable) == 1 else None

    def _registered(self, client_id: str, jwks: Mapping[str, Any]) -> list[_Jwk]:
        """The parsed keys of a registered JWK Set. The client directory hands out a new
        record every few seconds; the keys are parsed again only when the set differs."""
        cached = self._inline.get(client_id)
        if cached is not None and cached[0] is jwks:
            return cached[1]
        if cached is not None and cached[0] == jwks:
            cached = (jwks, cached[1])  # the same set in a newer record
        else:
            cached = (jwks, _parse_jwks(jwks))
        self._inline[client_id] = cached
        return cached[1]

    async def _remote_key(self, uri: str, kid: str | None, alg: str) -> PublicKey | None:
        now = self._monotonic()
        cached = self._remote.get(uri)
        if cached is not None and now - cached[0] < JWKS_URI_TTL:
            key = _select(cached[1], kid, alg)
            if key is not None or now - cached[0] < JWKS_URI_REFETCH_INTERVAL:
                return key
        lock = self._locks.setdefault(uri, asyncio.Lock())
        async with lock:
            latest = self._remote.get(uri)
            if latest is not None and latest is not cached:
                return _select(latest[1], kid, alg)  # another request just fetched it
            try:
                keys = _parse_jwks(await self._fetch(uri))
            except (httpx.HTTPError, ValueError) as exc:
                raise InvalidClient(
                    f"the client's jwks_uri cannot be fetched ({type(exc).__name__})"
                ) from None
            self._remote[uri] = (self._monotonic(), keys)
            return _select(keys, kid, alg)


# -- the authenticator ------------------------------------------------------------------------

_UNVERIFIED = PyJWS(options={"verify_signature": False})


def _assertion_algs(client: Client) -> tuple[str, ...]:
    """The algs the client's assertions may use: the allow-list, narrowed by its profile and
    by the alg it registered."""
    allowed = client.allowed_algs(ASSERTION_ALGS)
    registered = client.token_endpoint_auth_signing_alg
    return allowed if registered is None else tuple(a for a in allowed if a == registered)


class ClientAuthenticator:
    """Authenticates the client of a request; the entry point is :meth:`authenticate`."""

    def __init__(
        self,
        directory: ClientDirectory,
        keys: ClientKeys,
        replay: ReplayCheck,
        *,
        audiences: Collection[str],
        clock: Clock = utc_now,
    ) -> None:
        """``audiences``: the ``aud`` values accepted, the issuer first (the only one accepted
        from FAPI 2.0 clients)."""
        self._directory = directory
        self._keys = keys
        self._replay = replay
        self._audiences = list(audiences)
        self._clock = clock

    async def authenticate(
        self,
        credentials: ClientCredentials,
        *,
        allowed: Collection[AuthMethod] = frozenset(AuthMethod),
    ) -> Client:
        """The authenticated client, or :class:`InvalidClient`.

        ``allowed`` narrows the methods an endpoint accepts (introspection takes confidential
        clients only).
        """
        if credentials.method not in allowed:
            raise InvalidClient(f"{credentials.method} is not accepted at this endpoint")
        if credentials.method is AuthMethod.PRIVATE_KEY_JWT:
            assert credentials.assertion is not None
            return await self._assertion(credentials.assertion, credentials.client_id)
        assert credentials.client_id is not None
        client = await self._directory.get(credentials.client_id)
        registered = client is not None and client.token_endpoint_auth_method is credentials.method
        if credentials.method is AuthMethod.NONE:
            if client is None or not registered:
                raise InvalidClient("client authentication failed")
            return client
        assert credentials.secret is not None
        verify_client_secret(
            credentials.secret,
            client.secret_hash if client is not None and registered else None,
        )
        assert client is not None
        return client

    async def _assertion(self, assertion: str, client_id: str | None) -> Client:
        """RFC 7523 §3 processing rules, in order of cost: find the client and its key, verify
        the signature and claims, then record the ``jti``.

        When the request names its client (``client_id``) and the client's registered keys
        leave one key and one alg its assertions can use, pyjwt reads the assertion once, with
        that key and alg. Otherwise an unverified read first finds the client (``sub``) and the
        key (``kid``, ``alg``), then pyjwt verifies. The checks are the same either way.
        """
        if len(assertion) > MAX_ASSERTION_LENGTH:
            raise InvalidClient("client assertion too large")
        named = None if client_id is None else await self._directory.get(client_id)
        if named is not None and named.token_endpoint_auth_method is AuthMethod.PRIVATE_KEY_JWT:
            only = self._keys.only_key(named, _assertion_algs(named))
            if only is not None:
                alg, jwk = only
                header, claims = self._verified(assertion, jwk.key, alg, named.client_id)
                kid = header.get("kid")
                if isinstance(kid, str) and kid != jwk.kid:
                    raise InvalidClient(_NO_MATCHING_KEY)
                return await self._accepted(named, claims)
        try:
            parsed = _UNVERIFIED.decode_complete(assertion, options={"verify_signature": False})
            header, unverified = parsed["header"], json.loads(parsed["payload"])
        except (jwt.PyJWTError, ValueError, RecursionError):
            raise InvalidClient("client assertion is not a signed JWT") from None
        if not isinstance(unverified, dict):
            raise InvalidClient("client assertion is not a signed JWT")
        alg = header.get("alg")
        if alg not in ASSERTION_ALGS:
            raise InvalidClient(f"client assertion alg must be one of {', '.join(ASSERTION_ALGS)}")
        subject = unverified.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidClient("client assertion has no sub")
        if client_id is not None and client_id != subject:
            raise InvalidClient("client_id does not match the client assertion's sub")
        client = await self._directory.get(subject)
        if client is None or client.token_endpoint_auth_method is not AuthMethod.PRIVATE_KEY_JWT:
            raise InvalidClient("client authentication failed")
        if client.token_endpoint_auth_signing_alg not in (None, alg):
            raise InvalidClient(f"the client registered {client.token_endpoint_auth_signing_alg}")
        allowed = client.allowed_algs(ASSERTION_ALGS)
        if alg not in allowed:
            raise InvalidClient(f"this client's assertions must use {', '.join(allowed)}")
        kid = header.get("kid")
        key = await self._keys.key(client, kid if isinstance(kid, str) else None, str(alg))
        _, claims = self._verified(assertion, key, str(alg), client.client_id)
        return await self._accepted(client, claims)

    async def _accepted(self, client: Client, claims: Mapping[str, Any]) -> Client:
        """The checks after the signature: FAPI 2.0's ``aud``, the times, the ``jti``."""
        if client.fapi2 and claims["aud"] != self._audiences[0]:
            raise InvalidClient("client assertion aud must be the issuer, as a string (FAPI 2.0)")
        jti, keep_until = self._fresh(claims)
        try:
            await self._replay(client.client_id, jti, keep_until)
        except ReplayedAssertion:
            raise InvalidClient("client assertion was already used (jti replay)") from None
        return client

    def _verified(
        self, assertion: str, key: PublicKey, alg: str, client_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """pyjwt's verified read: the header and the claims."""
        try:
            decoded = jwt.decode_complete(
                assertion,
                key,
                algorithms=[alg],
                audience=self._audiences,
                issuer=client_id,
                subject=client_id,
                options={
                    "require": ["iss", "sub", "aud", "exp", "jti"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAlgorithmError:
            raise InvalidClient(f"client assertion alg must be {alg} for this client") from None
        except jwt.InvalidSignatureError:
            raise InvalidClient("client assertion signature does not verify") from None
        except jwt.InvalidAudienceError:
            raise InvalidClient(
                "client assertion aud must be the issuer or the token endpoint"
            ) from None
        except jwt.InvalidIssuerError:
            raise InvalidClient("client assertion iss must be the client_id") from None
        except jwt.exceptions.InvalidSubjectError:
            raise InvalidClient("client assertion sub must be the client_id") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidClient(f"client assertion lacks the {exc.claim} claim") from None
        except jwt.DecodeError:
            raise InvalidClient("client assertion is not a signed JWT") from None
        except jwt.PyJWTError:
            raise InvalidClient("client assertion is not valid") from None
        return decoded["header"], decoded["payload"]

    def _fresh(self, claims: Mapping[str, Any]) -> tuple[str, datetime]:
        """Time claims against the injected clock (RFC 7523 §3 items 4-6) and the ``jti``."""
        now = self._clock().timestamp()
        times: dict[str, float] = {}
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise InvalidClient(f"client assertion {name} must be a NumericDate")
            times[name] = float(value)
        exp = times["exp"]
        if exp <= now - LEEWAY:
            raise InvalidClient("client assertion has expired")
        if exp > now + MAX_ASSERTION_LIFETIME:
            raise InvalidClient(
                f"client assertion exp is more than {MAX_ASSERTION_LIFETIME} s ahead"
            )
        if times.get("nbf", now) > now + LEEWAY:
            raise InvalidClient("client assertion is not valid yet (nbf)")
        if times.get("iat", now) > now + LEEWAY:
            raise InvalidClient("client assertion is issued in the future (iat)")
        jti = claims["jti"]
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
            raise InvalidClient(f"client assertion jti must be 1 to {MAX_JTI_LENGTH} characters")
        return jti, datetime.fromtimestamp(exp + LEEWAY, UTC)
