"""Errors raised by the ``identity`` package.

The tree::

    IdentityError
    ├── ConfigurationError     settings or files that cannot run (named precisely)
    ├── NotReady               a dependency (database, keys) is not available yet
    └── SignInError            a FranceConnect sign-in could not complete
        ├── SignInCancelled        the citizen cancelled, or FranceConnect answered an error
        ├── SignInExpired          no pending sign-in matches (wrong, replayed or expired state)
        ├── FranceConnectUnavailable   timeout, connection failure or 5xx from FranceConnect
        └── FranceConnectRejected      an answer failed verification (one error for every
                                       token failure, so errors are no oracle)

Messages are safe to show and to log: they never quote personal data.
"""

from __future__ import annotations


class IdentityError(Exception):
    """Base of every error raised by ``identity``."""


class ConfigurationError(IdentityError):
    """The configuration cannot run; the message names the setting."""


class NotReady(IdentityError):
    """A dependency of the service is not available."""


class SignInError(IdentityError):
    """A sign-in through FranceConnect could not complete; ``reason`` is a stable code for the
    citizen page and the logs (never personal data)."""

    reason = "signin_failed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason:
            self.reason = reason


class SignInCancelled(SignInError):
    reason = "cancelled"


class SignInExpired(SignInError):
    reason = "expired"


class FranceConnectUnavailable(SignInError):
    reason = "unavailable"


class FranceConnectRejected(SignInError):
    reason = "rejected"
