"""OAuth 2.0 / OpenID Connect errors, each carrying its wire code (RFC 6749 §5.2, §4.1.2.1;
OpenID Connect Core §3.1.2.6; RFC 6750 §3.1; RFC 7009; RFC 9126; RFC 9449).

The tree::

    OAuthError
    ├── InvalidRequest            invalid_request
    ├── InvalidClient             invalid_client (401 at the token endpoint)
    ├── InvalidGrant              invalid_grant
    ├── UnauthorizedClient        unauthorized_client
    ├── UnsupportedGrantType      unsupported_grant_type
    ├── UnsupportedResponseType   unsupported_response_type
    ├── InvalidScope              invalid_scope
    ├── AccessDenied              access_denied
    ├── InvalidToken              invalid_token (401, RFC 6750)
    ├── LoginRequired             login_required
    ├── ConsentRequired           consent_required
    ├── RequestNotSupported       request_not_supported
    ├── RequestUriNotSupported    request_uri_not_supported
    ├── InvalidRequestUri         invalid_request_uri
    ├── InvalidDPoPProof          invalid_dpop_proof
    ├── UseDPoPNonce              use_dpop_nonce
    ├── ServerError               server_error (500)
    └── TemporarilyUnavailable    temporarily_unavailable (503)

``description`` goes to the client as ``error_description``: it must never quote a secret.
"""

from __future__ import annotations

from typing import ClassVar


class OAuthError(Exception):
    """Base: an error presented to an OAuth client in the protocol's own format."""

    error: ClassVar[str] = "invalid_request"
    status_code: ClassVar[int] = 400

    def __init__(self, description: str = "") -> None:
        super().__init__(description or self.error)
        self.description = description

    def body(self) -> dict[str, str]:
        body = {"error": self.error}
        if self.description:
            body["error_description"] = self.description
        return body


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    error = "invalid_client"
    status_code = 401


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class AccessDenied(OAuthError):
    error = "access_denied"
    status_code = 403


class InvalidToken(OAuthError):
    error = "invalid_token"
    status_code = 401


class LoginRequired(OAuthError):
    error = "login_required"


class ConsentRequired(OAuthError):
    error = "consent_required"


class RequestNotSupported(OAuthError):
    error = "request_not_supported"


class RequestUriNotSupported(OAuthError):
    error = "request_uri_not_supported"


class InvalidRequestUri(OAuthError):
    error = "invalid_request_uri"


class InvalidDPoPProof(OAuthError):
    error = "invalid_dpop_proof"


class UseDPoPNonce(OAuthError):
    error = "use_dpop_nonce"


class ServerError(OAuthError):
    error = "server_error"
    status_code = 500


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status_code = 503
