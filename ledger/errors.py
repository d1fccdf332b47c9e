"""Errors raised by the ``ledger`` package.

The tree::

    LedgerError
    ├── ProofError           an RFC 9162 inclusion or consistency proof does not verify
    ├── CheckpointError      a checkpoint is malformed or its signature does not verify
    ├── TileError            a tile path or tile is malformed, or lies outside the tree
    ├── LedgerStoreError     the ledger store could not be read or written
    │   └── NotCheckpointed      no signed checkpoint covers that entry yet (retry later)
    ├── EntryError           an entry is malformed or does not fit the byte encoding
    ├── AppendRejected       the store refused one append (the others of its batch go on)
    │   ├── InsufficientBalance  a withdrawal would take a balance below zero
    │   ├── IdempotencyConflict  an idempotency key was reused for a different request
    │   ├── CapExceeded          an act would pass its pseudonym's daily or monthly cap
    │   └── CoinsSpent           a deposit spends a coin that was already spent
    ├── ExportError          an export file is malformed or truncated (an input error)
    └── AuditError           a log failed verification; carries self-contained evidence
        ├── TamperingDetected    entries and signed checkpoints disagree, or checkpoints fork
        └── EconomyViolation     the entries break a rule of the points economy

Messages never carry personal data: the ledger knows pseudonyms only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class LedgerError(Exception):
    """Base of every error raised by ``ledger``."""


class ProofError(LedgerError):
    """An inclusion or consistency proof failed to verify, or its inputs are malformed."""


class CheckpointError(LedgerError):
    """A checkpoint is malformed or carries no valid signature."""


class TileError(LedgerError):
    """A tile path or tile is malformed, or names a tile outside the tree."""


class LedgerStoreError(LedgerError):
    """The ledger store could not be read or written."""


class NotCheckpointed(LedgerStoreError):
    """No signed checkpoint covers the entry yet: a receipt can be built after the next one."""


class EntryError(LedgerError):
    """An entry is malformed: a field out of range, or bytes that are not a valid encoding."""


class AppendRejected(LedgerError):
    """The store refused to append one entry; nothing of it was written."""


class InsufficientBalance(AppendRejected):
    """A withdrawal would take the pseudonym's balance below zero."""


class IdempotencyConflict(AppendRejected):
    """The idempotency key was first used for a different request."""


class CapExceeded(AppendRejected):
    """The pseudonym already reached its cap of this act type for that day or month."""


class CoinsSpent(AppendRejected):
    """A deposit spends coins already spent: ``coins`` are their public keys, sorted."""

    def __init__(self, message: str, coins: list[bytes]) -> None:
        super().__init__(message)
        self.coins = tuple(coins)


class ExportError(LedgerError):
    """An export file is malformed, truncated, or of an unknown format version."""


class AuditError(LedgerError):
    """A log failed verification.

    ``rule`` names what failed (a stable slug such as ``root-mismatch``); ``evidence`` is a
    JSON-ready mapping that stands on its own: signed checkpoint notes, recomputed roots, the
    failing proof or the offending entries' indexes and bytes.
    """

    kind = "audit"

    def __init__(self, rule: str, message: str, evidence: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.rule = rule
        self.message = message
        self.evidence: dict[str, Any] = dict(evidence or {})

    def to_json(self) -> dict[str, Any]:
        """The error and its evidence as one JSON object (the CLI's evidence file)."""
        return {"kind": self.kind, "rule": self.rule, "message": self.message, **self.evidence}


class TamperingDetected(AuditError):
    """The entries do not match the signed checkpoints, or two checkpoints cannot both hold."""

    kind = "tampering"


class EconomyViolation(AuditError):
    """Replaying the entries breaks a rule of the points economy."""

    kind = "economy"
