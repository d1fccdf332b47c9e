"""The mint: denomination keys, withdrawals (blind signing) and deposits (spending coins).

The protocol (what is signed, in which bytes) is :mod:`ledger.coins`; this module is the
server's side of it, over the ledger store and the ``coin_*`` tables (migrations ``l0002`` and
``l0003``).

Denominations. One RSA blind-signing key per value per epoch (``MintPolicy``), created ahead of
time (the current and the next epoch), announced in the log before first use and published with
the index of that announcement. The private half is wiped when withdrawals end; deposits need
only the public key until ``deposit_until``.

Withdraw (a citizen, by ledger pseudonym). The request is claimed under its ``request_id`` with
a digest of its contents (limits checked there), the blinded messages are signed, in memory,
then the balance is debited in one ledger entry (pseudonym, total and counts per denomination,
nothing of the coins) whose transaction also stores the signatures with the claim
(:class:`~ledger.store.WithdrawalRows`), and they are returned. A signing failure thus debits
nothing (the claim is released and the request may retry), and no debit is ever logged without
the signatures that pay for it. Every step is idempotent (RSA blind signatures are
deterministic), so a replay of the same request, or a retry after a crash at any point, returns
the same signatures and debits once. The server sees blinded messages only and keeps only the
blind signatures, from which no coin can be recomputed without the wallet's blinding factors.

Deposit (a partner, by client id). Every coin is checked (denomination known and within its
deposit window, blind signature, the coin's permission naming this partner, order and amount),
then one append transaction claims the coins in ``coin_spent``, logs one entry (the partner,
the amount and the coins) and records the order in ``coin_deposits``. Coins are judged under the
ledger's head lock, so one deposit wins any race, across processes; the group commit shares
that transaction among concurrent deposits and acts. The ledger then signs a receipt from the
entry. A replay of the same deposit returns the same receipt (signed again from the entry:
byte for byte the same while the ledger key is, the same lines under the new key after a
rotation); a coin already spent for another order is refused, and the conflicting permission
kept as evidence.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NoReturn, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from keys.blind_rsa import BlindPrivateKey, blind_sign
from keys.denominations import new_denomination_key, open_denomination_key
from keys.errors import BlindRSAError
from keys.keyring import Keyring
from ledger.checkpoints import checkpoint_signer
from ledger.coins import (
    MAX_COINS,
    ORDER,
    Coin,
    CoinError,
    Denomination,
    DepositReceipt,
    Statement,
    StatementLine,
    b64encode,
    denominations_note,
    receipt_note,
    statement_note,
)
from ledger.entries import (
    CoinCount,
    CoinsDeposited,
    DenominationAnnounced,
    SpentCoin,
    WithdrawalDebited,
)
from ledger.errors import (
    AppendRejected,
    CoinsSpent,
    IdempotencyConflict,
    InsufficientBalance,
    LedgerError,
    LedgerStoreError,
)
from ledger.group_commit import GroupCommitAppender
from ledger.store import (
    Appended,
    AppendRequest,
    CoinSpend,
    DepositRows,
    IdempotencyKey,
    LedgerStore,
    WithdrawalRows,
)
from ledger.tables import (
    denominations_table,
    deposits_table,
    double_spends_table,
    withdrawals_table,
)

__all__ = [
    "AmountMismatch",
    "CoinAlreadySpent",
    "DenominationExpired",
    "DenominationsUnavailable",
    "Deposit",
    "InvalidCoin",
    "InvalidPermission",
    "MalformedCoinRequest",
    "Mint",
    "MintPolicy",
    "PaidCoin",
    "RequestConflict",
    "UnknownDenomination",
    "Withdrawal",
    "WithdrawalLimit",
]

_EPOCH_ORIGIN = 1767225600  # 2026-01-01T00:00:00Z
_WITHDRAWALS = "#withdrawal"  # idempotency namespaces no client id can take ('#' is not in
_DEPOSITS = "#deposit"  # a client id's charset) so partners' own keys never collide
_ANNOUNCEMENTS = "#denomination"
_PERMISSION_SKEW = 300  # a permission may be signed up to 5 minutes "in the future"
_REFRESH = timedelta(minutes=1)


# --- errors -----------------------------------------------------------------------------------


class MalformedCoinRequest(LedgerError):
    """A withdrawal or deposit request is malformed (shape, sizes, encodings, repeats)."""


class UnknownDenomination(LedgerError):
    """The request names a denomination that is not published."""


class DenominationExpired(LedgerError):
    """The denomination is outside its withdrawal or deposit window."""


class InvalidCoin(LedgerError):
    """A coin's denomination signature does not verify."""


class InvalidPermission(LedgerError):
    """A deposit permission is not signed by its coin for this partner, order and amount."""


class AmountMismatch(LedgerError):
    """The coins' values do not add up to the amount."""


class CoinAlreadySpent(LedgerError):
    """A coin was already deposited for another payment; ``coins`` are their public keys."""

    def __init__(self, message: str, coins: Sequence[str]) -> None:
        super().__init__(message)
        self.coins = list(coins)


class RequestConflict(LedgerError):
    """The request id (withdrawal) or order (deposit) was first used with other contents."""


class WithdrawalLimit(LedgerError):
    """The withdrawal exceeds the per-request or per-day limit."""


class DenominationsUnavailable(LedgerStoreError):
    """No denomination can be used right now (keys not created yet, or the store is down)."""


# --- policy and results -----------------------------------------------------------------------


@dataclass(frozen=True)
class MintPolicy:
    """Denomination values, key lifetimes and withdrawal limits (from settings)."""

    values: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
    epoch: timedelta = timedelta(days=30)
    deposit_grace: timedelta = timedelta(days=90)
    legal_grace: timedelta = timedelta(days=365)
    key_bits: int = 2048
    max_coins: int = 64
    max_points_per_day: int = 1000

    def __post_init__(self) -> None:
        if (
            not self.values
            or any(v < 1 for v in self.values)
            or len(set(self.values)) != len(self.values)
        ):
            raise ValueError("denomination values must be distinct positive integers")
        if not 1 <= self.max_coins <= MAX_COINS:
            raise ValueError(f"max_coins must be 1..{MAX_COINS}")
        if self.epoch.total_seconds() < 60 or self.key_bits < 2048:
            raise ValueError("epochs last at least a minute; keys have at least 2048 bits")


@dataclass(frozen=True)
class Withdrawal:
    """The answer to a withdrawal: the ledger entry that debited it and the blind signatures."""

    request_id: str
    points: int
    entry_index: int
    leaf_hash: bytes
    signatures: list[bytes]
    replayed: bool = False


@dataclass(frozen=True)
class PaidCoin:
    """A coin as a partner deposits it: the coin and its deposit permission."""

    coin: Coin
    signed_at: int
    permission: bytes


@dataclass(frozen=True)
class Deposit:
    """The answer to a deposit: the receipt (what it says, and the signed note)."""

    receipt: DepositReceipt
    note: str
    replayed: bool = False


@dataclass
class _Keys:
    by_id: dict[bytes, Denomination] = field(default_factory=dict)
    private: dict[bytes, BlindPrivateKey] = field(default_factory=dict)
    loaded_at: datetime | None = None


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _store_errors(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """A database failure becomes :class:`LedgerStoreError` (503), never a bare driver error."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as exc:
            raise LedgerStoreError(f"the coin store failed: {type(exc).__name__}") from exc

    return wrapper


def _unix(when: datetime) -> int:
    return int(when.timestamp())


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Mint:
    """Denominations, withdrawals and deposits over one ledger store (thread-safe)."""

    def __init__(
        self,
        store: LedgerStore,
        keyring: Keyring,
        origin: str,
        policy: MintPolicy | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        appender: GroupCommitAppender | None = None,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.origin = origin
        self.policy = policy or MintPolicy()
        self.clock = clock
        self._lock = threading.Lock()
        self._keys = _Keys()
        #: deposits' entries go through it when set (they then share head-lock transactions)
        self.appender = appender

    @property
    def engine(self) -> sa.Engine:
        return self.store.engine

    # -- denominations -------------------------------------------------------------------------

    @_store_errors
    def ensure_denominations(self) -> list[Denomination]:
        """Create and announce the keys of the current and next epochs, wipe the private halves
        whose withdrawals ended, and return the published denominations. Safe to run from
        several processes at once (the (value, epoch) unique constraint picks one key)."""
        with self._lock:
            now = self.clock()
            t = _unix(now)
            seconds = int(self.policy.epoch.total_seconds())
            current = (t - _EPOCH_ORIGIN) // seconds
            try:
                with self.engine.connect() as conn:
                    have = {
                        (row.value, row.epoch)
                        for row in conn.execute(
                            sa.select(denominations_table.c.value, denominations_table.c.epoch)
                        )
                    }
                for epoch in (current, current + 1):
                    for value in self.policy.values:
                        if (value, epoch) not in have:
                            self._create(value, epoch, seconds, now)
                self._announce()
                with self.engine.begin() as conn:
                    conn.execute(
                        denominations_table.update()
                        .where(
                            denominations_table.c.sealed.is_not(None),
                            denominations_table.c.withdraw_until <= t,
                        )
                        .values(sealed=None)
                    )
            except SQLAlchemyError as exc:
                raise DenominationsUnavailable(
                    f"cannot prepare denominations: {type(exc).__name__}"
                ) from exc
            return self._load(now)

    def _create(self, value: int, epoch: int, seconds: int, now: datetime) -> None:
        start = _EPOCH_ORIGIN + epoch * seconds
        sealed = new_denomination_key(self.keyring, self.policy.key_bits)
        withdraw_until = start + seconds
        deposit_until = withdraw_until + int(self.policy.deposit_grace.total_seconds())
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    denominations_table.insert().values(
                        id=sealed.denomination,
                        value=value,
                        epoch=epoch,
                        public_key=sealed.spki,
                        sealed=sealed.sealed,
                        withdraw_from=start,
                        withdraw_until=withdraw_until,
                        deposit_until=deposit_until,
                        legal_until=deposit_until + int(self.policy.legal_grace.total_seconds()),
                        created_at=now,
                    )
                )
        except IntegrityError:
            pass  # another process created this (value, epoch) first: its key is the one

    def _announce(self) -> None:
        d = denominations_table
        with self.engine.connect() as conn:
            pending = conn.execute(sa.select(d).where(d.c.entry_idx.is_(None))).all()
        for row in pending:
            event = DenominationAnnounced(
                bytes(row.public_key),
                row.value,
                row.withdraw_from,
                row.withdraw_until,
                row.deposit_until,
                row.legal_until,
            )
            digest = hashlib.sha256(
                bytes(row.public_key)
                + struct.pack(
                    ">QQQQQ",
                    row.value,
                    row.withdraw_from,
                    row.withdraw_until,
                    row.deposit_until,
                    row.legal_until,
                )
            ).digest()
            appended = self.store.append(
                event, idempotency=IdempotencyKey(_ANNOUNCEMENTS, bytes(row.id).hex(), digest)
            )
            with self.engine.begin() as conn:
                conn.execute(d.update().where(d.c.id == row.id).values(entry_idx=appended.index))

    def _load(self, now: datetime) -> list[Denomination]:
        d = denominations_table
        t = _unix(now)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(d)
                .where(d.c.entry_idx.is_not(None), d.c.deposit_until > t)
                .order_by(d.c.withdraw_from, d.c.value)
            ).all()
        entries = {row.entry_idx: self.store.entry(row.entry_idx) for row in rows}
        published = []
        keys = _Keys(loaded_at=now)
        for row in rows:
            logged = entries[row.entry_idx]
            if logged is None:  # pragma: no cover - the index came from an append
                continue
            denomination = Denomination(
                bytes(row.public_key),
                row.value,
                row.withdraw_from,
                row.withdraw_until,
                row.deposit_until,
                row.legal_until,
                row.entry_idx,
                logged.data,
            )
            published.append(denomination)
            keys.by_id[denomination.id] = denomination
            if row.sealed is not None and row.withdraw_until > t:
                cached = self._keys.private.get(denomination.id)
                keys.private[denomination.id] = cached or open_denomination_key(
                    self.keyring, bytes(row.public_key), bytes(row.sealed)
                )
        self._keys = keys
        return published

    @_store_errors
    def denominations(self) -> list[Denomination]:
        """The published denominations (loaded at most once a minute, created on first use)."""
        now = self.clock()
        keys = self._keys
        if keys.loaded_at is None or now - keys.loaded_at > _REFRESH or not keys.by_id:
            return self.ensure_denominations()
        return list(keys.by_id.values())

    @_store_errors
    def signed_denominations(self) -> tuple[list[Denomination], str]:
        """The published denominations and their list signed by the ledger key."""
        items = self.denominations()
        _, signer = checkpoint_signer(self.keyring, self.origin)
        return items, denominations_note(self.origin, _unix(self.clock()), items, signer)

    def _denomination(self, denomination: bytes) -> Denomination:
        self.denominations()
        found = self._keys.by_id.get(denomination)
        if found is None:
            raise UnknownDenomination("no such denomination is published")
        return found

    # -- withdraw ------------------------------------------------------------------------------

    @_store_errors
    def withdraw(
        self, pseudonym: str, request_id: str, items: Sequence[tuple[bytes, bytes]]
    ) -> Withdrawal:
        """Blind-sign ``(denomination, blinded)`` items, then debit ``pseudonym`` for the coins."""
        if not 1 <= len(items) <= self.policy.max_coins:
            raise WithdrawalLimit(f"a withdrawal holds 1..{self.policy.max_coins} coins")
        digest = hashlib.sha256(
            b"".join(d + len(b).to_bytes(2, "big") + b for d, b in items)
        ).digest()
        # A replay is answered before anything is judged: a lost answer must stay recoverable
        # after the denomination stopped accepting withdrawals.
        answered = self._answered_withdrawal(pseudonym, request_id, digest)
        if answered is not None:
            return answered
        t = _unix(self.clock())
        denominations = []
        for denomination_id, blinded in items:
            denomination = self._denomination(denomination_id)
            if not denomination.withdraw_from <= t < denomination.withdraw_until:
                raise DenominationExpired("the denomination does not accept withdrawals now")
            if len(blinded) != denomination.key.modulus_len:
                raise MalformedCoinRequest("a blinded message has the wrong size")
            if int.from_bytes(blinded, "big") >= denomination.key.n:
                # blind_sign (RFC 9474 §4.3) refuses it too, as a fault of the mint's (503).
                raise MalformedCoinRequest("a blinded message is not below the key's modulus")
            denominations.append(denomination)
        points = sum(d.value for d in denominations)
        key = IdempotencyKey(_WITHDRAWALS, f"{pseudonym} {request_id}", digest)
        self._refuse_unpayable(pseudonym, points, key)
        stored = self._claim_withdrawal(pseudonym, request_id, digest, points)
        if stored is not None:
            return stored
        counts = Counter(d.id for d in denominations)
        event = WithdrawalDebited(
            pseudonym, points, tuple(CoinCount(d, n) for d, n in sorted(counts.items()))
        )
        try:
            # Sign before the debit, so that a signing failure debits nothing. The signatures
            # stay in memory until the debit is logged and they are stored; RSA signing is
            # deterministic, so a retry after a lost step computes the same ones.
            try:
                signatures = [
                    blind_sign(self._keys.private[d.id], blinded)
                    for d, (_, blinded) in zip(denominations, items, strict=True)
                ]
            except KeyError:
                raise DenominationExpired(
                    "the denomination stopped accepting withdrawals"
                ) from None
            except BlindRSAError:  # the inputs were checked: a fault on the mint's side (503)
                raise LedgerStoreError("the mint could not sign the coins; retry") from None
            rows = WithdrawalRows(request_id, _join(signatures))
            appended = self._append(AppendRequest(event, key, withdrawal=rows))
            if isinstance(appended, AppendRejected):
                raise appended
        except LedgerError:
            try:
                done = self.store.find_idempotent(key)
            except LedgerError:
                done = None
            # Nothing was debited: forget the claim, the request may retry. A debit logged by
            # an earlier attempt (lost before its signatures were stored) keeps the claim.
            if done is None:
                self._release_withdrawal(pseudonym, request_id)
            raise
        if appended.replayed:  # logged by a concurrent attempt (or by a release that stored
            # the signatures apart): store them, the same ones, RSA signing being deterministic
            w = withdrawals_table
            with self.engine.begin() as conn:
                conn.execute(
                    w.update()
                    .where(w.c.pseudonym == pseudonym, w.c.request_id == request_id)
                    .values(entry_idx=appended.index, signatures=_join(signatures))
                )
        return Withdrawal(
            request_id, points, appended.index, appended.leaf_hash, signatures, appended.replayed
        )

    def _refuse_unpayable(self, pseudonym: str, points: int, key: IdempotencyKey) -> None:
        """Signing comes before the debit and costs up to a few milliseconds per coin: refuse a
        request the balance cannot pay first, unless it is a retry whose debit was logged. (The
        authoritative check is the append's, under the ledger's head lock.)"""
        if self.store.balance(pseudonym) >= points:
            return
        try:
            retry = self.store.find_idempotent(key) is not None
        except IdempotencyConflict:  # pragma: no cover - the claim refuses it too
            raise RequestConflict("this request_id was used for another withdrawal") from None
        if not retry:
            raise InsufficientBalance(f"a withdrawal of {points} points exceeds the balance")

    def _claim_withdrawal(
        self, pseudonym: str, request_id: str, digest: bytes, points: int
    ) -> Withdrawal | None:
        """Record the request (checking the daily limit), or answer its replay."""
        w = withdrawals_table
        now = self.clock()
        day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # One claim per pseudonym at a time across processes (the daily sum).
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:p, 7))"),
                    {"p": pseudonym},
                )
            row = conn.execute(
                sa.select(w).where(w.c.pseudonym == pseudonym, w.c.request_id == request_id)
            ).first()
            if row is None:
                today = conn.execute(
                    sa.select(sa.func.coalesce(sa.func.sum(w.c.points), 0)).where(
                        w.c.pseudonym == pseudonym, w.c.created_at >= day
                    )
                ).scalar_one()
                if int(today) + points > self.policy.max_points_per_day:
                    raise WithdrawalLimit(
                        f"withdrawals are limited to {self.policy.max_points_per_day} points a day"
                    )
                conn.execute(
                    w.insert().values(
                        pseudonym=pseudonym,
                        request_id=request_id,
                        request_digest=digest,
                        points=points,
                        created_at=now,
                    )
                )
                return None
        return self._replayed(row, request_id, digest)

    def _answered_withdrawal(
        self, pseudonym: str, request_id: str, digest: bytes
    ) -> Withdrawal | None:
        """The stored answer to this request, if it was answered (or a conflict)."""
        w = withdrawals_table
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(w).where(w.c.pseudonym == pseudonym, w.c.request_id == request_id)
            ).first()
        return None if row is None else self._replayed(row, request_id, digest)

    def _replayed(
        self, row: sa.Row[tuple[object, ...]], request_id: str, digest: bytes
    ) -> Withdrawal | None:
        if bytes(row.request_digest) != digest:
            raise RequestConflict("this request_id was used for another withdrawal")
        if row.signatures is None:
            return None  # a retry after a lost step: redo the (idempotent) rest
        logged = self.store.entry(row.entry_idx)
        if logged is None:  # pragma: no cover - the index came from an append
            raise LedgerStoreError("a withdrawal's entry is missing")
        return Withdrawal(
            request_id,
            row.points,
            row.entry_idx,
            logged.leaf_hash,
            _split(bytes(row.signatures)),
            replayed=True,
        )

    def _release_withdrawal(self, pseudonym: str, request_id: str) -> None:
        w = withdrawals_table
        with self.engine.begin() as conn:
            conn.execute(
                w.delete().where(
                    w.c.pseudonym == pseudonym,
                    w.c.request_id == request_id,
                    w.c.entry_idx.is_(None),
                )
            )

    # -- deposit -------------------------------------------------------------------------------

    @_store_errors
    def deposit(self, partner: str, order: str, amount: int, coins: Sequence[PaidCoin]) -> Deposit:
        """Check and spend ``coins`` paying ``amount`` for ``order`` to ``partner``.

        The coins' claim, the ledger entry and the deposit's record go in one append
        transaction (:class:`~ledger.store.DepositRows`), shared with concurrent appends by
        the group commit: a deposit is logged whole or not at all. The receipt is signed from
        the entry, so a replay, which the store answers with the first entry, gets the same
        receipt (Ed25519 signatures are deterministic; after a rotation of the ledger key, the
        same lines signed by the new key).
        """
        if not ORDER.fullmatch(order):
            raise MalformedCoinRequest("order must be 1..128 printable ASCII characters")
        if not 1 <= len(coins) <= MAX_COINS:
            raise MalformedCoinRequest(f"a deposit holds 1..{MAX_COINS} coins")
        if len({c.coin.coin for c in coins}) != len(coins):
            raise MalformedCoinRequest("a coin appears twice in the deposit")
        key = IdempotencyKey(
            _DEPOSITS, f"{partner} {order}", _deposit_digest(partner, order, amount, coins)
        )
        try:
            self._check_coins(partner, order, amount, coins)
        except (DenominationExpired, UnknownDenomination):
            try:  # a late replay of an answered deposit still gets its receipt
                first = self.store.find_idempotent(key)
            except IdempotencyConflict:
                raise RequestConflict("this order was deposited with other coins") from None
            if first is None:
                raise
            return self._receipt(order, first)
        event = CoinsDeposited(
            partner,
            amount,
            _payment_request_digest(partner, order, amount),
            tuple(
                sorted(
                    (SpentCoin(c.coin.denomination, c.coin.coin) for c in coins),
                    key=lambda x: x.denomination + x.coin,
                )
            ),
        )
        rows = DepositRows(
            order,
            tuple(
                CoinSpend(c.coin.coin, c.coin.denomination, c.signed_at, c.permission)
                for c in coins
            ),
        )
        outcome = self._append(AppendRequest(event, key, deposit=rows))
        if isinstance(outcome, CoinsSpent):
            self._double_spend(partner, order, amount, coins, set(outcome.coins))
        if isinstance(outcome, IdempotencyConflict):
            raise RequestConflict("this order was deposited with other coins or amount")
        if isinstance(outcome, AppendRejected):  # pragma: no cover - no other rule applies
            raise LedgerStoreError(f"the deposit was refused: {type(outcome).__name__}")
        return self._receipt(order, outcome)

    def _append(self, request: AppendRequest) -> Appended | AppendRejected:
        """Append one request, sharing a transaction with concurrent appends when the mint has
        the service's group-commit appender; raises LedgerStoreError if the database fails."""
        if self.appender is not None:
            (outcome,) = self.appender.submit_many([request]).result()
        else:
            (outcome,) = self.store.append_many([request])
        return outcome

    def _check_coins(
        self, partner: str, order: str, amount: int, coins: Sequence[PaidCoin]
    ) -> None:
        t = _unix(self.clock())
        total = 0
        for paid in coins:
            denomination = self._denomination(paid.coin.denomination)
            if not denomination.withdraw_from <= t < denomination.deposit_until:
                raise DenominationExpired("the coin's denomination no longer accepts deposits")
            try:
                paid.coin.check_signature(denomination.key)
            except CoinError:
                raise InvalidCoin("a coin's denomination signature does not verify") from None
            if paid.signed_at > t + _PERMISSION_SKEW:
                raise InvalidPermission("a deposit permission is dated in the future")
            try:
                paid.coin.check_permission(partner, order, amount, paid.signed_at, paid.permission)
            except CoinError:
                raise InvalidPermission(
                    "a deposit permission is not signed by its coin for this payment"
                ) from None
            total += denomination.value
        if total != amount:
            raise AmountMismatch(f"the coins are worth {total} points, the amount is {amount}")

    def _receipt(self, order: str, appended: Appended) -> Deposit:
        """The signed receipt of a logged deposit, made from its entry."""
        event = appended.entry.event
        if not isinstance(event, CoinsDeposited):  # pragma: no cover - keys are per deposit
            raise LedgerStoreError("a deposit's idempotency key names another kind of entry")
        receipt = DepositReceipt(
            event.partner,
            order,
            event.points,
            len(event.coins),
            appended.index,
            appended.leaf_hash,
            appended.entry.recorded_at,
        )
        _, signer = checkpoint_signer(self.keyring, self.origin)
        return Deposit(
            receipt, receipt_note(self.origin, receipt, signer), replayed=appended.replayed
        )

    def _double_spend(
        self,
        partner: str,
        order: str,
        amount: int,
        coins: Sequence[PaidCoin],
        spent: set[bytes],
    ) -> NoReturn:
        """Keep the permissions of ``coins`` that were ``spent`` before as evidence, and refuse."""
        now = self.clock()
        conflicting = [c for c in coins if c.coin.coin in spent]
        with self.engine.begin() as conn:
            conn.execute(
                double_spends_table.insert(),
                [
                    {
                        "coin": c.coin.coin,
                        "denomination": c.coin.denomination,
                        "partner": partner,
                        "order_ref": order,
                        "amount": amount,
                        "signed_at": c.signed_at,
                        "permission": c.permission,
                        "created_at": now,
                    }
                    for c in conflicting
                ],
            )
        raise CoinAlreadySpent(
            "a coin was already spent", [b64encode(c.coin.coin) for c in conflicting]
        )

    # -- statements ----------------------------------------------------------------------------

    @_store_errors
    def statement(self, partner: str, start: datetime, end: datetime) -> tuple[Statement, str]:
        """The partner's answered deposits made in ``[start, end)``, signed by the ledger."""
        d = deposits_table
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(d)
                .where(
                    d.c.partner == partner,
                    d.c.created_at >= start,
                    d.c.created_at < end,
                )
                .order_by(d.c.entry_idx)
            ).all()
        statement = Statement(
            partner,
            _unix(start),
            _unix(end),
            _unix(self.clock()),
            tuple(
                StatementLine(
                    row.entry_idx,
                    row.order_ref,
                    row.points,
                    row.coins,
                    _unix(_aware(row.created_at)),
                )
                for row in rows
            ),
        )
        _, signer = checkpoint_signer(self.keyring, self.origin)
        return statement, statement_note(self.origin, statement, signer)


def _join(signatures: Sequence[bytes]) -> bytes:
    return b"".join(len(s).to_bytes(2, "big") + s for s in signatures)


def _split(blob: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(blob):
        size = int.from_bytes(blob[i : i + 2], "big")
        out.append(blob[i + 2 : i + 2 + size])
        i += 2 + size
    return out


def _payment_request_digest(partner: str, order: str, amount: int) -> bytes:
    """What the deposit entry's ``request`` field holds: SHA-256 of the payment request."""
    return hashlib.sha256(
        b"nicecard payment request v1\x00"
        + bytes([len(partner)])
        + partner.encode("ascii")
        + bytes([len(order)])
        + order.encode("ascii")
        + amount.to_bytes(8, "big")
    ).digest()


def _deposit_digest(partner: str, order: str, amount: int, coins: Sequence[PaidCoin]) -> bytes:
    """A digest of a whole deposit request: a replay must carry exactly the same coins."""
    h = hashlib.sha256(_payment_request_digest(partner, order, amount))
    for paid in sorted(coins, key=lambda c: c.coin.coin):
        c = paid.coin
        h.update(c.denomination + c.coin + c.randomizer + paid.permission)
        h.update(paid.signed_at.to_bytes(8, "big") + len(c.signature).to_bytes(2, "big"))
        h.update(c.signature)
    return h.digest()
