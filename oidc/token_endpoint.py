"""The token endpoint (RFC 6749 §3.2): request parsing, grant dispatch, and the client
credentials grant (RFC 6749 §4.4) issuing JWT access tokens (RFC 9068).

Parsing (RFC 6749 §3.2, §3.1): ``POST`` with ``application/x-www-form-urlencoded`` UTF-8;
parameters without a value are treated as omitted; no parameter may appear twice; query
parameters are merged with the body (as Authlib expects), except credentials, which "MUST NOT
be included in the request URI" (§2.3.1).

The client credentials grant runs here, on the event loop, without Authlib: it does no I/O
once the client is cached, and a thread hop per request costs more than the whole grant (see
``bench/README.md``). Grants that need Authlib's machinery (the authorization code flow) are
registered with :meth:`TokenEndpoint.register_grant` and run it off the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from oidc.access_tokens import AccessTokenIssuer
from oidc.client_auth import ClientAuthenticator, read_client_credentials
from oidc.clients import Client, GrantType, format_scope, parse_scope
from oidc.dpop import ALGS as DPOP_ALGS
from oidc.dpop import DPoPVerifier
from oidc.errors import (
    InvalidDPoPProof,
    InvalidRequest,
    InvalidScope,
    UnauthorizedClient,
    UnsupportedGrantType,
)

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
#: The largest token request body read (an assertion and a code verifier fit many times).
MAX_BODY_BYTES = 65536
MAX_PARAMETERS = 64
#: Parameters that carry a credential: refused in the query string (RFC 6749 §2.3.1).
CREDENTIAL_PARAMETERS = frozenset(
    {"client_secret", "client_assertion", "code", "code_verifier", "refresh_token"}
)
#: RFC 6749 §5.1: token responses are not cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def printable(value: str, limit: int = 40) -> str:
    """``value`` reduced to what an ``error_description`` may hold (RFC 6749 §5.2: %x20-21,
    %x23-5B, %x5D-7E), quoted and cut short, so echoing input can break nothing."""
    kept = "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in value)
    return "'" + (kept[:limit] + "..." if len(kept) > limit else kept) + "'"


def _pairs(text: str, where: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_PARAMETERS,
        )
    except UnicodeDecodeError:
        raise InvalidRequest(f"the {where} is not UTF-8") from None
    except ValueError:
        raise InvalidRequest(f"the {where} has too many parameters") from None


def form_parameters(body: bytes, content_type: str | None, query: str = "") -> dict[str, str]:
    """The parameters of a token-style request (token, introspection, revocation, PAR).

    Raises :class:`InvalidRequest` for a wrong content type, a body that is too large or not
    UTF-8, a repeated parameter, or a credential in the query string.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != FORM_CONTENT_TYPE:
        raise InvalidRequest(f"the request body must be {FORM_CONTENT_TYPE}")
    if len(body) > MAX_BODY_BYTES:
        raise InvalidRequest("the request body is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("the request body is not UTF-8") from None
    params: dict[str, str] = {}
    sources = [("body", _pairs(text, "request body"))]
    if query:
        sources.append(("query", _pairs(query, "query")))
    for source, pairs in sources:
        for name, value in pairs:
            if value == "":
                continue  # RFC 6749 §3.1: "treated as if they were omitted"
            if source == "query" and name in CREDENTIAL_PARAMETERS:
                raise InvalidRequest(f"{name} must be sent in the request body, not the URI")
            if name in params:
                raise InvalidRequest(f"the {printable(name)} parameter is repeated")
            params[name] = value
    return params


def granted_scope(requested: str | None, client: Client) -> frozenset[str]:
    """RFC 6749 §3.3 for a client acting for itself: the requested scope if the client may
    have all of it, every scope it may have if it asked for none, ``invalid_scope`` otherwise.
    Scopes that need a citizen (``openid``...) are never granted here."""
    allowed = client.machine_scope
    if requested is None:
        if not allowed:
            raise InvalidScope("the client has no scope to default to; request one")
        return allowed
    try:
        scope = parse_scope(requested)
    except ValueError as exc:
        raise InvalidScope(str(exc)) from None
    if not scope:
        raise InvalidScope("the scope parameter is empty")
    refused = scope - allowed
    if refused:
        raise InvalidScope(f"not allowed for this client: {format_scope(refused)}")
    return scope


GrantHandler = Callable[[Mapping[str, str], Client, str | None], Awaitable[dict[str, Any]]]
"""A grant: the request parameters, the authenticated client and the DPoP key thumbprint
(``jkt``, RFC 9449; None without a proof) in, the token response out."""


@dataclass(frozen=True)
class TokenHttpRequest:
    """What the HTTP layer hands over: parameters already parsed by :func:`form_parameters`."""

    params: Mapping[str, str]
    authorization: str | None = None
    dpop: str | None = None


class TokenEndpoint:
    """Dispatches token requests by ``grant_type`` after authenticating the client."""

    def __init__(
        self, authenticator: ClientAuthenticator, access_tokens: AccessTokenIssuer
    ) -> None:
        self._authenticator = authenticator
        self._access_tokens = access_tokens
        self._grants: dict[str, GrantHandler] = {
            GrantType.CLIENT_CREDENTIALS.value: self._client_credentials
        }
        #: RFC 9449 proof checking, and this endpoint's URL (the proofs' ``htu``)
        self.dpop: DPoPVerifier | None = None
        self.url = ""

    @property
    def grant_types(self) -> tuple[str, ...]:
        return tuple(self._grants)

    def register_grant(self, grant_type: str, handler: GrantHandler) -> None:
        """Add a grant (the authorization code and refresh token grants come this way)."""
        self._grants[grant_type] = handler

    async def handle(self, request: TokenHttpRequest) -> dict[str, Any]:
        """The token response body (RFC 6749 §5.1), or an :class:`oidc.errors.OAuthError`."""
        grant_type = request.params.get("grant_type")
        if grant_type is None:
            raise InvalidRequest("grant_type is required")
        handler = self._grants.get(grant_type)
        if handler is None:
            raise UnsupportedGrantType(f"grant_type {printable(grant_type)} is not supported")
        credentials = read_client_credentials(request.params, request.authorization)
        client = await self._authenticator.authenticate(credentials)
        if not client.check_grant_type(grant_type):
            raise UnauthorizedClient(f"the client is not registered for {grant_type}")
        jkt = None
        if request.dpop is not None and self.dpop is not None:
            jkt = await self.dpop.check(
                request.dpop, method="POST", url=self.url, algs=client.allowed_algs(DPOP_ALGS)
            )
        if jkt is None and client.requires_dpop:
            # RFC 9449 §5.2 (dpop_bound_access_tokens) and FAPI 2.0 Security Profile §5.3.2.1
            # item 4; RFC 9449 names no code for a missing proof: the one for a bad proof (§5).
            raise InvalidDPoPProof("this client's tokens are DPoP-bound: send a DPoP proof")
        return await handler(request.params, client, jkt)

    async def _client_credentials(
        self, params: Mapping[str, str], client: Client, jkt: str | None
    ) -> dict[str, Any]:
        """RFC 6749 §4.4.2-§4.4.3: a confidential client asks for a token for itself; no
        refresh token. The access token's ``sub`` is the client (RFC 9068 §2.2); with a DPoP
        proof it is bound to the proof's key (RFC 9449 §6: ``cnf.jkt``)."""
        scope = granted_scope(params.get("scope"), client)
        issued = self._access_tokens.issue(
            client_id=client.client_id,
            sub=client.client_id,
            scope=scope,
            extra={"cnf": {"jkt": jkt}} if jkt else None,
        )
        return {
            "access_token": issued.token,
            "token_type": "DPoP" if jkt else "Bearer",
            "expires_in": issued.expires_in,
            "scope": format_scope(scope),
        }
