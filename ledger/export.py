"""Ledger export files: everything an auditor needs to verify the log offline, and a reader.

Format ``nicecard-ledger-export v1``: text lines ending in a newline, except the entries, which
are length-prefixed binary::

    nicecard-ledger-export v1            format and version
    origin <origin>                      the log's C2SP checkpoint origin
    tree-size <S>                        the head's size when the export was taken
    # checkpoints
    <base64 of a signed checkpoint note>     every stored checkpoint with size <= S, oldest first
    # entries
    <blocks>                                 entries 0 .. S-1, in index order
    # balances
    <pseudonym> <points>                     the balances table at size S, by pseudonym
    # end <checkpoints> <entries> <balances> the three counts, so truncation is evident

    block = n (uint32, big-endian, 1..65536)
            n lengths (uint16, big-endian)    -- like a C2SP tlog-tiles entry bundle, but
            the n entries' bytes, concatenated   with the lengths gathered up front
    the entries section ends with a block of n = 0 (four zero bytes)

Base64 is standard and padded (RFC 4648 §4); entry bytes are the :mod:`ledger.entries` encoding
that the leaf hashes cover (at most 65535 bytes each). The lengths come first in each block so
a reader splits a block without a Python step per byte string; ``head -4`` and ``tail`` still
show the text parts. Checkpoints come first so an auditor knows every tree size to check
before it streams the entries. The writer streams (a million entries never sit in memory at
once) from one consistent snapshot: REPEATABLE READ on PostgreSQL, the engine's write
transaction on SQLite.

The reader checks the format only; what the entries, checkpoints and balances mean is checked
by :mod:`ledger.audit`. A malformed or truncated file raises :class:`ExportError`.
"""

from __future__ import annotations

import binascii
import itertools
import os
import re
import struct
import sys
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ledger.entries import MAX_ENTRY_SIZE
from ledger.errors import ExportError, LedgerStoreError

if TYPE_CHECKING:
    import sqlalchemy as sa

    from ledger.store import LedgerStore

__all__ = ["FORMAT", "ExportReader", "ExportSummary", "export", "write_export"]

FORMAT = "nicecard-ledger-export v1"
"""The first line of every export file."""

MAX_BLOCK = 1 << 16
"""Entries per block, at most."""
_BLOCK_COUNT = struct.Struct(">I")
_DECIMAL = re.compile(rb"0|[1-9][0-9]*")
_END = re.compile(rb"# end (0|[1-9][0-9]*) (0|[1-9][0-9]*) (0|[1-9][0-9]*)")
_PSEUDONYM = re.compile(rb"[0-9a-f]{32}")


@dataclass(frozen=True)
class ExportSummary:
    """What an export holds."""

    path: Path
    origin: str
    tree_size: int
    checkpoints: int
    entries: int
    balances: int


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=True)


def write_export(
    out: BinaryIO,
    *,
    origin: str,
    tree_size: int,
    checkpoints: Iterable[bytes],
    entries: Iterable[Iterable[bytes]],
    balances: Iterable[tuple[str, int]],
) -> tuple[int, int, int]:
    """Write an export to ``out`` from streams; ``entries`` is an iterable of chunks.

    Returns the counts of checkpoints, entries and balances written.
    """
    if not origin or any(ch < " " for ch in origin):
        raise ExportError("origin must be a non-empty line")
    out.write(f"{FORMAT}\norigin {origin}\ntree-size {tree_size}\n".encode())
    out.write(b"# checkpoints\n")
    n_checkpoints = 0
    for note in checkpoints:
        out.write(_b64(note))
        n_checkpoints += 1
    out.write(b"# entries\n")
    n_entries = 0
    for chunk in entries:
        items = list(chunk)
        for start in range(0, len(items), MAX_BLOCK):
            block = items[start : start + MAX_BLOCK]
            lengths = array("H", map(len, block))
            if lengths and max(lengths) > MAX_ENTRY_SIZE:
                raise ExportError("an entry is too long for an export")
            if sys.byteorder == "little":
                lengths.byteswap()
            out.write(_BLOCK_COUNT.pack(len(block)))
            out.write(lengths.tobytes())
            out.write(b"".join(block))
            n_entries += len(block)
    out.write(_BLOCK_COUNT.pack(0))
    out.write(b"# balances\n")
    n_balances = 0
    for pseudonym, points in balances:
        out.write(f"{pseudonym} {points}\n".encode("ascii"))
        n_balances += 1
    out.write(f"# end {n_checkpoints} {n_entries} {n_balances}\n".encode("ascii"))
    return n_checkpoints, n_entries, n_balances


def export(store: LedgerStore, path: Path, *, origin: str, chunk: int = 10_000) -> ExportSummary:
    """Export the log to ``path`` (written to a temporary file, then renamed into place).

    The database stack is imported here rather than with the module, so that reading exports
    (the auditor and its worker process) never loads SQLAlchemy.
    """
    import sqlalchemy as sa  # noqa: PLC0415
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from ledger.tables import balances_table, checkpoints_table, head_table  # noqa: PLC0415

    path = Path(path)
    engine = store.engine
    tmp = path.with_name(path.name + ".tmp")
    try:
        postgresql = engine.dialect.name == "postgresql"
        # One snapshot for the head, the entries and the balances.
        isolation = {"isolation_level": "REPEATABLE READ"} if postgresql else {}
        with (
            engine.connect().execution_options(**isolation) as conn,
            conn.begin(),
            tmp.open("wb") as out,
        ):
            if postgresql:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            size = int(
                conn.execute(sa.select(head_table.c.size).where(head_table.c.id == 1)).scalar_one()
            )
            stream = conn.execution_options(yield_per=chunk)
            notes = stream.execute(
                sa.select(checkpoints_table.c.note)
                .where(checkpoints_table.c.size <= size)
                .order_by(checkpoints_table.c.size, checkpoints_table.c.id)
            ).scalars()
            counts = write_export(
                out,
                origin=origin,
                tree_size=size,
                checkpoints=(bytes(note) for note in notes),
                entries=_entry_chunks(stream, size),
                balances=(
                    (row.pseudonym, int(row.points))
                    for row in stream.execute(
                        sa.select(balances_table.c.pseudonym, balances_table.c.points).order_by(
                            balances_table.c.pseudonym
                        )
                    )
                ),
            )
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except SQLAlchemyError as exc:
        tmp.unlink(missing_ok=True)
        raise LedgerStoreError(f"cannot export the ledger: {type(exc).__name__}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ExportSummary(path, origin, size, *counts)


def _entry_chunks(conn: sa.Connection, size: int) -> Iterator[list[bytes]]:
    import sqlalchemy as sa  # noqa: PLC0415

    from ledger.tables import entries_table  # noqa: PLC0415

    result = conn.execute(
        sa.select(entries_table.c.data)
        .where(entries_table.c.idx < size)
        .order_by(entries_table.c.idx)
    )
    for partition in result.scalars().partitions():
        yield [bytes(data) for data in partition]


class ExportReader:
    """Reads an export file section by section; picklable (it keeps a path and offsets).

    Opening reads the header and the checkpoints; :meth:`chunks` streams the entries (as lists
    of bytes, any number at a time) and may be called again; :meth:`balances` reads the balances
    and checks the end line.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with self.path.open("rb") as f:
                self._read_head(f)
        except OSError as exc:
            raise ExportError(f"cannot read {self.path}: {exc.strerror}") from None
        self._balances_offset: int | None = None
        self.entry_count: int | None = None

    def _read_head(self, f: BinaryIO) -> None:
        first = f.readline()
        if first != FORMAT.encode() + b"\n":
            raise ExportError("not a nicecard-ledger-export v1 file")
        origin_line = f.readline()
        if not origin_line.startswith(b"origin ") or not origin_line.endswith(b"\n"):
            raise ExportError("export has no origin line")
        try:
            self.origin = origin_line[7:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ExportError("export origin is not UTF-8") from None
        size_line = f.readline()
        if not size_line.startswith(b"tree-size ") or not _DECIMAL.fullmatch(size_line[10:-1]):
            raise ExportError("export has no tree-size line")
        self.tree_size = int(size_line[10:-1])
        if f.readline() != b"# checkpoints\n":
            raise ExportError("export has no checkpoints section")
        notes = []
        while True:
            line = f.readline()
            if line == b"# entries\n":
                break
            if not line.endswith(b"\n") or line.startswith(b"#"):
                raise ExportError("export has no entries section")
            notes.append(_decode(line[:-1], "checkpoint"))
        self.checkpoints: list[bytes] = notes
        self._entries_offset = f.tell()

    def chunks(self) -> Iterator[list[bytes]]:
        """The entries' bytes in index order, one block at a time."""
        count = 0
        with self.path.open("rb") as f:
            f.seek(self._entries_offset)
            while True:
                (n,) = _BLOCK_COUNT.unpack(_read_exactly(f, _BLOCK_COUNT.size))
                if n == 0:
                    break
                if n > MAX_BLOCK:
                    raise ExportError("malformed entries block")
                lengths = array("H")
                lengths.frombytes(_read_exactly(f, 2 * n))
                if sys.byteorder == "little":
                    lengths.byteswap()
                blob = _read_exactly(f, sum(lengths))
                offsets = list(itertools.accumulate(lengths, initial=0))
                count += n
                yield [blob[a:b] for a, b in itertools.pairwise(offsets)]
            self._balances_offset = f.tell()
            self.entry_count = count

    def balances(self) -> Iterator[tuple[str, int]]:
        """The balances section, then the end line's counts are checked."""
        if self._balances_offset is None:
            for _ in self.chunks():
                pass
        assert self._balances_offset is not None
        count = 0
        with self.path.open("rb") as f:
            f.seek(self._balances_offset)
            if f.readline() != b"# balances\n":
                raise ExportError("export has no balances section")
            while True:
                line = f.readline()
                if not line.endswith(b"\n"):
                    raise ExportError("export is truncated in its balances")
                if line.startswith(b"#"):
                    self._check_end(line[:-1], count)
                    if f.read(1):
                        raise ExportError("export has data after its end line")
                    return
                pseudonym, _, points = line[:-1].partition(b" ")
                if not _PSEUDONYM.fullmatch(pseudonym) or not _DECIMAL.fullmatch(points):
                    raise ExportError("malformed balance line")
                count += 1
                yield pseudonym.decode("ascii"), int(points)

    def _check_end(self, line: bytes, balances: int) -> None:
        match = _END.fullmatch(line)
        if match is None:
            raise ExportError("malformed end line")
        counts = tuple(int(group) for group in match.groups())
        if counts != (len(self.checkpoints), self.entry_count, balances):
            raise ExportError("the export's end line does not match its contents")


def _read_exactly(f: BinaryIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise ExportError("export is truncated in its entries")
    return data


def _decode(line: bytes, what: str) -> bytes:
    try:
        return binascii.a2b_base64(line, strict_mode=True)
    except binascii.Error:
        raise ExportError(f"malformed base64 {what} line") from None
