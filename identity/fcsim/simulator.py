"""One simulator instance: configuration, keys, identities, memory, and the tokens it mints.

The routes (``provider``, ``token``, ``login``) are thin; what FranceConnect puts in its answers is
decided here: the authorization response (OpenID Connect Core 1.0 §3.1.2.5 with RFC 9207's
``iss``), the ID token (§2, §3.1.3.6) and the signed UserInfo response (§5.3.2).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Any

from starlette.responses import RedirectResponse, Response

from identity.fcsim.config import SimulatorConfig
from identity.fcsim.errors import AuthorizationError
from identity.fcsim.identities import TestIdentity, load_identities, pairwise_sub
from identity.fcsim.keys import SigningKeys
from identity.fcsim.pages import Pages, redirect
from identity.fcsim.store import AuthorizationRequest, Grant, Store

BROWSER_COOKIE = "fcsim_browser"


@dataclass
class Simulator:
    config: SimulatorConfig
    keys: SigningKeys
    identities: dict[str, TestIdentity]
    store: Store
    pages: Pages = field(default_factory=Pages)

    @classmethod
    def build(cls, config: SimulatorConfig) -> Simulator:
        return cls(
            config=config,
            keys=SigningKeys.load_or_create(config.key_file),
            identities=load_identities(),
            store=Store(config.clock),
        )

    def now(self) -> int:
        return int(self.store.now())

    def sub(self, client_id: str, login: str) -> str:
        return pairwise_sub(self.config.sub_secret, client_id, self.identities[login])

    # -- browser answers ----------------------------------------------------------------------

    def error_redirect(self, exc: AuthorizationError) -> RedirectResponse:
        """An authorization error response (OpenID Connect Core 1.0 §3.1.2.6, RFC 9207 §2)."""
        params = {"error": exc.error, "error_description": exc.description}
        if exc.state is not None:
            params["state"] = exc.state
        params["iss"] = self.config.issuer
        return redirect(exc.redirect_uri, params)

    def code_redirect(
        self, request: AuthorizationRequest, login: str, sid: str, auth_time: int
    ) -> RedirectResponse:
        """The successful authorization response: ``code``, ``state`` and ``iss``."""
        code = self.store.issue_code(Grant(request, login, sid, auth_time))
        return redirect(
            request.redirect_uri,
            {"code": code, "state": request.state, "iss": self.config.issuer},
        )

    def set_browser_cookie(self, response: Response, browser_id: str) -> None:
        response.set_cookie(
            BROWSER_COOKIE,
            browser_id,
            path=self.config.cookie_path,
            httponly=True,
            samesite="lax",
            secure=self.config.secure_cookies,
        )

    # -- tokens -------------------------------------------------------------------------------

    def id_token(self, grant: Grant, access_token: str) -> str:
        """The ID token (OpenID Connect Core 1.0 §2), valid 60 s like FranceConnect's.

        ``amr`` only when the client asked for it with the claims parameter (FranceConnect
        documentation, *Méthodes d'authentification (amr)*).
        """
        request = grant.request
        client = self.config.client(request.client_id)
        assert client is not None
        now = self.now()
        claims: dict[str, Any] = {
            "iss": self.config.issuer,
            "sub": self.sub(client.client_id, grant.login),
            "aud": client.client_id,
            "exp": now + 60,
            "iat": now,
            "auth_time": grant.auth_time,
            "nonce": request.nonce,
            "acr": request.acr,
            "sid": grant.sid,
            "at_hash": _at_hash(access_token),
        }
        if request.want_amr:
            claims["amr"] = list(self.identities[grant.login].amr)
        return self.keys.sign(claims, client.id_token_signed_response_alg)

    def userinfo(self, grant: Grant, token_expires_at: float) -> str:
        """The UserInfo response as a JWT (OpenID Connect Core 1.0 §5.3.2): ``iss``, ``aud``,
        ``sub`` and the claims of the granted scopes, expiring with the access token."""
        client = self.config.client(grant.request.client_id)
        assert client is not None
        identity = self.identities[grant.login]
        claims: dict[str, Any] = {
            "iss": self.config.issuer,
            "aud": client.client_id,
            "sub": self.sub(client.client_id, grant.login),
            "iat": self.now(),
            "exp": int(token_expires_at),
            **identity.released(grant.request.scopes),
        }
        return self.keys.sign(claims, client.userinfo_signed_response_alg)


def _at_hash(access_token: str) -> str:
    """OpenID Connect Core 1.0 §3.1.3.6: left half of SHA-256 (ES256 and RS256 alike)."""
    digest = hashlib.sha256(access_token.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode("ascii")
