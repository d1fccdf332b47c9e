"""The coin protocol: what a wallet, the ledger and a partner sign and check, defined once.

Chaumian e-cash as in GNU Taler, with RFC 9474 blind RSA signatures:

- A **coin** is an Ed25519 key pair made by the wallet. Its message is its 32-byte public key;
  a denomination key signs it with ``RSABSSA-SHA384-PSS-Randomized``, so the signed (prepared)
  message is ``randomizer (32 random bytes) || coin public key`` and the coin carries the
  randomizer. The ledger signs the *blinded* message and never sees the coin.
- A **payment request** from a partner names the partner's client id, an order reference and
  an amount in points. To pay, the wallet signs with each coin's private key a **deposit
  permission** over :func:`permission_message`. A permission names one partner, one order and
  one amount, so it cannot be replayed at another partner or for another order.
- The ledger answers a deposit with a **receipt** and a partner's reimbursement request with a
  **statement**, both C2SP signed notes (https://c2sp.org/signed-note) under the ledger's
  Ed25519 key and the log's origin as key name, the key auditors pin. The denominations list is
  a signed note too. The second line of each note names its type, so none can pass for a
  checkpoint (whose second line is a decimal tree size).

Byte layout of a deposit permission message (integers big-endian)::

    b"nicecard deposit permission v1\\x00"
    u8 len | partner (ASCII)    u8 len | order (ASCII)    u64 amount
    coin public key (32)        denomination id (32)       u64 signed_at (Unix seconds)
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from keys.blind_rsa import BlindPublicKey, Variant, verify
from keys.errors import BlindRSAError, NoteError
from keys.note import NoteSigner, NoteVerifier, open_note, sign_note
from ledger.entries import DenominationAnnounced, decode_entry
from ledger.errors import EntryError, LedgerError

__all__ = [
    "MAX_COINS",
    "ORDER",
    "VARIANT",
    "Coin",
    "CoinError",
    "Denomination",
    "DepositReceipt",
    "Statement",
    "StatementLine",
    "b64decode",
    "b64encode",
    "denominations_note",
    "open_denominations",
    "open_receipt",
    "open_statement",
    "permission_message",
    "read_receipt",
    "receipt_note",
    "statement_note",
]

VARIANT = Variant.PSS_RANDOMIZED
"""The one RFC 9474 variant coins are signed with."""

MAX_COINS = 256
"""Most coins in one withdrawal or one deposit (the ledger entries' limit)."""

ORDER = re.compile(r"[!-~]{1,128}")
"""An order reference: 1..128 printable ASCII characters, no space."""

_PARTNER = re.compile(r"[!-~]{1,64}")
_PERMISSION_TAG = b"nicecard deposit permission v1\x00"
_U64 = struct.Struct(">Q")
_KEY = 32
_HASH = 32

_DENOMINATIONS = "nicecard denominations v1"
_RECEIPT = "nicecard deposit receipt v1"
_STATEMENT = "nicecard partner statement v1"


class CoinError(LedgerError):
    """A coin, permission, receipt or statement is malformed or does not verify."""


# --- encodings --------------------------------------------------------------------------------


def b64encode(raw: bytes) -> str:
    """Unpadded base64url (RFC 4648 §5), as JOSE and the API write binary values."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64decode(text: object, what: str, size: int | None = None) -> bytes:
    """Strict unpadded base64url; ``size`` checks the decoded length. Raises CoinError."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) > 4096:
        raise CoinError(f"{what} must be unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise CoinError(f"{what} must be unpadded base64url") from None
    if b64encode(raw) != text:
        raise CoinError(f"{what} is not canonical base64url")
    if size is not None and len(raw) != size:
        raise CoinError(f"{what} must be {size} bytes")
    return raw


def hex_id(text: object, what: str = "denomination") -> bytes:
    """A 32-byte id written as 64 lowercase hex digits."""
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-f]{64}", text):
        raise CoinError(f"{what} must be 64 lowercase hex digits")
    return bytes.fromhex(text)


# --- denominations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Denomination:
    """A denomination as published: its key, value, windows and announcement in the log."""

    public_key: bytes
    value: int
    withdraw_from: int
    withdraw_until: int
    deposit_until: int
    legal_until: int
    entry_index: int
    entry: bytes

    @functools.cached_property
    def id(self) -> bytes:
        """SHA-256 of the SubjectPublicKeyInfo (the RFC 9474 key id)."""
        return self.key.key_id()

    @functools.cached_property
    def key(self) -> BlindPublicKey:
        """The parsed key (parsed once: deposits check every coin against it)."""
        return BlindPublicKey.from_spki(self.public_key)

    def announcement(self) -> DenominationAnnounced:
        return DenominationAnnounced(
            self.public_key,
            self.value,
            self.withdraw_from,
            self.withdraw_until,
            self.deposit_until,
            self.legal_until,
        )

    def check_entry(self) -> None:
        """The logged entry announces exactly this key, value and windows."""
        try:
            event = decode_entry(self.entry).event
        except EntryError as exc:
            raise CoinError(f"denomination entry is malformed: {exc}") from None
        if event != self.announcement():
            raise CoinError("the logged announcement does not match the denomination")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id.hex(),
            "value": self.value,
            "public_key": b64encode(self.public_key),
            "withdraw_from": self.withdraw_from,
            "withdraw_until": self.withdraw_until,
            "deposit_until": self.deposit_until,
            "legal_until": self.legal_until,
            "entry_index": self.entry_index,
            "entry": b64encode(self.entry),
        }

    @classmethod
    def from_json(cls, raw: Any) -> Denomination:
        try:
            denomination = cls(
                public_key=b64decode(raw["public_key"], "public_key"),
                value=_count(raw["value"], "value"),
                withdraw_from=_count(raw["withdraw_from"], "withdraw_from", 0),
                withdraw_until=_count(raw["withdraw_until"], "withdraw_until", 0),
                deposit_until=_count(raw["deposit_until"], "deposit_until", 0),
                legal_until=_count(raw["legal_until"], "legal_until", 0),
                entry_index=_count(raw["entry_index"], "entry_index", 0),
                entry=b64decode(raw["entry"], "entry"),
            )
            if denomination.id.hex() != raw["id"]:
                raise CoinError("denomination id is not the SHA-256 of its public key")
        except (KeyError, TypeError):
            raise CoinError("a denomination lacks a field") from None
        except BlindRSAError as exc:
            raise CoinError(f"denomination key: {exc}") from None
        return denomination

    def line(self) -> str:
        return (
            f"{self.id.hex()} {self.value} {self.withdraw_from} {self.withdraw_until} "
            f"{self.deposit_until} {self.legal_until} {self.entry_index}"
        )


def _count(value: object, what: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < 2**63:
        raise CoinError(f"{what} must be an integer >= {low}")
    return value


def denominations_note(
    origin: str, issued_at: int, items: Sequence[Denomination], signer: NoteSigner
) -> str:
    """The signed list of denominations (one line each, in the order given)."""
    text = f"{origin}\n{_DENOMINATIONS}\n{issued_at}\n" + "".join(d.line() + "\n" for d in items)
    return sign_note(text, [signer]).decode("utf-8")


def open_denominations(
    note: str, items: Sequence[Denomination], verifiers: Iterable[NoteVerifier], origin: str
) -> int:
    """Check the signed list names exactly ``items``; returns its issue time."""
    lines = _open(note, verifiers, origin, _DENOMINATIONS)
    if not lines or not lines[0].isdecimal():
        raise CoinError("denominations note is malformed")
    if lines[1:] != [d.line() for d in items]:
        raise CoinError("the signed denominations list does not match the denominations")
    return int(lines[0])


def _open(note: str, verifiers: Iterable[NoteVerifier] | None, origin: str, kind: str) -> list[str]:
    """The note's lines after its origin and type; signatures checked unless ``verifiers`` is
    None (the server reading back a note it signed and stored itself)."""
    if verifiers is None:
        split = note.rfind("\n\n")
        text = note[: split + 1] if split >= 0 else note
    else:
        try:
            text = open_note(note.encode("utf-8"), verifiers).text
        except NoteError as exc:
            raise CoinError(f"signed note does not verify: {exc}") from None
    lines = text.split("\n")[:-1]
    if len(lines) < 2 or lines[0] != origin or lines[1] != kind:
        raise CoinError(f"not a {kind!r} note of {origin}")
    return lines[2:]


# --- coins and permissions --------------------------------------------------------------------


def permission_message(
    partner: str, order: str, amount: int, *, coin: bytes, denomination: bytes, signed_at: int
) -> bytes:
    """The bytes a coin's Ed25519 key signs to pay ``amount`` for ``order`` at ``partner``."""
    if not _PARTNER.fullmatch(partner) or not ORDER.fullmatch(order):
        raise CoinError("partner or order is malformed")
    if len(coin) != _KEY or len(denomination) != _HASH:
        raise CoinError("coin or denomination has the wrong size")
    return b"".join(
        [
            _PERMISSION_TAG,
            bytes([len(partner)]),
            partner.encode("ascii"),
            bytes([len(order)]),
            order.encode("ascii"),
            _U64.pack(_count(amount, "amount")),
            coin,
            denomination,
            _U64.pack(_count(signed_at, "signed_at", 0)),
        ]
    )


@dataclass(frozen=True)
class Coin:
    """A spendable coin as paid: what a partner receives and deposits (no private key)."""

    denomination: bytes
    coin: bytes
    randomizer: bytes
    signature: bytes

    def prepared(self) -> bytes:
        """The RFC 9474 prepared message the denomination key signed."""
        return self.randomizer + self.coin

    def check_signature(self, key: BlindPublicKey) -> None:
        """The denomination's blind signature on this coin is valid; raises CoinError."""
        if key.key_id() != self.denomination:
            raise CoinError("coin checked against another denomination's key")
        try:
            verify(VARIANT, key, self.prepared(), self.signature)
        except BlindRSAError:
            raise CoinError("the coin's denomination signature does not verify") from None

    def check_permission(
        self, partner: str, order: str, amount: int, signed_at: int, permission: bytes
    ) -> None:
        """``permission`` is this coin's Ed25519 signature for this payment; raises CoinError."""
        message = permission_message(
            partner,
            order,
            amount,
            coin=self.coin,
            denomination=self.denomination,
            signed_at=signed_at,
        )
        try:
            Ed25519PublicKey.from_public_bytes(self.coin).verify(permission, message)
        except (InvalidSignature, ValueError):
            raise CoinError("the deposit permission is not signed by the coin") from None

    def to_json(self) -> dict[str, str]:
        return {
            "denomination": self.denomination.hex(),
            "coin_pub": b64encode(self.coin),
            "randomizer": b64encode(self.randomizer),
            "signature": b64encode(self.signature),
        }

    @classmethod
    def from_json(cls, raw: Any, signature_size: int | None = None) -> Coin:
        if not isinstance(raw, dict):
            raise CoinError("a coin is a JSON object")
        return cls(
            denomination=hex_id(raw.get("denomination")),
            coin=b64decode(raw.get("coin_pub"), "coin_pub", _KEY),
            randomizer=b64decode(raw.get("randomizer"), "randomizer", 32),
            signature=b64decode(raw.get("signature"), "signature", signature_size),
        )


# --- receipts and statements ------------------------------------------------------------------


@dataclass(frozen=True)
class DepositReceipt:
    """What a signed deposit receipt says."""

    partner: str
    order: str
    amount: int
    coins: int
    entry_index: int
    leaf_hash: bytes
    deposited_at: int

    def text_lines(self) -> list[str]:
        return [
            f"partner {self.partner}",
            f"order {self.order}",
            f"amount {self.amount}",
            f"coins {self.coins}",
            f"entry {self.entry_index}",
            f"leaf {b64encode(self.leaf_hash)}",
            f"time {self.deposited_at}",
        ]


def receipt_note(origin: str, receipt: DepositReceipt, signer: NoteSigner) -> str:
    """The receipt as a C2SP signed note under the ledger key."""
    text = f"{origin}\n{_RECEIPT}\n" + "".join(line + "\n" for line in receipt.text_lines())
    return sign_note(text, [signer]).decode("utf-8")


def _fields(lines: list[str], names: Sequence[str]) -> list[str]:
    if len(lines) < len(names):
        raise CoinError("note is truncated")
    values = []
    for line, name in zip(lines, names, strict=False):
        key, _, value = line.partition(" ")
        if key != name or not value:
            raise CoinError(f"note field {name!r} is malformed")
        values.append(value)
    return values


def _int_field(text: str, what: str) -> int:
    if not text.isdecimal() or len(text) > 19:
        raise CoinError(f"{what} is not a decimal number")
    return int(text)


def open_receipt(note: str, verifiers: Iterable[NoteVerifier], origin: str) -> DepositReceipt:
    """Verify a deposit receipt's signature and parse it."""
    return _receipt(_open(note, verifiers, origin, _RECEIPT))


def read_receipt(note: str, origin: str) -> DepositReceipt:
    """Parse a receipt this service signed and stored, without checking the signature."""
    return _receipt(_open(note, None, origin, _RECEIPT))


def _receipt(lines: list[str]) -> DepositReceipt:
    names = ("partner", "order", "amount", "coins", "entry", "leaf", "time")
    if len(lines) != len(names):
        raise CoinError("receipt has the wrong number of lines")
    partner, order, amount, coins, entry, leaf, when = _fields(lines, names)
    return DepositReceipt(
        partner,
        order,
        _int_field(amount, "amount"),
        _int_field(coins, "coins"),
        _int_field(entry, "entry"),
        b64decode(leaf, "leaf", _HASH),
        _int_field(when, "time"),
    )


@dataclass(frozen=True)
class StatementLine:
    """One deposit in a statement."""

    entry_index: int
    order: str
    amount: int
    coins: int
    deposited_at: int

    def text(self) -> str:
        return f"{self.entry_index} {self.deposited_at} {self.amount} {self.coins} {self.order}"


@dataclass(frozen=True)
class Statement:
    """A partner's deposits in ``[start, end)`` (Unix seconds), for reimbursement."""

    partner: str
    start: int
    end: int
    issued_at: int
    deposits: tuple[StatementLine, ...]

    @property
    def total(self) -> int:
        return sum(line.amount for line in self.deposits)

    def to_json(self, note: str) -> dict[str, Any]:
        """The statement as ``GET /v1/partners/me/statements`` answers it, with its signed
        ``note``."""
        return {
            "partner": self.partner,
            "from": self.start,
            "to": self.end,
            "deposits": [
                {
                    "entry_index": line.entry_index,
                    "order": line.order,
                    "amount": line.amount,
                    "coins": line.coins,
                    "deposited_at": line.deposited_at,
                }
                for line in self.deposits
            ],
            "total": self.total,
            "statement": note,
        }


def statement_note(origin: str, statement: Statement, signer: NoteSigner) -> str:
    """The statement as a C2SP signed note under the ledger key."""
    head = [
        f"partner {statement.partner}",
        f"from {statement.start}",
        f"to {statement.end}",
        f"issued {statement.issued_at}",
        f"deposits {len(statement.deposits)}",
        f"total {statement.total}",
    ]
    body = [line.text() for line in statement.deposits]
    text = f"{origin}\n{_STATEMENT}\n" + "".join(line + "\n" for line in head + body)
    return sign_note(text, [signer]).decode("utf-8")


def open_statement(note: str, verifiers: Iterable[NoteVerifier], origin: str) -> Statement:
    """Verify a statement's signature, parse it and check that its total adds up."""
    lines = _open(note, verifiers, origin, _STATEMENT)
    names = ("partner", "from", "to", "issued", "deposits", "total")
    partner, start, end, issued, count, total = _fields(lines, names)
    body = lines[len(names) :]
    if len(body) != _int_field(count, "deposits"):
        raise CoinError("statement lists the wrong number of deposits")
    deposits = []
    for line in body:
        parts = line.split(" ")
        if len(parts) != 5:
            raise CoinError("statement line is malformed")
        index, when, amount, coins, order = parts
        deposits.append(
            StatementLine(
                _int_field(index, "entry"),
                order,
                _int_field(amount, "amount"),
                _int_field(coins, "coins"),
                _int_field(when, "time"),
            )
        )
    statement = Statement(
        partner,
        _int_field(start, "from"),
        _int_field(end, "to"),
        _int_field(issued, "issued"),
        tuple(deposits),
    )
    if statement.total != _int_field(total, "total"):
        raise CoinError("statement total does not add up")
    return statement
