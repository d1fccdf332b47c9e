"""Dynamic client registration (RFC 7591), behind an initial access token (§3: the server
decides who may register).

The service assigns the ``client_id`` (and the secret, for secret-based methods); a registered
client is entitled to ``sub`` only and to the scopes ``openid`` and ``offline_access``: claims
and machine scopes (``acts:write``...) are granted by an operator (``nicecard clients``), never by
the client itself. Redirect URIs with a fragment, non-https URIs off loopback, and unknown
metadata are refused with ``invalid_redirect_uri`` / ``invalid_client_metadata`` (§3.2.2), and
so is a ``sector_identifier_uri`` whose document does not list every redirect URI (OpenID Connect
Registration §5, :mod:`oidc.sector`). A client may register itself under the FAPI 2.0 Security
Profile (``security_profile``): that only adds constraints.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from oidc.clients import Client, ClientRegistry, InvalidClientMetadata, client_from_metadata
from oidc.secrets import generate_client_secret, hash_client_secret
from oidc.sector import SectorFetch, verify_sector_identifier

SELF_REGISTERED_SCOPES = frozenset({"openid", "offline_access"})
#: Members a client may not set for itself.
OPERATOR_ONLY = frozenset({"client_id", "claims", "source"})


def register(
    metadata: Mapping[str, Any],
    registry: ClientRegistry,
    now: datetime,
    *,
    sector_fetch: SectorFetch,
) -> tuple[Client, str | None, dict[str, Any]]:
    """Register a client; returns it, its secret (shown once) and the RFC 7591 §3.2.1 response.

    Blocking (``sector_fetch`` goes to the network): call it from a worker thread."""
    forbidden = OPERATOR_ONLY & set(metadata)
    if forbidden:
        raise InvalidClientMetadata(f"set by the operator only: {', '.join(sorted(forbidden))}")
    client_id = "dyn-" + secrets.token_urlsafe(16)
    client = client_from_metadata({**metadata, "client_id": client_id}, source="registration")
    if client.scope - SELF_REGISTERED_SCOPES:
        raise InvalidClientMetadata(
            "scope: a registered client may ask for openid and offline_access only"
        )
    verify_sector_identifier(client, sector_fetch)
    secret = generate_client_secret() if client.token_endpoint_auth_method.uses_secret else None
    if secret is not None:
        client = dataclasses.replace(
            client, secret_hash=hash_client_secret(secret), secret_rotated_at=now
        )
    registry.add(client)
    body = {
        **client.metadata(),
        "client_id_issued_at": int(now.timestamp()),
    }
    if secret is not None:
        body["client_secret"] = secret
        body["client_secret_expires_at"] = 0
    return client, secret, body
