"""What a simulator instance is configured with: its issuer, the registered service providers
("fournisseurs de service") and its secrets.

Every absolute URL the simulator publishes or redirects to derives from ``issuer``, never from the
incoming request, so the same app works mounted (``app.mount("/fc-sim", ...)``) and standalone.
FranceConnect v2 publishes everything under ``<base>/api/v2`` (FranceConnect documentation,
*Fournisseur de service › Documentation technique › Endpoints*), and so does the simulator: the
issuer must end with ``/api/v2``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from identity.fcsim.errors import SimulatorConfigError

#: The path prefix of every FranceConnect v2 endpoint, relative to the simulator's root.
API_PREFIX = "/api/v2"

#: The two signing algorithms FranceConnect v2 offers (documentation, *Migration v1 → v2*:
#: "Seuls deux algorithmes de signature sont disponibles : ES256 (recommandé) ; RS256").
SIGNING_ALGS = ("ES256", "RS256")

#: Algorithms accepted for ``private_key_jwt`` client assertions (RFC 7523; no ``none``, no HMAC).
ASSERTION_ALGS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")


@dataclass(frozen=True)
class SimulatorClient:
    """A registered service provider, as FranceConnect's partner space would hold it.

    ``client_secret`` enables ``client_secret_post``; ``jwks`` (a public JWK Set) enables
    ``private_key_jwt`` (RFC 7523 client assertions). A client may have both.
    """

    client_id: str
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    client_secret: str | None = None
    jwks: dict[str, Any] | None = None
    id_token_signed_response_alg: str = "ES256"  # noqa: S105 (an algorithm name)
    userinfo_signed_response_alg: str = "ES256"

    def __post_init__(self) -> None:
        if not self.client_id:
            raise SimulatorConfigError("a client needs a client_id")
        if self.client_secret is None and self.jwks is None:
            raise SimulatorConfigError(
                f"client {self.client_id!r}: set client_secret or jwks (no public clients)"
            )
        if self.client_secret is not None and len(self.client_secret) < 16:
            raise SimulatorConfigError(f"client {self.client_id!r}: client_secret is too short")
        if self.jwks is not None and not self.jwks.get("keys"):
            raise SimulatorConfigError(f"client {self.client_id!r}: jwks has no keys")
        for name in ("id_token_signed_response_alg", "userinfo_signed_response_alg"):
            if getattr(self, name) not in SIGNING_ALGS:
                raise SimulatorConfigError(
                    f"client {self.client_id!r}: {name} must be one of {', '.join(SIGNING_ALGS)}"
                )
        if not self.redirect_uris:
            raise SimulatorConfigError(f"client {self.client_id!r}: no redirect_uris")
        for uri in (*self.redirect_uris, *self.post_logout_redirect_uris):
            _require_absolute(uri, f"client {self.client_id!r}: redirect URI")


@dataclass(frozen=True)
class SimulatorConfig:
    """One simulator instance. ``clock`` drives every expiry (codes, tokens, assertions)."""

    issuer: str
    clients: tuple[SimulatorClient, ...]
    sub_secret: bytes
    key_file: Path | None = None
    slow_seconds: float = 30.0
    clock: Callable[[], float] = field(default=time.time)

    def __post_init__(self) -> None:
        _require_absolute(self.issuer, "issuer")
        parts = urlsplit(self.issuer)
        if parts.query or parts.fragment or self.issuer.endswith("/"):
            raise SimulatorConfigError(
                "issuer must have no query, fragment or trailing slash (OpenID Connect "
                "Discovery 1.0 §3)"
            )
        if not parts.path.endswith(API_PREFIX):
            raise SimulatorConfigError(f"issuer must end with {API_PREFIX} (got {self.issuer})")
        if len(self.sub_secret) < 16:
            raise SimulatorConfigError("sub_secret must be at least 16 bytes")
        ids = [client.client_id for client in self.clients]
        if len(set(ids)) != len(ids):
            raise SimulatorConfigError("client ids must be unique")
        if self.slow_seconds < 0:
            raise SimulatorConfigError("slow_seconds must not be negative")

    def client(self, client_id: str) -> SimulatorClient | None:
        for client in self.clients:
            if client.client_id == client_id:
                return client
        return None

    def endpoint(self, name: str) -> str:
        """The absolute URL of one endpoint, e.g. ``endpoint("token")``."""
        return f"{self.issuer}/{name}"

    @property
    def cookie_path(self) -> str:
        """The simulator's browser cookie is scoped to the issuer's path."""
        return urlsplit(self.issuer).path

    @property
    def secure_cookies(self) -> bool:
        return urlsplit(self.issuer).scheme == "https"


def _require_absolute(url: str, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SimulatorConfigError(f"{what} must be an absolute http(s) URL (got {url!r})")
    if parts.fragment:
        raise SimulatorConfigError(f"{what} must not have a fragment (RFC 6749 §3.1.2)")
