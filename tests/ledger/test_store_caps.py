"""Caps judged by the store under the head lock (``ActCaps``), and group commits of several
requests (``GroupCommitAppender.submit_many``), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ledger.entries import ActCredited, CoinCount, WithdrawalDebited
from ledger.errors import CapExceeded, IdempotencyConflict, LedgerError
from ledger.group_commit import GroupCommitAppender
from ledger.store import ActCaps, Appended, AppendRequest, LedgerStore
from tests.ledger.test_store import T0, Ticking, act, idem, ledger_engine, pseudonym

CAPS = ActCaps(per_day=2, per_month=3, skew=timedelta(minutes=5))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    """A migrated store whose clock starts at T0 and ticks one second per transaction."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    engine = ledger_engine(url, tmp_path)
    yield LedgerStore(engine, clock=Ticking())
    engine.dispose()


def trip(who: int, when: datetime, n: int = 0, *, kind: str = "tram_ride") -> ActCredited:
    """An act of ``kind`` for pseudonym ``who`` that happened at ``when``."""
    return ActCredited(
        pseudonym(who),
        "lignes-azur",
        kind,
        2,
        1,
        int(when.timestamp()),
        hashlib.sha256(b"trip %d %d" % (who, n)).digest(),
    )


def capped(event: ActCredited, key: str | None = None) -> AppendRequest:
    return AppendRequest(event, idem(key, event.evidence) if key else None, CAPS)


def test_caps_count_the_log_and_the_transaction(store: LedgerStore) -> None:
    day = T0 - timedelta(hours=2)  # the store's clock (T0 on) records after the acts happened
    first = store.append_many(
        [
            capped(trip(1, day, 0), "a"),
            capped(trip(1, day, 1)),
            capped(trip(1, day, 2), "c"),  # third that day: refused
            capped(trip(2, day, 3)),  # another pseudonym
            capped(trip(1, day, 4, kind="bike_share_trip")),  # another act type
            AppendRequest(trip(1, day, 5)),  # no caps: appended, and counted from now on
        ]
    )
    assert [type(o) for o in first] == [Appended, Appended, CapExceeded, Appended] + [Appended] * 2
    assert str(first[2]) == "tram_ride: at most 2 per day"

    # An act appended without caps counts towards later capped ones, in the transaction too.
    mixed = store.append_many(
        [AppendRequest(trip(5, day, 10)), capped(trip(5, day, 11)), capped(trip(5, day, 12))]
    )
    assert [type(o) for o in mixed] == [Appended, Appended, CapExceeded]

    # Later transactions count what the log holds: 3 tram rides this month already.
    earlier_day = day - timedelta(days=1)
    assert earlier_day.month == day.month
    (refused,) = store.append_many([capped(trip(1, earlier_day, 6))])
    assert isinstance(refused, CapExceeded)
    assert str(refused) == "tram_ride: at most 3 per month"
    # Another month is counted apart; a refused act was not remembered: its key is free.
    last_month = datetime(2026, 10, 31, 12, tzinfo=UTC)
    again = store.append_many([capped(trip(1, last_month, 7), "c")])
    assert isinstance(again[0], Appended)
    assert not again[0].replayed

    # A key answered before replays its first answer whatever the caps say now.
    (replay,) = store.append_many([capped(trip(1, day, 0), "a")])
    assert isinstance(replay, Appended)
    assert replay.replayed
    assert replay.index == first[0].index  # type: ignore[union-attr]
    (conflict,) = store.append_many([capped(trip(1, day, 99), "a")])
    assert isinstance(conflict, IdempotencyConflict)
    assert store.balance(pseudonym(1)) == 2 * 5


def test_caps_apply_to_acts_only(store: LedgerStore) -> None:
    withdrawal = WithdrawalDebited(pseudonym(1), 5, (CoinCount(b"\x01" * 32, 1),))
    with pytest.raises(LedgerError, match="caps apply to acts credited only"):
        store.append_many([AppendRequest(act(1), caps=CAPS), AppendRequest(withdrawal, None, CAPS)])
    assert store.head().size == 0
    with pytest.raises(LedgerError):
        ActCaps(per_day=0, per_month=1)
    with pytest.raises(LedgerError):
        ActCaps(per_day=1, per_month=1, skew=timedelta(seconds=-1))


def test_submit_many_shares_one_transaction(store: LedgerStore) -> None:
    # The store's test clock ticks once per transaction: one recorded_at per transaction.
    with GroupCommitAppender(store, max_batch=4) as appender:
        single = appender.submit(act(1, 1, 0))
        grouped = appender.submit_many([AppendRequest(act(2, 1, n)) for n in range(6)])
        capped_day = T0 - timedelta(hours=1)
        refused = appender.submit_many([capped(trip(3, capped_day, n)) for n in range(3)])
        empty = appender.submit_many([])
        assert empty.result() == []
        outcomes = grouped.result(timeout=30)
        assert isinstance(single.result(timeout=30), Appended)
        assert [type(o) for o in refused.result(timeout=30)] == [Appended] * 2 + [CapExceeded]
        with pytest.raises(CapExceeded):
            appender.append(trip(3, capped_day, 9), caps=CAPS)
    assert all(isinstance(o, Appended) for o in outcomes)
    appended = [o for o in outcomes if isinstance(o, Appended)]
    assert [o.index for o in appended] == list(range(appended[0].index, appended[0].index + 6))
    assert len({o.entry.recorded_at for o in appended}) == 1  # more than max_batch, together
    with pytest.raises(LedgerError):
        appender.submit_many([AppendRequest(act(1))])  # closed


def test_concurrent_caps_through_group_commits(store: LedgerStore) -> None:
    day = T0 - timedelta(hours=3)
    outcomes: list[Appended | LedgerError] = []
    lock = threading.Lock()

    def run(appender: GroupCommitAppender, thread: int) -> None:
        for n in range(5):
            try:
                result: Appended | LedgerError = appender.append(
                    trip(4, day, thread * 100 + n), caps=CAPS, timeout=30
                )
            except CapExceeded as exc:
                result = exc
            with lock:
                outcomes.append(result)

    # Two appenders on one store stand for two processes: they share only the head lock.
    with GroupCommitAppender(store) as one, GroupCommitAppender(store) as two:
        threads = [threading.Thread(target=run, args=(one if t % 2 else two, t)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sum(isinstance(o, Appended) for o in outcomes) == CAPS.per_day
    assert sum(isinstance(o, CapExceeded) for o in outcomes) == 8 * 5 - CAPS.per_day
    assert store.balance(pseudonym(4)) == 2 * CAPS.per_day
