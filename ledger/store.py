"""The ledger store: an RFC 9162 Merkle log in the database, appended without forks or gaps.

Storage (RFC 9162 §2.1.1; the same perfect subtrees C2SP tlog-tiles serves): every entry's exact
bytes and leaf hash, and every perfect subtree above the leaves as it completes. A proof then
reads the O(log n) nodes :mod:`ledger.merkle` lists for it, in one query.

An append, in one transaction (:meth:`LedgerStore.append_many`)::

    1. SELECT size, root, frontier FROM ledger_head WHERE id = 1 FOR UPDATE
       (PostgreSQL, READ COMMITTED: appenders queue here, and each one sees the size its
       predecessor committed; SQLite: the engine's BEGIN IMMEDIATE already holds the write lock).
       ``frontier`` is the tree's right edge: the perfect subtrees of the binary decomposition
       of ``size`` (at most 64 hashes), the only nodes a new leaf hashes against.
    2. the batch's idempotency keys, the balances it debits and, for acts with caps
       (:class:`ActCaps`), their pseudonyms' acts of the month, by statements that start after
       the lock is granted, so they see what the previous holder committed (nobody else changes
       them: they change only under this lock)
    3. in Python (:func:`_plan`): replays and conflicts of idempotency keys, caps and balances
       judged in request order; indexes size, size + 1, ... from the head (never from a
       database sequence); entries encoded by ledger.entries.encode_entry; leaf hashes
       SHA-256(0x00 || entry); every perfect subtree the new leaves complete, the new root and
       the new right edge (RFC 9162 §2.1.1)
    4. multi-row inserts of entries, nodes and idempotency keys, balances upserted, the head
       updated, COMMIT

On PostgreSQL this is two round trips (psycopg pipeline mode): BEGIN with 1 and 2, then one
statement for 4 (``unnest`` over arrays, data-modifying CTEs) with COMMIT. Two processes cannot
both append at ``size``: the second waits on the head lock and then reads the first one's size.
A rejected append (insufficient balance, idempotency conflict, cap reached) leaves the rest of
its batch alone. Because every rule is judged under the head lock from what the lock holder
reads, caps, balances and idempotency keys hold across server processes.
:class:`ledger.group_commit.GroupCommitAppender` lets concurrent callers share commits.

The engine must come from ``identity.db.create_engine`` or be configured like it (PostgreSQL in
READ COMMITTED; SQLite with ``BEGIN IMMEDIATE`` for every transaction).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from ledger.entries import (
    ACT_CREDITED_LAYOUT,
    ActCredited,
    CatalogueChanged,
    CoinsDeposited,
    DenominationAnnounced,
    Entry,
    Event,
    Kind,
    WithdrawalDebited,
    decode_entry,
    encode_entry,
)
from ledger.errors import (
    AppendRejected,
    CapExceeded,
    CoinsSpent,
    EntryError,
    IdempotencyConflict,
    InsufficientBalance,
    LedgerError,
    LedgerStoreError,
    ProofError,
    TileError,
)
from ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    SubtreeMap,
    consistency_proof,
    consistency_proof_nodes,
    inclusion_proof,
    inclusion_proof_nodes,
    leaf_hash,
    node_hash,
    tree_root,
    tree_root_nodes,
)
from ledger.tables import (
    balances_table,
    deposits_table,
    entries_table,
    head_table,
    idempotency_table,
    nodes_table,
    spent_table,
)
from ledger.tiles import ENTRIES, TILE_HEIGHT, TILE_WIDTH, Tile, entry_bundle

__all__ = [
    "ActCaps",
    "AppendRequest",
    "Appended",
    "Clock",
    "CoinSpend",
    "DepositRows",
    "IdempotencyKey",
    "LedgerStore",
    "LockedHead",
    "LoggedEntry",
    "TreeHead",
    "WithdrawalRows",
    "check_request",
    "fetch_nodes",
    "lock_head",
]

Clock = Callable[[], datetime]

_MAX_KEY = 255
_MAX_PARTNER = 64

_UPSERT_BALANCE = sa.text(
    "INSERT INTO ledger_balances (pseudonym, points, updated_at) "
    "VALUES (:pseudonym, :delta, :now) "
    "ON CONFLICT (pseudonym) DO UPDATE "
    "SET points = ledger_balances.points + excluded.points, updated_at = excluded.updated_at"
)
_DEBIT_BALANCE = sa.text(
    "UPDATE ledger_balances SET points = points + :delta, updated_at = :now "
    "WHERE pseudonym = :pseudonym"
)

_STORE_SIGNATURES = sa.text(
    "UPDATE coin_withdrawals SET entry_idx = :entry_idx, signatures = :signatures "
    "WHERE pseudonym = :pseudonym AND request_id = :request_id"
)


# PostgreSQL: bulk statements over arrays (psycopg adapts lists to arrays), one per table.
# ``%(name)b`` asks psycopg for binary parameters: no text escaping of bytea arrays.
_PG_LOCK_HEAD = "SELECT size, root, frontier FROM ledger_head WHERE id = 1 FOR UPDATE"
_PG_FETCH_NODES = (
    "SELECT 0, e.idx, e.leaf_hash FROM ledger_entries e "
    "WHERE e.idx = ANY(%(leaves)b::bigint[]) "
    "UNION ALL "
    "SELECT n.level, n.idx, n.hash FROM ledger_nodes n "
    "JOIN unnest(%(levels)b::smallint[], %(indexes)b::bigint[]) AS t(level, idx) "
    "ON n.level = t.level AND n.idx = t.idx"
)
_PG_ANSWERED = (
    "SELECT i.partner, i.key, i.request_digest, e.idx, e.data, e.leaf_hash "
    "FROM ledger_idempotency i "
    "JOIN unnest(%(partners)b::varchar[], %(keys)b::varchar[]) AS t(partner, key) "
    "ON i.partner = t.partner AND i.key = t.key "
    "JOIN ledger_entries e ON e.idx = i.idx"
)
_PG_BALANCES = (
    "SELECT pseudonym, points FROM ledger_balances WHERE pseudonym = ANY(%(pseudonyms)b::varchar[])"
)
_PG_ACTS = (
    "SELECT pseudonym, data FROM ledger_entries "
    "WHERE pseudonym = ANY(%(pseudonyms)b::varchar[]) AND kind = %(kind)b::smallint "
    "AND created_at >= %(since)b"
)
_PG_SPENT = "SELECT coin FROM coin_spent WHERE coin = ANY(%(coins)b::bytea[])"
_PG_WRITE = """
WITH
entries AS (
    INSERT INTO ledger_entries (idx, kind, pseudonym, data, leaf_hash, created_at)
    SELECT t.idx, t.kind, t.pseudonym, t.data, t.leaf_hash, %(now)b
    FROM unnest(%(e_idx)b::bigint[], %(e_kind)b::smallint[], %(e_pseudonym)b::varchar[],
                %(e_data)b::bytea[], %(e_leaf)b::bytea[])
         AS t(idx, kind, pseudonym, data, leaf_hash)
),
nodes AS (
    INSERT INTO ledger_nodes (level, idx, hash)
    SELECT * FROM unnest(%(n_level)b::smallint[], %(n_idx)b::bigint[], %(n_hash)b::bytea[])
),
keys AS (
    INSERT INTO ledger_idempotency (partner, key, request_digest, idx, created_at)
    SELECT t.partner, t.key, t.digest, t.idx, %(now)b
    FROM unnest(%(i_partner)b::varchar[], %(i_key)b::varchar[], %(i_digest)b::bytea[],
                %(i_idx)b::bigint[]) AS t(partner, key, digest, idx)
),
credits AS (
    INSERT INTO ledger_balances (pseudonym, points, updated_at)
    SELECT t.pseudonym, t.delta, %(now)b
    FROM unnest(%(c_pseudonym)b::varchar[], %(c_delta)b::bigint[]) AS t(pseudonym, delta)
    ON CONFLICT (pseudonym) DO UPDATE
    SET points = ledger_balances.points + excluded.points, updated_at = excluded.updated_at
),
debits AS (
    UPDATE ledger_balances b SET points = b.points + t.delta, updated_at = %(now)b
    FROM unnest(%(d_pseudonym)b::varchar[], %(d_delta)b::bigint[]) AS t(pseudonym, delta)
    WHERE b.pseudonym = t.pseudonym
),
deposits AS (
    INSERT INTO coin_deposits
        (partner, order_ref, request_digest, points, coins, entry_idx, created_at)
    SELECT t.partner, t.order_ref, t.digest, t.points, t.coins, t.idx, %(now)b
    FROM unnest(%(p_partner)b::varchar[], %(p_order)b::varchar[], %(p_digest)b::bytea[],
                %(p_points)b::bigint[], %(p_coins)b::integer[], %(p_idx)b::bigint[])
         AS t(partner, order_ref, digest, points, coins, idx)
),
withdrawals AS (
    UPDATE coin_withdrawals w SET entry_idx = t.idx, signatures = t.signatures
    FROM unnest(%(w_pseudonym)b::varchar[], %(w_request)b::varchar[], %(w_idx)b::bigint[],
                %(w_signatures)b::bytea[]) AS t(pseudonym, request_id, idx, signatures)
    WHERE w.pseudonym = t.pseudonym AND w.request_id = t.request_id
),
spent AS (
    INSERT INTO coin_spent
        (coin, denomination, partner, order_ref, signed_at, permission, created_at)
    SELECT t.coin, t.denomination, t.partner, t.order_ref, t.signed_at, t.permission, %(now)b
    FROM unnest(%(s_coin)b::bytea[], %(s_denomination)b::bytea[], %(s_partner)b::varchar[],
                %(s_order)b::varchar[], %(s_signed_at)b::bigint[], %(s_permission)b::bytea[])
         AS t(coin, denomination, partner, order_ref, signed_at, permission)
)
UPDATE ledger_head
SET size = %(size)b, root = %(root)b, frontier = %(frontier)b, updated_at = %(now)b
WHERE id = 1
"""


_EVENTS = (ActCredited, WithdrawalDebited, CoinsDeposited, DenominationAnnounced, CatalogueChanged)


def _is_postgresql(conn: sa.Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class IdempotencyKey:
    """A partner's idempotency key, and a digest of the request it came with.

    The same (partner, key) returns the first answer; with a different ``request_digest``
    (the caller's SHA-256 of its request, however it defines "the same request") it is refused
    with :class:`IdempotencyConflict`.
    """

    partner: str
    key: str
    request_digest: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.partner, str) or not 1 <= len(self.partner) <= _MAX_PARTNER:
            raise LedgerError(f"partner must be 1..{_MAX_PARTNER} characters")
        if not isinstance(self.key, str) or not 1 <= len(self.key) <= _MAX_KEY:
            raise LedgerError(f"idempotency key must be 1..{_MAX_KEY} characters")
        if not isinstance(self.request_digest, bytes) or len(self.request_digest) != HASH_SIZE:
            raise LedgerError(f"request digest must be {HASH_SIZE} bytes")


@dataclass(frozen=True)
class ActCaps:
    """How many acts of one type a pseudonym may be credited: judged under the append lock.

    At most ``per_day`` acts of the event's act type for its pseudonym in the UTC day of the
    event's ``occurred_at``, and ``per_month`` in that UTC month, counting the acts in the log
    and those appended before it in the same transaction (a refused act does not count). An act
    is never recorded more than ``skew`` before it happened (the caller refuses those), so only
    the entries recorded since the month began, less ``skew``, are read.
    """

    per_day: int
    per_month: int
    skew: timedelta = timedelta(0)

    def __post_init__(self) -> None:
        for value in (self.per_day, self.per_month):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LedgerError("caps must be positive integers")
        if not isinstance(self.skew, timedelta) or self.skew < timedelta(0):
            raise LedgerError("the skew of caps must be a non-negative timedelta")


@dataclass(frozen=True)
class CoinSpend:
    """One coin a deposit spends, with the deposit permission that spent it."""

    coin: bytes
    denomination: bytes
    signed_at: int
    permission: bytes


@dataclass(frozen=True)
class DepositRows:
    """What a :class:`CoinsDeposited` append writes besides its entry, in its transaction.

    A ``coin_deposits`` row for ``order`` (the entry holds only the payment request's digest)
    and one ``coin_spent`` row per coin. Every ``coin_spent`` row is written under the head
    lock, so the lock holder's read of the table is the truth: a coin in it, or spent by an
    earlier request of the same batch, refuses the deposit with :class:`CoinsSpent`. The
    table's primary key stays as a backstop. A deposit's claim, entry and record therefore
    commit together or not at all.
    """

    order: str
    spends: tuple[CoinSpend, ...]


@dataclass(frozen=True)
class WithdrawalRows:
    """What a :class:`WithdrawalDebited` append of the mint writes besides its entry, in its
    transaction: the blind signatures it answers with, stored on the withdrawal's claim
    (``coin_withdrawals``, written before by the mint), so that a debit is never logged without
    the signatures that pay for it."""

    request_id: str
    signatures: bytes


@dataclass(frozen=True)
class AppendRequest:
    """One event to append, with an optional idempotency key, caps (acts) or deposit rows.

    Judged in this order under the head lock: an idempotency key already answered returns that
    answer (or :class:`IdempotencyConflict`), then the caps (:class:`CapExceeded`), then the
    balance a withdrawal debits (:class:`InsufficientBalance`), then the coins a deposit spends
    (:class:`CoinsSpent`).
    """

    event: Event
    idempotency: IdempotencyKey | None = None
    caps: ActCaps | None = None
    deposit: DepositRows | None = None
    withdrawal: WithdrawalRows | None = None


@dataclass(frozen=True)
class LoggedEntry:
    """An entry in the log: its index, the decoded entry, its exact bytes and its leaf hash."""

    index: int
    entry: Entry
    data: bytes
    leaf_hash: bytes


@dataclass(frozen=True)
class Appended(LoggedEntry):
    """The answer to an append; ``replayed`` when an idempotency key had already been answered."""

    replayed: bool = False


@dataclass(frozen=True)
class TreeHead:
    """The log's current size and RFC 9162 root hash."""

    size: int
    root: bytes
    updated_at: datetime


@dataclass(frozen=True)
class LockedHead:
    """The head row as the append lock read it."""

    size: int
    root: bytes
    frontier: bytes
    """The perfect subtrees of the binary decomposition of ``size`` (RFC 9162 §2.1.1), largest
    first, concatenated: the right edge a new leaf hashes against (at most 64 hashes)."""

    def edge(self) -> dict[int, bytes]:
        """The frontier as ``{level: hash}``; raises LedgerStoreError if it does not fit size."""
        levels = [
            level for level in reversed(range(self.size.bit_length())) if self.size >> level & 1
        ]
        if len(self.frontier) != HASH_SIZE * len(levels):
            raise LedgerStoreError("the ledger head's right edge does not match its size")
        return {
            level: self.frontier[i * HASH_SIZE : (i + 1) * HASH_SIZE]
            for i, level in enumerate(levels)
        }


def lock_head(conn: sa.Connection) -> LockedHead:
    """``SELECT ... FROM ledger_head WHERE id = 1 FOR UPDATE``: the append lock (module doc).

    In READ COMMITTED a statement reads the rows committed before it started, apart from the
    locked row itself, which it re-reads once the lock is granted: whatever else must see the
    previous holder's writes (idempotency keys, balances, nodes) is read by later statements.
    """
    row = conn.execute(
        sa.select(head_table.c.size, head_table.c.root, head_table.c.frontier)
        .where(head_table.c.id == 1)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise LedgerStoreError("the ledger head row is missing: run the ledger migrations")
    return LockedHead(int(row[0]), bytes(row[1]), bytes(row[2]))


def fetch_nodes(
    conn: sa.Connection, positions: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    """The perfect subtrees at ``(level, index)`` positions, in one query.

    Level 0 is the entries' leaf hashes, higher levels the nodes table. Raises
    :class:`LedgerStoreError` if one is missing (a damaged store).
    """
    wanted = set(positions)
    if not wanted:
        return {}
    leaves = sorted(index for level, index in wanted if level == 0)
    inner = sorted(position for position in wanted if position[0] > 0)
    if _is_postgresql(conn):
        rows = conn.exec_driver_sql(
            _PG_FETCH_NODES,
            {
                "leaves": leaves,
                "levels": [level for level, _ in inner],
                "indexes": [index for _, index in inner],
            },
        )
        found = {(int(row[0]), int(row[1])): bytes(row[2]) for row in rows}
        if len(found) != len(wanted):
            raise LedgerStoreError(
                f"the ledger store lacks {len(wanted) - len(found)} tree node(s)"
            )
        return found
    parts: list[sa.Select[Any]] = []
    if leaves:
        parts.append(
            sa.select(
                sa.literal(0, sa.SmallInteger).label("level"),
                entries_table.c.idx,
                entries_table.c.leaf_hash.label("hash"),
            ).where(entries_table.c.idx.in_(leaves))
        )
    if inner:
        parts.append(
            sa.select(nodes_table.c.level, nodes_table.c.idx, nodes_table.c.hash).where(
                sa.tuple_(nodes_table.c.level, nodes_table.c.idx).in_(inner)
            )
        )
    statement = parts[0] if len(parts) == 1 else sa.union_all(*parts)
    found = {(int(row[0]), int(row[1])): bytes(row[2]) for row in conn.execute(statement)}
    if len(found) != len(wanted):
        raise LedgerStoreError(f"the ledger store lacks {len(wanted) - len(found)} tree node(s)")
    return found


@dataclass
class _New:
    request: int
    index: int
    entry: Entry
    data: bytes
    leaf_hash: bytes
    idempotency: IdempotencyKey | None
    deposit: DepositRows | None
    withdrawal: WithdrawalRows | None


class LedgerStore:
    """The log in a database: appends, reads, proofs and tiles. Thread-safe (engine pooling)."""

    def __init__(self, engine: sa.Engine, *, clock: Clock = _utc_now) -> None:
        self.engine = engine
        self._clock = clock

    # -- appending -----------------------------------------------------------------------------

    def append(self, event: Event, *, idempotency: IdempotencyKey | None = None) -> Appended:
        """Append one event in its own transaction; raises :class:`AppendRejected` if refused."""
        (outcome,) = self.append_many([AppendRequest(event, idempotency)])
        if isinstance(outcome, AppendRejected):
            raise outcome
        return outcome

    def append_many(self, requests: Sequence[AppendRequest]) -> list[Appended | AppendRejected]:
        """Append every request in one transaction (one head lock, multi-row inserts).

        Returns one outcome per request, in order: an :class:`Appended`, or the
        :class:`AppendRejected` error for a request that was refused (nothing of it written).
        Requests are applied in order, so a withdrawal may spend what an earlier act in the same
        batch credited. Raises :class:`LedgerStoreError` if the database fails (nothing written).
        """
        requests = list(requests)
        for request in requests:
            check_request(request)
        if not requests:
            return []
        reads = _Reads.of(requests)
        now = self._clock()
        try:
            if self.engine.dialect.name == "postgresql":
                return _append_postgresql(self.engine, requests, reads, now)
            with self.engine.begin() as conn:
                head = lock_head(conn)
                plan = _plan(
                    requests,
                    head,
                    answered=_answered(conn, reads.keys) if reads.keys else {},
                    balances=_balances(conn, reads.debtors) if reads.debtors else {},
                    counts=_ActCounts.of(_logged_acts(conn, reads.capped, reads.since)),
                    spent=_spent(conn, reads.coins) if reads.coins else set(),
                    now=now,
                )
                if plan.writes is not None:
                    _write(conn, plan.writes)
                return plan.results
        except (SQLAlchemyError, psycopg.Error) as exc:
            raise LedgerStoreError(f"cannot append to the ledger: {type(exc).__name__}") from exc

    # -- reading -------------------------------------------------------------------------------

    def head(self) -> TreeHead:
        """The current tree size and root."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(head_table.c.size, head_table.c.root, head_table.c.updated_at).where(
                    head_table.c.id == 1
                )
            ).one()
        return TreeHead(int(row.size), bytes(row.root), _aware(row.updated_at))

    def entry(self, index: int) -> LoggedEntry | None:
        """The entry at ``index``, or ``None`` if the log is not that long."""
        found = self.entries(index, index + 1)
        return found[0] if found else None

    def entries(self, start: int, stop: int) -> list[LoggedEntry]:
        """Entries ``start <= index < stop``, in index order."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(entries_table.c.idx, entries_table.c.data, entries_table.c.leaf_hash)
                .where(entries_table.c.idx >= start, entries_table.c.idx < stop)
                .order_by(entries_table.c.idx)
            ).all()
        return [_logged(row.idx, row.data, row.leaf_hash) for row in rows]

    def history(
        self, pseudonym: str, *, before: int | None = None, limit: int = 100
    ) -> list[LoggedEntry]:
        """A pseudonym's entries (acts credited, withdrawals), newest first, ``index < before``."""
        query = sa.select(
            entries_table.c.idx, entries_table.c.data, entries_table.c.leaf_hash
        ).where(entries_table.c.pseudonym == pseudonym)
        if before is not None:
            query = query.where(entries_table.c.idx < before)
        query = query.order_by(entries_table.c.idx.desc()).limit(limit)
        with self._read() as conn:
            rows = conn.execute(query).all()
        return [_logged(row.idx, row.data, row.leaf_hash) for row in rows]

    def balance(self, pseudonym: str) -> int:
        """The pseudonym's points (0 if it never had any)."""
        with self._read() as conn:
            return _balances(conn, {pseudonym}).get(pseudonym, 0)

    def find_idempotent(self, key: IdempotencyKey) -> Appended | None:
        """The first answer given for ``key``, or ``None`` if it was never used.

        Raises :class:`IdempotencyConflict` if it was used with a different request digest.
        """
        with self._read() as conn:
            answered = _answered(conn, {(key.partner, key.key)})
        if not answered:
            return None
        digest, logged = answered[key.partner, key.key]
        outcome = _replay(key, digest, logged)
        if isinstance(outcome, AppendRejected):
            raise outcome
        return outcome

    # -- proofs and tiles ----------------------------------------------------------------------

    def root_at(self, size: int) -> bytes:
        """RFC 9162 §2.1.1 root of the tree at ``size`` (at most log2(size) nodes read)."""
        with self._read() as conn:
            self._check_size(conn, size)
            return tree_root(SubtreeMap(fetch_nodes(conn, tree_root_nodes(size))), size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
        if not 0 <= index < size:
            raise ProofError(f"leaf index {index} is outside a tree of size {size}")
        with self._read() as conn:
            self._check_size(conn, size)
            nodes = fetch_nodes(conn, inclusion_proof_nodes(index, size))
        return inclusion_proof(SubtreeMap(nodes), index, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 consistency proof from the tree at ``size1`` to ``size2``."""
        if not 0 < size1 <= size2:
            raise ProofError(f"no consistency proof from size {size1} to size {size2}")
        with self._read() as conn:
            self._check_size(conn, size2)
            nodes = fetch_nodes(conn, consistency_proof_nodes(size1, size2))
        return consistency_proof(SubtreeMap(nodes), size1, size2)

    def tile(self, tile: Tile) -> bytes:
        """A C2SP tlog-tiles hash tile (``tile/<L>/<N>[.p/<W>]``): ``width`` hashes at Merkle
        level ``8 * L``. Partial tiles of any width the tree has reached are served."""
        if tile.level == ENTRIES:
            raise TileError("entry bundles hold entries: use entry_bundle")
        level = TILE_HEIGHT * tile.level
        first = tile.index * TILE_WIDTH
        stop = first + tile.width
        with self._read() as conn:
            self._check_tile(conn, level, stop)
            if level == 0:
                query = sa.select(entries_table.c.leaf_hash).where(
                    entries_table.c.idx >= first, entries_table.c.idx < stop
                )
                query = query.order_by(entries_table.c.idx)
            else:
                query = sa.select(nodes_table.c.hash).where(
                    nodes_table.c.level == level,
                    nodes_table.c.idx >= first,
                    nodes_table.c.idx < stop,
                )
                query = query.order_by(nodes_table.c.idx)
            hashes = [bytes(value) for value in conn.execute(query).scalars()]
        if len(hashes) != tile.width:
            raise LedgerStoreError(f"the ledger store lacks hashes of tile {tile.path()}")
        return b"".join(hashes)

    def entry_bundle(self, tile: Tile) -> bytes:
        """A C2SP tlog-tiles entry bundle (``tile/entries/<N>[.p/<W>]``)."""
        if tile.level != ENTRIES:
            raise TileError("hash tiles hold hashes: use tile")
        first = tile.index * TILE_WIDTH
        stop = first + tile.width
        with self._read() as conn:
            self._check_tile(conn, 0, stop)
            data = [
                bytes(value)
                for value in conn.execute(
                    sa.select(entries_table.c.data)
                    .where(entries_table.c.idx >= first, entries_table.c.idx < stop)
                    .order_by(entries_table.c.idx)
                ).scalars()
            ]
        if len(data) != tile.width:
            raise LedgerStoreError(f"the ledger store lacks entries of {tile.path()}")
        return entry_bundle(data)

    # -- internals -----------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        """A connection for reads; database failures become :class:`LedgerStoreError`."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise LedgerStoreError(f"cannot read the ledger: {type(exc).__name__}") from exc

    @staticmethod
    def _head_size(conn: sa.Connection) -> int:
        return int(
            conn.execute(sa.select(head_table.c.size).where(head_table.c.id == 1)).scalar_one()
        )

    def _check_size(self, conn: sa.Connection, size: int) -> None:
        head = self._head_size(conn)
        if not 0 <= size <= head:
            raise ProofError(f"tree size {size} is outside 0..{head}")

    def _check_tile(self, conn: sa.Connection, level: int, stop: int) -> None:
        if stop > self._head_size(conn) >> level:
            raise TileError("the tile lies beyond the tree")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _logged(index: int, data: bytes, leaf: bytes) -> LoggedEntry:
    return LoggedEntry(int(index), decode_entry(bytes(data)), bytes(data), bytes(leaf))


def _as_replay(first: LoggedEntry) -> Appended:
    return Appended(first.index, first.entry, first.data, first.leaf_hash, replayed=True)


def _conflict() -> IdempotencyConflict:
    return IdempotencyConflict("the idempotency key was first used for a different request")


def _replay(
    key: IdempotencyKey, digest: bytes, logged: LoggedEntry
) -> Appended | IdempotencyConflict:
    if digest != key.request_digest:
        return _conflict()
    return _as_replay(logged)


def _answered(
    conn: sa.Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], tuple[bytes, LoggedEntry]]:
    i, e = idempotency_table, entries_table
    rows = conn.execute(
        sa.select(i.c.partner, i.c.key, i.c.request_digest, e.c.idx, e.c.data, e.c.leaf_hash)
        .join(e, e.c.idx == i.c.idx)
        .where(sa.tuple_(i.c.partner, i.c.key).in_(sorted(keys)))
    )
    return {(row[0], row[1]): (bytes(row[2]), _logged(row[3], row[4], row[5])) for row in rows}


def _balances(conn: sa.Connection, pseudonyms: Iterable[str]) -> dict[str, int]:
    rows = conn.execute(
        sa.select(balances_table.c.pseudonym, balances_table.c.points).where(
            balances_table.c.pseudonym.in_(sorted(pseudonyms))
        )
    )
    return {row[0]: int(row[1]) for row in rows}


def _logged_acts(
    conn: sa.Connection, pseudonyms: list[str], since: datetime | None
) -> list[tuple[str, bytes]]:
    """``(pseudonym, entry bytes)`` of the pseudonyms' acts recorded since ``since``."""
    if not pseudonyms or since is None:
        return []
    e = entries_table
    rows = conn.execute(
        sa.select(e.c.pseudonym, e.c.data).where(
            e.c.pseudonym.in_(pseudonyms),
            e.c.kind == int(Kind.ACT_CREDITED),
            e.c.created_at >= since,
        )
    )
    return [(str(row[0]), bytes(row[1])) for row in rows]


def _spent(conn: sa.Connection, coins: list[bytes]) -> set[bytes]:
    s = spent_table
    return {bytes(row[0]) for row in conn.execute(sa.select(s.c.coin).where(s.c.coin.in_(coins)))}


def check_request(request: object) -> None:
    if not isinstance(request, AppendRequest):
        raise LedgerError("appends take AppendRequest items")
    event = request.event
    if not isinstance(event, _EVENTS):
        raise EntryError("unknown event type")
    if request.caps is not None and not isinstance(event, ActCredited):
        raise LedgerError("caps apply to acts credited only")
    if isinstance(event, CoinsDeposited) != (request.deposit is not None):
        raise LedgerError("a deposit is appended with its deposit rows, and only a deposit")
    if request.withdrawal is not None and not (
        isinstance(event, WithdrawalDebited) and request.idempotency is not None
    ):
        raise LedgerError("withdrawal rows go with a withdrawal and its idempotency key")
    if request.deposit is not None and isinstance(event, CoinsDeposited):
        if request.idempotency is None:
            raise LedgerError("a deposit is appended with an idempotency key")
        spends = request.deposit.spends
        if sorted((s.denomination, s.coin) for s in spends) != sorted(
            (c.denomination, c.coin) for c in event.coins
        ) or len({s.coin for s in spends}) != len(spends):
            raise LedgerError("a deposit's rows must name the coins of its entry, once each")


def _month_of(occurred_at: int) -> tuple[int, int]:
    when = datetime.fromtimestamp(occurred_at, UTC)
    return when.year, when.month


@dataclass(frozen=True)
class _Reads:
    """What an append transaction reads under the head lock, besides the head."""

    keys: list[tuple[str, str]]
    debtors: list[str]
    capped: list[str]
    """Pseudonyms of the acts with caps: their acts recorded since ``since`` are counted."""
    since: datetime | None
    coins: list[bytes]
    """The coins the batch's deposits spend: which of them ``coin_spent`` already holds."""

    @classmethod
    def of(cls, requests: Sequence[AppendRequest]) -> _Reads:
        keys = {(r.idempotency.partner, r.idempotency.key) for r in requests if r.idempotency}
        debtors = {r.event.pseudonym for r in requests if isinstance(r.event, WithdrawalDebited)}
        capped: set[str] = set()
        since: datetime | None = None
        for request in requests:
            event = request.event
            if request.caps is None or not isinstance(event, ActCredited):
                continue
            year, month = _month_of(event.occurred_at)
            start = datetime(year, month, 1, tzinfo=UTC) - request.caps.skew
            since = start if since is None else min(since, start)
            capped.add(event.pseudonym)
        coins = {s.coin for r in requests if r.deposit for s in r.deposit.spends}
        return cls(sorted(keys), sorted(debtors), sorted(capped), since, sorted(coins))


class _ActCounts:
    """Acts per (pseudonym, act type) per UTC day and month of ``occurred_at``: those of the log
    read under the head lock, then those the transaction appends."""

    def __init__(self) -> None:
        self._days: Counter[tuple[str, str, int]] = Counter()
        self._months: Counter[tuple[str, str, tuple[int, int]]] = Counter()

    @classmethod
    def of(cls, logged: Iterable[tuple[str, bytes]]) -> _ActCounts:
        """Counts of logged acts, from their fixed-size entry bytes (pseudonym, entry data)."""
        counts = cls()
        for pseudonym, data in logged:
            *_, occurred_at, _, _, act_type = ACT_CREDITED_LAYOUT.unpack(data)
            counts._add(pseudonym, act_type.rstrip(b"\0").decode("ascii"), occurred_at)
        return counts

    def _add(self, pseudonym: str, act_type: str, occurred_at: int) -> None:
        self._days[pseudonym, act_type, occurred_at // 86400] += 1
        self._months[pseudonym, act_type, _month_of(occurred_at)] += 1

    def add(self, event: ActCredited) -> None:
        """Count an act the transaction appends."""
        self._add(event.pseudonym, event.act_type, event.occurred_at)

    def check(self, event: ActCredited, caps: ActCaps) -> CapExceeded | None:
        """The :class:`CapExceeded` that refuses ``event``, if one more would pass a cap."""
        who, kind, when = event.pseudonym, event.act_type, event.occurred_at
        if self._days[who, kind, when // 86400] >= caps.per_day:
            return CapExceeded(f"{kind}: at most {caps.per_day} per day")
        if self._months[who, kind, _month_of(when)] >= caps.per_month:
            return CapExceeded(f"{kind}: at most {caps.per_month} per month")
        return None


class _Rules:
    """The rules an append is judged by, in request order, from what was read under the lock
    and what the batch appended before it: caps, balances, spent coins."""

    def __init__(self, balances: dict[str, int], counts: _ActCounts, spent: set[bytes]) -> None:
        self.balances = balances
        self.counts = counts
        self.spent = spent
        self.deltas: dict[str, int] = {}
        """Net balance changes of the requests accepted so far."""

    def judge(self, request: AppendRequest) -> AppendRejected | None:
        """The refusal of ``request``, or None after counting it as appended."""
        event, deltas = request.event, self.deltas
        if isinstance(event, ActCredited):
            if request.caps is not None:
                refused = self.counts.check(event, request.caps)
                if refused is not None:
                    return refused
            deltas[event.pseudonym] = deltas.get(event.pseudonym, 0) + event.points
            self.counts.add(event)
        elif isinstance(event, WithdrawalDebited):
            available = self.balances.get(event.pseudonym, 0) + deltas.get(event.pseudonym, 0)
            if available < event.points:
                return InsufficientBalance(
                    f"a withdrawal of {event.points} points exceeds the balance"
                )
            deltas[event.pseudonym] = deltas.get(event.pseudonym, 0) - event.points
        elif request.deposit is not None:
            coins = [spend.coin for spend in request.deposit.spends]
            if taken := [coin for coin in coins if coin in self.spent]:
                return CoinsSpent("a coin was already spent", sorted(taken))
            self.spent.update(coins)
        return None


@dataclass(frozen=True)
class _Plan:
    results: list[Appended | AppendRejected]
    writes: _Writes | None


def _plan(
    requests: list[AppendRequest],
    head: LockedHead,
    *,
    answered: dict[tuple[str, str], tuple[bytes, LoggedEntry]],
    balances: dict[str, int],
    counts: _ActCounts,
    spent: set[bytes],
    now: datetime,
) -> _Plan:
    """What appending ``requests`` to the locked ``head`` does: pure Python, no database.

    ``answered`` holds the first answers of the batch's idempotency keys, ``balances`` the
    balances of the pseudonyms it debits, ``counts`` the acts of the capped pseudonyms,
    ``spent`` which of the coins its deposits spend were spent before, all read under the lock.
    """
    rules = _Rules(balances, counts, set(spent))
    size = head.size
    recorded_at = int(now.timestamp())
    outcomes: list[Appended | AppendRejected | int] = []
    new: list[_New] = []
    batch_keys: dict[tuple[str, str], tuple[bytes, int]] = {}
    for position, request in enumerate(requests):
        key = request.idempotency
        if key is not None:
            slot = (key.partner, key.key)
            if slot in answered:
                digest, logged = answered[slot]
                outcomes.append(_replay(key, digest, logged))
                continue
            if slot in batch_keys:
                digest, earlier = batch_keys[slot]
                outcomes.append(earlier if digest == key.request_digest else _conflict())
                continue
        event = request.event
        refused = rules.judge(request)
        if refused is not None:
            outcomes.append(refused)
            continue
        entry = Entry(recorded_at, event)
        data = encode_entry(entry)
        new.append(
            _New(
                position,
                size + len(new),
                entry,
                data,
                leaf_hash(data),
                key,
                request.deposit,
                request.withdrawal,
            )
        )
        if key is not None:
            batch_keys[key.partner, key.key] = (key.request_digest, position)
        outcomes.append(position)  # resolved below

    appended = {
        item.request: Appended(item.index, item.entry, item.data, item.leaf_hash) for item in new
    }
    results: list[Appended | AppendRejected] = []
    for position, outcome in enumerate(outcomes):
        if isinstance(outcome, int):
            first = appended[outcome]
            results.append(first if outcome == position else _as_replay(first))
        else:
            results.append(outcome)
    if not new:
        return _Plan(results, None)
    nodes, root, frontier = _grow(head, [item.leaf_hash for item in new])
    return _Plan(results, _Writes(new, nodes, rules.deltas, now, size + len(new), root, frontier))


def _append_postgresql(
    engine: sa.Engine, requests: list[AppendRequest], reads: _Reads, now: datetime
) -> list[Appended | AppendRejected]:
    """The append transaction on PostgreSQL in two round trips, with psycopg's pipeline mode.

    First ``BEGIN``, the head lock, the idempotency keys, the debtors' balances and the capped
    pseudonyms' acts go out together; the server runs them in order, so the reads start once
    the lock is granted and, in READ COMMITTED, each sees what the previous holder committed.
    Then the one write statement and ``COMMIT`` go out together.
    """
    keys, debtors = reads.keys, reads.debtors
    raw = engine.raw_connection()
    try:
        pg: Any = raw.driver_connection
        try:
            with pg.pipeline():
                head_rows = pg.execute(_PG_LOCK_HEAD)
                key_rows = (
                    pg.execute(
                        _PG_ANSWERED,
                        {"partners": [p for p, _ in keys], "keys": [k for _, k in keys]},
                    )
                    if keys
                    else None
                )
                balance_rows = (
                    pg.execute(_PG_BALANCES, {"pseudonyms": debtors}) if debtors else None
                )
                act_rows = (
                    pg.execute(
                        _PG_ACTS,
                        {
                            "pseudonyms": reads.capped,
                            "kind": int(Kind.ACT_CREDITED),
                            "since": reads.since,
                        },
                    )
                    if reads.capped
                    else None
                )
                spent_rows = pg.execute(_PG_SPENT, {"coins": reads.coins}) if reads.coins else None
                size, root, frontier = head_rows.fetchone()
            head = LockedHead(int(size), bytes(root), bytes(frontier))
            answered = {
                (row[0], row[1]): (bytes(row[2]), _logged(row[3], row[4], row[5]))
                for row in (key_rows.fetchall() if key_rows is not None else ())
            }
            balances = {
                row[0]: int(row[1])
                for row in (balance_rows.fetchall() if balance_rows is not None else ())
            }
            counts = _ActCounts.of(
                (row[0], bytes(row[1]))
                for row in (act_rows.fetchall() if act_rows is not None else ())
            )
            spent = {bytes(row[0]) for row in (spent_rows.fetchall() if spent_rows else ())}
            plan = _plan(
                requests,
                head,
                answered=answered,
                balances=balances,
                counts=counts,
                spent=spent,
                now=now,
            )
            with pg.pipeline():
                if plan.writes is not None:
                    pg.execute(_PG_WRITE, _pg_write_parameters(plan.writes))
                pg.commit()
        except BaseException:
            pg.rollback()
            raise
        return plan.results
    finally:
        raw.close()


def _grow(
    head: LockedHead, leaves: list[bytes]
) -> tuple[list[tuple[int, int, bytes]], bytes, bytes]:
    """Appending ``leaves`` to the tree of ``head``: the perfect subtrees they complete
    (``(level, index, hash)``, level >= 1), the new root and the new frontier (RFC 9162 §2.1.1).
    """
    # frontier[level]: the perfect subtree at that level still waiting for a right sibling.
    frontier = head.edge()
    rows: list[tuple[int, int, bytes]] = []
    for offset, leaf in enumerate(leaves):
        node, level, index = leaf, 0, head.size + offset
        while index & 1:
            node = node_hash(frontier.pop(level), node)
            level += 1
            index >>= 1
            rows.append((level, index, node))
        frontier[level] = node
    root: bytes | None = None
    for level in sorted(frontier):  # fold right to left: the lowest level is rightmost
        root = frontier[level] if root is None else node_hash(frontier[level], root)
    edge = b"".join(frontier[level] for level in sorted(frontier, reverse=True))
    return rows, root if root is not None else EMPTY_ROOT, edge


@dataclass(frozen=True)
class _Writes:
    """Everything one append transaction writes."""

    new: list[_New]
    nodes: list[tuple[int, int, bytes]]
    deltas: dict[str, int]
    now: datetime
    size: int
    root: bytes
    frontier: bytes

    @property
    def keyed(self) -> list[tuple[_New, IdempotencyKey]]:
        return [(item, item.idempotency) for item in self.new if item.idempotency is not None]

    @property
    def deposits(self) -> list[tuple[_New, CoinsDeposited, DepositRows]]:
        return [
            (item, item.entry.event, item.deposit)
            for item in self.new
            if item.deposit is not None and isinstance(item.entry.event, CoinsDeposited)
        ]

    def deposit_rows(self) -> list[dict[str, object]]:
        """The ``coin_deposits`` rows (the digest is the deposit's idempotency digest)."""
        return [
            {
                "partner": event.partner,
                "order_ref": deposit.order,
                "request_digest": item.idempotency.request_digest if item.idempotency else b"",
                "points": event.points,
                "coins": len(event.coins),
                "entry_idx": item.index,
                "created_at": self.now,
            }
            for item, event, deposit in self.deposits
        ]

    def withdrawal_rows(self) -> list[dict[str, object]]:
        """The ``coin_withdrawals`` claims the batch's withdrawals answer."""
        return [
            {
                "pseudonym": item.entry.pseudonym,
                "request_id": item.withdrawal.request_id,
                "entry_idx": item.index,
                "signatures": item.withdrawal.signatures,
            }
            for item in self.new
            if item.withdrawal is not None
        ]

    def spent_rows(self) -> list[dict[str, object]]:
        """The ``coin_spent`` rows."""
        return [
            {
                "coin": spend.coin,
                "denomination": spend.denomination,
                "partner": event.partner,
                "order_ref": deposit.order,
                "signed_at": spend.signed_at,
                "permission": spend.permission,
                "created_at": self.now,
            }
            for _, event, deposit in self.deposits
            for spend in deposit.spends
        ]

    @property
    def credits(self) -> list[tuple[str, int]]:
        """Net credits per pseudonym: they may create the balance row."""
        return sorted((p, d) for p, d in self.deltas.items() if d > 0)

    @property
    def debits(self) -> list[tuple[str, int]]:
        """Net debits: they only ever touch an existing row (inserting a negative row would trip
        the CHECK before ON CONFLICT applies, on SQLite)."""
        return sorted((p, d) for p, d in self.deltas.items() if d < 0)


def _write(conn: sa.Connection, writes: _Writes) -> None:
    """The writes through SQLAlchemy, table by table (SQLite: in-process, executemany)."""
    now = writes.now
    conn.execute(
        entries_table.insert(),
        [
            {
                "idx": item.index,
                "kind": int(item.entry.kind),
                "pseudonym": item.entry.pseudonym,
                "data": item.data,
                "leaf_hash": item.leaf_hash,
                "created_at": now,
            }
            for item in writes.new
        ],
    )
    if writes.nodes:
        conn.execute(
            nodes_table.insert(),
            [{"level": level, "idx": index, "hash": value} for level, index, value in writes.nodes],
        )
    if keyed := writes.keyed:
        conn.execute(
            idempotency_table.insert(),
            [
                {
                    "partner": key.partner,
                    "key": key.key,
                    "request_digest": key.request_digest,
                    "idx": item.index,
                    "created_at": now,
                }
                for item, key in keyed
            ],
        )
    if credits := writes.credits:
        conn.execute(
            _UPSERT_BALANCE, [{"pseudonym": p, "delta": d, "now": now} for p, d in credits]
        )
    if debits := writes.debits:
        conn.execute(_DEBIT_BALANCE, [{"pseudonym": p, "delta": d, "now": now} for p, d in debits])
    if withdrawals := writes.withdrawal_rows():
        conn.execute(_STORE_SIGNATURES, withdrawals)
    if deposits := writes.deposit_rows():
        conn.execute(deposits_table.insert(), deposits)
        conn.execute(spent_table.insert(), writes.spent_rows())
    conn.execute(
        head_table.update()
        .where(head_table.c.id == 1)
        .values(size=writes.size, root=writes.root, frontier=writes.frontier, updated_at=now)
    )


def _pg_write_parameters(writes: _Writes) -> dict[str, object]:
    """The parameters of ``_PG_WRITE``: every column of every table as one array."""
    new, keyed, credits, debits = writes.new, writes.keyed, writes.credits, writes.debits
    deposits, spent = writes.deposit_rows(), writes.spent_rows()
    withdrawals = writes.withdrawal_rows()
    return {
        "e_idx": [item.index for item in new],
        "e_kind": [int(item.entry.kind) for item in new],
        "e_pseudonym": [item.entry.pseudonym for item in new],
        "e_data": [item.data for item in new],
        "e_leaf": [item.leaf_hash for item in new],
        "n_level": [row[0] for row in writes.nodes],
        "n_idx": [row[1] for row in writes.nodes],
        "n_hash": [row[2] for row in writes.nodes],
        "i_partner": [key.partner for _, key in keyed],
        "i_key": [key.key for _, key in keyed],
        "i_digest": [key.request_digest for _, key in keyed],
        "i_idx": [item.index for item, _ in keyed],
        "c_pseudonym": [p for p, _ in credits],
        "c_delta": [d for _, d in credits],
        "d_pseudonym": [p for p, _ in debits],
        "d_delta": [d for _, d in debits],
        "p_partner": [row["partner"] for row in deposits],
        "p_order": [row["order_ref"] for row in deposits],
        "p_digest": [row["request_digest"] for row in deposits],
        "p_points": [row["points"] for row in deposits],
        "p_coins": [row["coins"] for row in deposits],
        "p_idx": [row["entry_idx"] for row in deposits],
        "s_coin": [row["coin"] for row in spent],
        "s_denomination": [row["denomination"] for row in spent],
        "s_partner": [row["partner"] for row in spent],
        "s_order": [row["order_ref"] for row in spent],
        "s_signed_at": [row["signed_at"] for row in spent],
        "s_permission": [row["permission"] for row in spent],
        "w_pseudonym": [row["pseudonym"] for row in withdrawals],
        "w_request": [row["request_id"] for row in withdrawals],
        "w_idx": [row["entry_idx"] for row in withdrawals],
        "w_signatures": [row["signatures"] for row in withdrawals],
        "size": writes.size,
        "root": writes.root,
        "frontier": writes.frontier,
        "now": writes.now,
    }
