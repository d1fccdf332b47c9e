"""Errors raised by the ``identity`` package.

The tree::

    IdentityError
    ├── ConfigurationError     settings or files that cannot run (named precisely)
    └── NotReady               a dependency (database, keys) is not available yet

Messages are safe to show and to log: they never quote personal data.
"""

from __future__ import annotations


class IdentityError(Exception):
    """Base of every error raised by ``identity``."""


class ConfigurationError(IdentityError):
    """The configuration cannot run; the message names the setting."""


class NotReady(IdentityError):
    """A dependency of the service is not available."""
