"""OpenID Provider: registered clients, used client-assertion jti values, revoked tokens.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth_client",
        sa.Column("client_id", sa.String(255), primary_key=True),
        sa.Column("client_name", sa.String(200), nullable=False),
        sa.Column("token_endpoint_auth_method", sa.String(32), nullable=False),
        sa.Column("registration", sa.JSON, nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(32)),
        sa.Column("secret_rotated_at", sa.DateTime(timezone=True)),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "client_assertion_jti",
        sa.Column("digest", sa.LargeBinary(32), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_client_assertion_jti_expires_at", "client_assertion_jti", ["expires_at"])
    op.create_table(
        "revoked_token",
        sa.Column("jti", sa.String(128), primary_key=True),
        sa.Column("client_id", sa.String(255), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_revoked_token_expires_at", "revoked_token", ["expires_at"])


def downgrade() -> None:
    op.drop_table("revoked_token")
    op.drop_table("client_assertion_jti")
    op.drop_table("oauth_client")
