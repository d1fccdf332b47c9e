"""The ledger's append-only Merkle log: entries, tree nodes, head, checkpoints, balances,
idempotency keys, and the triggers that keep the log append-only.

Revision ID: l0001
Revises:
Create Date: 2026-11-26

Append-only in the database
---------------------------
``ledger_entries``, ``ledger_nodes``, ``ledger_checkpoints`` and ``ledger_idempotency`` refuse
every UPDATE and DELETE (and TRUNCATE on PostgreSQL). ``ledger_head`` and ``ledger_balances``
are updated by appends but refuse DELETE (and TRUNCATE), and the head's size never decreases.
A checkpoint is accepted only for the current head (size and root) and never for a size smaller
than an earlier checkpoint's.

On PostgreSQL the triggers are statement-level where they refuse outright (they fire even when
no row matches) and are set ``ENABLE ALWAYS``, so a session with
``session_replication_role = replica`` still runs them. Only the tables' owner (or a superuser)
can ``ALTER TABLE ... DISABLE TRIGGER``; the service must therefore not own them. On SQLite,
``BEFORE UPDATE``/``BEFORE DELETE`` triggers ``RAISE(ABORT)``; whoever can write the file can
drop them, which is why the auditor recomputes everything from the entries.

Recommended PostgreSQL roles and grants (run by the database administrator; the migration
cannot know the deployment's role names)::

    -- the owner runs migrations; the service role owns nothing
    CREATE ROLE nicecard_ledger_owner NOLOGIN;
    CREATE ROLE nicecard_ledger LOGIN PASSWORD '...';
    ALTER TABLE ledger_entries, ledger_nodes, ledger_head, ledger_checkpoints,
                ledger_balances, ledger_idempotency OWNER TO nicecard_ledger_owner;
    REVOKE ALL ON ledger_entries, ledger_nodes, ledger_head, ledger_checkpoints,
                  ledger_balances, ledger_idempotency FROM PUBLIC;
    GRANT SELECT, INSERT ON ledger_entries, ledger_nodes, ledger_checkpoints,
                            ledger_idempotency TO nicecard_ledger;
    GRANT SELECT, UPDATE ON ledger_head TO nicecard_ledger;            -- FOR UPDATE needs UPDATE
    GRANT SELECT, INSERT, UPDATE ON ledger_balances TO nicecard_ledger;
    GRANT USAGE ON SEQUENCE ledger_checkpoints_id_seq TO nicecard_ledger;
    -- auditors with database access get SELECT only
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "l0001"
down_revision = None
branch_labels = None
depends_on = None

_LOG_TABLES = ("ledger_entries", "ledger_nodes", "ledger_checkpoints", "ledger_idempotency")
_KEPT_TABLES = ("ledger_head", "ledger_balances")


def upgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("pseudonym", sa.String(32)),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("idx >= 0", name="ck_ledger_entries_idx"),
    )
    op.create_index("ix_ledger_entries_pseudonym", "ledger_entries", ["pseudonym", "idx"])
    op.create_table(
        "ledger_nodes",
        sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.CheckConstraint("level >= 1 AND idx >= 0", name="ck_ledger_nodes_pos"),
    )
    head = op.create_table(
        "ledger_head",
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("frontier", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_ledger_head_single"),
        sa.CheckConstraint("size >= 0", name="ck_ledger_head_size"),
    )
    op.create_table(
        "ledger_checkpoints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("origin", sa.String(255), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("note", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ledger_checkpoints_size", "ledger_checkpoints", ["size"])
    op.create_table(
        "ledger_balances",
        sa.Column("pseudonym", sa.String(32), primary_key=True),
        sa.Column("points", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("points >= 0", name="ck_ledger_balances_points"),
    )
    op.create_table(
        "ledger_idempotency",
        sa.Column("partner", sa.String(64), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_digest", sa.LargeBinary(32), nullable=False),
        sa.Column("idx", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # RFC 9162 §2.1.1: the empty tree's root is the hash of the empty string.
    op.bulk_insert(
        head,
        [
            {
                "id": 1,
                "size": 0,
                "root": hashlib.sha256(b"").digest(),
                "frontier": b"",
                "updated_at": datetime.now(UTC),
            }
        ],
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_triggers()
    else:
        _sqlite_triggers()


def _postgresql_triggers() -> None:
    op.execute(
        """
        CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'ledger: % on % refused, the ledger is append-only',
                TG_OP, TG_TABLE_NAME;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION ledger_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.id <> OLD.id OR NEW.size < OLD.size THEN
                RAISE EXCEPTION 'ledger: the head never moves back (% -> %)', OLD.size, NEW.size;
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION ledger_checkpoint_is_head() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            head_size bigint;
            head_root bytea;
        BEGIN
            SELECT size, root INTO head_size, head_root FROM ledger_head WHERE id = 1;
            IF NEW.size <> head_size OR NEW.root <> head_root THEN
                RAISE EXCEPTION 'ledger: a checkpoint must sign the current head';
            END IF;
            IF NEW.size < (SELECT COALESCE(MAX(size), 0) FROM ledger_checkpoints) THEN
                RAISE EXCEPTION 'ledger: a checkpoint never signs a smaller tree';
            END IF;
            RETURN NEW;
        END
        $$
        """
    )
    triggers: list[tuple[str, str, str]] = []
    for table in _LOG_TABLES:
        triggers.append(
            (
                table,
                f"{table}_append_only",
                f"BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()",
            )
        )
    for table in _KEPT_TABLES:
        triggers.append(
            (
                table,
                f"{table}_kept",
                f"BEFORE DELETE OR TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()",
            )
        )
    triggers.append(
        (
            "ledger_head",
            "ledger_head_forward",
            "BEFORE UPDATE ON ledger_head FOR EACH ROW EXECUTE FUNCTION ledger_head_forward()",
        )
    )
    triggers.append(
        (
            "ledger_checkpoints",
            "ledger_checkpoints_is_head",
            "BEFORE INSERT ON ledger_checkpoints "
            "FOR EACH ROW EXECUTE FUNCTION ledger_checkpoint_is_head()",
        )
    )
    for table, name, body in triggers:
        op.execute(f"CREATE TRIGGER {name} {body}")
        # ENABLE ALWAYS: fires even with session_replication_role = replica.
        op.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {name}")


def _sqlite_triggers() -> None:
    def refuse(table: str, operation: str) -> None:
        op.execute(
            f"CREATE TRIGGER {table}_no_{operation.lower()} BEFORE {operation} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'ledger: {operation} on {table} refused, "
            "the ledger is append-only'); END"
        )

    for table in _LOG_TABLES:
        refuse(table, "UPDATE")
        refuse(table, "DELETE")
    for table in _KEPT_TABLES:
        refuse(table, "DELETE")
    op.execute(
        "CREATE TRIGGER ledger_head_forward BEFORE UPDATE ON ledger_head "
        "WHEN NEW.id <> OLD.id OR NEW.size < OLD.size "
        "BEGIN SELECT RAISE(ABORT, 'ledger: the head never moves back'); END"
    )
    op.execute(
        "CREATE TRIGGER ledger_checkpoints_is_head BEFORE INSERT ON ledger_checkpoints "
        "WHEN NEW.size <> (SELECT size FROM ledger_head WHERE id = 1) "
        "OR NEW.root <> (SELECT root FROM ledger_head WHERE id = 1) "
        "OR NEW.size < (SELECT MAX(size) FROM ledger_checkpoints) "
        "BEGIN SELECT RAISE(ABORT, 'ledger: a checkpoint must sign the current head, "
        "never a smaller tree than an earlier one'); END"
    )


def downgrade() -> None:
    for table in (*_LOG_TABLES, *_KEPT_TABLES):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        for function in (
            "ledger_refuse_change",
            "ledger_head_forward",
            "ledger_checkpoint_is_head",
        ):
            op.execute(f"DROP FUNCTION IF EXISTS {function}()")
