"""Coins: denomination keys, withdrawals, deposits, spent coins and double-spend evidence.

Revision ID: l0002
Revises: l0001
Create Date: 2026-11-25

``coin_spent`` and ``coin_double_spends`` are append-only like the log (a spent coin can never
be spent again; evidence is never lost): UPDATE and DELETE (and TRUNCATE on PostgreSQL) are
refused by triggers, ``ENABLE ALWAYS`` on PostgreSQL. The other coin tables are updated by the
service (a withdrawal or deposit moves from pending to answered; a denomination's private half
is wiped when withdrawals end). Grants, continuing those of ``l0001``::

    GRANT SELECT, INSERT ON coin_spent, coin_double_spends TO nicecard_ledger;
    GRANT SELECT, INSERT, UPDATE ON coin_denominations, coin_deposits TO nicecard_ledger;
    GRANT SELECT, INSERT, UPDATE, DELETE ON coin_withdrawals TO nicecard_ledger;
    GRANT USAGE ON SEQUENCE coin_double_spends_id_seq TO nicecard_ledger;
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "l0002"
down_revision = "l0001"
branch_labels = None
depends_on = None

_APPEND_ONLY = ("coin_spent", "coin_double_spends")


def _when() -> sa.Column[object]:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "coin_denominations",
        sa.Column("id", sa.LargeBinary(32), primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("sealed", sa.LargeBinary),
        sa.Column("withdraw_from", sa.BigInteger, nullable=False),
        sa.Column("withdraw_until", sa.BigInteger, nullable=False),
        sa.Column("deposit_until", sa.BigInteger, nullable=False),
        sa.Column("legal_until", sa.BigInteger, nullable=False),
        sa.Column("entry_idx", sa.BigInteger),
        _when(),
        sa.UniqueConstraint("value", "epoch", name="uq_coin_denominations_epoch"),
    )
    op.create_table(
        "coin_withdrawals",
        sa.Column("pseudonym", sa.String(32), primary_key=True),
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("request_digest", sa.LargeBinary(32), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("entry_idx", sa.BigInteger),
        sa.Column("signatures", sa.LargeBinary),
        _when(),
    )
    op.create_table(
        "coin_deposits",
        sa.Column("partner", sa.String(64), primary_key=True),
        sa.Column("order_ref", sa.String(128), primary_key=True),
        sa.Column("request_digest", sa.LargeBinary(32), nullable=False),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("coins", sa.Integer, nullable=False),
        sa.Column("entry_idx", sa.BigInteger),
        sa.Column("receipt", sa.LargeBinary),
        _when(),
    )
    op.create_index("ix_coin_deposits_partner_created", "coin_deposits", ["partner", "created_at"])
    op.create_table(
        "coin_spent",
        sa.Column("coin", sa.LargeBinary(32), primary_key=True),
        sa.Column("denomination", sa.LargeBinary(32), nullable=False),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("order_ref", sa.String(128), nullable=False),
        sa.Column("signed_at", sa.BigInteger, nullable=False),
        sa.Column("permission", sa.LargeBinary(64), nullable=False),
        _when(),
    )
    op.create_table(
        "coin_double_spends",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("coin", sa.LargeBinary(32), nullable=False),
        sa.Column("denomination", sa.LargeBinary(32), nullable=False),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("order_ref", sa.String(128), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("signed_at", sa.BigInteger, nullable=False),
        sa.Column("permission", sa.LargeBinary(64), nullable=False),
        _when(),
    )
    op.create_index("ix_coin_double_spends_coin", "coin_double_spends", ["coin"])
    if op.get_bind().dialect.name == "postgresql":
        for table in _APPEND_ONLY:
            name = f"{table}_append_only"
            op.execute(
                f"CREATE TRIGGER {name} BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
            )
            op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}")
    else:
        for table in _APPEND_ONLY:
            for operation in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} "
                    f"ON {table} BEGIN SELECT RAISE(ABORT, 'ledger: {operation} on {table} "
                    "refused, spent coins are append-only'); END"
                )


def downgrade() -> None:
    for table in (
        "coin_double_spends",
        "coin_spent",
        "coin_deposits",
        "coin_withdrawals",
        "coin_denominations",
    ):
        op.drop_table(table)
