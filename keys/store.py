"""Where key records live: a table in the identity database, or a directory of files.

A store only keeps records; it never sees a private key in clear (``sealed`` is ciphertext).
Both stores apply a batch of changes atomically, and the database store lets the database
enforce "one active and one next key per purpose" with partial unique indexes, so two operators
rotating at once cannot both win.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from keys.errors import KeyStoreError
from keys.model import KeyRecord, KeyState, Purpose


class KeyStore(Protocol):
    def load(self) -> list[KeyRecord]:
        """Every record, in creation order."""

    def apply(self, inserts: Sequence[KeyRecord], updates: Sequence[KeyRecord]) -> None:
        """Insert new records and replace existing ones (matched by kid), all or nothing."""


metadata = sa.MetaData()

key_material = sa.Table(
    "key_material",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("activated_at", sa.DateTime(timezone=True)),
    sa.Column("retired_at", sa.DateTime(timezone=True)),
    sa.Column("destroyed_at", sa.DateTime(timezone=True)),
    sa.Column("public", sa.LargeBinary, nullable=False),
    sa.Column("sealed", sa.LargeBinary),
    sa.Index(
        "uq_key_material_one_active",
        "purpose",
        unique=True,
        sqlite_where=sa.text("state = 'active'"),
        postgresql_where=sa.text("state = 'active'"),
    ),
    sa.Index(
        "uq_key_material_one_next",
        "purpose",
        unique=True,
        sqlite_where=sa.text("state = 'next'"),
        postgresql_where=sa.text("state = 'next'"),
    ),
)


def _record(row: sa.Row[tuple[object, ...]]) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        kid=m["kid"],
        purpose=Purpose(m["purpose"]),
        state=KeyState(m["state"]),
        created_at=_aware(m["created_at"]) or datetime.min.replace(tzinfo=UTC),
        activated_at=_aware(m["activated_at"]),
        retired_at=_aware(m["retired_at"]),
        destroyed_at=_aware(m["destroyed_at"]),
        public=bytes(m["public"]),
        sealed=None if m["sealed"] is None else bytes(m["sealed"]),
    )


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; every time we store is UTC.
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _row(record: KeyRecord) -> dict[str, object]:
    return {
        "kid": record.kid,
        "purpose": record.purpose.value,
        "state": record.state.value,
        "created_at": record.created_at,
        "activated_at": record.activated_at,
        "retired_at": record.retired_at,
        "destroyed_at": record.destroyed_at,
        "public": record.public,
        "sealed": record.sealed,
    }


class SqlKeyStore:
    """Keys in the ``key_material`` table of the identity database."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def load(self) -> list[KeyRecord]:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(sa.select(key_material).order_by(key_material.c.created_at))
                return [_record(r) for r in rows]
        except SQLAlchemyError as exc:
            raise KeyStoreError(f"cannot read keys: {type(exc).__name__}") from None

    def apply(self, inserts: Sequence[KeyRecord], updates: Sequence[KeyRecord]) -> None:
        try:
            with self._engine.begin() as conn:
                # Updates first: a rotation frees the 'active' slot before the new key takes it.
                for record in sorted(updates, key=_update_order):
                    conn.execute(
                        key_material.update()
                        .where(key_material.c.kid == record.kid)
                        .values(**_row(record))
                    )
                if inserts:
                    conn.execute(key_material.insert(), [_row(r) for r in inserts])
        except IntegrityError:
            raise KeyStoreError(
                "another process changed the keys at the same time; reload and retry"
            ) from None
        except SQLAlchemyError as exc:
            raise KeyStoreError(f"cannot write keys: {type(exc).__name__}") from None


def _update_order(record: KeyRecord) -> int:
    # Leave a state before another key enters it: retire/destroy first, then promote.
    return {KeyState.DESTROYED: 0, KeyState.RETIRED: 1, KeyState.ACTIVE: 2, KeyState.NEXT: 3}[
        record.state
    ]


class DirectoryKeyStore:
    """Keys as one JSON file per kid in a directory (mode 0700, files 0600).

    Writes go to a temporary file then ``os.replace``, so a crash never leaves half a key.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def _ensure_dir(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def load(self) -> list[KeyRecord]:
        if not self._dir.exists():
            return []
        records = []
        try:
            for path in sorted(self._dir.glob("*.json")):
                records.append(_from_json(json.loads(path.read_text("utf-8"))))
        except (OSError, ValueError, KeyError) as exc:
            raise KeyStoreError(f"cannot read key directory: {type(exc).__name__}") from None
        return sorted(records, key=lambda r: r.created_at)

    def apply(self, inserts: Sequence[KeyRecord], updates: Sequence[KeyRecord]) -> None:
        self._ensure_dir()
        try:
            for record in [*updates, *inserts]:
                path = self._dir / f"{record.kid}.json"
                tmp = path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(_to_json(record), fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
        except OSError as exc:
            raise KeyStoreError(f"cannot write key directory: {type(exc).__name__}") from None


def _to_json(record: KeyRecord) -> dict[str, object]:
    row = _row(record)
    for name in ("created_at", "activated_at", "retired_at", "destroyed_at"):
        value = row[name]
        row[name] = value.isoformat() if isinstance(value, datetime) else None
    row["public"] = base64.b64encode(record.public).decode()
    row["sealed"] = None if record.sealed is None else base64.b64encode(record.sealed).decode()
    return row


def _from_json(data: dict[str, str | None]) -> KeyRecord:
    def when(name: str) -> datetime | None:
        value = data.get(name)
        return datetime.fromisoformat(value) if value else None

    sealed = data.get("sealed")
    created = when("created_at")
    if created is None:
        raise KeyError("created_at")
    return KeyRecord(
        kid=str(data["kid"]),
        purpose=Purpose(str(data["purpose"])),
        state=KeyState(str(data["state"])),
        created_at=created,
        activated_at=when("activated_at"),
        retired_at=when("retired_at"),
        destroyed_at=when("destroyed_at"),
        public=base64.b64decode(str(data["public"])),
        sealed=None if sealed is None else base64.b64decode(sealed),
    )
