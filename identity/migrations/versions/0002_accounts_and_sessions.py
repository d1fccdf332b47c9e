"""Accounts (found by a keyed hash of FranceConnect's sub), login sessions, sign-in attempts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("fc_sub_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("fc_sub_kid", sa.String(64), nullable=False),
        sa.Column("ledger_pseudonym", sa.String(32), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "login_session",
        sa.Column("id_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column(
            "account_id",
            sa.String(32),
            sa.ForeignKey("account.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("sid", sa.String(32), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("auth_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("acr", sa.String(32), nullable=False),
        sa.Column("amr", sa.String(64), nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("sealed_kid", sa.String(64), nullable=False),
    )
    op.create_table(
        "signin_attempt",
        sa.Column("state_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("browser_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("sealed_kid", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("signin_attempt")
    op.drop_table("login_session")
    op.drop_table("account")
