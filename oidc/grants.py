"""What the OpenID Provider remembers of a citizen's authorizations: grants, authorization codes,
refresh tokens, consents — in the identity database, as hashes wherever a value is a credential.

- A *grant* is one authorization of one client by one account (scope, claims, auth_time, acr,
  amr, sid). Codes and refresh tokens hang off it; so do the ``jti`` of access tokens issued
  from it, so revoking the grant revokes them all (RFC 6749 §4.1.2 / RFC 9700 §4.14: a replayed
  code revokes what was issued from it; RFC 9700 §4.14.2: refresh token reuse revokes the grant).
- A *code* is single use (consumed atomically with ``UPDATE ... WHERE consumed_at IS NULL``) and
  lives at most 60 s.
- A *refresh token* is rotated on use; a reused one revokes the grant, except within a short
  grace for a response the client lost (the unused child is revoked and a new one issued).
  Tokens of FAPI 2.0 clients are not rotated (FAPI 2.0 Security Profile §5.3.2.1 item 9): they
  are used again until they expire or the grant is revoked, bound to the client's DPoP key.
- A *consent* is per (account, client): the scopes and claims the citizen agreed to release.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from oidc.tables import metadata

oauth_grant = sa.Table(
    "oauth_grant",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("client_id", sa.String(255), nullable=False, index=True),
    sa.Column("account_id", sa.String(32), nullable=False, index=True),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("claims", sa.Text, nullable=False),
    sa.Column("auth_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("acr", sa.String(32), nullable=False),
    sa.Column("amr", sa.String(64), nullable=False),
    sa.Column("sid", sa.String(32), nullable=False, index=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)
oauth_code = sa.Table(
    "oauth_code",
    metadata,
    sa.Column("code_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column(
        "grant_id",
        sa.String(32),
        sa.ForeignKey("oauth_grant.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("nonce", sa.Text),
    sa.Column("code_challenge", sa.String(128), nullable=False),
    sa.Column("dpop_jkt", sa.String(64)),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("consumed_at", sa.DateTime(timezone=True)),
)
oauth_refresh = sa.Table(
    "oauth_refresh_token",
    metadata,
    sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column(
        "grant_id",
        sa.String(32),
        sa.ForeignKey("oauth_grant.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("parent_hash", sa.LargeBinary(32)),
    sa.Column("dpop_jkt", sa.String(64)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
)
oauth_issued = sa.Table(
    "oauth_issued_token",
    metadata,
    sa.Column("jti", sa.String(64), primary_key=True),
    sa.Column(
        "grant_id",
        sa.String(32),
        sa.ForeignKey("oauth_grant.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)
oauth_consent = sa.Table(
    "oauth_consent",
    metadata,
    sa.Column("account_id", sa.String(32), primary_key=True),
    sa.Column("client_id", sa.String(255), primary_key=True),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("claims", sa.Text, nullable=False),
    sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
)

CODE_TTL = timedelta(seconds=60)
REFRESH_TTL = timedelta(days=30)
REFRESH_GRACE = timedelta(seconds=10)


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Grant:
    id: str
    client_id: str
    account_id: str
    scope: frozenset[str]
    claims: frozenset[str]
    auth_time: datetime
    acr: str
    amr: tuple[str, ...]
    sid: str


@dataclass(frozen=True)
class CodeRecord:
    grant: Grant
    redirect_uri: str
    nonce: str | None
    code_challenge: str
    dpop_jkt: str | None


class GrantRevoked(Exception):
    """A replay revoked a grant; ``issued`` lists its access tokens' (jti, exp) to deny."""

    def __init__(self, issued: list[tuple[str, datetime]]) -> None:
        super().__init__("grant revoked")
        self.issued = issued


class CodeReplayed(GrantRevoked):
    """A code was presented twice: the grant it came from is now revoked."""


class RefreshReplayed(GrantRevoked):
    """A rotated refresh token was reused after its grace: the grant is now revoked."""


def _grant(row: Any) -> Grant:
    m = row._mapping
    return Grant(
        id=m["id"],
        client_id=m["client_id"],
        account_id=m["account_id"],
        scope=frozenset(m["scope"].split()),
        claims=frozenset(json.loads(m["claims"])),
        auth_time=_aware(m["auth_time"]) or datetime.min.replace(tzinfo=UTC),
        acr=m["acr"],
        amr=tuple(m["amr"].split()),
        sid=m["sid"],
    )


class GrantStore:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    # -- grants and codes ----------------------------------------------------------------------

    def create_code(
        self,
        *,
        client_id: str,
        account_id: str,
        scope: Iterable[str],
        claims: Iterable[str],
        auth_time: datetime,
        acr: str,
        amr: Iterable[str],
        sid: str,
        redirect_uri: str,
        nonce: str | None,
        code_challenge: str,
        dpop_jkt: str | None,
        now: datetime,
    ) -> str:
        code = secrets.token_urlsafe(32)
        grant_id = secrets.token_hex(16)
        with self._engine.begin() as conn:
            conn.execute(
                oauth_grant.insert().values(
                    id=grant_id,
                    client_id=client_id,
                    account_id=account_id,
                    scope=" ".join(sorted(scope)),
                    claims=json.dumps(sorted(claims)),
                    auth_time=auth_time,
                    acr=acr,
                    amr=" ".join(amr),
                    sid=sid,
                    created_at=now,
                )
            )
            conn.execute(
                oauth_code.insert().values(
                    code_hash=digest(code),
                    grant_id=grant_id,
                    redirect_uri=redirect_uri,
                    nonce=nonce,
                    code_challenge=code_challenge,
                    dpop_jkt=dpop_jkt,
                    expires_at=now + CODE_TTL,
                )
            )
        return code

    def consume_code(self, code: str, client_id: str, now: datetime) -> CodeRecord | None:
        """The code's record, marked used. ``None`` if unknown, expired or another client's;
        :class:`CodeReplayed` (after revoking the grant) if it was used before."""
        code_hash = digest(code)
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(oauth_code, oauth_grant)
                .join(oauth_grant, oauth_grant.c.id == oauth_code.c.grant_id)
                .where(oauth_code.c.code_hash == code_hash)
            ).first()
            if row is None or row._mapping["client_id"] != client_id:
                return None
            m = row._mapping
            if m["revoked_at"] is not None:
                return None
            used = conn.execute(
                oauth_code.update()
                .where(oauth_code.c.code_hash == code_hash, oauth_code.c.consumed_at.is_(None))
                .values(consumed_at=now)
            )
            replayed = used.rowcount != 1
        if replayed:
            raise CodeReplayed(self.revoke_grant(m["grant_id"], now))
        if (_aware(m["expires_at"]) or now) <= now:
            return None
        return CodeRecord(
            grant=_grant(row),
            redirect_uri=m["redirect_uri"],
            nonce=m["nonce"],
            code_challenge=m["code_challenge"],
            dpop_jkt=m["dpop_jkt"],
        )

    def grant(self, grant_id: str) -> Grant | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(oauth_grant).where(
                    oauth_grant.c.id == grant_id, oauth_grant.c.revoked_at.is_(None)
                )
            ).first()
        return None if row is None else _grant(row)

    def grant_of_token(self, jti: str) -> Grant | None:
        """The live grant an access token was issued from."""
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(oauth_grant)
                .join(oauth_issued, oauth_issued.c.grant_id == oauth_grant.c.id)
                .where(oauth_issued.c.jti == jti, oauth_grant.c.revoked_at.is_(None))
            ).first()
        return None if row is None else _grant(row)

    def record_access_token(self, grant_id: str, jti: str, expires_at: datetime) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                oauth_issued.insert().values(jti=jti, grant_id=grant_id, expires_at=expires_at)
            )

    def revoke_grant(self, grant_id: str, now: datetime) -> list[tuple[str, datetime]]:
        """Revoke a grant and its refresh tokens; returns its access tokens' (jti, exp) so the
        caller lists them as revoked until they expire."""
        with self._engine.begin() as conn:
            conn.execute(
                oauth_grant.update()
                .where(oauth_grant.c.id == grant_id, oauth_grant.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            conn.execute(
                oauth_refresh.update()
                .where(oauth_refresh.c.grant_id == grant_id, oauth_refresh.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            rows = conn.execute(
                sa.select(oauth_issued.c.jti, oauth_issued.c.expires_at).where(
                    oauth_issued.c.grant_id == grant_id, oauth_issued.c.expires_at > now
                )
            ).all()
        return [(jti, _aware(exp) or now) for jti, exp in rows]

    def grants_of(self, account_id: str, client_id: str | None = None) -> list[str]:
        query = sa.select(oauth_grant.c.id).where(
            oauth_grant.c.account_id == account_id, oauth_grant.c.revoked_at.is_(None)
        )
        if client_id is not None:
            query = query.where(oauth_grant.c.client_id == client_id)
        with self._engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def grants_of_session(self, sid: str) -> list[Grant]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(oauth_grant).where(
                    oauth_grant.c.sid == sid, oauth_grant.c.revoked_at.is_(None)
                )
            ).all()
        return [_grant(r) for r in rows]

    # -- refresh tokens ------------------------------------------------------------------------

    def issue_refresh(
        self, grant_id: str, now: datetime, parent: bytes | None = None, dpop_jkt: str | None = None
    ) -> str:
        token = secrets.token_urlsafe(32)
        with self._engine.begin() as conn:
            conn.execute(
                oauth_refresh.insert().values(
                    token_hash=digest(token),
                    grant_id=grant_id,
                    parent_hash=parent,
                    dpop_jkt=dpop_jkt,
                    created_at=now,
                    expires_at=now + REFRESH_TTL,
                )
            )
        return token

    def use_refresh(
        self, token: str, client_id: str, now: datetime, *, rotate: bool = True
    ) -> tuple[Grant, bytes, str | None] | None:
        """Mark a refresh token used; returns (grant, its hash, dpop_jkt) to issue the child.

        ``None`` if unknown, expired, revoked or another client's. A token used before raises
        :class:`RefreshReplayed` after revoking the grant, unless it was used within the grace
        and its child is unused: then that child is revoked and the caller issues a new one.
        With ``rotate=False`` the token is checked but not marked used (it stays valid).
        """
        token_hash = digest(token)
        with self._engine.begin() as conn:
            row = conn.execute(
                sa.select(
                    oauth_refresh,
                    oauth_grant.c.client_id,
                    oauth_grant.c.revoked_at.label("grant_revoked"),
                )
                .join(oauth_grant, oauth_grant.c.id == oauth_refresh.c.grant_id)
                .where(oauth_refresh.c.token_hash == token_hash)
            ).first()
            if row is None:
                return None
            m = row._mapping
            if (
                m["client_id"] != client_id
                or m["grant_revoked"] is not None
                or m["revoked_at"] is not None
            ):
                return None
            if (_aware(m["expires_at"]) or now) <= now:
                return None
            first_use = not rotate or self._mark_used(conn, token_hash, m["used_at"], now)
        if not first_use:
            raise RefreshReplayed(self.revoke_grant(m["grant_id"], now))
        grant = self.grant(m["grant_id"])
        if grant is None:
            return None
        return grant, token_hash, m["dpop_jkt"]

    @staticmethod
    def _mark_used(
        conn: sa.Connection, token_hash: bytes, used_at: datetime | None, now: datetime
    ) -> bool:
        """Mark a refresh token used; False if it was used before, past the grace or with its
        child used (a replay). Within the grace, the unused child is revoked and True returned
        so the caller issues another (the client lost the response that carried the child)."""
        updated = conn.execute(
            oauth_refresh.update()
            .where(oauth_refresh.c.token_hash == token_hash, oauth_refresh.c.used_at.is_(None))
            .values(used_at=now)
        )
        if updated.rowcount == 1:
            return True
        children_used = conn.execute(
            sa.select(sa.func.count())
            .select_from(oauth_refresh)
            .where(
                oauth_refresh.c.parent_hash == token_hash,
                oauth_refresh.c.used_at.is_not(None),
            )
        ).scalar_one()
        if now - (_aware(used_at) or now) <= REFRESH_GRACE and children_used == 0:
            conn.execute(
                oauth_refresh.update()
                .where(oauth_refresh.c.parent_hash == token_hash)
                .values(revoked_at=now)
            )
            return True
        return False

    # -- consent -------------------------------------------------------------------------------

    def consent(
        self, account_id: str, client_id: str
    ) -> tuple[frozenset[str], frozenset[str]] | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(oauth_consent.c.scope, oauth_consent.c.claims).where(
                    oauth_consent.c.account_id == account_id, oauth_consent.c.client_id == client_id
                )
            ).first()
        if row is None:
            return None
        return frozenset(row[0].split()), frozenset(json.loads(row[1]))

    def save_consent(
        self,
        account_id: str,
        client_id: str,
        scope: Iterable[str],
        claims: Iterable[str],
        now: datetime,
    ) -> None:
        values = {
            "scope": " ".join(sorted(scope)),
            "claims": json.dumps(sorted(claims)),
            "granted_at": now,
        }
        with self._engine.begin() as conn:
            done = conn.execute(
                oauth_consent.update()
                .where(
                    oauth_consent.c.account_id == account_id, oauth_consent.c.client_id == client_id
                )
                .values(**values)
            )
            if done.rowcount == 0:
                conn.execute(
                    oauth_consent.insert().values(
                        account_id=account_id, client_id=client_id, **values
                    )
                )

    def revoke_consent(
        self, account_id: str, client_id: str, now: datetime
    ) -> list[tuple[str, datetime]]:
        """Withdraw consent; also revokes the client's grants (and so its refresh tokens)."""
        with self._engine.begin() as conn:
            conn.execute(
                oauth_consent.delete().where(
                    oauth_consent.c.account_id == account_id, oauth_consent.c.client_id == client_id
                )
            )
        revoked: list[tuple[str, datetime]] = []
        for grant_id in self.grants_of(account_id, client_id):
            revoked += self.revoke_grant(grant_id, now)
        return revoked

    def consents_of(
        self, account_id: str
    ) -> list[tuple[str, frozenset[str], frozenset[str], datetime]]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                sa.select(oauth_consent).where(oauth_consent.c.account_id == account_id)
            ).all()
        return [
            (
                r.client_id,
                frozenset(r.scope.split()),
                frozenset(json.loads(r.claims)),
                _aware(r.granted_at) or datetime.min.replace(tzinfo=UTC),
            )
            for r in rows
        ]
