"""The authorization request (RFC 6749 §4.1.1, OpenID Connect Core §3.1.2.1), validated.

Errors come in two kinds (RFC 6749 §4.1.2.1): before the client and redirect URI are known to be
genuine, nothing may be sent to the redirect URI — :class:`ErrorPage` is shown to the user;
after, errors go back to the client — :class:`ErrorRedirect` carries the wire error, ``state``
and the redirect URI, and the response also carries ``iss`` (RFC 9207).

Rules beyond the base specifications (RFC 9700, FAPI 2.0): PKCE with S256 for every client
(``plain`` refused, RFC 9700 §2.1.1); exact redirect URI matching, which may be omitted only when
exactly one is registered; ``response_type=code`` only; request objects are not supported
(``request_not_supported``) and ``request_uri`` must come from our pushed authorization request
endpoint (RFC 9126); unknown parameters are ignored. For FAPI 2.0 clients the request must come
through PAR and name its ``redirect_uri`` there (FAPI 2.0 Security Profile §5.3.2.2 items 3, 6).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from oidc.claims import ClaimsRequest, parse_claims_request
from oidc.clients import Client, GrantType, parse_scope
from oidc.errors import (
    InvalidRequest,
    OAuthError,
    RequestNotSupported,
    RequestUriNotSupported,
    UnauthorizedClient,
    UnsupportedResponseType,
)

PAR_URN_PREFIX = "urn:ietf:params:oauth:request_uri:"
PROMPTS = frozenset({"none", "login", "consent", "select_account"})
UI_LOCALES = ("fr", "en")
#: RFC 7636 §4.1-4.2: 43 to 128 unreserved characters (S256 challenges are exactly 43).
_PKCE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


class ErrorPage(Exception):
    """The client or redirect URI cannot be trusted: show the user a page, never redirect."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class ErrorRedirect(Exception):
    """An error to send back to the (verified) redirect URI."""

    def __init__(self, redirect_uri: str, state: str | None, error: OAuthError) -> None:
        super().__init__(error.description or error.error)
        self.redirect_uri = redirect_uri
        self.state = state
        self.error = error


@dataclass(frozen=True)
class AuthorizationRequest:
    client: Client
    redirect_uri: str
    #: whether redirect_uri was in the request (then the token request must repeat it)
    redirect_uri_given: bool
    scope: frozenset[str]
    state: str | None
    nonce: str | None
    code_challenge: str
    prompt: frozenset[str] = frozenset()
    max_age: int | None = None
    claims: ClaimsRequest = field(default_factory=lambda: ClaimsRequest({}, {}))
    ui_locale: str = "fr"
    id_token_hint: str | None = None
    login_hint: str | None = None
    acr_values: tuple[str, ...] = ()
    dpop_jkt: str | None = None
    #: the pushed request this came from (RFC 9126), if any
    request_uri: str | None = None
    #: the parameters as received (to resume after sign-in or consent)
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_openid(self) -> bool:
        return "openid" in self.scope


def response_url(redirect_uri: str, params: Mapping[str, str | None]) -> str:
    """The redirect URI with the response parameters added to its query (§4.1.2)."""
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if urlsplit(redirect_uri).query else "?"
    return f"{redirect_uri}{separator}{query}"


def error_url(issuer: str, redirect: ErrorRedirect) -> str:
    return response_url(
        redirect.redirect_uri,
        {
            "error": redirect.error.error,
            "error_description": redirect.error.description or None,
            "state": redirect.state,
            "iss": issuer,
        },
    )


ClientLookup = Callable[[str], Awaitable[Client | None]]
PushedLookup = Callable[[str, str], Awaitable[Mapping[str, str] | None]]


async def validate(
    params: Mapping[str, str],
    lookup: ClientLookup,
    pushed: PushedLookup,
    *,
    at_par: bool = False,
) -> AuthorizationRequest:
    """Validate an authorization request; raises :class:`ErrorPage` or :class:`ErrorRedirect`."""
    client_id = params.get("client_id")
    if not client_id:
        raise ErrorPage("invalid_request", "client_id is missing")
    client = await lookup(client_id)
    if client is None:
        raise ErrorPage("invalid_client", "this application is not registered")
    request_uri = params.get("request_uri")
    if request_uri is not None:
        if not request_uri.startswith(PAR_URN_PREFIX):
            redirect_uri, _ = _redirect_uri(client, params)  # a page if it is not genuine
            raise ErrorRedirect(
                redirect_uri,
                params.get("state"),
                RequestUriNotSupported("only request_uri values from /par are accepted"),
            )
        stored = await pushed(request_uri, client.client_id)
        if stored is None:
            raise ErrorPage("invalid_request_uri", "the pushed request is unknown or expired")
        params = {**stored, "request_uri": request_uri}
    redirect_uri, given = _redirect_uri(client, params)
    try:
        return _checked(client, params, redirect_uri, given, request_uri, at_par=at_par)
    except OAuthError as exc:
        raise ErrorRedirect(redirect_uri, params.get("state"), exc) from None


def _checked(
    client: Client,
    params: Mapping[str, str],
    redirect_uri: str,
    given: bool,
    request_uri: str | None,
    *,
    at_par: bool = False,
) -> AuthorizationRequest:
    """The checks whose failures go back to the client (raised as :class:`OAuthError`)."""
    if "request" in params:
        raise RequestNotSupported("request objects are not supported; use /par")
    if client.requires_par and request_uri is None and not at_par:
        raise InvalidRequest("this client must push its requests to /par (RFC 9126)")
    if client.fapi2 and at_par and not given:
        raise InvalidRequest("redirect_uri is required in a pushed request (FAPI 2.0)")
    if params.get("response_type") != "code":
        raise UnsupportedResponseType("only response_type=code is supported")
    if not client.check_grant_type(GrantType.AUTHORIZATION_CODE.value):
        raise UnauthorizedClient("the client is not registered for the code flow")
    try:
        requested = parse_scope(params.get("scope", ""))
    except ValueError as exc:
        raise InvalidRequest(f"scope: {exc}") from None
    # OpenID Connect Core §3.1.2.1: scope values not understood are ignored; the client gets
    # only what it is registered for.
    scope = (requested & client.scope) | (requested & {"openid"})
    locales = [tag.split("-")[0].lower() for tag in params.get("ui_locales", "").split()]
    return AuthorizationRequest(
        client=client,
        redirect_uri=redirect_uri,
        redirect_uri_given=given,
        scope=frozenset(scope),
        state=params.get("state"),
        nonce=params.get("nonce"),
        code_challenge=_code_challenge(params),
        prompt=_prompt(params),
        max_age=_max_age(params),
        claims=parse_claims_request(params.get("claims")),
        ui_locale=next((tag for tag in locales if tag in UI_LOCALES), "fr"),
        id_token_hint=params.get("id_token_hint"),
        login_hint=params.get("login_hint"),
        acr_values=tuple(params.get("acr_values", "").split()),
        dpop_jkt=params.get("dpop_jkt"),
        request_uri=request_uri,
        params=dict(params),
    )


def _code_challenge(params: Mapping[str, str]) -> str:
    """RFC 7636 §4.3, with S256 required of every client (RFC 9700 §2.1.1)."""
    challenge, method = params.get("code_challenge"), params.get("code_challenge_method")
    if challenge is None:
        raise InvalidRequest("code_challenge is required (PKCE, RFC 7636)")
    if method != "S256":
        raise InvalidRequest("code_challenge_method must be S256")
    if not _PKCE.fullmatch(challenge):
        raise InvalidRequest("code_challenge is malformed")
    return challenge


def _prompt(params: Mapping[str, str]) -> frozenset[str]:
    prompt = frozenset(params.get("prompt", "").split())
    if prompt - PROMPTS:
        raise InvalidRequest("prompt has an unknown value")
    if "none" in prompt and len(prompt) > 1:
        raise InvalidRequest("prompt=none cannot be combined with other values")
    return prompt


def _max_age(params: Mapping[str, str]) -> int | None:
    if "max_age" not in params:
        return None
    if not params["max_age"].isdigit():
        raise InvalidRequest("max_age must be a non-negative integer")
    return int(params["max_age"])


def _redirect_uri(client: Client, params: Mapping[str, str]) -> tuple[str, bool]:
    given = params.get("redirect_uri")
    if given is None:
        default = client.get_default_redirect_uri()
        if default is None:
            raise ErrorPage("invalid_request", "redirect_uri is required: several are registered")
        return default, False
    if given not in client.redirect_uris:  # exact string comparison (RFC 9700 §4.1.3)
        raise ErrorPage("invalid_request", "this redirect_uri is not registered for the client")
    return given, True


__all__ = [
    "PAR_URN_PREFIX",
    "AuthorizationRequest",
    "ErrorPage",
    "ErrorRedirect",
    "error_url",
    "response_url",
    "validate",
]
