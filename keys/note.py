"""C2SP signed notes (https://c2sp.org/signed-note) with Ed25519 signatures, and note key texts.

A signed note (C2SP signed-note, "Format")::

    <text, ending in a newline>
    <blank line>
    — <key name> base64(key ID (4 bytes, big-endian) || signature)
    — ...

"Signed notes MUST be valid UTF-8 and MUST NOT contain any ASCII control characters (those
below U+0020) other than newline." Key names "MUST be non-empty and MUST NOT contain any Unicode
spaces or plus (U+002B) characters."

Ed25519 (signature type 0x01, C2SP signed-note "Ed25519 signatures")::

    key ID = SHA-256(key name || 0x0A || 0x01 || 32-byte Ed25519 public key)[:4]

Key texts, as used by golang.org/x/mod/sumdb/note and the transparency-dev ecosystem::

    verifier key: <name>+<key ID, 8 hex digits>+base64(0x01 || public key)
    signer key:   PRIVATE+KEY+<name>+<key ID, 8 hex digits>+base64(0x01 || private key seed)

Every failure (malformed note or key text, bad or missing signature) raises :class:`NoteError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keys.errors import NoteError

__all__ = [
    "ED25519_SIGNATURE_TYPE",
    "MAX_SIGNATURES",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "format_signer_key",
    "format_verifier_key",
    "generate_signer",
    "is_valid_key_name",
    "key_id",
    "open_note",
    "parse_signer_key",
    "parse_verifier_key",
    "sign_note",
]

ED25519_SIGNATURE_TYPE = 0x01
"""C2SP signed-note, "Signature types": ``0x01`` — Ed25519."""

MAX_SIGNATURES = 100
"""C2SP signed-note: verifiers "SHOULD apply a maximum limit to the number of signatures ...
but MUST accept at least up to 16 signatures"."""

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}")
_ED25519_KEY_SIZE = 32
_ED25519_SIGNATURE_SIZE = 64

# The Unicode White_Space property (what Go's unicode.IsSpace and the spec mean by "Unicode
# spaces"), spelled out so the rule does not depend on Python's Unicode database version.
_UNICODE_SPACES = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


# --- helpers ---------------------------------------------------------------------------------


def _b64decode(text: str, what: str) -> bytes:
    """Standard base64 (RFC 4648 §4), padded and canonical: one text per byte string."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise NoteError(f"{what} is not valid base64") from None
    # b64decode ignores non-zero padding bits; refuse them so a signature has one spelling.
    if base64.b64encode(raw).decode("ascii") != text:
        raise NoteError(f"{what} is not canonical base64")
    return raw


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _has_forbidden_control(text: str) -> bool:
    """C2SP signed-note: no ASCII control characters below U+0020 other than newline."""
    return any(ch < " " and ch != "\n" for ch in text)


def is_valid_key_name(name: str) -> bool:
    """C2SP signed-note: non-empty, no Unicode spaces, no ``+`` (and encodable in a note)."""
    if not name or "+" in name or _has_forbidden_control(name):
        return False
    if any(ch in _UNICODE_SPACES for ch in name):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _require_key_name(name: str) -> None:
    if not isinstance(name, str) or not is_valid_key_name(name):
        raise NoteError("invalid key name")


def key_id(name: str, public_key: Ed25519PublicKey) -> int:
    """C2SP signed-note: ``SHA-256(key name || 0x0A || 0x01 || public key)[:4]``, big-endian."""
    _require_key_name(name)
    digest = hashlib.sha256(
        name.encode("utf-8")
        + b"\n"
        + bytes([ED25519_SIGNATURE_TYPE])
        + public_key.public_bytes_raw()
    ).digest()
    return int.from_bytes(digest[:4], "big")


# --- keys ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteVerifier:
    """An Ed25519 note verifier: a key name, its key ID and the public key."""

    name: str
    key_id: int
    public_key: Ed25519PublicKey = field(hash=False)  # keys compare equal, are not hashable

    @classmethod
    def from_public_key(cls, name: str, public_key: Ed25519PublicKey) -> NoteVerifier:
        """The verifier for ``public_key`` under ``name`` (the key ID is derived)."""
        return cls(name, key_id(name, public_key), public_key)

    def verify(self, text: bytes, signature: bytes) -> None:
        """Check an Ed25519 signature (RFC 8032) over the note text; raise :class:`NoteError`."""
        try:
            self.public_key.verify(signature, text)
        except InvalidSignature:
            raise NoteError(f"signature by {self.name} does not verify") from None

    def to_text(self) -> str:
        """The verifier key text ``<name>+<hex key ID>+base64(0x01 || public key)``."""
        return format_verifier_key(self.name, self.public_key)


@dataclass(frozen=True, eq=False)
class NoteSigner:
    """An Ed25519 note signer: a key name, its key ID and the private key."""

    name: str
    key_id: int
    private_key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_private_key(cls, name: str, private_key: Ed25519PrivateKey) -> NoteSigner:
        """The signer for ``private_key`` under ``name`` (the key ID is derived)."""
        return cls(name, key_id(name, private_key.public_key()), private_key)

    @property
    def verifier(self) -> NoteVerifier:
        """The matching verifier."""
        return NoteVerifier(self.name, self.key_id, self.private_key.public_key())

    def sign(self, text: bytes) -> bytes:
        """Ed25519 signature (RFC 8032) over the note text."""
        return self.private_key.sign(text)


def generate_signer(name: str) -> NoteSigner:
    """A new Ed25519 note signer under ``name``, from the operating system's randomness."""
    return NoteSigner.from_private_key(name, Ed25519PrivateKey.generate())


def format_verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """``<name>+<hex key ID>+base64(0x01 || 32-byte public key)``."""
    kid = key_id(name, public_key)
    raw = bytes([ED25519_SIGNATURE_TYPE]) + public_key.public_bytes_raw()
    return f"{name}+{kid:08x}+{_b64encode(raw)}"


def format_signer_key(name: str, private_key: Ed25519PrivateKey) -> str:
    """``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || 32-byte seed)``. Secret: store wrapped."""
    kid = key_id(name, private_key.public_key())
    raw = bytes([ED25519_SIGNATURE_TYPE]) + private_key.private_bytes_raw()
    return f"{_PRIVATE_KEY_PREFIX}{name}+{kid:08x}+{_b64encode(raw)}"


def _split_key_text(text: str, what: str) -> tuple[str, int, bytes]:
    """``<name>+<hex key ID>+base64(0x01 || key)`` -> (name, key ID, 32-byte key)."""
    # The name holds no '+', the hex ID none either; base64 may, so split twice only.
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise NoteError(f"malformed {what}")
    name, hex_id, key_b64 = parts
    _require_key_name(name)
    if not _KEY_ID_HEX.fullmatch(hex_id):
        raise NoteError(f"malformed key ID in {what}")
    raw = _b64decode(key_b64, what)
    if len(raw) != 1 + _ED25519_KEY_SIZE or raw[0] != ED25519_SIGNATURE_TYPE:
        raise NoteError(f"{what} is not an Ed25519 key")
    return name, int(hex_id, 16), raw[1:]


def parse_verifier_key(text: str) -> NoteVerifier:
    """Parse ``<name>+<hex key ID>+base64(0x01 || public key)``; the key ID must match."""
    name, kid, raw = _split_key_text(text, "verifier key")
    try:
        public_key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise NoteError("verifier key is not an Ed25519 public key") from None
    if key_id(name, public_key) != kid:
        raise NoteError("verifier key ID does not match its key")
    return NoteVerifier(name, kid, public_key)


def parse_signer_key(text: str) -> NoteSigner:
    """Parse ``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || seed)``; the key ID must match."""
    if not text.startswith(_PRIVATE_KEY_PREFIX):
        raise NoteError("malformed signer key")
    name, kid, raw = _split_key_text(text.removeprefix(_PRIVATE_KEY_PREFIX), "signer key")
    private_key = Ed25519PrivateKey.from_private_bytes(raw)
    if key_id(name, private_key.public_key()) != kid:
        raise NoteError("signer key ID does not match its key")
    return NoteSigner(name, kid, private_key)


# --- notes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: key name, key ID and the raw signature bytes."""

    name: str
    key_id: int
    signature: bytes

    def to_line(self) -> str:
        """``— <name> base64(key ID || signature)`` without the newline."""
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return f"{_SIGNATURE_PREFIX}{self.name} {_b64encode(blob)}"


@dataclass(frozen=True)
class Note:
    """An opened note: its text and signatures.

    ``signatures`` were verified by a known key; ``unverified`` are from keys the caller did
    not supply, which C2SP signed-note says verifiers "MUST ignore".
    """

    text: str
    signatures: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...] = ()


def _check_text(text: str) -> bytes:
    if not isinstance(text, str) or not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    if _has_forbidden_control(text):
        raise NoteError("note text contains control characters")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise NoteError("note text is not valid UTF-8") from None


def sign_note(text: str, signers: Sequence[NoteSigner]) -> bytes:
    """C2SP signed-note: ``text``, a blank line, then one signature line per signer.

    ``text`` must end with a newline and hold no control character other than newline.
    """
    raw_text = _check_text(text)
    if not signers:
        raise NoteError("a note needs at least one signer")
    if len(signers) > MAX_SIGNATURES:
        raise NoteError("too many signers")
    lines = []
    for signer in signers:
        _require_key_name(signer.name)
        lines.append(NoteSignature(signer.name, signer.key_id, signer.sign(raw_text)).to_line())
    return raw_text + b"\n" + "".join(line + "\n" for line in lines).encode("utf-8")


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError("malformed signature line")
    fields = line.removeprefix(_SIGNATURE_PREFIX).split(" ")
    if len(fields) != 2 or not is_valid_key_name(fields[0]):
        raise NoteError("malformed signature line")
    name, blob_b64 = fields
    blob = _b64decode(blob_b64, "signature")
    if len(blob) < 5:
        raise NoteError("signature too short")
    return NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:])


def _index_verifiers(verifiers: Iterable[NoteVerifier]) -> dict[tuple[str, int], NoteVerifier]:
    known: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        other = known.get(slot)
        if other is not None and other != verifier:
            # C2SP signed-note: collisions of both name and ID "can lead to errors".
            raise NoteError(f"two verifier keys share name and key ID: {verifier.name}")
        known[slot] = verifier
    return known


def open_note(msg: bytes, verifiers: Iterable[NoteVerifier]) -> Note:
    """Parse a signed note and verify its signatures (C2SP signed-note, "Signatures").

    Signatures from unknown keys are ignored (returned in ``Note.unverified``); a signature from
    a known key that fails to verify rejects the whole note; at least one signature from a known
    key must verify. Every failure raises :class:`NoteError`.
    """
    known = _index_verifiers(verifiers)
    try:
        decoded = msg.decode("utf-8")
    except (UnicodeDecodeError, AttributeError):
        raise NoteError("note is not valid UTF-8") from None
    if _has_forbidden_control(decoded):
        raise NoteError("note contains control characters")
    if not decoded.endswith("\n"):
        raise NoteError("note does not end with a newline")
    # "the text is separated from the signatures by the last empty line in the note"
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no signature block")
    text = decoded[: split + 1]
    lines = decoded[split + 2 : -1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("note has too many signatures")
    raw_text = text.encode("utf-8")
    verified: dict[tuple[str, int], NoteSignature] = {}
    unverified: list[NoteSignature] = []
    for line in lines:
        sig = _parse_signature_line(line)
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            unverified.append(sig)
            continue
        if len(sig.signature) != _ED25519_SIGNATURE_SIZE:
            raise NoteError(f"signature by {sig.name} does not verify")
        verifier.verify(raw_text, sig.signature)
        verified.setdefault((sig.name, sig.key_id), sig)
    if not verified:
        raise NoteError("note has no signature from a known key")
    return Note(text, tuple(verified.values()), tuple(unverified))
