"""Apply the Alembic migrations of both stores (``nicecard db upgrade``; development start)."""

from __future__ import annotations

import enum
import functools
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import identity
import ledger


class Store(enum.StrEnum):
    IDENTITY = "identity"
    LEDGER = "ledger"


_SCRIPTS = {
    Store.IDENTITY: Path(identity.__file__).parent / "migrations",
    Store.LEDGER: Path(ledger.__file__).parent / "migrations",
}
_VERSION_TABLES = {
    Store.IDENTITY: "identity_alembic_version",
    Store.LEDGER: "ledger_alembic_version",
}


def _config(store: Store, connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS[store]))
    config.attributes["connection"] = connection
    return config


def upgrade(store: Store, engine: sa.Engine, revision: str = "head") -> None:
    with engine.begin() as connection:
        command.upgrade(_config(store, connection), revision)


def downgrade(store: Store, engine: sa.Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.downgrade(_config(store, connection), revision)


def current(store: Store, engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"version_table": _VERSION_TABLES[store]}
        )
        return context.get_current_revision()


@functools.cache
def head(store: Store) -> str | None:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS[store]))
    return ScriptDirectory.from_config(config).get_current_head()
