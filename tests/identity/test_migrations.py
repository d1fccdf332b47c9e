"""Migrations of both stores, up and down, on SQLite and PostgreSQL; the stores stay apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from identity import migrate
from identity.db import create_engine
from identity.tables import identity_metadata
from keys.store import metadata as keys_metadata
from ledger.tables import ledger_metadata
from tests.conftest import make_settings


def _upgrade_both(
    identity_url: str, ledger_url: str, tmp_path: Path
) -> tuple[sa.Engine, sa.Engine]:
    settings = make_settings(
        tmp_path, identity_database_url=identity_url, ledger_database_url=ledger_url
    )
    identity_engine = create_engine(settings.identity_url, settings)
    ledger_engine = create_engine(settings.ledger_url, settings)
    migrate.upgrade(migrate.Store.IDENTITY, identity_engine)
    migrate.upgrade(migrate.Store.LEDGER, ledger_engine)
    return identity_engine, ledger_engine


def _check(identity_engine: sa.Engine, ledger_engine: sa.Engine) -> None:
    for store, engine in (
        (migrate.Store.IDENTITY, identity_engine),
        (migrate.Store.LEDGER, ledger_engine),
    ):
        assert migrate.current(store, engine) == migrate.head(store)
    identity_tables = set(sa.inspect(identity_engine).get_table_names())
    ledger_tables = set(sa.inspect(ledger_engine).get_table_names())
    assert {t.name for t in keys_metadata.sorted_tables} | {
        t.name for t in identity_metadata.sorted_tables
    } <= identity_tables
    assert {t.name for t in ledger_metadata.sorted_tables} <= ledger_tables
    # No table of one store lives in the other.
    assert not ({t for t in identity_tables if not t.endswith("alembic_version")} & ledger_tables)


def test_sqlite_files_under_the_data_directory(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "var")
    identity_engine = create_engine(settings.identity_url, settings)
    ledger_engine = create_engine(settings.ledger_url, settings)
    migrate.upgrade(migrate.Store.IDENTITY, identity_engine)
    migrate.upgrade(migrate.Store.LEDGER, ledger_engine)
    _check(identity_engine, ledger_engine)
    assert (tmp_path / "var" / "identity.db").exists()
    assert (tmp_path / "var" / "ledger.db").exists()
    with identity_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 5000
    migrate.downgrade(migrate.Store.IDENTITY, identity_engine, "base")
    assert "key_material" not in sa.inspect(identity_engine).get_table_names()
    migrate.upgrade(migrate.Store.IDENTITY, identity_engine)
    _check(identity_engine, ledger_engine)


def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    identity_engine, ledger_engine = _upgrade_both("", "", tmp_path)
    migrate.upgrade(migrate.Store.IDENTITY, identity_engine)
    migrate.upgrade(migrate.Store.LEDGER, ledger_engine)
    _check(identity_engine, ledger_engine)


@pytest.mark.postgres
def test_postgresql(postgres_url: str, tmp_path: Path) -> None:
    identity_engine, ledger_engine = _upgrade_both(postgres_url, postgres_url, tmp_path)
    # Both stores in one database (an operator's choice) keep separate version tables.
    assert migrate.current(migrate.Store.IDENTITY, identity_engine) == migrate.head(
        migrate.Store.IDENTITY
    )
    assert migrate.current(migrate.Store.LEDGER, ledger_engine) == migrate.head(
        migrate.Store.LEDGER
    )
    assert identity_engine.pool.size() == 10  # type: ignore[attr-defined]
    migrate.downgrade(migrate.Store.IDENTITY, identity_engine, "base")
    migrate.upgrade(migrate.Store.IDENTITY, identity_engine)
    assert migrate.current(migrate.Store.IDENTITY, identity_engine) == migrate.head(
        migrate.Store.IDENTITY
    )
    identity_engine.dispose()
    ledger_engine.dispose()
