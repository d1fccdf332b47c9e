"""The coin file shared by wallet processes: each read-modify-write holds the purse's lock, so
none is lost; a process that cannot get the lock in time gets a WalletError, not a hang."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import pytest

from ledger.coins import Coin
from ledger.wallet import CoinPurse, OwnedCoin, WalletError

WALLET = Path(sys.executable).parent / "nicecard-wallet"
ROUNDS = 40

_spawn = multiprocessing.get_context("spawn")


def coin(value: int, tag: bytes) -> OwnedCoin:
    """A coin whose public key is ``tag`` (padded): enough to be kept, counted and paid."""
    return OwnedCoin(
        Coin(b"\x01" * 32, tag.ljust(32, b"\x00"), b"\x03" * 32, b"\x04" * 256),
        value,
        b"\x05" * 32,
        2**40,
    )


def add_coins(path: Path, worker: int, start: Barrier) -> None:
    """Each round: lock, read, add one coin of this worker's own, write."""
    purse = CoinPurse(path)
    start.wait()
    for i in range(ROUNDS):
        with purse.locked():
            purse.save([*purse.load(), coin(1, bytes([worker, i]))])


def hold_lock(path: Path, held: Event, release: Event) -> None:
    with CoinPurse(path).locked():
        held.set()
        release.wait(30)


def test_two_processes_lose_no_coin(tmp_path: Path) -> None:
    path = tmp_path / "coins.json"
    start = _spawn.Barrier(2)
    workers = [_spawn.Process(target=add_coins, args=(path, w, start)) for w in (1, 2)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(30)
        assert p.exitcode == 0
    held = {c.coin.coin[:2] for c in CoinPurse(path).load()}
    assert held == {bytes([w, i]) for w in (1, 2) for i in range(ROUNDS)}
    assert (tmp_path / "coins.json.lock").stat().st_mode & 0o777 == 0o600
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coins.json", "coins.json.lock"]


def test_a_held_lock_times_out_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "coins.json"
    CoinPurse(path).save([coin(5, b"a")])
    held, release = _spawn.Event(), _spawn.Event()
    holder = _spawn.Process(target=hold_lock, args=(path, held, release))
    holder.start()
    try:
        assert held.wait(30)
        purse = CoinPurse(path, lock_timeout=0.2)
        began = time.monotonic()
        with pytest.raises(WalletError, match="another wallet process holds the coin file"):
            purse.remove(purse.take(5))
        assert time.monotonic() - began >= 0.2
        with pytest.raises(WalletError, match="another wallet process"):
            purse.load()
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0
    assert [c.value for c in purse.load()] == [5]  # free again, and nothing was removed


def test_the_lock_is_reentrant_within_a_purse(tmp_path: Path) -> None:
    purse = CoinPurse(tmp_path / "coins.json", lock_timeout=0.1)
    with purse.locked(), purse.locked():
        purse.save([coin(2, b"a"), coin(5, b"b")])
        purse.remove(purse.take(2))
        # Another purse on the same file is another holder, even in this process.
        with pytest.raises(WalletError, match="another wallet process"):
            CoinPurse(purse.path, lock_timeout=0.05).load()
    assert [c.value for c in CoinPurse(purse.path).load()] == [5]


def test_pay_waits_for_the_lock_and_pays_from_what_it_then_reads(tmp_path: Path) -> None:
    path = tmp_path / "wallet-coins.json"
    CoinPurse(path).save([coin(5, b"old")])
    other = CoinPurse(path)
    with other.locked():
        paying = subprocess.Popen(
            [str(WALLET), "pay", "--partner", "shop-massena", "--order", "o-1", "--amount", "5"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        # Another process changes the purse while pay waits: pay must read after this.
        other.save([coin(5, b"new"), coin(2, b"kept")])
    stdout, stderr = paying.communicate(timeout=30)
    assert paying.returncode == 0, stderr
    assert "2 points left" in stderr
    [paid] = json.loads(stdout)["coins"]
    assert paid["coin_pub"] == coin(5, b"new").coin.to_json()["coin_pub"]
    assert [c.coin.coin for c in CoinPurse(path).load()] == [coin(2, b"kept").coin.coin]


def test_a_planted_temporary_file_receives_nothing(tmp_path: Path) -> None:
    """In a shared directory, a symlink at a guessable temporary name must not get the coins."""
    path = tmp_path / "coins.json"
    target = tmp_path / "stolen"
    (tmp_path / "coins.json.tmp").symlink_to(target)
    CoinPurse(path).save([coin(5, b"a")])
    assert not target.exists()
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(CoinPurse(path).load()) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == ["coins.json.tmp"]  # only the planted link, untouched
