"""C2SP tlog-tiles: paths, tile widths, tile contents, proofs from tiles, entry bundles."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import LedgerError
from ledger.merkle import (
    MemoryTree,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    tree_root,
)
from ledger.tiles import (
    ENTRIES,
    MAX_TILE_LEVEL,
    TILE_WIDTH,
    Tile,
    TileError,
    TileHashes,
    entry_bundle,
    format_tile_index,
    parse_entry_bundle,
    tile_data,
    tile_for_size,
)

SIZE = 70_000  # the example size of c2sp.org/tlog-tiles


@cache
def _entries() -> list[bytes]:
    return [b"entry %d" % i for i in range(SIZE)]


@cache
def _tree() -> MemoryTree:
    return MemoryTree.from_leaf_hashes(leaf_hash(e) for e in _entries())


# --- paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "text"),
    [
        (0, "000"),
        (5, "005"),
        (999, "999"),
        (1000, "x001/000"),
        (1234067, "x001/x234/067"),
        (2**64 - 1, "x018/x446/x744/x073/x709/x551/615"),
    ],
)
def test_tile_index_encoding(index: int, text: str) -> None:
    assert format_tile_index(index) == text


@pytest.mark.parametrize(
    ("tile", "path"),
    [
        (Tile(0, 1234067), "tile/0/x001/x234/067"),
        (Tile(1, 0, 17), "tile/1/000.p/17"),
        (Tile(63, 0, 1), "tile/63/000.p/1"),
        (Tile(2, 1000, 255), "tile/2/x001/000.p/255"),
        (Tile(ENTRIES, 1234067), "tile/entries/x001/x234/067"),
        (Tile(ENTRIES, 273, 112), "tile/entries/273.p/112"),
    ],
)
def test_tile_paths(tile: Tile, path: str) -> None:
    assert tile.path() == path
    assert Tile.parse(path) == tile
    assert tile.is_partial == (tile.width < TILE_WIDTH)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "tile",
        "tile/0",
        "tile/0/",
        "/tile/0/000",
        "tiles/0/000",
        "tile/0/000/",
        "tile/0/1",
        "tile/0/0001",
        "tile/0/x000/001",  # redundant leading group
        "tile/0/x001/x234/x067",  # last group has an x
        "tile/0/001/234",  # first group lacks its x
        "tile/00/000",
        "tile/01/000",
        "tile/64/000",
        "tile/-1/000",
        "tile/x/000",
        "tile/entry/000",
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/017",
        "tile/0/000.p/",
        "tile/0/000.p",
        "tile/0/x001.p/5/000",
        "tile/0/x001/000.p/5/6",
        "tile/0/00a",
        "tile/0/٠٠٠",
        "tile/0/x018/x446/x744/x073/x709/x551/616",  # 2**64
        "tile/0/x001/x001/x001/x001/x001/x001/x001/000",
    ],
)
def test_malformed_tile_paths(path: str) -> None:
    with pytest.raises(TileError):
        Tile.parse(path)


@settings(max_examples=200, deadline=None)
@given(
    level=st.one_of(st.integers(0, MAX_TILE_LEVEL), st.just(ENTRIES)),
    index=st.integers(0, 2**64 - 1),
    width=st.integers(1, TILE_WIDTH),
)
def test_tile_paths_round_trip(level: int, index: int, width: int) -> None:
    tile = Tile(level, index, width)
    assert Tile.parse(tile.path()) == tile


@pytest.mark.parametrize(
    ("level", "index", "width"),
    [(64, 0, 1), (-1, 0, 1), ("leaves", 0, 1), (0, -1, 1), (0, 2**64, 1), (0, 0, 0), (0, 0, 257)],
)
def test_invalid_tiles(level: int, index: int, width: int) -> None:
    with pytest.raises(TileError):
        Tile(level, index, width)


def test_tile_error_is_a_ledger_error() -> None:
    with pytest.raises(LedgerError):
        Tile.parse("nope")


# --- widths for a tree size ------------------------------------------------------------------


def test_spec_example_tree_of_70000() -> None:
    """tlog-tiles: "a tree of size 70,000 will be represented by 273 full level 0 tiles, one
    partial level 0 tile of width 112, one full level 1 tile, one partial level 1 tile of width
    17, and one partial level 2 tile of width 1"."""
    assert all(tile_for_size(0, n, SIZE).width == 256 for n in range(273))
    assert tile_for_size(0, 273, SIZE) == Tile(0, 273, 112)
    assert tile_for_size(ENTRIES, 273, SIZE) == Tile(ENTRIES, 273, 112)
    assert tile_for_size(1, 0, SIZE) == Tile(1, 0, 256)
    assert tile_for_size(1, 1, SIZE) == Tile(1, 1, 17)
    assert tile_for_size(2, 0, SIZE) == Tile(2, 0, 1)
    for level, index in [(0, 274), (1, 2), (2, 1), (3, 0)]:
        with pytest.raises(TileError):
            tile_for_size(level, index, SIZE)


def test_spec_example_tree_of_256() -> None:
    """'a tree of size 256 will be represented by a full level 0 tile and a partial level 1
    tile of width 1'."""
    assert tile_for_size(0, 0, 256) == Tile(0, 0, 256)
    assert tile_for_size(1, 0, 256) == Tile(1, 0, 1)
    with pytest.raises(TileError):
        tile_for_size(0, 1, 256)
    with pytest.raises(TileError):
        tile_for_size(0, 0, 0)


# --- contents --------------------------------------------------------------------------------


def test_level_0_tiles_hold_leaf_hashes() -> None:
    tree = _tree()
    data = tile_data(tree, Tile(0, 3))
    assert len(data) == 256 * 32
    assert data == b"".join(leaf_hash(e) for e in _entries()[768:1024])
    partial = tile_data(tree, tile_for_size(0, 273, SIZE))
    assert partial == b"".join(tree.leaf_hash(i) for i in range(273 * 256, SIZE))


def test_higher_tiles_hold_subtree_roots_of_full_tiles() -> None:
    tree = _tree()
    hashes = [leaf_hash(e) for e in _entries()]
    level1 = tile_data(tree, tile_for_size(1, 1, SIZE))
    assert len(level1) == 17 * 32
    for i in range(17):
        n = 256 + i  # MTH(D[(n * 256 + i) * 256 : ...]) with n = 1
        assert level1[i * 32 : (i + 1) * 32] == root_from_leaf_hashes(
            hashes[n * 256 : (n + 1) * 256]
        )
    level2 = tile_data(tree, tile_for_size(2, 0, SIZE))
    assert level2 == root_from_leaf_hashes(hashes[:65536])


def test_entry_bundles_cannot_be_hashed() -> None:
    with pytest.raises(TileError):
        tile_data(_tree(), Tile(ENTRIES, 0))


@pytest.mark.parametrize("size", [1, 2, 255, 256, 257, 65536, 65537, 69999, SIZE])
def test_proofs_from_tiles_equal_proofs_from_the_tree(size: int) -> None:
    tree = _tree()
    reads: list[Tile] = []

    def read_tile(tile: Tile) -> bytes:
        reads.append(tile)
        return tile_data(tree, tile)

    tiles = TileHashes(read_tile, size)
    assert tree_root(tiles, size) == tree.root_at(size)
    for index in {0, size // 3, size - 1}:
        assert inclusion_proof(tiles, index, size) == tree.inclusion_proof(index, size)
    for size1 in {1, size // 2 or 1, size}:
        assert consistency_proof(tiles, size1, size) == tree.consistency_proof(size1, size)
    assert len(reads) == len(set(reads))  # each tile read once


def test_tile_reader_errors() -> None:
    tree = _tree()
    short = TileHashes(lambda tile: tile_data(tree, tile)[:-1], 1000)
    with pytest.raises(TileError):
        short.subtree(0, 0)
    tiles = TileHashes(lambda tile: tile_data(tree, tile), 1000)
    with pytest.raises(TileError):
        tiles.subtree(0, 1000)  # beyond the tree
    with pytest.raises(TileError):
        tiles.subtree(4, 62)  # leaves 992..1007 are not all in the tree
    with pytest.raises(TileError):
        tiles.subtree(-1, 0)
    with pytest.raises(TileError):
        TileHashes(lambda tile: b"", -1)
    assert tiles.subtree(4, 61) == tree.subtree(4, 61)
    assert tiles.subtree(8, 2) == tree.subtree(8, 2)


# --- entry bundles ---------------------------------------------------------------------------


def test_entry_bundle_round_trip() -> None:
    entries = [b"", b"a", b"\x00" * 300, b"x" * 0xFFFF]
    data = entry_bundle(entries)
    assert data[:5] == b"\x00\x00\x00\x01a"
    assert parse_entry_bundle(data) == entries
    assert parse_entry_bundle(entry_bundle(_entries()[:256])) == _entries()[:256]


@pytest.mark.parametrize(
    "entries", [[], [b"x" * 0x10000], [b"e"] * 257], ids=["empty", "too-long", "too-many"]
)
def test_entry_bundle_limits(entries: list[bytes]) -> None:
    with pytest.raises(TileError):
        entry_bundle(entries)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x00\x02a", b"\x00\x01a\x00", b"\x00\x00" * 257])
def test_malformed_entry_bundles(data: bytes) -> None:
    with pytest.raises(TileError):
        parse_entry_bundle(data)
