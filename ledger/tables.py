"""Tables of the ledger store, in their own SQLModel registry (separate metadata).

``ledger/migrations`` creates them (with the append-only triggers these classes cannot
express); these classes document the columns and give the code typed ``sa.Table`` objects.

- ``ledger_entries``: the log. ``idx`` is the RFC 9162 leaf index, ``data`` the exact encoded
  entry (:func:`ledger.entries.encode_entry`) and ``leaf_hash`` its RFC 9162 leaf hash, which is
  also level 0 of the Merkle tree. ``kind`` and ``pseudonym`` repeat what ``data`` says, for reads.
- ``ledger_nodes``: every perfect subtree of the tree above the leaves, ``MTH(D[idx * 2**level :
  (idx + 1) * 2**level])`` for ``level >= 1``, written when the subtree completes.
- ``ledger_head``: one row, the tree size, root and right edge (the perfect subtrees of the
  binary decomposition of the size, which the next leaf hashes against); locked by appends.
- ``ledger_checkpoints``: every signed C2SP checkpoint issued, never for a smaller size.
- ``ledger_balances``: points per pseudonym, kept in the append's transaction; derivable from the
  log at any time.
- ``ledger_idempotency``: (partner, idempotency key) -> the index of the first answer.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel


class LedgerTable(SQLModel, registry=registry()):
    """Base of every ledger-store table."""


ledger_metadata = LedgerTable.metadata
"""The ledger store's metadata (the target of its Alembic environment)."""


def _when() -> sa.Column[datetime]:
    return sa.Column(sa.DateTime(timezone=True), nullable=False)


class LedgerEntry(LedgerTable, table=True):
    """One log entry: its index, its exact bytes and its leaf hash."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        sa.CheckConstraint("idx >= 0", name="ck_ledger_entries_idx"),
        sa.Index("ix_ledger_entries_pseudonym", "pseudonym", "idx"),
    )

    idx: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    kind: int = Field(sa_column=sa.Column(sa.SmallInteger, nullable=False))
    pseudonym: str | None = Field(default=None, sa_column=sa.Column(sa.String(32)))
    data: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    leaf_hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    created_at: datetime = Field(sa_column=_when())


class LedgerNode(LedgerTable, table=True):
    """A perfect-subtree hash above the leaves (level >= 1)."""

    __tablename__ = "ledger_nodes"
    __table_args__ = (sa.CheckConstraint("level >= 1 AND idx >= 0", name="ck_ledger_nodes_pos"),)

    level: int = Field(sa_column=sa.Column(sa.SmallInteger, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))


class LedgerHead(LedgerTable, table=True):
    """The single head row: tree size, RFC 9162 root hash and the tree's right edge."""

    __tablename__ = "ledger_head"
    __table_args__ = (
        sa.CheckConstraint("id = 1", name="ck_ledger_head_single"),
        sa.CheckConstraint("size >= 0", name="ck_ledger_head_size"),
    )

    id: int = Field(sa_column=sa.Column(sa.SmallInteger, primary_key=True, autoincrement=False))
    size: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    root: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    frontier: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    updated_at: datetime = Field(sa_column=_when())


class LedgerCheckpoint(LedgerTable, table=True):
    """A signed C2SP tlog-checkpoint note as issued."""

    __tablename__ = "ledger_checkpoints"

    id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, primary_key=True))
    origin: str = Field(sa_column=sa.Column(sa.String(255), nullable=False))
    size: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False, index=True))
    root: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    kid: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    note: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    created_at: datetime = Field(sa_column=_when())


class LedgerBalance(LedgerTable, table=True):
    """Points held by a pseudonym; the database refuses a negative balance."""

    __tablename__ = "ledger_balances"
    __table_args__ = (sa.CheckConstraint("points >= 0", name="ck_ledger_balances_points"),)

    pseudonym: str = Field(sa_column=sa.Column(sa.String(32), primary_key=True))
    points: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    updated_at: datetime = Field(sa_column=_when())


class LedgerIdempotency(LedgerTable, table=True):
    """A partner's idempotency key and the entry its first request appended."""

    __tablename__ = "ledger_idempotency"

    partner: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    key: str = Field(sa_column=sa.Column(sa.String(255), primary_key=True))
    request_digest: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    idx: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    created_at: datetime = Field(sa_column=_when())


entries_table = ledger_metadata.tables["ledger_entries"]
nodes_table = ledger_metadata.tables["ledger_nodes"]
head_table = ledger_metadata.tables["ledger_head"]
checkpoints_table = ledger_metadata.tables["ledger_checkpoints"]
balances_table = ledger_metadata.tables["ledger_balances"]
idempotency_table = ledger_metadata.tables["ledger_idempotency"]


# --- coins (see ledger/mint.py) -----------------------------------------------------------------


class CoinDenomination(LedgerTable, table=True):
    """A denomination key: one per value per epoch. ``sealed`` (the private half, encrypted
    under the key-encryption key) is wiped once withdrawals end; ``entry_idx`` is the index of
    its announcement in the log (set before first use)."""

    __tablename__ = "coin_denominations"
    __table_args__ = (sa.UniqueConstraint("value", "epoch", name="uq_coin_denominations_epoch"),)

    id: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), primary_key=True))
    value: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    epoch: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    public_key: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    sealed: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary))
    withdraw_from: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    withdraw_until: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    deposit_until: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    legal_until: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    entry_idx: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    created_at: datetime = Field(sa_column=_when())


class CoinWithdrawal(LedgerTable, table=True):
    """A citizen's withdrawal request: what answers a replay. No coin data is kept: only the
    blind signatures, which without the wallet's blinding factors match no coin."""

    __tablename__ = "coin_withdrawals"

    pseudonym: str = Field(sa_column=sa.Column(sa.String(32), primary_key=True))
    request_id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    request_digest: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    points: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    entry_idx: int | None = Field(default=None, sa_column=sa.Column(sa.BigInteger))
    signatures: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary))
    created_at: datetime = Field(sa_column=_when())


class CoinDeposit(LedgerTable, table=True):
    """A partner's deposit for one order (append-only): its digest, amount and entry.

    Written in the append transaction of its entry (:class:`ledger.store.DepositRows`); the
    receipt is signed again from the entry when asked for, not stored.
    """

    __tablename__ = "coin_deposits"
    __table_args__ = (sa.Index("ix_coin_deposits_partner_created", "partner", "created_at"),)

    partner: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    order_ref: str = Field(sa_column=sa.Column(sa.String(128), primary_key=True))
    request_digest: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    points: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    coins: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    entry_idx: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    created_at: datetime = Field(sa_column=_when())


class CoinSpent(LedgerTable, table=True):
    """A spent coin (append-only): the primary key is what makes a coin spendable once."""

    __tablename__ = "coin_spent"

    coin: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), primary_key=True))
    denomination: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    partner: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    order_ref: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    signed_at: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    permission: bytes = Field(sa_column=sa.Column(sa.LargeBinary(64), nullable=False))
    created_at: datetime = Field(sa_column=_when())


class CoinDoubleSpend(LedgerTable, table=True):
    """Evidence (append-only): a permission for a coin that was already spent elsewhere."""

    __tablename__ = "coin_double_spends"

    id: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, primary_key=True))
    coin: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False, index=True))
    denomination: bytes = Field(sa_column=sa.Column(sa.LargeBinary(32), nullable=False))
    partner: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    order_ref: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    amount: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    signed_at: int = Field(sa_column=sa.Column(sa.BigInteger, nullable=False))
    permission: bytes = Field(sa_column=sa.Column(sa.LargeBinary(64), nullable=False))
    created_at: datetime = Field(sa_column=_when())


denominations_table = ledger_metadata.tables["coin_denominations"]
withdrawals_table = ledger_metadata.tables["coin_withdrawals"]
deposits_table = ledger_metadata.tables["coin_deposits"]
spent_table = ledger_metadata.tables["coin_spent"]
double_spends_table = ledger_metadata.tables["coin_double_spends"]
