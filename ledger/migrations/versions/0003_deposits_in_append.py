"""Deposits are written in their entry's append transaction: ``coin_deposits`` is append-only.

Revision ID: l0003
Revises: l0002
Create Date: 2026-12-04

Before this revision a deposit claimed its coins, appended its entry, then stored its signed
receipt, in three transactions; a row with no ``entry_idx`` was a deposit still in flight.
Now the claim, the entry and the ``coin_deposits`` row commit together
(``ledger.store.DepositRows``) and the receipt is signed from the entry when asked for. So
``entry_idx`` is required, ``receipt`` goes, and the table refuses UPDATE and DELETE like the
other coin records. Grants, replacing those of ``l0002`` for this table::

    REVOKE UPDATE ON coin_deposits FROM nicecard_ledger;

Deposits made before this revision keep their entries; a replay of one is answered with its
receipt signed again from its entry, whose ``deposited_at`` is the entry's time (the stored
receipt had the claim's time, earlier by the append's delay: seconds, or up to the old hourly
sweep for a deposit that sweep finished).

The upgrade refuses to run while a deposit is in flight (a row without ``entry_idx``): let the
previous release's upkeep finish it (``Mint.finish_pending_deposits`` runs hourly, and a
partner's retry finishes its own), then upgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "l0003"
down_revision = "l0002"
branch_labels = None
depends_on = None

_TABLE = "coin_deposits"


def upgrade() -> None:
    bind = op.get_bind()
    pending = bind.execute(
        sa.text(f"SELECT count(*) FROM {_TABLE} WHERE entry_idx IS NULL")  # noqa: S608
    ).scalar_one()
    if pending:
        raise RuntimeError(
            f"{pending} deposit(s) are still in flight: run the previous release until its "
            "upkeep has finished them, then upgrade"
        )
    with op.batch_alter_table(_TABLE) as batch:
        batch.drop_column("receipt")
        batch.alter_column("entry_idx", existing_type=sa.BigInteger, nullable=False)
    if bind.dialect.name == "postgresql":
        name = f"{_TABLE}_append_only"
        op.execute(
            f"CREATE TRIGGER {name} BEFORE UPDATE OR DELETE OR TRUNCATE ON {_TABLE} "
            "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()"
        )
        op.execute(f"ALTER TABLE {_TABLE} ENABLE ALWAYS TRIGGER {name}")
    else:
        for operation in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {_TABLE}_no_{operation.lower()} BEFORE {operation} "
                f"ON {_TABLE} BEGIN SELECT RAISE(ABORT, 'ledger: {operation} on {_TABLE} "
                "refused, deposits are append-only'); END"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER {_TABLE}_append_only ON {_TABLE}")
    else:
        for operation in ("update", "delete"):
            op.execute(f"DROP TRIGGER {_TABLE}_no_{operation}")
    with op.batch_alter_table(_TABLE) as batch:
        batch.add_column(sa.Column("receipt", sa.LargeBinary))
        batch.alter_column("entry_idx", existing_type=sa.BigInteger, nullable=True)
