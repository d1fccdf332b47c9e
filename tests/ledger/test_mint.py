"""The mint as a library: a deposit interrupted between claiming its coins and logging them is
finished by the sweep; a database failure is a LedgerStoreError, never a driver error."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from keys.keyring import Keyring
from ledger.coins import Coin, b64decode
from ledger.entries import ActCredited
from ledger.errors import LedgerStoreError
from ledger.mint import Mint, MintPolicy, PaidCoin, _deposit_digest
from ledger.store import LedgerStore
from ledger.tables import deposits_table, spent_table
from ledger.wallet import PaymentRequest, finish_withdrawal, pay, prepare_withdrawal
from tests.ledger.test_store import ORIGIN, ledger_engine, make_keyring

WHO = "0123456789abcdef0123456789abcdef"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def mint(tmp_path: Path) -> Iterator[Mint]:
    engine = ledger_engine(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path)
    clock = Clock()
    store = LedgerStore(engine, clock=clock)
    keyring: Keyring = make_keyring(tmp_path / "keys")
    store.append(ActCredited(WHO, "transit", "tram_ride", 50, 1, 0, hashlib.sha256().digest()))
    yield Mint(store, keyring, ORIGIN, MintPolicy(values=(1, 5, 10)), clock=clock)
    engine.dispose()


def paid_coins(mint: Mint, amount: int, request: PaymentRequest) -> list[PaidCoin]:
    pending = prepare_withdrawal(mint.denominations(), amount)
    items = [(p.denomination.id, p.blinding.blinded_msg) for p in pending]
    answer = mint.withdraw(WHO, "w" * 20, items)
    body = pay(finish_withdrawal(pending, answer.signatures), request)
    return [
        PaidCoin(
            Coin.from_json(
                {k: c[k] for k in ("denomination", "coin_pub", "randomizer", "signature")}
            ),
            c["signed_at"],
            b64decode(c["permission"], "permission", 64),
        )
        for c in body["coins"]
    ]


def test_an_interrupted_deposit_is_finished_by_the_sweep(mint: Mint) -> None:
    request = PaymentRequest("shop", "order-1", 16)
    coins = paid_coins(mint, 16, request)
    head = mint.store.head().size
    # The process stops after the claim, before the entry is appended.
    digest = _deposit_digest("shop", "order-1", 16, coins)
    assert mint._claim_coins("shop", "order-1", 16, coins, digest) is not None
    assert mint.store.head().size == head
    assert mint.finish_pending_deposits() == 0  # too recent: a request may still be finishing it
    assert isinstance(mint.clock, Clock)
    mint.clock.now += timedelta(minutes=2)
    assert mint.finish_pending_deposits() == 1
    assert mint.store.head().size == head + 1
    with mint.engine.connect() as conn:
        receipt = conn.execute(sa.select(deposits_table.c.receipt)).scalar_one()
        spent = conn.execute(sa.select(sa.func.count()).select_from(spent_table)).scalar_one()
    assert receipt is not None
    assert spent == len(coins)
    assert mint.finish_pending_deposits() == 0
    # The partner's retry gets the same receipt.
    again = mint.deposit("shop", "order-1", 16, coins)
    assert again.replayed
    assert again.note == bytes(receipt).decode()


def test_database_failures_are_store_errors(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}")
    store = LedgerStore(engine)
    keyring = make_keyring(tmp_path / "keys")
    broken = Mint(store, keyring, ORIGIN)
    with pytest.raises(LedgerStoreError):
        broken.denominations()
    with pytest.raises(LedgerStoreError):
        broken.statement("shop", datetime.now(UTC) - timedelta(days=1), datetime.now(UTC))
