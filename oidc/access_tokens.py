"""JWT access tokens (RFC 9068): issued by the token endpoint, verified by introspection and by
the service's own resource endpoints.

Header ``typ: at+jwt`` (RFC 9068 §2.1), signed with the keyring's active key of one purpose
(ES256 by default); claims ``iss``, ``exp``, ``aud``, ``sub``, ``client_id``, ``iat``, ``jti``
and ``scope`` (RFC 9068 §2.2), plus whatever a grant adds (``auth_time``, ``acr``, ``cnf``...).
Tokens are short-lived: they cannot be recalled from a resource server that verifies them
offline, so revocation (RFC 7009) lists a ``jti`` only until the token's ``exp``.

Signing and verification go through pyjwt only; the clock is a parameter.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import jwt

from keys.errors import KeysError
from keys.keyring import Clock, Keyring, utc_now
from keys.material import PublicKey
from keys.model import KeyState, Purpose
from oidc.clients import format_scope, parse_scope
from oidc.errors import InvalidToken

#: RFC 9068 §2.1 header type (``application/at+jwt`` is accepted when verifying, §4).
AT_JWT_TYP = "at+jwt"
#: Keyring purposes whose keys may sign access tokens.
SIGNING_PURPOSES = {
    "ES256": Purpose.OIDC_ES256,
    "RS256": Purpose.OIDC_RS256,
    "PS256": Purpose.OIDC_PS256,
}
_STANDARD_CLAIMS = frozenset({"iss", "exp", "aud", "sub", "client_id", "iat", "jti", "scope"})


@dataclass(frozen=True)
class AccessToken:
    """The claims of a JWT access token (RFC 9068 §2.2)."""

    iss: str
    sub: str
    aud: tuple[str, ...]
    client_id: str
    scope: frozenset[str]
    iat: int
    exp: int
    jti: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def claims(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "iss": self.iss,
            "sub": self.sub,
            "aud": self.aud[0] if len(self.aud) == 1 else list(self.aud),
            "client_id": self.client_id,
            "iat": self.iat,
            "exp": self.exp,
            "jti": self.jti,
        }
        if self.scope:
            body["scope"] = format_scope(self.scope)
        body.update(self.extra)
        return body

    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.exp, tz=UTC)


@dataclass(frozen=True)
class IssuedAccessToken:
    token: str
    claims: AccessToken
    expires_in: int


class AccessTokenIssuer:
    """Signs access tokens with the active key of ``purpose`` (ES256 by default)."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        issuer: str,
        ttl: int = 300,
        clock: Clock = utc_now,
        purpose: Purpose = Purpose.OIDC_ES256,
    ) -> None:
        if purpose not in SIGNING_PURPOSES.values():
            raise ValueError(f"{purpose} keys do not sign access tokens")
        self._keyring = keyring
        self._issuer = issuer
        self._ttl = ttl
        self._clock = clock
        self._purpose = purpose
        self._alg = purpose.algorithm.value

    @property
    def ttl(self) -> int:
        return self._ttl

    def issue(
        self,
        *,
        client_id: str,
        sub: str,
        scope: Iterable[str],
        audience: str | Sequence[str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> IssuedAccessToken:
        """A signed token for ``sub`` (the client itself for client_credentials, RFC 9068 §2.2).

        ``audience`` defaults to the issuer: the service is the resource server of its own
        tokens (the partner API, userinfo).
        """
        if extra and _STANDARD_CLAIMS & extra.keys():
            raise ValueError("extra claims may not override the RFC 9068 claims")
        now = int(self._clock().timestamp())
        if audience is None:
            aud: tuple[str, ...] = (self._issuer,)
        elif isinstance(audience, str):
            aud = (audience,)
        else:
            aud = tuple(audience)
        claims = AccessToken(
            iss=self._issuer,
            sub=sub,
            aud=aud,
            client_id=client_id,
            scope=frozenset(scope),
            iat=now,
            exp=now + self._ttl,
            jti=secrets.token_urlsafe(16),
            extra=dict(extra or {}),
        )
        kid, key = self._keyring.signing_key(self._purpose)
        token = jwt.encode(
            claims.claims(),
            key,
            algorithm=self._alg,
            headers={"typ": AT_JWT_TYP, "kid": kid},
        )
        return IssuedAccessToken(token=token, claims=claims, expires_in=self._ttl)


class AccessTokenVerifier:
    """Validates an access token as RFC 9068 §4 says; every failure raises :class:`InvalidToken`
    with the same description, so the error is no oracle."""

    def __init__(self, keyring: Keyring, *, issuer: str, clock: Clock = utc_now) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._clock = clock
        self._public: dict[str, PublicKey] = {}

    def _key(self, kid: object, alg: object) -> PublicKey:
        if not isinstance(kid, str):
            raise InvalidToken("access token is not valid")
        try:
            record = self._keyring.get(kid)
        except KeysError:
            raise InvalidToken("access token is not valid") from None
        if (
            record.state is KeyState.DESTROYED
            or record.purpose not in SIGNING_PURPOSES.values()
            or record.algorithm.value != alg
        ):
            raise InvalidToken("access token is not valid")
        key = self._public.get(kid)
        if key is None:
            _, key = self._keyring.public_key(kid)
            self._public[kid] = key
        return key

    def verify(self, token: str, *, audience: str | None = None) -> AccessToken:
        """The token's claims if it is one of ours, unexpired and (if given) meant for
        ``audience``; :class:`InvalidToken` otherwise. Revocation is the caller's check."""
        invalid = InvalidToken("access token is not valid")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid from None
        alg = header.get("alg")
        if header.get("typ") not in (AT_JWT_TYP, "application/" + AT_JWT_TYP) or alg not in (
            SIGNING_PURPOSES
        ):
            raise invalid
        key = self._key(header.get("kid"), alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                issuer=self._issuer,
                options={
                    "require": ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"],
                    "verify_aud": False,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError:
            raise invalid from None
        return self._checked(claims, audience, invalid)

    def _checked(
        self, claims: dict[str, Any], audience: str | None, invalid: InvalidToken
    ) -> AccessToken:
        exp, iat = claims["exp"], claims["iat"]
        if not isinstance(exp, int) or not isinstance(iat, int) or isinstance(exp, bool):
            raise invalid
        if exp <= self._clock().timestamp():
            raise invalid
        aud = claims["aud"]
        auds = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
        if not auds or not all(isinstance(a, str) for a in auds):
            raise invalid
        if audience is not None and audience not in auds:
            raise invalid
        scope_value = claims.get("scope", "")
        if not all(isinstance(claims[c], str) for c in ("sub", "client_id", "jti")) or not (
            isinstance(scope_value, str)
        ):
            raise invalid
        try:
            scope = parse_scope(scope_value)
        except ValueError:
            raise invalid from None
        return AccessToken(
            iss=claims["iss"],
            sub=claims["sub"],
            aud=auds,
            client_id=claims["client_id"],
            scope=scope,
            iat=iat,
            exp=exp,
            jti=claims["jti"],
            extra={k: v for k, v in claims.items() if k not in _STANDARD_CLAIMS},
        )
