"""Tables of the identity store. They use their own SQLModel registry, so their metadata is
separate from the ledger's: no table of one store can end up in the other."""

from __future__ import annotations

from sqlalchemy.orm import registry
from sqlmodel import SQLModel


class IdentityTable(SQLModel, registry=registry()):
    """Base of every identity-store table."""


identity_metadata = IdentityTable.metadata
