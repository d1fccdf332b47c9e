"""Unlinkability: what the service writes when a citizen withdraws shares no value with what it
writes when a partner deposits the same coins (other than public denomination data), in any
table of either database or in the logs."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa

from ledger.coins import b64encode
from ledger.wallet import PaymentRequest, pay
from tests.ledger.test_coins_http import Town, town  # noqa: F401 - fixtures
from tests.oidc.conftest import clock, provider_factory  # noqa: F401 - fixtures

Snapshot = dict[str, set[tuple[Any, ...]]]

_TOKEN = re.compile(r"[A-Za-z0-9_+/=-]{16,}")


def snapshot(*engines: sa.Engine) -> Snapshot:
    """Every row of every table, by table."""
    rows: Snapshot = {}
    for engine in engines:
        metadata = sa.MetaData()
        metadata.reflect(engine)
        with engine.connect() as conn:
            for name, table in metadata.tables.items():
                rows[f"{engine.url.database}:{name}"] = {
                    tuple(_hashable(v) for v in row) for row in conn.execute(sa.select(table))
                }
    return rows


def _hashable(value: Any) -> Any:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def written(before: Snapshot, after: Snapshot) -> Snapshot:
    """Rows inserted or updated between two snapshots."""
    return {name: after[name] - before.get(name, set()) for name in after}


def values(rows: Snapshot) -> set[Any]:
    """The values that could link: byte strings and texts of 8+ characters, times, big numbers."""
    found: set[Any] = set()
    for table in rows.values():
        for row in table:
            for value in _expand(row):
                if isinstance(value, bytes | memoryview):
                    raw = bytes(value)
                    if len(raw) >= 8:
                        found.add(raw)
                elif isinstance(value, str) and len(value) >= 8:
                    found.add(value)
                elif isinstance(value, datetime):
                    found.add(int(value.timestamp()))
                elif isinstance(value, int) and value >= 2**20:
                    found.add(value)
    return found


def _expand(row: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    for value in row:
        out.append(value)
        if isinstance(value, str) and value[:1] in "[{":
            with contextlib.suppress(ValueError):
                out += _leaves(json.loads(value))
    return out


def server_logs(caplog: pytest.LogCaptureFixture) -> str:
    """What the service logged (its own loggers and the server's), formatted."""
    records = [r for r in caplog.records if r.name.startswith(("nicecard", "uvicorn"))]
    assert records, "the service logged nothing?"
    standard = set(vars(logging.makeLogRecord({})))
    return "\n".join(
        f"{r.getMessage()} { ({k: v for k, v in vars(r).items() if k not in standard}) }"
        for r in records
    )


def test_withdrawal_and_deposit_share_nothing(
    town: Town,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    town.earn(5)  # 100 points
    denominations = town.wallet.denominations()
    public = {d.id for d in denominations} | {d.public_key for d in denominations}
    public |= {d.entry for d in denominations}
    public_text = {d.id.hex() for d in denominations} | {b64encode(k) for k in public}
    runtime = town.provider.app.state.runtime
    engines = (runtime.ledger_engine, runtime.identity_engine)

    before = snapshot(*engines)
    caplog.clear()
    coins = town.wallet.withdraw(67)
    withdrawal_logs = server_logs(caplog)
    after_withdrawal = snapshot(*engines)

    town.provider.clock.advance(120)  # a later deposit: times differ too
    shop = town.shops[0]
    twenties = [c for c in coins if c.value == 20][:2]
    body = pay(twenties, PaymentRequest(shop.client_id, "order-4242", 40), now=int(time.time()) + 7)
    caplog.clear()
    assert town.deposit(shop, body).status_code == 201
    deposit_logs = server_logs(caplog)
    after_deposit = snapshot(*engines)

    at_withdrawal = values(written(before, after_withdrawal))
    at_deposit = values(written(after_withdrawal, after_deposit))
    assert at_withdrawal, "the withdrawal wrote nothing?"
    assert at_deposit, "the deposit wrote nothing?"
    shared = (at_withdrawal & at_deposit) - public
    assert not shared, f"values written at both withdrawal and deposit: {shared!r}"

    # Coins are never inside anything written at withdrawal, even as part of a larger value.
    for coin in twenties:
        for secret in (coin.coin.coin, coin.coin.signature, coin.coin.randomizer):
            assert not any(secret in v for v in at_withdrawal if isinstance(v, bytes))
            assert b64encode(secret) not in withdrawal_logs
            assert secret.hex() not in withdrawal_logs

    # Nor do the logs of the two requests share a token (ids, digests, keys).
    tokens = set(_TOKEN.findall(withdrawal_logs)) & set(_TOKEN.findall(deposit_logs))
    assert not tokens - public_text, tokens
