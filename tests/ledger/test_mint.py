"""The mint as a library: a deposit's claim, entry and record commit together or not at all;
coins are judged under the append lock, within a batch too; a replay gets the same receipt;
a database failure is a LedgerStoreError, never a driver error."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

import ledger.mint
from keys.blind_rsa import BlindPrivateKey, SigningFailure, blind_sign
from keys.keyring import Keyring
from keys.model import Purpose
from keys.note import parse_verifier_key
from ledger.checkpoints import verifier_keys
from ledger.coins import Coin, b64decode, open_receipt
from ledger.entries import ActCredited, CoinCount, CoinsDeposited, SpentCoin, WithdrawalDebited
from ledger.errors import (
    AppendRejected,
    CoinsSpent,
    InsufficientBalance,
    LedgerError,
    LedgerStoreError,
)
from ledger.mint import DenominationExpired, Mint, MintPolicy, PaidCoin, UnknownDenomination
from ledger.store import (
    AppendRequest,
    CoinSpend,
    DepositRows,
    IdempotencyKey,
    LedgerStore,
    WithdrawalRows,
)
from ledger.tables import deposits_table, spent_table, withdrawals_table
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


def fail_signing_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the mint's next blind signature fail its fault check, as a CRT fault would."""
    failures = [SigningFailure("signing failure: the signature failed the fault check")]

    def fails_once(sk: BlindPrivateKey, blinded: bytes) -> bytes:
        if failures:
            raise failures.pop()
        return blind_sign(sk, blinded)

    monkeypatch.setattr(ledger.mint, "blind_sign", fails_once)


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


def _count(mint: Mint, table: sa.Table) -> int:
    with mint.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_a_signing_failure_debits_nothing_and_the_retry_debits_once(
    mint: Mint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The coins are signed before the debit: a signing failure leaves the balance and the log
    as they were and releases the request; its retry signs, debits once and answers."""
    pending = prepare_withdrawal(mint.denominations(), 16)
    items = [(p.denomination.id, p.blinding.blinded_msg) for p in pending]
    balance, head = mint.store.balance(WHO), mint.store.head().size
    fail_signing_once(monkeypatch)
    with pytest.raises(LedgerStoreError, match="could not sign"):
        mint.withdraw(WHO, "w" * 20, items)
    assert mint.store.balance(WHO) == balance
    assert mint.store.head().size == head
    assert _count(mint, withdrawals_table) == 0  # the claim was released

    done = mint.withdraw(WHO, "w" * 20, items)
    assert not done.replayed
    assert done.entry_index == head
    assert mint.store.head().size == head + 1
    logged = mint.store.entry(head)
    assert logged is not None
    assert isinstance(logged.entry.event, WithdrawalDebited)
    assert mint.store.balance(WHO) == balance - 16
    assert sum(c.value for c in finish_withdrawal(pending, done.signatures)) == 16
    again = mint.withdraw(WHO, "w" * 20, items)
    assert again.replayed
    assert again.signatures == done.signatures
    assert mint.store.balance(WHO) == balance - 16
    assert mint.store.head().size == head + 1


def test_a_debit_is_never_logged_without_its_signatures(mint: Mint) -> None:
    """The signatures are stored in the debit's own transaction: if storing them fails, nothing
    is debited; the retry debits once and its signatures are on the claim."""
    pending = prepare_withdrawal(mint.denominations(), 16)
    items = [(p.denomination.id, p.blinding.blinded_msg) for p in pending]
    balance, head = mint.store.balance(WHO), mint.store.head().size
    with mint.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER fail_store BEFORE UPDATE ON coin_withdrawals "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(LedgerStoreError):
        mint.withdraw(WHO, "w" * 20, items)
    assert (mint.store.balance(WHO), mint.store.head().size) == (balance, head)
    assert _count(mint, withdrawals_table) == 0  # the claim was released
    with mint.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER fail_store")
    done = mint.withdraw(WHO, "w" * 20, items)
    assert mint.store.balance(WHO) == balance - 16
    with mint.engine.connect() as conn:
        row = conn.execute(sa.select(withdrawals_table)).one()
    assert (row.entry_idx, row.signatures is not None) == (done.entry_index, True)


def test_withdrawal_rows_go_with_a_keyed_withdrawal(mint: Mint) -> None:
    rows = WithdrawalRows("w" * 20, b"")
    act = ActCredited(WHO, "transit", "tram_ride", 1, 1, 0, hashlib.sha256().digest())
    debit = WithdrawalDebited(WHO, 1, (CoinCount(hashlib.sha256().digest(), 1),))
    for request in (AppendRequest(act, withdrawal=rows), AppendRequest(debit, withdrawal=rows)):
        with pytest.raises(LedgerError, match="withdrawal rows"):
            mint.store.append_many([request])


def test_a_withdrawal_the_balance_cannot_pay_signs_nothing(
    mint: Mint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signing comes before the debit, so an unpayable request is refused before it costs a
    signature; a retry whose debit was logged before its answer was lost still signs."""
    signed: list[bytes] = []
    real = blind_sign

    def counting(sk: BlindPrivateKey, blinded: bytes) -> bytes:
        signed.append(blinded)
        return real(sk, blinded)

    monkeypatch.setattr(ledger.mint, "blind_sign", counting)
    pending = prepare_withdrawal(mint.denominations(), 51)  # the balance is 50
    with pytest.raises(InsufficientBalance):
        mint.withdraw(WHO, "w" * 20, [(p.denomination.id, p.blinding.blinded_msg) for p in pending])
    assert signed == []
    assert _count(mint, withdrawals_table) == 0

    pending = prepare_withdrawal(mint.denominations(), 30)
    items = [(p.denomination.id, p.blinding.blinded_msg) for p in pending]
    done = mint.withdraw(WHO, "x" * 20, items)
    with mint.engine.begin() as conn:  # the answer was lost after the debit: signatures gone
        conn.execute(withdrawals_table.update().values(signatures=None))
    assert mint.store.balance(WHO) == 20  # less than the request: only the retry rule lets it by
    again = mint.withdraw(WHO, "x" * 20, items)
    assert again.signatures == done.signatures
    assert mint.store.balance(WHO) == 20


def test_a_deposit_that_fails_to_commit_leaves_nothing(mint: Mint) -> None:
    coins = paid_coins(mint, 16, PaymentRequest("shop", "order-1", 16))
    head = mint.store.head().size
    with mint.engine.begin() as conn:  # the last write of the append transaction fails
        conn.exec_driver_sql(
            "CREATE TRIGGER fail_spend BEFORE INSERT ON coin_spent "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    with pytest.raises(LedgerStoreError):
        mint.deposit("shop", "order-1", 16, coins)
    assert mint.store.head().size == head
    assert _count(mint, spent_table) == _count(mint, deposits_table) == 0
    with mint.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER fail_spend")
    done = mint.deposit("shop", "order-1", 16, coins)  # the retry spends them once
    assert not done.replayed
    assert done.receipt.entry_index == head
    assert mint.store.head().size == head + 1
    assert _count(mint, spent_table) == len(coins)


def test_a_replay_gets_the_same_receipt_even_after_the_deposit_window(mint: Mint) -> None:
    coins = paid_coins(mint, 16, PaymentRequest("shop", "order-1", 16))
    first = mint.deposit("shop", "order-1", 16, coins)
    assert mint.deposit("shop", "order-1", 16, coins).note == first.note
    assert isinstance(mint.clock, Clock)
    mint.clock.now += timedelta(days=400)  # every denomination's deposit window has closed
    late = mint.deposit("shop", "order-1", 16, coins)
    assert late.replayed
    assert late.note == first.note
    with pytest.raises((DenominationExpired, UnknownDenomination)):  # a new order is refused
        mint.deposit("shop", "order-2", 16, coins)


def test_a_replay_after_a_ledger_key_rotation_says_the_same(mint: Mint) -> None:
    coins = paid_coins(mint, 16, PaymentRequest("shop", "order-1", 16))
    first = mint.deposit("shop", "order-1", 16, coins)
    keys = verifier_keys(mint.keyring, ORIGIN)
    mint.keyring.rotate(Purpose.LEDGER_CHECKPOINT, force=True)
    again = mint.deposit("shop", "order-1", 16, coins)
    assert again.replayed
    assert again.note != first.note  # signed again, by the key now active
    verifiers = [parse_verifier_key(k) for k in verifier_keys(mint.keyring, ORIGIN)]
    assert open_receipt(again.note, verifiers, ORIGIN) == first.receipt
    assert open_receipt(first.note, [parse_verifier_key(k) for k in keys], ORIGIN) == first.receipt


def test_coins_spent_twice_in_one_transaction(mint: Mint) -> None:
    """Two deposits sharing a coin in one append batch: the first wins, the second is refused
    with the coin named, and nothing of it is written."""
    coin = hashlib.sha256(b"coin").digest()
    other = hashlib.sha256(b"other").digest()
    denomination = hashlib.sha256(b"denomination").digest()

    def deposit(order: str, coins: list[bytes]) -> AppendRequest:
        spent = tuple(SpentCoin(denomination, c) for c in sorted(coins))
        event = CoinsDeposited("shop", len(coins), hashlib.sha256(order.encode()).digest(), spent)
        key = IdempotencyKey("#deposit", order, hashlib.sha256(b"r" + order.encode()).digest())
        rows = DepositRows(order, tuple(CoinSpend(c, denomination, 1, b"p" * 64) for c in coins))
        return AppendRequest(event, key, deposit=rows)

    first, second, third = mint.store.append_many(
        [deposit("a", [coin]), deposit("b", [other, coin]), deposit("c", [other])]
    )
    assert not isinstance(first, AppendRejected)
    assert isinstance(second, CoinsSpent)
    assert second.coins == (coin,)
    assert not isinstance(third, AppendRejected)
    (again,) = mint.store.append_many([deposit("d", [coin])])
    assert isinstance(again, CoinsSpent)
    with mint.engine.connect() as conn:
        rows = conn.execute(sa.select(spent_table.c.coin, spent_table.c.order_ref)).all()
        orders = conn.execute(sa.select(deposits_table.c.order_ref)).scalars().all()
    assert sorted((bytes(c), o) for c, o in rows) == sorted([(coin, "a"), (other, "c")])
    assert sorted(orders) == ["a", "c"]


@pytest.mark.parametrize(
    "change",
    ["no rows", "no key", "other coin", "coin twice", "rows on an act"],
)
def test_deposit_rows_must_match_their_entry(mint: Mint, change: str) -> None:
    coin, denomination = hashlib.sha256(b"coin").digest(), hashlib.sha256(b"d").digest()
    event = CoinsDeposited("shop", 1, hashlib.sha256().digest(), (SpentCoin(denomination, coin),))
    key: IdempotencyKey | None = IdempotencyKey("#deposit", "o", hashlib.sha256().digest())
    spends = (CoinSpend(coin, denomination, 1, b"p" * 64),)
    rows: DepositRows | None = DepositRows("o", spends)
    if change == "no rows":
        rows = None
    elif change == "no key":
        key = None
    elif change == "other coin":
        rows = DepositRows("o", (CoinSpend(denomination, denomination, 1, b"p" * 64),))
    elif change == "coin twice":
        rows = DepositRows("o", spends * 2)
    request = AppendRequest(event, key, deposit=rows)
    if change == "rows on an act":
        act = ActCredited(WHO, "transit", "tram_ride", 1, 1, 0, hashlib.sha256().digest())
        request = AppendRequest(act, deposit=rows)
    head = mint.store.head().size
    with pytest.raises(LedgerError):
        mint.store.append_many([request])
    assert mint.store.head().size == head


def test_database_failures_are_store_errors(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}")
    store = LedgerStore(engine)
    keyring = make_keyring(tmp_path / "keys")
    broken = Mint(store, keyring, ORIGIN)
    with pytest.raises(LedgerStoreError):
        broken.denominations()
    with pytest.raises(LedgerStoreError):
        broken.statement("shop", datetime.now(UTC) - timedelta(days=1), datetime.now(UTC))
