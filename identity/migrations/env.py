"""Alembic environment of the identity store (accounts, consents, keys). Run through
``identity.migrate``, which hands over an open connection."""

from __future__ import annotations

from alembic import context

import oidc.grants
import oidc.par  # noqa: F401 - registers the pushed-request table
from identity.tables import identity_metadata
from keys.store import metadata as keys_metadata
from oidc.tables import metadata as oidc_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=[identity_metadata, keys_metadata, oidc_metadata],
    version_table="identity_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
