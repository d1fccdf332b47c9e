"""C2SP tlog-tiles (https://c2sp.org/tlog-tiles): tile paths and tile contents.

"Tiles are served at ``<prefix>/tile/<L>/<N>[.p/<W>]``": ``<L>`` is the tile level (0 to 63),
``<N>`` the tile index "encoded into zero-padded 3-digit path elements. All but the last path
element MUST begin with an ``x``" (1234067 is ``x001/x234/067``), and ``.p/<W>`` marks a partial
tile of width 1 to 255. Entry bundles are served at ``<prefix>/tile/entries/<N>[.p/<W>]``.

Tile contents ("Merkle Tree"): the n-th tile at level l is the concatenation, for i in 0..255, of
``MTH(D[(n * 256 + i) * 256**l : (n * 256 + i + 1) * 256**l])``, i.e. the perfect subtrees at
Merkle level ``8 * l``; "Full tiles MUST be exactly 256 hashes wide". "The partial tile at level
l for a tree of size s has ``floor(s / 256**l) mod 256`` entries. Empty tiles MUST NOT be served."

Entry bundles ("Log entries") are "sequences of big-endian uint16 length-prefixed log entries".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ledger.errors import TileError
from ledger.merkle import HASH_SIZE, SubtreeHashes, node_hash

__all__ = [
    "ENTRIES",
    "MAX_TILE_LEVEL",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "Tile",
    "TileError",
    "TileHashes",
    "entry_bundle",
    "format_tile_index",
    "parse_entry_bundle",
    "tile_data",
    "tile_for_size",
]

TILE_HEIGHT = 8
"""Merkle levels per tile level."""

TILE_WIDTH = 1 << TILE_HEIGHT
"""Hashes (or entries) in a full tile: 256."""

MAX_TILE_LEVEL = 63
"""'<L> ... MUST be a decimal ASCII integer between 0 and 63'."""

ENTRIES: Literal["entries"] = "entries"
"""The level name of entry bundles (``tile/entries/<N>``)."""

_MAX_INDEX = 2**64 - 1
_MAX_INDEX_GROUPS = 7  # 2**64 has 20 decimal digits
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_GROUP = re.compile(r"[0-9]{3}")
_MAX_ENTRY_SIZE = 0xFFFF


@dataclass(frozen=True)
class Tile:
    """One tile (``level`` 0..63) or entry bundle (``level == "entries"``) of ``width`` items."""

    level: int | Literal["entries"]
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if self.level != ENTRIES and (
            isinstance(self.level, bool)
            or not isinstance(self.level, int)
            or not 0 <= self.level <= MAX_TILE_LEVEL
        ):
            raise TileError(f"tile level must be 0..{MAX_TILE_LEVEL} or {ENTRIES!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int):
            raise TileError("tile index must be an integer")
        if not 0 <= self.index <= _MAX_INDEX:
            raise TileError("tile index is out of range")
        if isinstance(self.width, bool) or not isinstance(self.width, int):
            raise TileError("tile width must be an integer")
        if not 1 <= self.width <= TILE_WIDTH:
            raise TileError(f"tile width must be 1..{TILE_WIDTH}")

    @property
    def is_partial(self) -> bool:
        """Fewer than 256 items (served with the ``.p/<W>`` suffix)."""
        return self.width < TILE_WIDTH

    def path(self) -> str:
        """``tile/<L>/<N>[.p/<W>]``, relative to the log's URL prefix."""
        partial = f".p/{self.width}" if self.is_partial else ""
        return f"tile/{self.level}/{format_tile_index(self.index)}{partial}"

    @classmethod
    def parse(cls, path: str) -> Tile:
        """Parse a canonical ``tile/<L>/<N>[.p/<W>]`` path; anything else raises TileError."""
        if not isinstance(path, str) or not path.isascii():
            raise TileError("malformed tile path")
        parts = path.split("/")
        if len(parts) < 3 or parts[0] != "tile":
            raise TileError("malformed tile path")
        level_text, groups = parts[1], parts[2:]
        level: int | Literal["entries"]
        if level_text == ENTRIES:
            level = ENTRIES
        elif _DECIMAL.fullmatch(level_text) and len(level_text) <= 2:
            level = int(level_text)
        else:
            raise TileError("malformed tile level")
        width = TILE_WIDTH
        if len(groups) >= 2 and groups[-2].endswith(".p"):
            if not _DECIMAL.fullmatch(groups[-1]) or len(groups[-1]) > 3:
                raise TileError("malformed partial tile width")
            width = int(groups[-1])
            if width >= TILE_WIDTH:  # a full tile is never written with .p/<W>
                raise TileError("malformed partial tile width")
            groups = [*groups[:-2], groups[-2].removesuffix(".p")]
        if len(groups) > _MAX_INDEX_GROUPS:
            raise TileError("malformed tile index")
        digits = []
        for position, group in enumerate(groups):
            last = position == len(groups) - 1
            if not last and not group.startswith("x"):
                raise TileError("malformed tile index")
            group_digits = group if last else group.removeprefix("x")
            if not _GROUP.fullmatch(group_digits):
                raise TileError("malformed tile index")
            digits.append(group_digits)
        tile = cls(level, int("".join(digits)), width)
        if tile.path() != path:  # e.g. a redundant leading x000 group
            raise TileError("tile path is not canonical")
        return tile


def format_tile_index(index: int) -> str:
    """Zero-padded 3-digit groups, all but the last prefixed with ``x`` (x001/x234/067)."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise TileError("tile index must be a non-negative integer")
    groups = [f"{index % 1000:03d}"]
    index //= 1000
    while index:
        groups.append(f"x{index % 1000:03d}")
        index //= 1000
    return "/".join(reversed(groups))


def tile_for_size(level: int | Literal["entries"], index: int, tree_size: int) -> Tile:
    """Tile ``index`` at ``level`` as served for a tree of ``tree_size`` leaves (full or partial).

    Raises :class:`TileError` if that tile would be empty ("Empty tiles MUST NOT be served").
    """
    merkle_level = 0 if level == ENTRIES else TILE_HEIGHT * level
    available = (tree_size >> merkle_level) - index * TILE_WIDTH
    if tree_size < 0 or index < 0 or available <= 0:
        raise TileError(f"tile {level}/{index} is empty in a tree of size {tree_size}")
    return Tile(level, index, min(available, TILE_WIDTH))


def tile_data(source: SubtreeHashes, tile: Tile) -> bytes:
    """Contents of a Merkle tile: ``tile.width`` concatenated 32-byte hashes from ``source``.

    Hash i is the perfect subtree ``(8 * tile.level, tile.index * 256 + i)``. The caller picks
    the width for a tree size with :func:`tile_for_size`.
    """
    if tile.level == ENTRIES:
        raise TileError("entry bundles hold entries, not hashes")
    merkle_level = TILE_HEIGHT * tile.level
    first = tile.index * TILE_WIDTH
    return b"".join(source.subtree(merkle_level, first + i) for i in range(tile.width))


class TileHashes:
    """A :class:`~ledger.merkle.SubtreeHashes` read from the tiles of a tree of ``tree_size``.

    ``read_tile(tile)`` returns a tile's bytes (for instance fetched from a tlog-tiles log);
    levels between tile levels are rebuilt by hashing, as tlog-tiles says: "The Merkle Tree
    levels between those expressed by the tile hashes are reconstructed by hashing the leaves."
    Tiles are not authenticated by themselves: verify the root computed from them
    (:func:`ledger.merkle.tree_root`) against a signed checkpoint of the same size.
    """

    def __init__(self, read_tile: Callable[[Tile], bytes], tree_size: int) -> None:
        if tree_size < 0:
            raise TileError("tree size must not be negative")
        self._read_tile = read_tile
        self._size = tree_size
        self._cache: dict[Tile, bytes] = {}

    def subtree(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree ``(level, index)``, from one tile."""
        if level < 0 or index < 0:
            raise TileError("subtree position must not be negative")
        tile_level, height = divmod(level, TILE_HEIGHT)
        first = index << height  # first hash at Merkle level 8 * tile_level
        tile = tile_for_size(tile_level, first // TILE_WIDTH, self._size)
        offset = first % TILE_WIDTH
        count = 1 << height
        if offset + count > tile.width:
            raise TileError(f"subtree ({level}, {index}) is not complete at size {self._size}")
        data = self._tile(tile)
        nodes = [data[i * HASH_SIZE : (i + 1) * HASH_SIZE] for i in range(offset, offset + count)]
        while len(nodes) > 1:
            pairs = iter(nodes)
            nodes = [node_hash(left, right) for left, right in zip(pairs, pairs, strict=True)]
        return nodes[0]

    def _tile(self, tile: Tile) -> bytes:
        data = self._cache.get(tile)
        if data is None:
            data = self._read_tile(tile)
            if len(data) != tile.width * HASH_SIZE:
                raise TileError(f"tile {tile.path()} has the wrong length")
            self._cache[tile] = data
        return data


def entry_bundle(entries: Sequence[bytes]) -> bytes:
    """An entry bundle: each entry as a big-endian uint16 length followed by its bytes."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise TileError(f"an entry bundle holds 1..{TILE_WIDTH} entries")
    parts = []
    for entry in entries:
        if len(entry) > _MAX_ENTRY_SIZE:
            raise TileError("an entry longer than 65535 bytes does not fit a bundle")
        parts.append(len(entry).to_bytes(2, "big"))
        parts.append(entry)
    return b"".join(parts)


def parse_entry_bundle(data: bytes) -> list[bytes]:
    """Split an entry bundle into entries; a truncated or oversized bundle raises TileError."""
    entries = []
    offset = 0
    while offset < len(data):
        if offset + 2 > len(data):
            raise TileError("truncated entry bundle")
        size = int.from_bytes(data[offset : offset + 2], "big")
        offset += 2
        if offset + size > len(data):
            raise TileError("truncated entry bundle")
        entries.append(bytes(data[offset : offset + size]))
        offset += size
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise TileError(f"an entry bundle holds 1..{TILE_WIDTH} entries")
    return entries
