"""OpenID Provider grants, codes, refresh tokens, issued access tokens, consents, pushed requests.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _when(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "oauth_grant",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("client_id", sa.String(255), nullable=False, index=True),
        sa.Column("account_id", sa.String(32), nullable=False, index=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("claims", sa.Text, nullable=False),
        _when("auth_time"),
        sa.Column("acr", sa.String(32), nullable=False),
        sa.Column("amr", sa.String(64), nullable=False),
        sa.Column("sid", sa.String(32), nullable=False, index=True),
        _when("created_at"),
        _when("revoked_at", nullable=True),
    )
    op.create_table(
        "oauth_code",
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
        _when("expires_at"),
        _when("consumed_at", nullable=True),
    )
    op.create_table(
        "oauth_refresh_token",
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
        _when("created_at"),
        _when("expires_at"),
        _when("used_at", nullable=True),
        _when("revoked_at", nullable=True),
    )
    op.create_table(
        "oauth_issued_token",
        sa.Column("jti", sa.String(64), primary_key=True),
        sa.Column(
            "grant_id",
            sa.String(32),
            sa.ForeignKey("oauth_grant.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        _when("expires_at"),
    )
    op.create_table(
        "oauth_consent",
        sa.Column("account_id", sa.String(32), primary_key=True),
        sa.Column("client_id", sa.String(255), primary_key=True),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("claims", sa.Text, nullable=False),
        _when("granted_at"),
    )

    op.create_table(
        "oauth_par",
        sa.Column("uri_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        _when("expires_at"),
        _when("used_at", nullable=True),
    )
    op.create_index("ix_oauth_par_expires_at", "oauth_par", ["expires_at"])


def downgrade() -> None:
    for table in (
        "oauth_par",
        "oauth_consent",
        "oauth_issued_token",
        "oauth_refresh_token",
        "oauth_code",
        "oauth_grant",
    ):
        op.drop_table(table)
