"""OpenID Connect Back-Channel Logout 1.0: when a citizen's session ends, every relying party
that received tokens in it and registered a ``backchannel_logout_uri`` gets a logout token.

The logout token (§2.4) is a JWT signed like the client's ID tokens, ``typ: logout+jwt``
(§2.4, RFC 8725 §3.11), with ``iss``, ``aud``, ``iat``, ``exp``, ``jti``, ``events`` holding
``http://schemas.openid.net/event/backchannel-logout``, and both ``sub`` (pairwise) and ``sid``;
never a ``nonce``. It is POSTed as ``logout_token`` (§2.5); failures are logged, not retried
(§2.8: the OP may give up).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import datetime

import httpx

from keys.keyring import Keyring
from oidc.clients import Client
from oidc.id_tokens import sign

EVENT = "http://schemas.openid.net/event/backchannel-logout"
log = logging.getLogger("nicecard.oidc.backchannel")


def logout_token(
    keyring: Keyring, client: Client, *, issuer: str, sub: str, sid: str, now: datetime
) -> str:
    iat = int(now.timestamp())
    return sign(
        keyring,
        client.id_token_signed_response_alg,
        {
            "iss": issuer,
            "aud": client.client_id,
            "iat": iat,
            "exp": iat + 120,
            "jti": secrets.token_urlsafe(16),
            "events": {EVENT: {}},
            "sub": sub,
            "sid": sid,
        },
        typ="logout+jwt",
    )


async def notify(
    http: httpx.AsyncClient, deliveries: Iterable[tuple[Client, str]], timeout: float = 5.0
) -> int:
    """POST each logout token; returns how many relying parties answered 200 (§2.8)."""
    delivered = 0
    for client, token in deliveries:
        assert client.backchannel_logout_uri is not None
        try:
            response = await http.post(
                client.backchannel_logout_uri,
                data={"logout_token": token},
                headers={"Cache-Control": "no-store"},
                timeout=timeout,
            )
        except httpx.HTTPError as exc:
            log.warning(
                "back-channel logout not delivered",
                extra={"client_id": client.client_id, "error": type(exc).__name__},
            )
            continue
        if response.status_code == 200:
            delivered += 1
        else:
            log.warning(
                "back-channel logout refused",
                extra={"client_id": client.client_id, "status": response.status_code},
            )
    return delivered
