"""Ledger entries and their byte encoding (version 1): the bytes every leaf hash is taken over.

RFC 9162 §2.1.1 hashes a leaf as ``SHA-256(0x00 || entry)``; ``entry`` is the byte string that
:func:`encode_entry` defines, in this one function, never an ORM row or a ``json.dumps``.
:func:`decode_entry` is its strict inverse: it re-encodes what it parsed and compares, so exactly
one byte string stands for each entry.

Entries name pseudonyms (128-bit random values, lowercase hex in the API), partner ids, act
types, digests and amounts — never personal data.

Layout, version 1. Integers are unsigned big-endian; ``token(n)`` is an ASCII token padded with
NUL bytes to exactly ``n`` bytes (non-empty, no NUL inside, charset below)::

    header, every kind (10 bytes)
        version        u8         1
        kind           u8         1..5, see Kind
        recorded_at    u64        Unix time (seconds) at which the ledger appended the entry

    kind 1, act credited (170 bytes in all)
        pseudonym      16 bytes   the citizen's ledger pseudonym
        points         u32        >= 1
        catalogue      u32        >= 1, the catalogue version that priced the act
        occurred_at    u64        Unix time (seconds) the partner says the act happened
        evidence       32 bytes   the partner's digest of its evidence (never the evidence)
        partner        token(64)  the attesting partner's id, printable ASCII without space
        act_type       token(32)  [a-z0-9_.-]

    kind 2, withdrawal debited (28 + 36 n bytes)
        pseudonym      16 bytes
        points         u64        >= 1, the total debited
        n              u16        1..256
        n times        denomination (32 bytes) | coins (u32, >= 1)
                       denominations strictly increasing

    kind 3, coins deposited (116 + 64 n bytes)
        partner        token(64)  the partner the coins were paid to
        points         u64        >= 1, the total value deposited
        request        32 bytes   digest of the partner's payment request
        n              u16        1..256
        n times        denomination (32 bytes) | coin public key (32 bytes, Ed25519)
                       (denomination, coin) pairs strictly increasing

    kind 4, denomination key announced (48 + key length bytes)
        value          u32        >= 1, points per coin
        withdraw_from  u64        Unix time (seconds), withdrawals allowed from
        withdraw_until u64        > withdraw_from, withdrawals allowed until (exclusive)
        deposit_until  u64        >= withdraw_until, deposits accepted until (exclusive)
        legal_until    u64        >= deposit_until, the key's records kept until (disputes)
        key length     u16        1..4096
        public_key     bytes      the RFC 9474 public key, SubjectPublicKeyInfo DER

    kind 5, catalogue changed (16 + document length bytes)
        version        u32        >= 1
        length         u16        1..60000
        document       bytes      the catalogue as its own canonical bytes

A denomination is named everywhere by its id, ``SHA-256(public_key)`` (:func:`denomination_id`).
Every entry is at most 65535 bytes, so it fits a C2SP tlog-tiles entry bundle.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import itertools
import re
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

from ledger.errors import EntryError

__all__ = [
    "ACT_CREDITED_LAYOUT",
    "ACT_CREDITED_VIEW",
    "ENCODING_VERSION",
    "MAX_ENTRY_SIZE",
    "ActCredited",
    "CatalogueChanged",
    "CoinCount",
    "CoinsDeposited",
    "DenominationAnnounced",
    "Entry",
    "Event",
    "Kind",
    "SpentCoin",
    "WithdrawalDebited",
    "decode_entry",
    "denomination_id",
    "describe_entry",
    "encode_entry",
    "scan_deposit",
    "scan_withdrawal",
]

ENCODING_VERSION = 1
"""The first byte of every entry."""

MAX_ENTRY_SIZE = 0xFFFF
"""C2SP tlog-tiles entry bundles prefix entries with a uint16 length."""

MAX_COINS = 256
MAX_PUBLIC_KEY = 4096
MAX_DOCUMENT = 60000
_U32 = 2**32 - 1
_U64 = 2**64 - 1
_DIGEST = 32
_PSEUDONYM = 16
_PARTNER_WIDTH = 64
_ACT_TYPE_WIDTH = 32

_HEADER = struct.Struct(">BBQ")
ACT_CREDITED_LAYOUT = struct.Struct(">BBQ16sIIQ32s64s32s")
"""Kind 1 is fixed-size: header and body in one struct (the auditor's fast path uses it)."""
_WITHDRAWAL = struct.Struct(">16sQH")
_WITHDRAWAL_ITEM = struct.Struct(">32sI")
_DEPOSIT = struct.Struct(">64sQ32sH")
_DEPOSIT_ITEM = struct.Struct(">32s32s")
_DENOMINATION = struct.Struct(">IQQQQH")
_CATALOGUE = struct.Struct(">IH")

_PSEUDONYM_TEXT = re.compile(r"[0-9a-f]{32}")
_PARTNER_TEXT = re.compile(r"[!-~]{1,64}")
_ACT_TYPE_TEXT = re.compile(r"[a-z0-9_.-]{1,32}")


class Kind(enum.IntEnum):
    """The entry kinds (second byte of every entry)."""

    ACT_CREDITED = 1
    WITHDRAWAL_DEBITED = 2
    COINS_DEPOSITED = 3
    DENOMINATION_ANNOUNCED = 4
    CATALOGUE_CHANGED = 5


# --- field checks (raise EntryError) ----------------------------------------------------------


def _int(value: object, what: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise EntryError(f"{what} must be an integer in {low}..{high}")


def _digest(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != _DIGEST:
        raise EntryError(f"{what} must be {_DIGEST} bytes")


def _text(value: object, pattern: re.Pattern[str], what: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise EntryError(f"{what} is malformed")


def denomination_id(public_key: bytes) -> bytes:
    """The id of a denomination: ``SHA-256(public_key)``, 32 bytes."""
    return hashlib.sha256(public_key).digest()


# --- events -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ActCredited:
    """A partner attested an eco-act: ``points`` credited to ``pseudonym``."""

    KIND: ClassVar[Kind] = Kind.ACT_CREDITED

    pseudonym: str
    partner: str
    act_type: str
    points: int
    catalogue: int
    occurred_at: int
    evidence: bytes

    def __post_init__(self) -> None:
        _text(self.pseudonym, _PSEUDONYM_TEXT, "pseudonym")
        _text(self.partner, _PARTNER_TEXT, "partner")
        _text(self.act_type, _ACT_TYPE_TEXT, "act type")
        _int(self.points, "points", 1, _U32)
        _int(self.catalogue, "catalogue version", 1, _U32)
        _int(self.occurred_at, "occurred_at", 0, _U64)
        _digest(self.evidence, "evidence digest")


@dataclass(frozen=True, slots=True)
class CoinCount:
    """``count`` coins of the denomination ``denomination`` (its id)."""

    denomination: bytes
    count: int

    def __post_init__(self) -> None:
        _digest(self.denomination, "denomination")
        _int(self.count, "coin count", 1, _U32)


@dataclass(frozen=True, slots=True)
class WithdrawalDebited:
    """A citizen withdrew coins: ``points`` debited from ``pseudonym``. No coin data."""

    KIND: ClassVar[Kind] = Kind.WITHDRAWAL_DEBITED

    pseudonym: str
    points: int
    coins: tuple[CoinCount, ...]

    def __post_init__(self) -> None:
        _text(self.pseudonym, _PSEUDONYM_TEXT, "pseudonym")
        _int(self.points, "points", 1, _U64)
        _items(self.coins, CoinCount, lambda c: c.denomination)


@dataclass(frozen=True, slots=True)
class SpentCoin:
    """One coin deposited: its denomination id and its Ed25519 public key."""

    denomination: bytes
    coin: bytes

    def __post_init__(self) -> None:
        _digest(self.denomination, "denomination")
        _digest(self.coin, "coin public key")


@dataclass(frozen=True, slots=True)
class CoinsDeposited:
    """A partner deposited coins it was paid with, worth ``points``."""

    KIND: ClassVar[Kind] = Kind.COINS_DEPOSITED

    partner: str
    points: int
    request: bytes
    coins: tuple[SpentCoin, ...]

    def __post_init__(self) -> None:
        _text(self.partner, _PARTNER_TEXT, "partner")
        _int(self.points, "points", 1, _U64)
        _digest(self.request, "request digest")
        _items(self.coins, SpentCoin, lambda c: c.denomination + c.coin)


@dataclass(frozen=True, slots=True)
class DenominationAnnounced:
    """A blind-signing key for coins of ``value`` points, usable for withdrawals in a window."""

    KIND: ClassVar[Kind] = Kind.DENOMINATION_ANNOUNCED

    public_key: bytes
    value: int
    withdraw_from: int
    withdraw_until: int
    deposit_until: int
    legal_until: int

    def __post_init__(self) -> None:
        if not isinstance(self.public_key, bytes) or not 1 <= len(self.public_key) <= (
            MAX_PUBLIC_KEY
        ):
            raise EntryError(f"public key must be 1..{MAX_PUBLIC_KEY} bytes")
        _int(self.value, "denomination value", 1, _U32)
        _int(self.withdraw_from, "withdraw_from", 0, _U64)
        _int(self.withdraw_until, "withdraw_until", 0, _U64)
        _int(self.deposit_until, "deposit_until", 0, _U64)
        _int(self.legal_until, "legal_until", 0, _U64)
        if self.withdraw_until <= self.withdraw_from:
            raise EntryError("withdraw_until must come after withdraw_from")
        if not self.withdraw_until <= self.deposit_until <= self.legal_until:
            raise EntryError("withdraw_until <= deposit_until <= legal_until is required")

    @property
    def denomination(self) -> bytes:
        """The id withdrawals and deposits name this denomination by."""
        return denomination_id(self.public_key)


@dataclass(frozen=True, slots=True)
class CatalogueChanged:
    """The acts catalogue changed; ``document`` is the new catalogue's canonical bytes."""

    KIND: ClassVar[Kind] = Kind.CATALOGUE_CHANGED

    version: int
    document: bytes

    def __post_init__(self) -> None:
        _int(self.version, "catalogue version", 1, _U32)
        if not isinstance(self.document, bytes) or not 1 <= len(self.document) <= MAX_DOCUMENT:
            raise EntryError(f"catalogue document must be 1..{MAX_DOCUMENT} bytes")


Event = ActCredited | WithdrawalDebited | CoinsDeposited | DenominationAnnounced | CatalogueChanged
"""What happened; an :class:`Entry` is an event and the time the ledger recorded it."""


def _items(items: object, cls: type, key: Any) -> None:
    if not isinstance(items, tuple) or not 1 <= len(items) <= MAX_COINS:
        raise EntryError(f"coins must be a tuple of 1..{MAX_COINS} items")
    if not all(isinstance(item, cls) for item in items):
        raise EntryError(f"coins must be {cls.__name__} items")
    keys = [key(item) for item in items]
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise EntryError("coins must be sorted, without repeats")


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: an event and the Unix time (seconds) the ledger appended it."""

    recorded_at: int
    event: Event

    def __post_init__(self) -> None:
        _int(self.recorded_at, "recorded_at", 0, _U64)
        if not isinstance(
            self.event,
            ActCredited
            | WithdrawalDebited
            | CoinsDeposited
            | DenominationAnnounced
            | CatalogueChanged,
        ):
            raise EntryError("unknown event type")

    @property
    def kind(self) -> Kind:
        """The event's kind."""
        return self.event.KIND

    @property
    def pseudonym(self) -> str | None:
        """The citizen the entry credits or debits, if any."""
        if isinstance(self.event, ActCredited | WithdrawalDebited):
            return self.event.pseudonym
        return None


# --- the encoding -----------------------------------------------------------------------------


def _token(text: str, width: int) -> bytes:
    return text.encode("ascii").ljust(width, b"\x00")


def encode_entry(entry: Entry) -> bytes:
    """The version-1 bytes of ``entry`` (layout in the module docstring): the leaf's contents."""
    if not isinstance(entry, Entry):
        raise EntryError("only an Entry can be encoded")
    event = entry.event
    header = _HEADER.pack(ENCODING_VERSION, event.KIND, entry.recorded_at)
    match event:
        case ActCredited():
            return ACT_CREDITED_LAYOUT.pack(
                ENCODING_VERSION,
                event.KIND,
                entry.recorded_at,
                bytes.fromhex(event.pseudonym),
                event.points,
                event.catalogue,
                event.occurred_at,
                event.evidence,
                _token(event.partner, _PARTNER_WIDTH),
                _token(event.act_type, _ACT_TYPE_WIDTH),
            )
        case WithdrawalDebited():
            parts = [
                header,
                _WITHDRAWAL.pack(bytes.fromhex(event.pseudonym), event.points, len(event.coins)),
            ]
            parts += [_WITHDRAWAL_ITEM.pack(c.denomination, c.count) for c in event.coins]
            return b"".join(parts)
        case CoinsDeposited():
            parts = [
                header,
                _DEPOSIT.pack(
                    _token(event.partner, _PARTNER_WIDTH),
                    event.points,
                    event.request,
                    len(event.coins),
                ),
            ]
            parts += [_DEPOSIT_ITEM.pack(c.denomination, c.coin) for c in event.coins]
            return b"".join(parts)
        case DenominationAnnounced():
            return b"".join(
                [
                    header,
                    _DENOMINATION.pack(
                        event.value,
                        event.withdraw_from,
                        event.withdraw_until,
                        event.deposit_until,
                        event.legal_until,
                        len(event.public_key),
                    ),
                    event.public_key,
                ]
            )
        case CatalogueChanged():
            return header + _CATALOGUE.pack(event.version, len(event.document)) + event.document
    raise EntryError("unknown event type")  # pragma: no cover - Entry checks the type


# --- decoding (the strict inverse) ------------------------------------------------------------


def _untoken(raw: bytes) -> str:
    text = raw.rstrip(b"\x00")
    if not text or b"\x00" in text or not text.isascii():
        raise EntryError("malformed token field")
    return text.decode("ascii")


def _decode_event(kind: int, data: bytes) -> Event:
    offset = _HEADER.size
    match kind:
        case Kind.ACT_CREDITED:
            (_, _, _, pseudonym, points, catalogue, occurred_at, evidence, partner, act) = (
                ACT_CREDITED_LAYOUT.unpack(data)
            )
            return ActCredited(
                pseudonym.hex(),
                _untoken(partner),
                _untoken(act),
                points,
                catalogue,
                occurred_at,
                evidence,
            )
        case Kind.WITHDRAWAL_DEBITED:
            pseudonym, points, n = _WITHDRAWAL.unpack_from(data, offset)
            offset += _WITHDRAWAL.size
            coins = tuple(
                CoinCount(*_WITHDRAWAL_ITEM.unpack_from(data, offset + i * _WITHDRAWAL_ITEM.size))
                for i in range(n)
            )
            return WithdrawalDebited(pseudonym.hex(), points, coins)
        case Kind.COINS_DEPOSITED:
            partner, points, request, n = _DEPOSIT.unpack_from(data, offset)
            offset += _DEPOSIT.size
            spent = tuple(
                SpentCoin(*_DEPOSIT_ITEM.unpack_from(data, offset + i * _DEPOSIT_ITEM.size))
                for i in range(n)
            )
            return CoinsDeposited(_untoken(partner), points, request, spent)
        case Kind.DENOMINATION_ANNOUNCED:
            value, *window, length = _DENOMINATION.unpack_from(data, offset)
            offset += _DENOMINATION.size
            return DenominationAnnounced(data[offset : offset + length], value, *window)
        case Kind.CATALOGUE_CHANGED:
            version, length = _CATALOGUE.unpack_from(data, offset)
            offset += _CATALOGUE.size
            return CatalogueChanged(version, data[offset : offset + length])
    raise EntryError(f"unknown entry kind {kind}")


def decode_entry(data: bytes) -> Entry:
    """Parse version-1 entry bytes; anything but the one canonical encoding raises EntryError.

    Every field is checked as when an entry is built, and the result is re-encoded and compared
    with ``data``: trailing bytes, non-canonical padding or list order cannot slip through.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EntryError("an entry is bytes")
    data = bytes(data)
    if not _HEADER.size <= len(data) <= MAX_ENTRY_SIZE:
        raise EntryError("entry has the wrong length")
    version, kind, recorded_at = _HEADER.unpack_from(data)
    if version != ENCODING_VERSION:
        raise EntryError(f"unknown entry encoding version {version}")
    try:
        entry = Entry(recorded_at, _decode_event(kind, data))
    except (struct.error, ValueError, TypeError):
        raise EntryError("entry is truncated or malformed") from None
    if encode_entry(entry) != data:
        raise EntryError("entry is not in its canonical encoding")
    return entry


# --- bulk reading (the auditor's hot path) ---------------------------------------------------
#
# The same layout and checks as decode_entry, as plain tuples instead of dataclasses: a million
# entries cost a million struct calls, not millions of objects. The tests check that these
# accept exactly what decode_entry accepts, with the same fields.

ACT_CREDITED_VIEW = struct.Struct(">B9x16sII40x96s")
"""Kind 1 as a bulk reader sees it: version, pseudonym (16 bytes), points, catalogue version,
and the partner and act type fields as one 96-byte value; kind, times and evidence skipped.
Check the kind byte and the length first. Every 170-byte kind-1 entry with version 1, points
and catalogue >= 1 and a 96-byte value ``decode_entry`` accepted once is valid."""

_WITHDRAWAL_HEAD = struct.Struct(">BBQ16sQH")
_DEPOSIT_HEAD = struct.Struct(">BBQ64sQ32sH")


@functools.lru_cache(maxsize=4096)
def _partner_field(raw: bytes) -> str:
    text = _untoken(raw)
    if not _PARTNER_TEXT.fullmatch(text):
        raise EntryError("partner is malformed")
    return text


def scan_withdrawal(data: bytes) -> tuple[int, bytes, int, list[tuple[bytes, int]]]:
    """A kind-2 entry as ``(recorded_at, pseudonym bytes, points, [(denomination, coins)])``.

    Raises :class:`EntryError` unless ``data`` is a canonical withdrawal entry.
    """
    try:
        version, kind, recorded_at, pseudonym, points, n = _WITHDRAWAL_HEAD.unpack_from(data)
    except struct.error:
        raise EntryError("entry is truncated") from None
    size = _WITHDRAWAL_HEAD.size
    if (
        version != ENCODING_VERSION
        or kind != Kind.WITHDRAWAL_DEBITED
        or not points
        or not 1 <= n <= MAX_COINS
        or len(data) != size + n * _WITHDRAWAL_ITEM.size
    ):
        raise EntryError("not a canonical withdrawal entry")
    items = list(_WITHDRAWAL_ITEM.iter_unpack(data[size:]))
    previous = b""
    for denomination, count in items:
        if denomination <= previous or not count:
            raise EntryError("not a canonical withdrawal entry")
        previous = denomination
    return recorded_at, pseudonym, points, items


def scan_deposit(data: bytes) -> tuple[int, str, int, list[tuple[bytes, bytes]]]:
    """A kind-3 entry as ``(recorded_at, partner, points, [(denomination, coin)])``.

    Raises :class:`EntryError` unless ``data`` is a canonical deposit entry.
    """
    try:
        version, kind, recorded_at, partner, points, _, n = _DEPOSIT_HEAD.unpack_from(data)
    except struct.error:
        raise EntryError("entry is truncated") from None
    size = _DEPOSIT_HEAD.size
    if (
        version != ENCODING_VERSION
        or kind != Kind.COINS_DEPOSITED
        or not points
        or not 1 <= n <= MAX_COINS
        or len(data) != size + n * _DEPOSIT_ITEM.size
    ):
        raise EntryError("not a canonical deposit entry")
    items = list(_DEPOSIT_ITEM.iter_unpack(data[size:]))
    previous = b""
    for denomination, coin in items:
        pair = denomination + coin
        if pair <= previous:
            raise EntryError("not a canonical deposit entry")
        previous = pair
    return recorded_at, _partner_field(partner), points, items


def describe_entry(entry: Entry) -> dict[str, Any]:
    """A JSON-ready view of an entry (digests in hex, keys and documents in base64)."""
    event = entry.event
    fields: dict[str, Any]
    match event:
        case ActCredited():
            fields = {
                "pseudonym": event.pseudonym,
                "partner": event.partner,
                "act_type": event.act_type,
                "points": event.points,
                "catalogue": event.catalogue,
                "occurred_at": event.occurred_at,
                "evidence": event.evidence.hex(),
            }
        case WithdrawalDebited():
            fields = {
                "pseudonym": event.pseudonym,
                "points": event.points,
                "coins": [
                    {"denomination": c.denomination.hex(), "count": c.count} for c in event.coins
                ],
            }
        case CoinsDeposited():
            fields = {
                "partner": event.partner,
                "points": event.points,
                "request": event.request.hex(),
                "coins": [
                    {"denomination": c.denomination.hex(), "coin": c.coin.hex()}
                    for c in event.coins
                ],
            }
        case DenominationAnnounced():
            fields = {
                "denomination": event.denomination.hex(),
                "value": event.value,
                "withdraw_from": event.withdraw_from,
                "withdraw_until": event.withdraw_until,
                "deposit_until": event.deposit_until,
                "legal_until": event.legal_until,
                "public_key": base64.b64encode(event.public_key).decode("ascii"),
            }
        case CatalogueChanged():
            fields = {
                "version": event.version,
                "document": base64.b64encode(event.document).decode("ascii"),
            }
    return {"kind": entry.kind.name.lower(), "recorded_at": entry.recorded_at, **fields}
