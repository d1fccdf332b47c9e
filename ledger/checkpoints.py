"""Issuing the ledger's signed checkpoints, and receipts that prove an entry is in the log.

A checkpoint is a C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint) of the current head,
signed as a C2SP signed-note (https://c2sp.org/signed-note) with the keyring's active Ed25519 key
of purpose ``ledger-checkpoint``, under the key name ``origin`` ("The log's key name in its
signature line SHOULD match the origin line"). It is issued under the append lock, for the
current head only, so its size is never smaller than an earlier checkpoint's: every two
checkpoints are connected by an RFC 9162 §2.1.4 consistency proof. The database refuses any
other checkpoint (see the migration ``l0001``). Scheduling periodic checkpoints belongs to the
composition root; :func:`issue_checkpoint` is cheap when nothing was appended.

Receipt format: a C2SP tlog-proof (https://c2sp.org/tlog-proof) whose ``extra`` line carries
the entry's bytes (:mod:`ledger.entries` encoding)::

    c2sp.org/tlog-proof@v1
    extra <base64 of the entry bytes>
    index <leaf index>
    <base64 inclusion proof hash, leaf sibling first>    (zero or more lines)
    <empty line>
    <the signed checkpoint, verbatim>

The tlog-proof spec says extra data must not be trusted implicitly, and it is not: a verifier
hashes it (RFC 9162 ``SHA-256(0x00 || entry)``) and checks that leaf's inclusion proof against
the signed checkpoint (:func:`ledger.audit.verify_receipt`, ``ledger-audit receipt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.exc import SQLAlchemyError

from keys.keyring import Keyring
from keys.model import Purpose
from keys.note import NoteSigner, format_verifier_key
from ledger.checkpoint import Checkpoint, TlogProof, sign_checkpoint
from ledger.errors import CheckpointError, LedgerStoreError, NotCheckpointed
from ledger.store import Clock, LedgerStore, lock_head
from ledger.tables import checkpoints_table

__all__ = [
    "StoredCheckpoint",
    "checkpoint_signer",
    "issue_checkpoint",
    "latest_checkpoint",
    "receipt",
    "verifier_keys",
]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint as issued: the signed note and what it says."""

    origin: str
    size: int
    root: bytes
    kid: str
    note: bytes
    created_at: datetime


def checkpoint_signer(keyring: Keyring, origin: str) -> tuple[str, NoteSigner]:
    """The keyring's active ledger key as a note signer named ``origin``, with its kid."""
    kid, key = keyring.signing_key(Purpose.LEDGER_CHECKPOINT)
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError("the ledger checkpoint key is not an Ed25519 key")
    return kid, NoteSigner.from_private_key(origin, key)


def verifier_keys(keyring: Keyring, origin: str) -> list[str]:
    """Every ledger key that still verifies, as ``<name>+<key id>+<base64>`` note key texts.

    These are what auditors pin (``ledger-audit --key``); the next key is published before it
    signs, so a pinned list stays valid across one rotation.
    """
    return [
        format_verifier_key(origin, public)
        for _, public in keyring.verification_keys(Purpose.LEDGER_CHECKPOINT)
        if isinstance(public, Ed25519PublicKey)
    ]


def issue_checkpoint(
    store: LedgerStore, keyring: Keyring, *, origin: str, clock: Clock = _utc_now
) -> StoredCheckpoint:
    """Sign and store a checkpoint of the current head, under the append lock.

    If the newest checkpoint already covers the head with the same key, it is returned and
    nothing is signed. Refuses (:class:`CheckpointError`) to sign under a different origin than
    the checkpoints before it: one log, one origin.
    """
    kid, signer = checkpoint_signer(keyring, origin)
    now = clock()
    try:
        with store.engine.begin() as conn:
            head = lock_head(conn)
            size, root = head.size, head.root
            last = _latest(conn)
            if last is not None:
                if last.origin != origin:
                    raise CheckpointError("the log's checkpoints were issued under another origin")
                if last.size > size:
                    raise LedgerStoreError("a checkpoint is larger than the head")
                if last.size == size and last.kid == kid:
                    return last
            note = sign_checkpoint(Checkpoint(origin, size, root), [signer])
            issued = StoredCheckpoint(origin, size, root, kid, note, now)
            conn.execute(
                checkpoints_table.insert().values(
                    origin=origin, size=size, root=root, kid=kid, note=note, created_at=now
                )
            )
    except SQLAlchemyError as exc:
        raise LedgerStoreError(f"cannot issue a checkpoint: {type(exc).__name__}") from exc
    return issued


def latest_checkpoint(store: LedgerStore) -> StoredCheckpoint | None:
    """The newest checkpoint (what ``GET /ledger/checkpoint`` serves), if any."""
    try:
        with store.engine.connect() as conn:
            return _latest(conn)
    except SQLAlchemyError as exc:
        raise LedgerStoreError(f"cannot read checkpoints: {type(exc).__name__}") from exc


def receipt(store: LedgerStore, index: int) -> TlogProof:
    """A C2SP tlog-proof receipt for the entry at ``index`` against the newest checkpoint.

    Raises :class:`NotCheckpointed` if no checkpoint covers the entry yet.
    """
    checkpoint = latest_checkpoint(store)
    if checkpoint is None or checkpoint.size <= index:
        raise NotCheckpointed(f"no checkpoint covers entry {index} yet")
    logged = store.entry(index)
    if logged is None:
        raise LedgerStoreError(f"entry {index} is missing from the store")
    proof = store.inclusion_proof(index, checkpoint.size)
    return TlogProof(index, tuple(proof), checkpoint.note, extra=logged.data)


def _latest(conn: sa.Connection) -> StoredCheckpoint | None:
    c = checkpoints_table.c
    row = conn.execute(
        sa.select(c.origin, c.size, c.root, c.kid, c.note, c.created_at)
        .order_by(c.size.desc(), c.id.desc())
        .limit(1)
    ).one_or_none()
    if row is None:
        return None
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return StoredCheckpoint(
        row.origin, int(row.size), bytes(row.root), row.kid, bytes(row.note), created
    )
