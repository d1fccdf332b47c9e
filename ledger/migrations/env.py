"""Alembic environment of the ledger store. Run through the composition root, which hands over
an open connection; nothing here knows about the identity store."""

from __future__ import annotations

from alembic import context

from ledger.tables import ledger_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=ledger_metadata,
    version_table="ledger_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
