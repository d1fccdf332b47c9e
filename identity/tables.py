"""Tables of the identity store. They use their own SQLModel registry, so their metadata is
separate from the ledger's: no table of one store can end up in the other. Migrations in
``identity/migrations`` create them; these classes are how the code reads and writes them."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel


class IdentityTable(SQLModel, registry=registry()):
    """Base of every identity-store table."""


identity_metadata = IdentityTable.metadata


def _when(*, index: bool = False) -> sa.Column[datetime]:
    return sa.Column(sa.DateTime(timezone=True), nullable=False, index=index)


class Account(IdentityTable, table=True):
    """A citizen, known by a keyed hash of FranceConnect's ``sub`` (never the ``sub`` itself)."""

    __tablename__ = "account"

    id: str = Field(sa_column=sa.Column(sa.String(32), primary_key=True))
    fc_sub_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False, unique=True))
    fc_sub_kid: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    ledger_pseudonym: str = Field(sa_column=sa.Column(sa.String(32), nullable=False, unique=True))
    created_at: datetime = Field(sa_column=_when())
    last_login_at: datetime = Field(sa_column=_when())


class LoginSession(IdentityTable, table=True):
    """A browser's signed-in session; the cookie value is stored only as its SHA-256."""

    __tablename__ = "login_session"

    id_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), primary_key=True))
    account_id: str = Field(
        sa_column=sa.Column(
            sa.String(32),
            sa.ForeignKey("account.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    sid: str = Field(sa_column=sa.Column(sa.String(32), nullable=False, unique=True))
    created_at: datetime = Field(sa_column=_when())
    auth_time: datetime = Field(sa_column=_when())
    expires_at: datetime = Field(sa_column=_when(index=True))
    acr: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    amr: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    sealed: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    sealed_kid: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))


class SigninAttempt(IdentityTable, table=True):
    """A pending FranceConnect sign-in, keyed by SHA-256 of its ``state``, bound to a browser."""

    __tablename__ = "signin_attempt"

    state_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), primary_key=True))
    browser_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    created_at: datetime = Field(sa_column=_when())
    expires_at: datetime = Field(sa_column=_when(index=True))
    sealed: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    sealed_kid: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
