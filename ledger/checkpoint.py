"""C2SP transparency-log checkpoints and proofs, signed as C2SP signed notes.

Checkpoint note text (https://c2sp.org/tlog-checkpoint, "Note text")::

    <origin>                  non-empty, "a unique identifier for the log identity"
    <tree size>               ASCII decimal, "no leading zeroes (unless the tree is empty)"
    <root hash>               standard base64 of the RFC 6962 / RFC 9162 Merkle tree root
    [<extension line> ...]    "opaque and OPTIONAL", each "MUST be non-empty"

Each line ends with a newline. The note is signed with :func:`keys.note.sign_note`; opening it
verifies the signatures first and the body after, and raises :class:`CheckpointError` for both.

Transparency log proof (https://c2sp.org/tlog-proof, "Format")::

    c2sp.org/tlog-proof@v1
    [extra <base64 opaque data>]
    index <decimal leaf index>
    <base64 inclusion proof hash, leaf sibling first>  (zero or more lines)
    <empty line>
    <the signed checkpoint, verbatim>
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from keys.errors import NoteError
from keys.note import NoteSigner, NoteVerifier, open_note, sign_note
from ledger.errors import CheckpointError, LedgerError, ProofError
from ledger.merkle import HASH_SIZE, verify_inclusion

__all__ = [
    "TLOG_PROOF_HEADER",
    "Checkpoint",
    "TlogProof",
    "open_checkpoint",
    "sign_checkpoint",
]

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
"""C2SP tlog-proof: "The first line MUST be the string ``c2sp.org/tlog-proof@v1``"."""

_MAX_TREE_SIZE = 2**64 - 1  # RFC 9162 tree sizes and indices are uint64
_MAX_PROOF_HASHES = 64  # an inclusion proof in a uint64-sized tree has at most 64 hashes
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def _decimal(text: str, error: type[LedgerError], what: str) -> int:
    """ASCII decimal with no leading zeroes, at most 2**64 - 1."""
    if not _DECIMAL.fullmatch(text) or len(text) > 20:
        raise error(f"{what} is not a canonical decimal")
    value = int(text)
    if value > _MAX_TREE_SIZE:
        raise error(f"{what} is out of range")
    return value


def _b64decode(text: str, error: type[LedgerError], what: str) -> bytes:
    """Standard, padded, canonical base64 (RFC 4648 §4), as C2SP formats use."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise error(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise error(f"{what} is not canonical base64")
    return raw


def _check_line(line: str, what: str) -> None:
    """A non-empty note line: no newline or other control character, encodable in UTF-8."""
    if not isinstance(line, str) or not line:
        raise CheckpointError(f"{what} must be a non-empty string")
    if any(ch < " " for ch in line):
        raise CheckpointError(f"{what} contains a newline or a control character")
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{what} is not valid UTF-8") from None


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, tree size, root hash and optional extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError("tree size must be an integer")
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise CheckpointError("tree size is out of range")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"root hash must be {HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("extensions must be a tuple of lines")
        for line in self.extensions:
            _check_line(line, "extension line")

    def to_note_text(self) -> str:
        """The note text: origin, size, base64 root hash, extension lines, each + newline."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root_hash).decode("ascii"),
            *self.extensions,
        ]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text (C2SP tlog-checkpoint, "Note text").

        Raises :class:`CheckpointError` unless ``text`` has at least three non-empty lines, each
        ending in a newline, a canonical decimal size and a canonical base64 32-byte root hash.
        """
        if not isinstance(text, str) or not text.endswith("\n"):
            raise CheckpointError("checkpoint text must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError("checkpoint text needs origin, size and root hash lines")
        origin, size_text, root_text, *extensions = lines
        size = _decimal(size_text, CheckpointError, "tree size")
        root_hash = _b64decode(root_text, CheckpointError, "root hash")
        return cls(origin, size, root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[NoteSigner]) -> bytes:
    """The checkpoint as a C2SP signed note.

    C2SP tlog-checkpoint: "The log's key name in its signature line SHOULD match the origin
    line"; that is the caller's choice of key name.
    """
    try:
        return sign_note(checkpoint.to_note_text(), signers)
    except NoteError as exc:
        raise CheckpointError(f"cannot sign checkpoint: {exc}") from exc


def open_checkpoint(msg: bytes, verifiers: Iterable[NoteVerifier], *, origin: str) -> Checkpoint:
    """Verify a signed checkpoint and parse it; it must come from the log ``origin``.

    At least one signature from ``verifiers`` must verify (signatures from unknown keys, such as
    witness cosignatures, are ignored). Any failure raises :class:`CheckpointError`.
    """
    try:
        note = open_note(msg, verifiers)
    except NoteError as exc:
        raise CheckpointError(f"checkpoint signature: {exc}") from exc
    checkpoint = Checkpoint.parse(note.text)
    if checkpoint.origin != origin:
        raise CheckpointError("checkpoint is from another log origin")
    return checkpoint


@dataclass(frozen=True)
class TlogProof:
    """A C2SP tlog-proof: a leaf index, its inclusion proof and the signed checkpoint."""

    index: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: bytes
    """The signed checkpoint note, verbatim."""
    extra: bytes | None = None
    """Opaque extra data; "Applications MUST NOT implicitly trust the extra data"."""

    def __post_init__(self) -> None:
        if isinstance(self.index, bool) or not isinstance(self.index, int):
            raise ProofError("index must be an integer")
        if not 0 <= self.index <= _MAX_TREE_SIZE:
            raise ProofError("index is out of range")
        if not isinstance(self.inclusion_proof, tuple):
            raise ProofError("inclusion proof must be a tuple of hashes")
        if len(self.inclusion_proof) > _MAX_PROOF_HASHES:
            raise ProofError("inclusion proof is too long")
        for node in self.inclusion_proof:
            if not isinstance(node, bytes) or len(node) != HASH_SIZE:
                raise ProofError(f"inclusion proof hashes must be {HASH_SIZE} bytes")
        if not isinstance(self.checkpoint, bytes) or not self.checkpoint:
            raise ProofError("the proof needs a signed checkpoint")
        if self.extra is not None and not isinstance(self.extra, bytes):
            raise ProofError("extra data must be bytes")

    def to_bytes(self) -> bytes:
        """The ``.tlog-proof`` file contents."""
        lines = [TLOG_PROOF_HEADER]
        if self.extra is not None:
            lines.append("extra " + base64.b64encode(self.extra).decode("ascii"))
        lines.append(f"index {self.index}")
        lines.extend(base64.b64encode(node).decode("ascii") for node in self.inclusion_proof)
        return ("\n".join(lines) + "\n\n").encode("ascii") + self.checkpoint

    @classmethod
    def parse(cls, data: bytes) -> TlogProof:
        """Parse a ``.tlog-proof`` file; malformed input raises :class:`ProofError`.

        The checkpoint is kept verbatim and is neither parsed nor verified here: use
        :meth:`verify`.
        """
        if not isinstance(data, bytes):
            raise ProofError("a tlog-proof is bytes")
        head, sep, checkpoint = data.partition(b"\n\n")
        if not sep or not checkpoint:
            raise ProofError("tlog-proof has no checkpoint")
        try:
            lines = head.decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise ProofError("tlog-proof header is not ASCII") from None
        if lines[0] != TLOG_PROOF_HEADER:
            raise ProofError("not a c2sp.org/tlog-proof@v1 proof")
        rest = lines[1:]
        extra = None
        if rest and rest[0].startswith("extra "):
            extra = _b64decode(rest[0].removeprefix("extra "), ProofError, "extra data")
            rest = rest[1:]
        if not rest or not rest[0].startswith("index "):
            raise ProofError("tlog-proof has no index line")
        index = _decimal(rest[0].removeprefix("index "), ProofError, "index")
        hashes = rest[1:]
        if len(hashes) > _MAX_PROOF_HASHES:
            raise ProofError("inclusion proof is too long")
        proof = tuple(_b64decode(line, ProofError, "inclusion proof hash") for line in hashes)
        return cls(index, proof, checkpoint, extra)

    def verify(
        self, leaf_hash: bytes, verifiers: Iterable[NoteVerifier], *, origin: str
    ) -> Checkpoint:
        """Verify the checkpoint's signature, then the inclusion of ``leaf_hash`` at ``index``.

        Returns the verified checkpoint. Raises :class:`CheckpointError` if the checkpoint does
        not verify and :class:`ProofError` if the inclusion proof does not.
        """
        checkpoint = open_checkpoint(self.checkpoint, verifiers, origin=origin)
        verify_inclusion(
            leaf_hash, self.index, checkpoint.size, self.inclusion_proof, checkpoint.root_hash
        )
        return checkpoint
