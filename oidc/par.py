"""Pushed authorization requests (RFC 9126).

A client authenticates at ``/par`` and pushes its authorization parameters; it gets back a
one-time ``request_uri`` (``urn:ietf:params:oauth:request_uri:<random>``) valid 60 seconds, and
sends the browser to ``/authorize?client_id=...&request_uri=...``. The pushed parameters are
validated like an authorization request at push time (§2.1) and again at use. The stored value
is keyed by the SHA-256 of the URI; it is spent when a code is issued from it (§4: one-time,
though a reload before that is tolerated).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from oidc.authorization import PAR_URN_PREFIX
from oidc.grants import digest
from oidc.tables import metadata

PAR_TTL = timedelta(seconds=60)

oauth_par = sa.Table(
    "oauth_par",
    metadata,
    sa.Column("uri_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("client_id", sa.String(255), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("used_at", sa.DateTime(timezone=True)),
)


class PushedRequests:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def push(self, client_id: str, params: Mapping[str, str], now: datetime) -> str:
        uri = PAR_URN_PREFIX + secrets.token_urlsafe(32)
        with self._engine.begin() as conn:
            conn.execute(oauth_par.delete().where(oauth_par.c.expires_at < now))
            conn.execute(
                oauth_par.insert().values(
                    uri_hash=digest(uri),
                    client_id=client_id,
                    params=json.dumps(dict(params)),
                    expires_at=now + PAR_TTL,
                )
            )
        return uri

    def get(self, uri: str, client_id: str, now: datetime) -> Mapping[str, str] | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(oauth_par).where(oauth_par.c.uri_hash == digest(uri))
            ).first()
        if row is None or row.client_id != client_id or row.used_at is not None:
            return None
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
        if expires <= now:
            return None
        params: dict[str, str] = json.loads(row.params)
        return params

    def use(self, uri: str, now: datetime | None = None) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                oauth_par.update()
                .where(oauth_par.c.uri_hash == digest(uri))
                .values(used_at=now or datetime.now(UTC))
            )
