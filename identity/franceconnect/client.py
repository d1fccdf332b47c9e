"""FranceConnect v2 as seen by a service provider: discovery, authorization request, code
exchange, id_token and userinfo verification, logout URL.

Verification follows OpenID Connect Core §3.1.3.7 (id_token) and §5.3.2 (signed userinfo):
the key is chosen by ``kid`` among the provider's JWKS and must fit ``alg``, which must be ES256
or RS256 (never ``none`` nor an HMAC algorithm, whatever the JWKS says); an unknown ``kid``
refetches the JWKS once. Every verification failure raises the same
:class:`~identity.errors.FranceConnectRejected`, so errors are no oracle; the log line says which
check failed, without the token.

All network calls are asynchronous (the simulator may be served by the same process) and bounded
by the configured timeout; timeouts, transport errors and 5xx raise
:class:`~identity.errors.FranceConnectUnavailable`.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from identity.errors import FranceConnectRejected, FranceConnectUnavailable

log = logging.getLogger("nicecard.franceconnect")

#: Only these; a provider's JWKS cannot widen the list.
ALLOWED_ALGORITHMS = {"ES256": "EC", "RS256": "RSA"}
EIDAS_LEVELS = {"eidas1": 1, "eidas2": 2, "eidas3": 3}
CLOCK_LEEWAY_SECONDS = 30
#: at most one JWKS refetch per interval, however many unknown kids arrive
JWKS_REFETCH_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class ClientConfig:
    issuer: str
    client_id: str
    redirect_uri: str
    post_logout_redirect_uri: str
    scopes: str
    acr_values: str
    timeout_seconds: float
    auth_method: str = "client_secret_post"
    client_secret: str | None = None
    #: for private_key_jwt: returns (kid, private key) to sign the client assertion
    assertion_key: Callable[[], tuple[str, Any]] | None = None


@dataclass(frozen=True)
class ProviderMetadata:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    end_session_endpoint: str


@dataclass(frozen=True)
class Identity:
    """What a successful sign-in yields; lives only in the sealed login session."""

    sub: str
    acr: str
    id_token: str
    claims: Mapping[str, Any]


def _reject(check: str) -> FranceConnectRejected:
    log.warning("franceconnect answer rejected", extra={"check": check})
    return FranceConnectRejected("FranceConnect's answer could not be verified", reason="rejected")


class FranceConnectClient:
    def __init__(
        self,
        config: ClientConfig,
        http: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._http = http
        self._clock = clock
        self._metadata: ProviderMetadata | None = None
        self._jwks: dict[str, dict[str, Any]] = {}
        self._jwks_fetched_at = -JWKS_REFETCH_INTERVAL_SECONDS

    # -- transport ------------------------------------------------------------------------------

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(
                method, url, timeout=self.config.timeout_seconds, **kwargs
            )
        except httpx.TimeoutException:
            log.warning("franceconnect timeout", extra={"endpoint": url.rsplit("/", 1)[-1]})
            raise FranceConnectUnavailable("FranceConnect did not answer in time") from None
        except httpx.HTTPError as exc:
            log.warning("franceconnect unreachable", extra={"error": type(exc).__name__})
            raise FranceConnectUnavailable("FranceConnect is unreachable") from None
        if response.status_code >= 500:
            log.warning(
                "franceconnect server error",
                extra={"endpoint": url.rsplit("/", 1)[-1], "status": response.status_code},
            )
            raise FranceConnectUnavailable("FranceConnect answered with an error")
        return response

    async def metadata(self) -> ProviderMetadata:
        """OpenID Connect Discovery 1.0 §4; the issuer must be exactly the configured one."""
        if self._metadata is None:
            url = f"{self.config.issuer}/.well-known/openid-configuration"
            response = await self._request("GET", url)
            try:
                data = response.json()
                metadata = ProviderMetadata(
                    issuer=data["issuer"],
                    authorization_endpoint=data["authorization_endpoint"],
                    token_endpoint=data["token_endpoint"],
                    userinfo_endpoint=data["userinfo_endpoint"],
                    jwks_uri=data["jwks_uri"],
                    end_session_endpoint=data["end_session_endpoint"],
                )
            except (ValueError, KeyError, TypeError):
                raise FranceConnectUnavailable("FranceConnect's discovery is malformed") from None
            if metadata.issuer != self.config.issuer:
                raise _reject("discovery issuer")
            self._metadata = metadata
        return self._metadata

    async def _refresh_jwks(self) -> None:
        now = time.monotonic()
        if now - self._jwks_fetched_at < JWKS_REFETCH_INTERVAL_SECONDS:
            return
        self._jwks_fetched_at = now
        response = await self._request("GET", (await self.metadata()).jwks_uri)
        try:
            keys = response.json()["keys"]
            self._jwks = {k["kid"]: k for k in keys if isinstance(k, dict) and "kid" in k}
        except (ValueError, KeyError, TypeError):
            raise FranceConnectUnavailable("FranceConnect's JWKS is malformed") from None

    async def _key_for(self, token: str) -> tuple[Any, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _reject("jose header") from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS:
            raise _reject("algorithm")
        if not isinstance(kid, str):
            raise _reject("kid")
        if kid not in self._jwks:
            await self._refresh_jwks()
        jwk = self._jwks.get(kid)
        if jwk is None:
            raise _reject("unknown kid")
        if jwk.get("kty") != ALLOWED_ALGORITHMS[alg] or jwk.get("alg", alg) != alg:
            raise _reject("key does not fit algorithm")
        if jwk.get("use", "sig") != "sig":
            raise _reject("key use")
        try:
            return jwt.PyJWK(jwk, algorithm=alg).key, alg
        except jwt.PyJWTError:
            raise _reject("jwk") from None

    async def _verify(self, token: str, required: list[str]) -> dict[str, Any]:
        key, alg = await self._key_for(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.config.client_id,
                issuer=self.config.issuer,
                leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": required, "verify_iat": True},
            )
        except jwt.PyJWTError as exc:
            raise _reject(type(exc).__name__) from None
        # pyjwt compares times with the wall clock; re-check them with ours (tests move it).
        now = self._clock()
        if "exp" in claims and claims["exp"] + CLOCK_LEEWAY_SECONDS < now:
            raise _reject("ExpiredSignatureError")
        if "iat" in claims and claims["iat"] - CLOCK_LEEWAY_SECONDS > now:
            raise _reject("ImmatureSignatureError")
        return claims

    # -- the flow -------------------------------------------------------------------------------

    async def authorization_url(self, state: str, nonce: str, prompt: str | None = None) -> str:
        """OpenID Connect Core §3.1.2.1, with FranceConnect's required ``acr_values``."""
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": self.config.redirect_uri,
            "scope": self.config.scopes,
            "acr_values": self.config.acr_values,
            "state": state,
            "nonce": nonce,
        }
        if prompt:
            params["prompt"] = prompt
        return f"{(await self.metadata()).authorization_endpoint}?{urlencode(params)}"

    def _client_auth(self, token_endpoint: str) -> dict[str, str]:
        if self.config.auth_method == "private_key_jwt":
            assert self.config.assertion_key is not None
            kid, key = self.config.assertion_key()
            now = int(self._clock())
            assertion = jwt.encode(
                {
                    "iss": self.config.client_id,
                    "sub": self.config.client_id,
                    "aud": token_endpoint,
                    "jti": secrets.token_urlsafe(24),
                    "iat": now,
                    "exp": now + 60,
                },
                key,
                algorithm="ES256",
                headers={"kid": kid},
            )
            return {
                "client_id": self.config.client_id,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            }
        return {
            "client_id": self.config.client_id,
            "client_secret": self.config.client_secret or "",
        }

    async def sign_in(self, code: str, nonce: str) -> Identity:
        """Exchange the code (RFC 6749 §4.1.3), verify the id_token, fetch the signed userinfo."""
        metadata = await self.metadata()
        response = await self._request(
            "POST",
            metadata.token_endpoint,
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self.config.redirect_uri,
                **self._client_auth(metadata.token_endpoint),
            },
        )
        if response.status_code != 200:
            raise _reject(f"token endpoint status {response.status_code}")
        try:
            tokens = response.json()
            id_token, access_token = str(tokens["id_token"]), str(tokens["access_token"])
        except (ValueError, KeyError, TypeError):
            raise _reject("token response") from None
        claims = await self._verify(id_token, ["iss", "aud", "exp", "iat", "sub", "nonce", "acr"])
        if not hmac.compare_digest(str(claims["nonce"]).encode(), nonce.encode()):
            raise _reject("nonce")
        acr = str(claims["acr"])
        wanted = EIDAS_LEVELS.get(self.config.acr_values, 1)
        if EIDAS_LEVELS.get(acr, 0) < wanted:
            raise _reject("acr")
        userinfo = await self._userinfo(access_token)
        if userinfo.get("sub") != claims["sub"]:
            raise _reject("userinfo sub")
        return Identity(sub=str(claims["sub"]), acr=acr, id_token=id_token, claims=userinfo)

    async def _userinfo(self, access_token: str) -> dict[str, Any]:
        """OpenID Connect Core §5.3.2: FranceConnect answers a signed JWT (application/jwt)."""
        metadata = await self.metadata()
        response = await self._request(
            "GET", metadata.userinfo_endpoint, headers={"Authorization": f"Bearer {access_token}"}
        )
        if response.status_code != 200:
            raise _reject(f"userinfo status {response.status_code}")
        if response.headers.get("content-type", "").split(";")[0].strip() != "application/jwt":
            raise _reject("userinfo not signed")
        return await self._verify(response.text.strip(), ["iss", "aud", "sub"])

    async def end_session_url(self, id_token_hint: str, state: str) -> str:
        """FranceConnect's ``/session/end`` (OpenID Connect RP-Initiated Logout 1.0 §2)."""
        params = {
            "id_token_hint": id_token_hint,
            "state": state,
            "post_logout_redirect_uri": self.config.post_logout_redirect_uri,
        }
        return f"{(await self.metadata()).end_session_endpoint}?{urlencode(params)}"
