"""Migration l0003 (deposits appended whole): it refuses to run while an old-style deposit is in
flight, then makes ``coin_deposits`` append-only without a receipt column, and goes back down."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from identity import migrate
from identity.db import create_engine
from tests.conftest import make_settings

ROW = {
    "partner": "shop",
    "order_ref": "order-1",
    "request_digest": bytes(32),
    "points": 5,
    "coins": 1,
    "created_at": datetime(2026, 12, 1, tzinfo=UTC),
}
INSERT = sa.text(
    "INSERT INTO coin_deposits (partner, order_ref, request_digest, points, coins, entry_idx, "
    "created_at) VALUES (:partner, :order_ref, :request_digest, :points, :coins, :entry_idx, "
    ":created_at)"
)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    settings = make_settings(tmp_path, ledger_database_url=url)
    engine = create_engine(settings.ledger_url, settings)
    migrate.upgrade(migrate.Store.LEDGER, engine, "l0002")
    yield engine
    engine.dispose()


def _columns(engine: sa.Engine) -> dict[str, bool]:
    return {c["name"]: c["nullable"] for c in sa.inspect(engine).get_columns("coin_deposits")}


def test_refuses_while_a_deposit_is_in_flight(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(INSERT, {**ROW, "entry_idx": None})
    with pytest.raises(RuntimeError, match="in flight"):
        migrate.upgrade(migrate.Store.LEDGER, engine)
    assert migrate.current(migrate.Store.LEDGER, engine) == "l0002"
    assert "receipt" in _columns(engine)
    with engine.begin() as conn:  # the previous release finishes it
        conn.execute(sa.text("UPDATE coin_deposits SET entry_idx = 0, receipt = 'r'"))
    migrate.upgrade(migrate.Store.LEDGER, engine)
    assert migrate.current(migrate.Store.LEDGER, engine) == migrate.head(migrate.Store.LEDGER)


def test_up_and_down(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(INSERT, {**ROW, "entry_idx": 0})
    migrate.upgrade(migrate.Store.LEDGER, engine, "l0003")
    columns = _columns(engine)
    assert "receipt" not in columns
    assert columns["entry_idx"] is False
    for statement in ("UPDATE coin_deposits SET points = 6", "DELETE FROM coin_deposits"):
        with pytest.raises(sa.exc.DBAPIError, match="ledger"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(INSERT, {**ROW, "order_ref": "order-2", "entry_idx": None})
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT points FROM coin_deposits")).scalar_one() == 5

    migrate.downgrade(migrate.Store.LEDGER, engine, "l0002")
    columns = _columns(engine)
    assert columns["receipt"] is True
    assert columns["entry_idx"] is True
    with engine.begin() as conn:  # the previous release may update its rows again
        conn.execute(sa.text("UPDATE coin_deposits SET receipt = 'r'"))
