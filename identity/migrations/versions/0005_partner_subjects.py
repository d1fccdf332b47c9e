"""Partner subjects: which account a partner (an OpenID client's sector) knows by a pairwise sub.

Filled when a citizen signs in to a client (``identity.ledger_wiring.remember_subject``), read
when the partner records an act for that ``sub``. Only a SHA-256 of the pairwise ``sub`` is kept.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partner_subject",
        sa.Column("sector", sa.String(255), primary_key=True),
        sa.Column("sub_hash", sa.LargeBinary(32), primary_key=True),
        sa.Column(
            "account_id",
            sa.String(32),
            sa.ForeignKey("account.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("partner_subject")
