"""Errors of the FranceConnect simulator, each carrying how FranceConnect presents it.

The tree::

    SimulatorError
    ├── SimulatorConfigError      the configuration, key file or fixtures cannot run
    ├── ErrorPage                 shown to the browser as an HTML page (400), never redirected:
    │                             unknown client, unregistered redirect_uri, bad logout request
    │                             (FranceConnect shows its error page, code ``Y000400``)
    ├── AuthorizationError        redirected to the client's redirect_uri with error,
    │   │                         error_description, state and iss (OpenID Connect Core 1.0
    │   │                         §3.1.2.6, RFC 9207 §2)
    │   ├── InvalidAuthorizationRequest   invalid_request
    │   ├── UnsupportedResponseType       unsupported_response_type
    │   ├── InvalidScope                  invalid_scope
    │   ├── AccessDenied                  access_denied
    │   ├── RequestNotSupported           request_not_supported
    │   └── RequestUriNotSupported        request_uri_not_supported
    ├── TokenError                JSON body with Cache-Control: no-store (RFC 6749 §5.2)
    │   ├── InvalidRequest                invalid_request
    │   ├── InvalidClient                 invalid_client (401)
    │   ├── InvalidGrant                  invalid_grant
    │   └── UnsupportedGrantType          unsupported_grant_type
    └── InvalidToken              401 with WWW-Authenticate: Bearer error="invalid_token"
                                  (RFC 6750 §3.1)

Descriptions go to the client: they never quote a secret or a claim.
"""

from __future__ import annotations

from typing import ClassVar


class SimulatorError(Exception):
    """Base of every error raised by the simulator."""


class SimulatorConfigError(SimulatorError):
    """The simulator cannot start with this configuration; the message says why."""


class ErrorPage(SimulatorError):
    """A request the simulator must not redirect anywhere: the browser gets an error page."""

    def __init__(self, title: str, detail: str = "") -> None:
        super().__init__(title)
        self.title = title
        self.detail = detail


class AuthorizationError(SimulatorError):
    """An authorization error sent back to a redirect_uri already checked against the client."""

    error: ClassVar[str] = "invalid_request"

    def __init__(self, description: str, redirect_uri: str, state: str | None) -> None:
        super().__init__(description)
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state


class InvalidAuthorizationRequest(AuthorizationError):
    error = "invalid_request"


class UnsupportedResponseType(AuthorizationError):
    error = "unsupported_response_type"


class InvalidScope(AuthorizationError):
    error = "invalid_scope"


class AccessDenied(AuthorizationError):
    error = "access_denied"


class RequestNotSupported(AuthorizationError):
    error = "request_not_supported"


class RequestUriNotSupported(AuthorizationError):
    error = "request_uri_not_supported"


class TokenError(SimulatorError):
    """An error of the token endpoint (RFC 6749 §5.2)."""

    error: ClassVar[str] = "invalid_request"
    status_code: ClassVar[int] = 400

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class InvalidRequest(TokenError):
    error = "invalid_request"


class InvalidClient(TokenError):
    error = "invalid_client"
    status_code = 401


class InvalidGrant(TokenError):
    error = "invalid_grant"


class UnsupportedGrantType(TokenError):
    error = "unsupported_grant_type"


class InvalidToken(SimulatorError):
    """The bearer token is missing, unknown or expired (RFC 6750 §3.1)."""

    def __init__(self, description: str, *, missing: bool = False) -> None:
        super().__init__(description)
        self.description = description
        #: no credentials at all: RFC 6750 §3.1 asks for no error code in the challenge
        self.missing = missing
