"""Tables of the ledger store, in their own SQLModel registry (separate metadata)."""

from __future__ import annotations

from sqlalchemy.orm import registry
from sqlmodel import SQLModel


class LedgerTable(SQLModel, registry=registry()):
    """Base of every ledger-store table."""


ledger_metadata = LedgerTable.metadata
