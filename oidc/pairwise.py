"""Pairwise subject identifiers (OpenID Connect Core 1.0 §8.1).

The sector is the host of the client's ``sector_identifier_uri`` when it has one, else the host
of its redirect URIs (registration refuses several hosts without a sector identifier). The
subject is a keyed hash of (sector, account): stable for as long as the ``pairwise-subject``
secret is (that purpose refuses rotation unless forced), and different for every sector, so two
relying parties in different sectors cannot link their users.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlsplit

from oidc.clients import Client


def sector_of(client: Client) -> str:
    """The sector identifier host (§8.1): from ``sector_identifier_uri``, else the redirect URIs.

    Clients without redirect URIs (machine clients) form a sector of their own.
    """
    if client.sector_identifier_uri:
        return urlsplit(client.sector_identifier_uri).hostname or client.sector_identifier_uri
    hosts = {urlsplit(uri).hostname or "" for uri in client.redirect_uris}
    if len(hosts) == 1:
        return hosts.pop()
    return "client:" + client.client_id


def pairwise_subject(secret: bytes, sector: str, account_id: str) -> str:
    """HMAC-SHA-256(secret, sector ‖ 0x00 ‖ account id), base64url without padding (43 chars).

    The separator keeps (sector, account) pairs from colliding by concatenation.
    """
    mac = hmac.new(secret, f"{sector}\x00{account_id}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")
