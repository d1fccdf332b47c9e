"""The reference citizen wallet: make coins, blind them, finalize, pay.

Everything here runs on the citizen's device. The ledger sees blinded messages at withdrawal and
coins at deposit, and nothing connects the two: the coin key pair, the RFC 9474 randomizer and
the blinding factor never leave the wallet (the blinding factor is dropped once the coin is
finalized). :class:`WalletClient` speaks HTTP to the service; :class:`CoinPurse` keeps coins in
a JSON file (it holds private keys: the file is created ``0600``), changed only under an
exclusive lock on a sibling ``<file>.lock`` so that two wallet processes never lose each other's
changes.

Denominations are trusted only once checked: their list is signed by the ledger key the wallet
pins, each key's announcement entry matches it, and that entry is in the log (an inclusion
proof against a checkpoint signed by the same key). A key shown to this wallet but not logged,
which could single it out, is refused.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys.blind_rsa import BlindingResult, blind, finalize, prepare
from keys.errors import BlindRSAError
from keys.note import NoteVerifier
from ledger.checkpoint import open_checkpoint
from ledger.coins import (
    VARIANT,
    Coin,
    CoinError,
    Denomination,
    b64decode,
    b64encode,
    open_denominations,
    permission_message,
)
from ledger.errors import LedgerError
from ledger.merkle import leaf_hash, verify_inclusion

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

__all__ = [
    "CoinPurse",
    "OwnedCoin",
    "PaymentRequest",
    "PendingCoin",
    "PendingWithdrawal",
    "WalletClient",
    "WalletError",
    "choose_values",
    "fetch_denominations",
    "finish_withdrawal",
    "pay",
    "prepare_withdrawal",
    "write_private",
]

#: How long a wallet waits for another wallet process to let go of the coin file.
LOCK_TIMEOUT = 10.0


class WalletError(LedgerError):
    """The wallet cannot do what was asked (not enough coins, a refused answer, bad data)."""


@dataclass(frozen=True)
class PendingCoin:
    """A coin being withdrawn: everything needed to finalize it. Never sent anywhere."""

    denomination: Denomination
    private_key: bytes
    randomizer: bytes
    blinding: BlindingResult

    @property
    def coin(self) -> bytes:
        return (
            Ed25519PrivateKey.from_private_bytes(self.private_key).public_key().public_bytes_raw()
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "denomination": self.denomination.to_json(),
            "private_key": b64encode(self.private_key),
            "randomizer": b64encode(self.randomizer),
            "blinded_message": b64encode(self.blinding.blinded_msg),
            "inv": format(self.blinding.inv, "x"),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PendingCoin:
        return cls(
            Denomination.from_json(raw["denomination"]),
            b64decode(raw["private_key"], "private_key", 32),
            b64decode(raw["randomizer"], "randomizer", 32),
            BlindingResult(
                b64decode(raw["blinded_message"], "blinded_message"), int(raw["inv"], 16)
            ),
        )


@dataclass(frozen=True)
class PendingWithdrawal:
    """A withdrawal sent but not yet answered: kept in the coin file until it is, so a lost
    answer is recovered by sending the same request again (the mint answers it once)."""

    request_id: str
    coins: tuple[PendingCoin, ...]

    def body(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "coins": [
                {
                    "denomination": p.denomination.id.hex(),
                    "blinded_message": b64encode(p.blinding.blinded_msg),
                }
                for p in self.coins
            ],
        }

    def to_json(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "coins": [c.to_json() for c in self.coins]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> PendingWithdrawal:
        return cls(str(raw["request_id"]), tuple(PendingCoin.from_json(c) for c in raw["coins"]))


@dataclass(frozen=True)
class OwnedCoin:
    """A finalized coin and its private key, ready to pay with."""

    coin: Coin
    value: int
    private_key: bytes
    deposit_until: int

    def to_json(self) -> dict[str, Any]:
        return {
            **self.coin.to_json(),
            "value": self.value,
            "private_key": b64encode(self.private_key),
            "deposit_until": self.deposit_until,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> OwnedCoin:
        return cls(
            Coin.from_json(
                {k: raw[k] for k in ("denomination", "coin_pub", "randomizer", "signature")}
            ),
            int(raw["value"]),
            b64decode(raw["private_key"], "private_key", 32),
            int(raw["deposit_until"]),
        )


@dataclass(frozen=True)
class PaymentRequest:
    """What a partner asks a wallet to pay: its client id, an order reference, an amount."""

    partner: str
    order: str
    amount: int


def choose_values(values: Iterable[int], amount: int) -> list[int]:
    """Coin values adding up to ``amount``, fewest coins first (greedy, exact when 1 exists)."""
    out: list[int] = []
    remaining = amount
    for value in sorted(set(values), reverse=True):
        count, remaining = divmod(remaining, value)
        out += [value] * count
    if remaining:
        raise WalletError(f"{amount} points cannot be made from the denominations")
    return out


def prepare_withdrawal(
    denominations: Sequence[Denomination], amount: int, *, now: int | None = None
) -> list[PendingCoin]:
    """Make the coins for ``amount`` points from the denominations withdrawable now."""
    t = int(time.time()) if now is None else now
    usable = {d.value: d for d in denominations if d.withdraw_from <= t < d.withdraw_until}
    pending = []
    for value in choose_values(usable, amount):
        denomination = usable[value]
        private = Ed25519PrivateKey.generate()
        coin = private.public_key().public_bytes_raw()
        prepared = prepare(VARIANT, coin)
        pending.append(
            PendingCoin(
                denomination,
                private.private_bytes_raw(),
                prepared[:32],
                blind(VARIANT, denomination.key, prepared),
            )
        )
    return pending


def finish_withdrawal(
    pending: Sequence[PendingCoin], signatures: Sequence[bytes]
) -> list[OwnedCoin]:
    """Unblind each signature; a signature that does not verify is refused (RFC 9474 §4.4)."""
    if len(signatures) != len(pending):
        raise WalletError("the mint answered a different number of signatures")
    owned = []
    for item, blind_sig in zip(pending, signatures, strict=True):
        prepared = item.randomizer + item.coin
        try:
            signature = finalize(
                VARIANT, item.denomination.key, prepared, blind_sig, item.blinding.inv
            )
        except BlindRSAError:
            raise WalletError("a blind signature does not verify") from None
        owned.append(
            OwnedCoin(
                Coin(item.denomination.id, item.coin, item.randomizer, signature),
                item.denomination.value,
                item.private_key,
                item.denomination.deposit_until,
            )
        )
    return owned


def pay(
    coins: Sequence[OwnedCoin], request: PaymentRequest, *, now: int | None = None
) -> dict[str, Any]:
    """The deposit body for ``request``: each coin with its signed permission."""
    signed_at = int(time.time()) if now is None else now
    if sum(c.value for c in coins) != request.amount:
        raise WalletError("the coins do not add up to the amount")
    body = []
    for owned in coins:
        message = permission_message(
            request.partner,
            request.order,
            request.amount,
            coin=owned.coin.coin,
            denomination=owned.coin.denomination,
            signed_at=signed_at,
        )
        permission = Ed25519PrivateKey.from_private_bytes(owned.private_key).sign(message)
        body.append(
            {
                **owned.coin.to_json(),
                "signed_at": signed_at,
                "permission": b64encode(permission),
            }
        )
    return {"order": request.order, "amount": request.amount, "coins": body}


class CoinPurse:
    """Coins kept in a JSON file (private keys inside: created with mode 0600).

    Every read and write of the file happens under :meth:`locked`, an exclusive lock on the
    sibling ``<file>.lock``; a caller that reads, decides and writes (pay, withdraw) holds it
    from the read to the last write, so two wallet processes never lose each other's changes.
    """

    def __init__(self, path: Path, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
        self.path = path
        self.lock_timeout = lock_timeout
        self._guard = threading.RLock()
        self._lock_fd: int | None = None
        self._depth = 0

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the coin file for this purse alone: other processes (and threads) wait up to
        ``lock_timeout`` seconds, then get a WalletError. Re-entrant within one purse, so the
        methods below, which lock for themselves, can be called inside."""
        deadline = time.monotonic() + self.lock_timeout
        if not self._guard.acquire(timeout=self.lock_timeout):
            raise self._busy()
        try:
            if self._depth == 0:
                self._lock_fd = _lock_file(self.lock_path, deadline)
                if self._lock_fd is None:
                    raise self._busy()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    _unlock_file(self._lock_fd)
                    self._lock_fd = None
        finally:
            self._guard.release()

    def _busy(self) -> WalletError:
        return WalletError(
            f"another wallet process holds the coin file {self.path} "
            f"(waited {self.lock_timeout:g} s): try again once it is done"
        )

    def _read(self) -> tuple[list[OwnedCoin], PendingWithdrawal | None]:
        with self.locked():
            if not self.path.exists():
                return [], None
            try:
                raw = json.loads(self.path.read_text("utf-8"))
                coins = [OwnedCoin.from_json(item) for item in raw["coins"]]
                pending = raw.get("pending")
                return coins, None if pending is None else PendingWithdrawal.from_json(pending)
            except (
                ValueError,
                KeyError,
                TypeError,
                AttributeError,
                CoinError,
                BlindRSAError,
            ) as exc:
                raise WalletError(f"{self.path} is not a coin file: {exc}") from None

    def load(self) -> list[OwnedCoin]:
        """The coins held."""
        return self._read()[0]

    def pending(self) -> PendingWithdrawal | None:
        """The withdrawal sent but not answered yet, if any."""
        return self._read()[1]

    def save(self, coins: Sequence[OwnedCoin], *, pending: PendingWithdrawal | None = None) -> None:
        """Write the coins (and a pending withdrawal) atomically, readable by the owner only.
        Hold :meth:`locked` since reading what ``coins`` was made from."""
        document: dict[str, Any] = {"coins": [c.to_json() for c in coins]}
        if pending is not None:
            document["pending"] = pending.to_json()
        with self.locked():
            write_private(self.path, json.dumps(document, indent=1))

    def take(self, amount: int, *, now: int | None = None) -> list[OwnedCoin]:
        """Fewest coins adding up to exactly ``amount``, skipping coins whose denomination no
        longer accepts deposits; raises WalletError if no combination does. The coins stay in
        the file until :meth:`remove`: hold :meth:`locked` across both."""
        t = int(time.time()) if now is None else now
        usable = sorted((c for c in self.load() if t < c.deposit_until), key=lambda c: -c.value)
        # best[total] = the fewest coins (as indexes into usable) adding up to total
        best: dict[int, list[int]] = {0: []}
        for i, coin in enumerate(usable):
            for total, chosen in sorted(best.items(), reverse=True):
                reached = total + coin.value
                if reached <= amount and (
                    reached not in best or len(best[reached]) > len(chosen) + 1
                ):
                    best[reached] = [*chosen, i]
        if amount not in best:
            raise WalletError(f"the purse cannot pay exactly {amount} points")
        return [usable[i] for i in best[amount]]

    def remove(self, spent: Iterable[OwnedCoin]) -> None:
        """Drop the ``spent`` coins from the file."""
        gone = {c.coin.coin for c in spent}
        with self.locked():
            coins, pending = self._read()
            self.save([c for c in coins if c.coin.coin not in gone], pending=pending)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically and durably (a temporary file, fsynced, renamed
    over it, the directory fsynced), readable by the owner only (mode 0600).

    The temporary file gets an unpredictable name and is created exclusively (``mkstemp``), so
    in a shared directory nobody can plant a file or a symlink there to receive the secrets."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; Windows cannot open a directory)."""
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_file(path: Path, deadline: float) -> int | None:
    """An open descriptor of ``path`` (created 0600) holding its exclusive lock, or None if
    another process still holds it at ``deadline`` (a monotonic time)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    while True:
        try:
            if sys.platform == "win32":
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:  # BlockingIOError (POSIX), PermissionError (Windows): held elsewhere
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.close(fd)
                return None
            time.sleep(min(0.02, remaining))


def _unlock_file(fd: int) -> None:
    try:
        if sys.platform == "win32":
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class WalletClient:
    """The wallet's HTTP side: denominations (checked against the log), withdraw."""

    def __init__(
        self, http: httpx.Client, *, origin: str, ledger_key: NoteVerifier, access_token: str
    ) -> None:
        self.http = http
        self.origin = origin
        self.ledger_key = ledger_key
        self.access_token = access_token

    def denominations(self) -> list[Denomination]:
        """The published denominations, each checked to be announced in the log."""
        return fetch_denominations(self.http, origin=self.origin, ledger_key=self.ledger_key)

    def withdraw(
        self,
        amount: int,
        *,
        denominations: Sequence[Denomination] | None = None,
        purse: CoinPurse | None = None,
    ) -> list[OwnedCoin]:
        """Withdraw ``amount`` points as coins. With a ``purse``, the pending withdrawal is
        written to it before the request is sent and the coins after the answer, so a lost
        answer is recovered by :meth:`resume` (the mint answers the same request id once). The
        purse stays locked throughout, so no other wallet process writes over either."""
        if purse is None:
            return self._send(self._prepare(amount, denominations), None)
        with purse.locked():
            if purse.pending() is not None:
                raise WalletError("a withdrawal is still pending: resume it first")
            pending = self._prepare(amount, denominations)
            purse.save(purse.load(), pending=pending)
            return self._send(pending, purse)

    def resume(self, purse: CoinPurse) -> list[OwnedCoin]:
        """Send the purse's pending withdrawal again and keep its coins (none if nothing is
        pending), the purse locked throughout."""
        with purse.locked():
            pending = purse.pending()
            return [] if pending is None else self._send(pending, purse)

    def _prepare(
        self, amount: int, denominations: Sequence[Denomination] | None
    ) -> PendingWithdrawal:
        items = self.denominations() if denominations is None else denominations
        return PendingWithdrawal(
            secrets.token_urlsafe(24), tuple(prepare_withdrawal(items, amount))
        )

    def _send(self, pending: PendingWithdrawal, purse: CoinPurse | None) -> list[OwnedCoin]:
        """Send ``pending``; with a ``purse`` (which the caller holds locked since writing
        ``pending`` to it), clear it or add the coins."""
        headers = {"Authorization": f"Bearer {self.access_token}"}
        body = pending.body()
        try:
            response = self.http.post("/v1/wallet/withdrawals", json=body, headers=headers)
        except httpx.TransportError:
            response = self.http.post("/v1/wallet/withdrawals", json=body, headers=headers)
        try:
            answer = _json(response)
        except WalletError as exc:
            if purse is not None and response.status_code in (400, 409, 422):
                # Refused (the mint answers a replay before judging): nothing was debited.
                # Anything else (401, 5xx) may follow a debit whose answer was lost: keep it.
                purse.save(purse.load())
            raise exc from None
        try:
            signatures = [b64decode(s, "blind signature") for s in answer["blind_signatures"]]
        except (KeyError, TypeError):
            raise WalletError("malformed withdrawal answer") from None
        coins = finish_withdrawal(pending.coins, signatures)
        if purse is not None:
            purse.save(purse.load() + coins)
        return coins


def fetch_denominations(
    http: httpx.Client, *, origin: str, ledger_key: NoteVerifier
) -> list[Denomination]:
    """The published denominations: their list signed by ``ledger_key``, and each one's
    announcement entry matching it and included in the log (a proof against a checkpoint
    signed by the same key). Raises WalletError or CoinError."""
    answer = _json(http.get("/v1/denominations"))
    try:
        items = [Denomination.from_json(raw) for raw in answer["denominations"]]
        open_denominations(answer["signed"], items, [ledger_key], origin)
    except (KeyError, TypeError) as exc:
        raise WalletError(f"malformed denominations answer: {exc}") from None
    for item in items:
        item.check_entry()
        _check_logged(http, item, origin, ledger_key)
    return items


def _check_logged(
    http: httpx.Client, item: Denomination, origin: str, ledger_key: NoteVerifier
) -> None:
    proof = _json(http.get("/ledger/proof/inclusion", params={"index": item.entry_index}))
    try:
        checkpoint = open_checkpoint(proof["checkpoint"].encode(), [ledger_key], origin=origin)
        hashes = [base64.b64decode(h, validate=True) for h in proof["hashes"]]
        root = checkpoint.root_hash
        verify_inclusion(leaf_hash(item.entry), item.entry_index, checkpoint.size, hashes, root)
    except (KeyError, TypeError, ValueError, LedgerError) as exc:
        raise WalletError(f"denomination key is not in the log: {exc}") from None


def _json(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            problem = response.json()
            detail = problem.get("detail") or problem.get("title")
        except (ValueError, AttributeError):
            detail = response.reason_phrase
        raise WalletError(f"HTTP {response.status_code}: {detail}")
    try:
        return response.json()
    except ValueError:
        raise WalletError(f"HTTP {response.status_code}: the answer is not JSON") from None
