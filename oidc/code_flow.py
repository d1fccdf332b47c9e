"""The authorization code flow: issuing codes, the ``authorization_code`` and ``refresh_token``
grants (RFC 6749 §4.1.3, §6; OpenID Connect Core §3.1.3), and what userinfo needs.

The token side runs inside :class:`oidc.token_endpoint.TokenEndpoint` (client already
authenticated). PKCE verification uses Authlib's RFC 7636 S256 transform, compared in constant
time. A replayed code revokes the grant and every access token issued from it; a reused refresh
token (past a short grace) does the same.

FAPI 2.0 clients (FAPI 2.0 Security Profile §5.3.2.1): their refresh tokens are bound to the DPoP
key of the code exchange as well as to the client's authentication (item 4, sender-constrained)
and are not rotated (item 9); their ID tokens are never RS256 (§5.4.1).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from starlette.concurrency import run_in_threadpool

from keys.keyring import Clock, Keyring
from keys.model import Purpose
from oidc.access_tokens import AccessToken
from oidc.authorization import AuthorizationRequest
from oidc.clients import FAPI2_ALGS, Client, GrantType, format_scope
from oidc.errors import InvalidGrant, InvalidRequest, InvalidToken, ServerError
from oidc.grants import CodeReplayed, Grant, GrantStore, RefreshReplayed
from oidc.id_tokens import issue_id_token
from oidc.pairwise import pairwise_subject, sector_of
from oidc.provider import OpenIDProvider

#: Claims about the citizen, by login session id (``sid``); ``None`` once the session is gone.
ClaimsSource = Callable[[str], Mapping[str, Any] | None]
#: What may go into the ID token besides the standard claims: computed by the caller.
ReleasedClaims = Callable[[Grant, Mapping[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Citizen:
    """What the flow knows of the signed-in citizen (from the login session)."""

    account_id: str
    sid: str
    auth_time: datetime
    acr: str
    amr: tuple[str, ...]


class CodeFlow:
    def __init__(
        self,
        provider: OpenIDProvider,
        grants: GrantStore,
        keyring: Keyring,
        *,
        claims_of_session: ClaimsSource,
        release: ReleasedClaims,
        clock: Clock,
    ) -> None:
        self.provider = provider
        self.grants = grants
        self._keyring = keyring
        self._claims_of_session = claims_of_session
        self._release = release
        self._clock = clock
        provider.token_endpoint.register_grant(
            GrantType.AUTHORIZATION_CODE.value, self._authorization_code
        )
        provider.token_endpoint.register_grant(GrantType.REFRESH_TOKEN.value, self._refresh_token)

    def subject(self, client: Client, account_id: str) -> str:
        _kid, secret = self._keyring.secret(Purpose.PAIRWISE_SUBJECT)
        return pairwise_subject(secret, sector_of(client), account_id)

    # -- authorization endpoint ----------------------------------------------------------------

    async def issue_code(
        self, request: AuthorizationRequest, citizen: Citizen, claims: frozenset[str]
    ) -> str:
        """A code for this request; the caller redirects with it, ``state`` and ``iss``."""
        return await run_in_threadpool(
            lambda: self.grants.create_code(
                client_id=request.client.client_id,
                account_id=citizen.account_id,
                scope=request.scope,
                claims=claims,
                auth_time=citizen.auth_time,
                acr=citizen.acr,
                amr=citizen.amr,
                sid=citizen.sid,
                redirect_uri=request.redirect_uri,
                nonce=request.nonce,
                code_challenge=request.code_challenge,
                dpop_jkt=request.dpop_jkt,
                now=self._clock(),
            )
        )

    # -- token endpoint ------------------------------------------------------------------------

    async def _revoke_issued(self, issued: list[tuple[str, datetime]], client_id: str) -> None:
        now = self._clock()
        for jti, expires_at in issued:
            await run_in_threadpool(
                self.provider.revocations.revoke, jti, client_id, expires_at, now
            )

    async def _authorization_code(
        self, params: Mapping[str, str], client: Client, jkt: str | None
    ) -> dict[str, Any]:
        code, verifier = params.get("code"), params.get("code_verifier")
        if code is None:
            raise InvalidRequest("code is required")
        if verifier is None:
            raise InvalidRequest("code_verifier is required (PKCE)")
        now = self._clock()
        try:
            record = await run_in_threadpool(self.grants.consume_code, code, client.client_id, now)
        except CodeReplayed as replay:
            # RFC 6749 §4.1.2: revoke what was issued from this code.
            await self._revoke_issued(replay.issued, client.client_id)
            raise InvalidGrant("the code was already used; what it issued is revoked") from None
        if record is None:
            raise InvalidGrant("the code is invalid, expired, or was issued to another client")
        if record.redirect_uri != params.get("redirect_uri", record.redirect_uri):
            raise InvalidGrant("redirect_uri does not match the authorization request")
        expected = create_s256_code_challenge(verifier)
        if not hmac.compare_digest(expected.encode(), record.code_challenge.encode()):
            raise InvalidGrant("code_verifier does not match the code_challenge")
        if record.dpop_jkt is not None and record.dpop_jkt != jkt:
            # RFC 9449 §10: the code is bound to the key named by dpop_jkt at /authorize.
            raise InvalidGrant("the DPoP key does not match the authorization request's dpop_jkt")
        return await self._tokens(client, record.grant, nonce=record.nonce, first=True, jkt=jkt)

    async def _refresh_token(
        self, params: Mapping[str, str], client: Client, jkt: str | None
    ) -> dict[str, Any]:
        token = params.get("refresh_token")
        if token is None:
            raise InvalidRequest("refresh_token is required")
        now = self._clock()
        try:
            used = await run_in_threadpool(
                lambda: self.grants.use_refresh(
                    token, client.client_id, now, rotate=not client.fapi2
                )
            )
        except RefreshReplayed as replay:
            await self._revoke_issued(replay.issued, client.client_id)
            raise InvalidGrant("the refresh token was already used; the grant is revoked") from None
        if used is None:
            raise InvalidGrant("the refresh token is invalid, expired or revoked")
        grant, parent, bound = used
        if bound is not None and bound != jkt:
            # RFC 9449 §5: a bound refresh token needs a proof with the same key.
            raise InvalidGrant("the refresh token is bound to another DPoP key")
        if "scope" in params and not set(params["scope"].split()) <= grant.scope:
            raise InvalidGrant("a refresh cannot widen the scope")  # RFC 6749 §6
        return await self._tokens(client, grant, nonce=None, first=False, parent=parent, jkt=jkt)

    async def _tokens(
        self,
        client: Client,
        grant: Grant,
        *,
        nonce: str | None,
        first: bool,
        parent: bytes | None = None,
        jkt: str | None = None,
    ) -> dict[str, Any]:
        if client.fapi2 and client.id_token_signed_response_alg not in FAPI2_ALGS:
            # Registration refuses this; a record that bypassed it gets no RS256 token.
            raise ServerError("the client's registration does not fit its security profile")
        sub = self.subject(client, grant.account_id)
        issued = self.provider.access_tokens.issue(
            client_id=client.client_id,
            sub=sub,
            scope=grant.scope,
            extra={"cnf": {"jkt": jkt}} if jkt else None,
        )
        await run_in_threadpool(
            self.grants.record_access_token, grant.id, issued.claims.jti, issued.claims.expires_at()
        )
        body: dict[str, Any] = {
            "access_token": issued.token,
            "token_type": "DPoP" if jkt else "Bearer",
            "expires_in": issued.expires_in,
            "scope": format_scope(grant.scope),
        }
        new_refresh = first or not client.fapi2  # FAPI 2.0 clients keep their refresh token
        if (
            new_refresh
            and "offline_access" in grant.scope
            and client.check_grant_type(GrantType.REFRESH_TOKEN)
        ):
            # RFC 9449 §5: refresh tokens of public clients are bound to the DPoP key (those of
            # FAPI 2.0 clients too, on top of the client's authentication).
            bind = jkt if client.is_public or client.fapi2 else None
            body["refresh_token"] = await run_in_threadpool(
                self.grants.issue_refresh, grant.id, self._clock(), parent, bind
            )
        if "openid" in grant.scope:
            source = await run_in_threadpool(self._claims_of_session, grant.sid) or {}
            body["id_token"] = issue_id_token(
                self._keyring,
                alg=client.id_token_signed_response_alg,
                issuer=self.provider.issuer,
                client_id=client.client_id,
                sub=sub,
                now=self._clock(),
                auth_time=grant.auth_time,
                acr=grant.acr,
                amr=grant.amr,
                sid=grant.sid,
                nonce=nonce if first else None,
                access_token=issued.token,
                claims=self._release(grant, source) if first else None,
            )
        return body

    # -- resource side -------------------------------------------------------------------------

    def access_token_grant(self, token: str) -> tuple[AccessToken, Grant]:
        """Verify a citizen's access token (signature, expiry, revocation) and find its grant."""
        claims = self.provider.verifier.verify(token)
        if self.provider.revocations.is_revoked(claims.jti):
            raise InvalidToken("the access token was revoked")
        grant = self.grants.grant_of_token(claims.jti)
        if grant is None:
            raise InvalidToken("the access token was not issued to a citizen, or is revoked")
        return claims, grant
