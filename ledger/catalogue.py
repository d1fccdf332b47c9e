"""The acts catalogue: which eco-acts earn points, how many, how often, attested by whom.

A catalogue is read from TOML (``ledger/default_catalogue.toml`` shows the format)::

    [acts.tram_ride]
    points = 2               # credited per act (>= 1)
    max_per_day = 4          # acts of this type per pseudonym per UTC day of ``occurred_at``
    max_per_month = 60       # ... per UTC calendar month of ``occurred_at``
    partners = ["transit"]   # partner client ids that may attest it
    valid_from = 2026-01-01  # optional, acts that occurred on or after this UTC date
    valid_until = 2028-01-01 # optional, acts that occurred before this UTC date (exclusive)

Every catalogue in force is in the log: a ``CatalogueChanged`` entry carries its version
(1, 2, ...) and its canonical document (:meth:`Catalogue.document`: RFC 8785-style JSON, keys
sorted, no whitespace, ASCII), so an auditor can re-price every act from the log alone. The first
load is version 1; loading a file whose document equals the current one appends nothing.

Caps are checked from the pseudonym's own acts in the log, not from a counter that could drift
from it: the API hands a rule's caps to the store with the act (``ledger.store.ActCaps``), which
counts them under the append lock, so they hold across server processes.
"""

from __future__ import annotations

import hashlib
import json
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from ledger.entries import ActCredited, CatalogueChanged, Kind, decode_entry
from ledger.errors import CapExceeded, IdempotencyConflict, LedgerError, LedgerStoreError
from ledger.store import IdempotencyKey, LedgerStore
from ledger.tables import entries_table

__all__ = [
    "DEFAULT_CATALOGUE",
    "ActNotAllowed",
    "ActOutsideValidity",
    "ActRule",
    "ActTypeUnknown",
    "CapExceeded",
    "Catalogue",
    "CatalogueCache",
    "CatalogueError",
    "current_catalogue",
    "load_catalogue",
    "parse_catalogue",
    "publish_catalogue",
]

DEFAULT_CATALOGUE = Path(__file__).with_name("default_catalogue.toml")
"""The catalogue the service loads unless settings name another file."""

FUTURE_SKEW = timedelta(minutes=5)
"""How far in the future a partner's ``occurred_at`` may be (clock skew)."""

_CATALOGUE_PARTNER = "nicecard:catalogue"
"""The idempotency namespace of catalogue changes: two processes loading the same file at once
append it once (the second gets the first answer), a different file is refused."""

_RULE_KEYS = frozenset(
    {"points", "max_per_day", "max_per_month", "partners", "valid_from", "valid_until"}
)


class CatalogueError(LedgerError):
    """The catalogue file or document is malformed."""


class ActTypeUnknown(LedgerError):
    """The act type is not in the catalogue."""


class ActNotAllowed(LedgerError):
    """The partner is not entitled to attest this act type."""


class ActOutsideValidity(LedgerError):
    """The act happened outside the dates its catalogue rule is valid for."""


@dataclass(frozen=True)
class ActRule:
    """How one act type is priced and limited."""

    act_type: str
    points: int
    max_per_day: int
    max_per_month: int
    partners: frozenset[str]
    valid_from: date | None = None
    valid_until: date | None = None

    def check(self, partner: str, occurred_at: datetime) -> None:
        """Raise unless ``partner`` may attest this act, happening at ``occurred_at``."""
        if partner not in self.partners:
            raise ActNotAllowed(f"partner may not attest {self.act_type}")
        day = occurred_at.astimezone(UTC).date()
        if (self.valid_from is not None and day < self.valid_from) or (
            self.valid_until is not None and day >= self.valid_until
        ):
            raise ActOutsideValidity(f"{self.act_type} is not valid on {day.isoformat()}")

    def to_json(self) -> dict[str, Any]:
        return {
            "points": self.points,
            "max_per_day": self.max_per_day,
            "max_per_month": self.max_per_month,
            "partners": sorted(self.partners),
            "valid_from": self.valid_from.isoformat() if self.valid_from else None,
            "valid_until": self.valid_until.isoformat() if self.valid_until else None,
        }


@dataclass(frozen=True)
class Catalogue:
    """A catalogue version: its rules by act type."""

    version: int
    rules: Mapping[str, ActRule]

    def rule(self, act_type: str) -> ActRule:
        """The rule of ``act_type``; :class:`ActTypeUnknown` if there is none."""
        found = self.rules.get(act_type)
        if found is None:
            raise ActTypeUnknown(f"unknown act type {act_type!r}"[:120])
        return found

    def document(self) -> bytes:
        """The canonical bytes logged in ``CatalogueChanged`` (sorted keys, no whitespace)."""
        body = {"acts": {name: rule.to_json() for name, rule in sorted(self.rules.items())}}
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.document()).hexdigest()


def _positive(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**31:
        raise CatalogueError(f"{what} must be a positive integer")
    return value


def _date(value: object, what: str) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        raise CatalogueError(f"{what} must be a date, not a date-time")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise CatalogueError(f"{what} must be a date (YYYY-MM-DD)")


def _rule(act_type: str, raw: object) -> ActRule:
    where = f"acts.{act_type}"
    if not isinstance(raw, dict):
        raise CatalogueError(f"{where} must be a table")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise CatalogueError(f"{where}: unknown keys {sorted(unknown)}")
    partners = raw.get("partners", [])
    if not isinstance(partners, list) or not all(
        isinstance(p, str) and 1 <= len(p) <= 64 and p.isprintable() and " " not in p
        for p in partners
    ):
        raise CatalogueError(f"{where}.partners must be a list of client ids")
    rule = ActRule(
        act_type=act_type,
        points=_positive(raw.get("points"), f"{where}.points"),
        max_per_day=_positive(raw.get("max_per_day"), f"{where}.max_per_day"),
        max_per_month=_positive(raw.get("max_per_month"), f"{where}.max_per_month"),
        partners=frozenset(partners),
        valid_from=_date(raw.get("valid_from"), f"{where}.valid_from"),
        valid_until=_date(raw.get("valid_until"), f"{where}.valid_until"),
    )
    if rule.valid_from and rule.valid_until and rule.valid_until <= rule.valid_from:
        raise CatalogueError(f"{where}: valid_until must come after valid_from")
    if rule.max_per_day > rule.max_per_month:
        raise CatalogueError(f"{where}: max_per_day exceeds max_per_month")
    try:  # the act type must fit the entry encoding
        ActCredited("0" * 32, "p", act_type, rule.points, 1, 0, bytes(32))
    except LedgerError:
        raise CatalogueError(f"{where}: the act type must match [a-z0-9_.-]{{1,32}}") from None
    return rule


def parse_catalogue(data: Mapping[str, Any], version: int) -> Catalogue:
    """A catalogue from its parsed TOML or JSON document; raises :class:`CatalogueError`."""
    acts = data.get("acts")
    if set(data) != {"acts"} or not isinstance(acts, dict) or not acts:
        raise CatalogueError("a catalogue holds one non-empty [acts] table and nothing else")
    return Catalogue(version, {name: _rule(name, raw) for name, raw in acts.items()})


def load_catalogue(path: Path, version: int = 1) -> Catalogue:
    """Read a TOML catalogue file; raises :class:`CatalogueError`."""
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise CatalogueError(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CatalogueError(f"{path} is not valid TOML: {exc}") from None
    return parse_catalogue(data, version)


def _from_entry(event: CatalogueChanged) -> Catalogue:
    try:
        data = json.loads(event.document)
    except ValueError:
        raise CatalogueError("a logged catalogue document is not JSON") from None
    if not isinstance(data, dict):
        raise CatalogueError("a logged catalogue document is not an object")
    return parse_catalogue(data, event.version)


def _newest_after(store: LedgerStore, start: int) -> tuple[Catalogue | None, int]:
    """The newest catalogue logged at an index >= ``start``, and the head size it was read at.

    A range scan over the primary key: cheap when ``start`` is recent.
    """
    try:
        with store.engine.connect() as conn:
            size = int(
                conn.execute(sa.text("SELECT size FROM ledger_head WHERE id = 1")).scalar_one()
            )
            data = conn.execute(
                sa.select(entries_table.c.data)
                .where(
                    entries_table.c.idx >= start,
                    entries_table.c.idx < size,
                    entries_table.c.kind == int(Kind.CATALOGUE_CHANGED),
                )
                .order_by(entries_table.c.idx.desc())
                .limit(1)
            ).scalar_one_or_none()
    except SQLAlchemyError as exc:
        raise LedgerStoreError(f"cannot read the catalogue: {type(exc).__name__}") from exc
    if data is None:
        return None, size
    event = decode_entry(bytes(data)).event
    assert isinstance(event, CatalogueChanged)
    return _from_entry(event), size


def current_catalogue(store: LedgerStore) -> Catalogue | None:
    """The catalogue in force (the newest logged), or ``None`` before the first load."""
    return _newest_after(store, 0)[0]


def publish_catalogue(store: LedgerStore, catalogue: Catalogue) -> Catalogue:
    """Make ``catalogue``'s rules the ones in force; returns the catalogue as logged.

    Appends a ``CatalogueChanged`` entry with the next version unless the document in force is
    the same (then nothing is appended). Raises :class:`CatalogueError` if another process
    published a different catalogue at the same moment (retry).
    """
    current = current_catalogue(store)
    document = catalogue.document()
    if current is not None and current.document() == document:
        return current
    version = 1 if current is None else current.version + 1
    key = IdempotencyKey(_CATALOGUE_PARTNER, f"v{version}", hashlib.sha256(document).digest())
    try:
        store.append(CatalogueChanged(version, document), idempotency=key)
    except IdempotencyConflict:
        raise CatalogueError("another catalogue was published at the same time") from None
    return Catalogue(version, catalogue.rules)


class CatalogueCache:
    """The catalogue in force, refreshed from the entries appended since the last look."""

    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._seen = 0
        self._catalogue: Catalogue | None = None

    def get(self) -> Catalogue:
        """The newest logged catalogue; :class:`CatalogueError` if none was ever published."""
        with self._lock:
            newer, seen = _newest_after(self._store, self._seen)
            if newer is not None:
                self._catalogue = newer
            self._seen = seen
            if self._catalogue is None:
                raise CatalogueError("no acts catalogue was published")
            return self._catalogue
