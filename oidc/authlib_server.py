"""Authlib's protocol core, adapted to this service.

:class:`AuthlibServer` is Authlib's ``AuthorizationServer`` with:

- requests built by the HTTP layer (:class:`OAuthRequest`: the parameters parsed once by
  :func:`oidc.token_endpoint.form_parameters`, query and body merged as Authlib expects, the
  canonical endpoint URL);
- client authentication methods registered with ``register_client_auth_method`` that call the
  service's own :class:`oidc.client_auth.ClientAuthenticator` (pyjwt for assertions, the replay
  store, constant-time secrets), never Authlib's JOSE or secret check;
- Authlib's errors re-raised as :mod:`oidc.errors` classes, which ``identity.http_errors``
  turns into responses.

Authlib is synchronous: everything here runs in a worker thread (``run_in_threadpool``), and
reaches the asynchronous parts (client directory, authenticator) through
``anyio.from_thread.run``.

The introspection (RFC 7662) and revocation (RFC 7009) endpoints are Authlib's, with the
storage methods implemented for JWT access tokens (:mod:`oidc.access_tokens`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, ClassVar

import anyio.from_thread
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint

from keys.keyring import Clock, utc_now
from oidc import errors
from oidc.access_tokens import AccessToken, AccessTokenVerifier
from oidc.client_auth import ClientAuthenticator, ClientCredentials, read_client_credentials
from oidc.clients import AuthMethod, Client, ClientDirectory, format_scope
from oidc.tables import SqlRevocationList

#: Authlib error codes and the service's classes that carry them.
_ERRORS: dict[str, type[errors.OAuthError]] = {
    cls.error: cls
    for cls in (
        errors.InvalidRequest,
        errors.InvalidClient,
        errors.InvalidGrant,
        errors.UnauthorizedClient,
        errors.UnsupportedGrantType,
        errors.UnsupportedResponseType,
        errors.InvalidScope,
        errors.AccessDenied,
        errors.InvalidToken,
        errors.LoginRequired,
        errors.ConsentRequired,
        errors.RequestNotSupported,
        errors.RequestUriNotSupported,
        errors.InvalidRequestUri,
        errors.InvalidDPoPProof,
        errors.UseDPoPNonce,
        errors.TemporarilyUnavailable,
    )
}


def translate(error: OAuth2Error) -> errors.OAuthError:
    """The service's error for an Authlib error (same wire code and description)."""
    cls = _ERRORS.get(str(error.error), errors.ServerError)
    return cls(str(error.description or ""))


class OAuthRequest(OAuth2Request):  # type: ignore[misc]
    """An Authlib request from what the HTTP layer already parsed."""

    def __init__(
        self,
        uri: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        query: Mapping[str, str] | None = None,
        method: str = "POST",
    ) -> None:
        super().__init__(method, uri, headers=headers)
        self.payload = BasicOAuth2Payload(dict(params))
        self._form = dict(params)
        self._args = dict(query or {})
        self.credentials: ClientCredentials | None = None

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return self._args


class AuthlibServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's authorization server; call it from a worker thread only."""

    def __init__(self, directory: ClientDirectory, authenticator: ClientAuthenticator) -> None:
        super().__init__(scopes_supported=None)
        self._directory = directory
        self._authenticator = authenticator
        for method in AuthMethod:
            self.register_client_auth_method(
                method.value, functools.partial(self._authenticate, method)
            )

    # -- what Authlib asks of a framework integration ------------------------------------------

    def query_client(self, client_id: str) -> Client | None:
        client: Client | None = anyio.from_thread.run(self._directory.get, client_id)
        return client

    def save_token(self, token: dict[str, Any], request: OAuthRequest) -> None:
        """JWT access tokens are not stored; grants that issue refresh tokens override this."""

    def create_oauth2_request(self, request: OAuthRequest) -> OAuthRequest:
        return request

    def create_json_request(self, request: Any) -> Any:
        """Authlib's hook for JSON-bodied endpoints; every OAuth endpoint here is form-encoded."""
        raise errors.InvalidRequest("this endpoint takes application/x-www-form-urlencoded")

    def handle_response(
        self, status: int, body: Any, headers: Any
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, list(headers)

    def handle_error_response(self, request: OAuthRequest, error: OAuth2Error) -> None:
        raise translate(error)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signals."""

    # -- client authentication through the service's authenticator -----------------------------

    def _authenticate(
        self, method: AuthMethod, _query_client: Any, request: OAuthRequest
    ) -> Client | None:
        """Authlib tries each method the endpoint allows; only the one the request uses runs."""
        if request.credentials is None:
            request.credentials = read_client_credentials(
                request.form, request.headers.get("Authorization")
            )
        if request.credentials.method is not method:
            return None
        client: Client = anyio.from_thread.run(
            self._authenticator.authenticate, request.credentials
        )
        return client


class _Token:
    """What Authlib's endpoints ask of a token."""

    def __init__(self, claims: AccessToken, revoked: bool) -> None:
        self.claims = claims
        self._revoked = revoked

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.claims.client_id

    def is_expired(self) -> bool:
        return False  # the verifier refused expired tokens already

    def is_revoked(self) -> bool:
        return self._revoked


class _TokenLookup:
    def __init__(self, verifier: AccessTokenVerifier, revocations: SqlRevocationList) -> None:
        self.verifier = verifier
        self.revocations = revocations

    def find(self, token: str) -> _Token | None:
        try:
            claims = self.verifier.verify(token)
        except errors.InvalidToken:
            return None
        return _Token(claims, self.revocations.is_revoked(claims.jti))


def _require_token(request: OAuthRequest) -> None:
    # A token_type_hint the server does not know is ignored (RFC 7009 §2.1, RFC 7662 §2.1).
    if "token" not in request.form:
        raise errors.InvalidRequest("token is required")


class IntrospectionEndpoint(_IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662 for confidential clients. A client may introspect the tokens issued to it and
    those whose ``aud`` names it; for any other token the answer is ``{"active": false}``
    (§2.2), so a client learns nothing about tokens of other sectors."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = [m.value for m in AuthMethod if m.confidential]

    def __init__(self, server: AuthlibServer, lookup: _TokenLookup) -> None:
        super().__init__(server)
        self._lookup = lookup

    def check_params(self, request: OAuthRequest, client: Client) -> None:
        _require_token(request)

    def query_token(self, token_string: str, token_type_hint: str | None) -> _Token | None:
        return self._lookup.find(token_string)

    def check_permission(self, token: _Token, client: Client, request: OAuthRequest) -> bool:
        return client.client_id == token.claims.client_id or client.client_id in token.claims.aud

    def introspect_token(self, token: _Token) -> dict[str, Any]:
        claims = token.claims
        body: dict[str, Any] = {
            "active": True,
            "token_type": "Bearer",
            "client_id": claims.client_id,
            "sub": claims.sub,
            "aud": claims.aud[0] if len(claims.aud) == 1 else list(claims.aud),
            "iss": claims.iss,
            "exp": claims.exp,
            "iat": claims.iat,
            "jti": claims.jti,
        }
        if claims.scope:
            body["scope"] = format_scope(claims.scope)
        return body


class RevocationEndpoint(_RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009 for every client, public ones included (§2.1). A JWT access token's ``jti`` is
    listed as revoked until the token expires; an invalid or unknown token is answered 200
    (§2.2). Revoking a token issued to another client is refused (§2.1)."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = [m.value for m in AuthMethod]

    def __init__(self, server: AuthlibServer, lookup: _TokenLookup, clock: Clock = utc_now) -> None:
        super().__init__(server)
        self._lookup = lookup
        self._clock = clock

    def check_params(self, request: OAuthRequest, client: Client) -> None:
        _require_token(request)

    def query_token(self, token_string: str, token_type_hint: str | None) -> _Token | None:
        return self._lookup.find(token_string)

    def revoke_token(self, token: _Token, request: OAuthRequest) -> None:
        claims = token.claims
        self._lookup.revocations.revoke(
            claims.jti, claims.client_id, claims.expires_at(), self._clock()
        )


def token_endpoints(
    server: AuthlibServer,
    verifier: AccessTokenVerifier,
    revocations: SqlRevocationList,
    clock: Clock = utc_now,
) -> None:
    """Register the introspection and revocation endpoints on ``server``."""
    lookup = _TokenLookup(verifier, revocations)
    server.register_endpoint(IntrospectionEndpoint(server, lookup))
    server.register_endpoint(RevocationEndpoint(server, lookup, clock))
