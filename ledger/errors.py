"""Errors raised by the ``ledger`` package.

The tree::

    LedgerError
    ├── ProofError           an RFC 9162 inclusion or consistency proof does not verify
    ├── CheckpointError      a checkpoint is malformed or its signature does not verify
    ├── TileError            a tile path or tile is malformed, or lies outside the tree
    └── LedgerStoreError     the ledger store could not be read or written

Messages never carry personal data: the ledger knows pseudonyms only.
"""

from __future__ import annotations


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
