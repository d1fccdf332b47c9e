"""RFC 9162 Merkle tree: published vectors, the RFC 6962 example tree, and properties."""

from __future__ import annotations

import base64
import json
from functools import cache
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import ProofError
from ledger.merkle import (
    EMPTY_ROOT,
    MemoryTree,
    SubtreeMap,
    consistency_proof,
    consistency_proof_nodes,
    inclusion_proof,
    inclusion_proof_nodes,
    leaf_hash,
    leaf_hashes,
    node_hash,
    root_from_leaf_hashes,
    subtree_levels,
    tree_root,
    tree_root_nodes,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors" / "rfc9162"

# The one vector where we are deliberately stricter than transparency-dev/merkle: equal sizes
# with equal but 12-byte "roots". The Go library compares the byte strings and accepts; we
# require every hash, roots included, to be 32 bytes, so a truncated root never passes.
STRICTER_THAN_VECTORS = {"consistency/additional/sizes-are-equal-one-and-proof-is-empty.json"}

# RFC 6962 §2.1.3 example tree; RFC 9162 keeps the same hashing.
RFC6962_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
RFC6962_ROOT = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _vector_files(kind: str) -> list[str]:
    return sorted(p.relative_to(VECTORS).as_posix() for p in (VECTORS / kind).rglob("*.json"))


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


def _run_inclusion(v: dict[str, Any]) -> None:
    verify_inclusion(
        _b64(v["leafHash"]),
        v["leafIdx"],
        v["treeSize"],
        [_b64(p) for p in v["proof"] or []],
        _b64(v["root"]),
    )


def _run_consistency(v: dict[str, Any]) -> None:
    verify_consistency(
        v["size1"],
        v["size2"],
        [_b64(p) for p in v["proof"] or []],
        _b64(v["root1"]),
        _b64(v["root2"]),
    )


@cache
def _rfc_tree() -> MemoryTree:
    tree = MemoryTree()
    for entry in RFC6962_LEAVES:
        tree.append(leaf_hash(entry))
    return tree


# --- vectors ---------------------------------------------------------------------------------


def test_every_vector_file_is_loaded() -> None:
    assert len(_vector_files("inclusion")) + len(_vector_files("consistency")) == 196
    assert (VECTORS / "LICENSE").is_file()


@pytest.mark.parametrize("name", _vector_files("inclusion"))
def test_inclusion_vector(name: str) -> None:
    v = _load(name)
    if v["wantErr"]:
        with pytest.raises(ProofError):
            _run_inclusion(v)
    else:
        _run_inclusion(v)


@pytest.mark.parametrize("name", _vector_files("consistency"))
def test_consistency_vector(name: str) -> None:
    v = _load(name)
    if v["wantErr"] or name in STRICTER_THAN_VECTORS:
        with pytest.raises(ProofError):
            _run_consistency(v)
    else:
        _run_consistency(v)


def test_stricter_vector_is_only_about_hash_length() -> None:
    v = _load(next(iter(STRICTER_THAN_VECTORS)))
    assert v["wantErr"] is False
    assert len(_b64(v["root1"])) == 12
    root = sha256(b"any").digest()
    verify_consistency(v["size1"], v["size2"], [], root, root)


@pytest.mark.parametrize("name", [n for n in _vector_files("inclusion") if "happy" in n])
def test_generated_inclusion_proofs_equal_vectors(name: str) -> None:
    v = _load(name)
    tree = _rfc_tree()
    assert tree.root_at(v["treeSize"]) == _b64(v["root"])
    assert tree.leaf_hash(v["leafIdx"]) == _b64(v["leafHash"])
    proof = tree.inclusion_proof(v["leafIdx"], v["treeSize"])
    assert proof == [_b64(p) for p in v["proof"] or []]


@pytest.mark.parametrize(
    "name", [n for n in _vector_files("consistency") if n.endswith("/happy-path.json")]
)
def test_generated_consistency_proofs_equal_vectors(name: str) -> None:
    v = _load(name)
    tree = _rfc_tree()
    assert tree.root_at(v["size1"]) == _b64(v["root1"])
    assert tree.root_at(v["size2"]) == _b64(v["root2"])
    proof = tree.consistency_proof(v["size1"], v["size2"])
    assert proof == [_b64(p) for p in v["proof"] or []]


# --- RFC 6962 example tree -------------------------------------------------------------------


def test_rfc6962_example_root() -> None:
    hashes = [leaf_hash(entry) for entry in RFC6962_LEAVES]
    assert hashes == leaf_hashes(RFC6962_LEAVES)
    assert hashes[0].hex() == "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    assert root_from_leaf_hashes(hashes) == RFC6962_ROOT
    assert _rfc_tree().root() == RFC6962_ROOT
    assert MemoryTree.from_leaf_hashes(hashes).root() == RFC6962_ROOT
    assert tree_root(_rfc_tree(), 8) == RFC6962_ROOT


def test_hashing_primitives() -> None:
    assert sha256(b"").digest() == EMPTY_ROOT
    assert leaf_hash(b"abc") == sha256(b"\x00abc").digest()
    left, right = sha256(b"l").digest(), sha256(b"r").digest()
    assert node_hash(left, right) == sha256(b"\x01" + left + right).digest()


def test_empty_tree() -> None:
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert MemoryTree().root() == EMPTY_ROOT
    assert MemoryTree().size == 0
    assert _rfc_tree().root_at(0) == EMPTY_ROOT
    assert subtree_levels([]) == [[]]


# --- a reference transcription of the RFC recursions -----------------------------------------


def _k(n: int) -> int:
    """The largest power of two smaller than n (RFC 9162 §2.1.1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(d: list[bytes]) -> bytes:
    if not d:
        return EMPTY_ROOT
    if len(d) == 1:
        return d[0]  # d holds leaf hashes already
    k = _k(len(d))
    return node_hash(_mth(d[:k]), _mth(d[k:]))


def _path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*_path(m, d[:k]), _mth(d[k:])]
    return [*_path(m - k, d[k:]), _mth(d[:k])]


def _subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [_mth(d)]
    k = _k(n)
    if m <= k:
        return [*_subproof(m, d[:k], b), _mth(d[k:])]
    return [*_subproof(m - k, d[k:], False), _mth(d[:k])]


def test_proofs_equal_the_rfc_recursions_exhaustively() -> None:
    hashes = [leaf_hash(i.to_bytes(2, "big")) for i in range(33)]
    tree = MemoryTree.from_leaf_hashes(hashes)
    for size in range(1, len(hashes) + 1):
        d = hashes[:size]
        assert tree.root_at(size) == _mth(d) == root_from_leaf_hashes(d)
        for index in range(size):
            assert tree.inclusion_proof(index, size) == _path(index, d)
        for size1 in range(1, size + 1):
            assert tree.consistency_proof(size1, size) == _subproof(size1, d, True)


def test_bulk_and_incremental_trees_agree() -> None:
    hashes = [leaf_hash(i.to_bytes(2, "big")) for i in range(300)]
    incremental = MemoryTree()
    for size, h in enumerate(hashes, start=1):
        incremental.append(h)
        bulk = MemoryTree.from_leaf_hashes(hashes[:size])
        assert bulk.size == incremental.size == size
        assert bulk.root() == incremental.root() == incremental.root_at(size)
    levels = subtree_levels(hashes)
    for level, nodes in enumerate(levels):
        assert len(nodes) == len(hashes) >> level
        for index, node in enumerate(nodes):
            assert node == incremental.subtree(level, index)
            assert node == _mth(hashes[index << level : (index + 1) << level])


def test_batched_node_fetches_serve_the_same_proofs() -> None:
    tree = MemoryTree.from_leaf_hashes(leaf_hash(i.to_bytes(4, "big")) for i in range(5000))

    def fetch(positions: list[tuple[int, int]]) -> SubtreeMap:
        assert len(positions) == len(set(positions))
        return SubtreeMap({p: tree.subtree(*p) for p in positions})

    for size in (1, 2, 3, 255, 256, 4097, 5000):
        assert tree_root(fetch(tree_root_nodes(size)), size) == tree.root_at(size)
        assert len(tree_root_nodes(size)) == size.bit_count()
        for index in {0, size // 2, size - 1}:
            nodes = inclusion_proof_nodes(index, size)
            assert len(nodes) <= 2 * size.bit_length()
            proof = inclusion_proof(fetch(nodes), index, size)
            assert proof == tree.inclusion_proof(index, size)
        for size1 in {1, size // 3 or 1, size - 1 or 1, size}:
            nodes = consistency_proof_nodes(size1, size)
            assert len(nodes) <= 2 * size.bit_length()
            proof = consistency_proof(fetch(nodes), size1, size)
            assert proof == tree.consistency_proof(size1, size)


# --- proof generation errors -----------------------------------------------------------------


def test_proof_requests_outside_the_tree_are_refused() -> None:
    tree = _rfc_tree()
    for index, size in [(8, 8), (-1, 8), (0, 0), (0, 9)]:
        with pytest.raises(ProofError):
            tree.inclusion_proof(index, size)
    for size1, size2 in [(0, 8), (5, 4), (1, 9), (-1, 3)]:
        with pytest.raises(ProofError):
            tree.consistency_proof(size1, size2)
    with pytest.raises(ProofError):
        tree.root_at(9)
    with pytest.raises(ProofError):
        inclusion_proof(tree, 3, 3)
    with pytest.raises(ProofError):
        consistency_proof(tree, 0, 3)
    assert tree.consistency_proof(8, 8) == []


def test_memory_tree_rejects_bad_input() -> None:
    tree = MemoryTree()
    with pytest.raises(ValueError, match="32 bytes"):
        tree.append(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        subtree_levels([bytes(32), bytes(31)])
    with pytest.raises(IndexError):
        _rfc_tree().subtree(3, 1)
    with pytest.raises(IndexError):
        _rfc_tree().subtree(0, -1)


def test_verification_rejects_malformed_arguments() -> None:
    tree = _rfc_tree()
    proof = tree.inclusion_proof(2, 8)
    leaf, root = tree.leaf_hash(2), tree.root()
    bad_calls: list[tuple[Any, ...]] = [
        (leaf, -1, 8, proof, root),
        (leaf, 2, -8, proof, root),
        (leaf, True, 8, proof, root),
        (leaf[:31], 2, 8, proof, root),
        (leaf, 2, 8, proof, root + b"\x00"),
        (leaf, 2, 8, [*proof[:2], proof[2][:16]], root),
        (leaf, 2, 8, [*proof, proof[0]], root),
        (leaf, 2, 8, proof[:2], root),
        (leaf.hex(), 2, 8, proof, root),
    ]
    for args in bad_calls:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    verify_inclusion(leaf, 2, 8, proof, root)


def test_inclusion_proofs_do_not_authenticate_the_tree_size() -> None:
    """Known RFC 9162 property: the path for leaf 0 has the same shape at sizes 3 and 4.

    A proof therefore verifies against a root "at" either size; the size is authenticated by
    the signed checkpoint that carries the root, never by the proof.
    """
    tree = _rfc_tree()
    proof = tree.inclusion_proof(0, 3)
    verify_inclusion(tree.leaf_hash(0), 0, 4, proof, tree.root_at(3))


# --- properties ------------------------------------------------------------------------------

MAX_SIZE = 300


@cache
def _big_tree() -> MemoryTree:
    return MemoryTree.from_leaf_hashes(leaf_hash(i.to_bytes(2, "big")) for i in range(MAX_SIZE))


def _path_shape(m: int, n: int) -> tuple[object, int]:
    """RFC 9162 §2.1.3.1 PATH(m, D[n]) as an expression: how the root is built from the leaf
    ("leaf") and the proof hashes (their positions). Returns (expression, proof length)."""
    if n == 1:
        return "leaf", 0
    k = _k(n)
    if m < k:
        inner, count = _path_shape(m, k)
        return (inner, count), count + 1
    inner, count = _path_shape(m - k, n - k)
    return (count, inner), count + 1


def _consistency_shape(m: int, n: int, b: bool = True) -> tuple[object, object, int]:
    """RFC 9162 §2.1.4.1 SUBPROOF as expressions for (root1, root2) over the proof hashes."""
    if m == n:
        return ("root1", "root1", 0) if b else (0, 0, 1)
    k = _k(n)
    if m <= k:
        old, new, count = _consistency_shape(m, k, b)
        return old, (new, count), count + 1
    old, new, count = _consistency_shape(m - k, n - k, False)
    return (count, old), (count, new), count + 1


def _flip(data: bytes, bit: int) -> bytes:
    bit %= len(data) * 8
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@st.composite
def _inclusion_case(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, MAX_SIZE))
    return draw(st.integers(0, size - 1)), size


@st.composite
def _consistency_case(draw: st.DrawFn) -> tuple[int, int]:
    size2 = draw(st.integers(1, MAX_SIZE))
    return draw(st.integers(1, size2)), size2


@settings(max_examples=150, deadline=None)
@given(case=_inclusion_case(), bit=st.integers(0, 2**16))
def test_inclusion_proofs_verify_and_resist_bit_flips(case: tuple[int, int], bit: int) -> None:
    index, size = case
    tree = _big_tree()
    proof = tree.inclusion_proof(index, size)
    leaf, root = tree.leaf_hash(index), tree.root_at(size)
    verify_inclusion(leaf, index, size, proof, root)
    assert tree_root(tree, size) == root
    with pytest.raises(ProofError):
        verify_inclusion(_flip(leaf, bit), index, size, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, proof, _flip(root, bit))
    if proof:
        position = bit % len(proof)
        tampered = [*proof[:position], _flip(proof[position], bit // 7), *proof[position + 1 :]]
        with pytest.raises(ProofError):
            verify_inclusion(leaf, index, size, tampered, root)


@settings(max_examples=150, deadline=None)
@given(
    case=_inclusion_case(),
    other_index=st.integers(0, 2 * MAX_SIZE),
    other_size=st.integers(0, 2 * MAX_SIZE),
)
def test_inclusion_proofs_bind_the_index_and_the_shape(
    case: tuple[int, int], other_index: int, other_size: int
) -> None:
    index, size = case
    tree = _big_tree()
    proof = tree.inclusion_proof(index, size)
    leaf, root = tree.leaf_hash(index), tree.root_at(size)
    if other_index != index:
        with pytest.raises(ProofError):
            verify_inclusion(leaf, other_index, size, proof, root)
    if other_size != size:
        # Only a different size giving the very same path shape may verify (see
        # test_inclusion_proofs_do_not_authenticate_the_tree_size).
        same_shape = other_size > index and _path_shape(index, other_size) == _path_shape(
            index, size
        )
        if same_shape:
            verify_inclusion(leaf, index, other_size, proof, root)
        else:
            with pytest.raises(ProofError):
                verify_inclusion(leaf, index, other_size, proof, root)


@settings(max_examples=150, deadline=None)
@given(case=_consistency_case(), bit=st.integers(0, 2**16))
def test_consistency_proofs_verify_and_resist_bit_flips(case: tuple[int, int], bit: int) -> None:
    size1, size2 = case
    tree = _big_tree()
    proof = tree.consistency_proof(size1, size2)
    root1, root2 = tree.root_at(size1), tree.root_at(size2)
    verify_consistency(size1, size2, proof, root1, root2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof, _flip(root1, bit), root2)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof, root1, _flip(root2, bit))
    if proof:
        position = bit % len(proof)
        tampered = [*proof[:position], _flip(proof[position], bit // 7), *proof[position + 1 :]]
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, tampered, root1, root2)
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, proof[:-1], root1, root2)
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, [*proof, proof[0]], root1, root2)


@settings(max_examples=150, deadline=None)
@given(
    case=_consistency_case(),
    other1=st.integers(0, 2 * MAX_SIZE),
    other2=st.integers(0, 2 * MAX_SIZE),
)
def test_consistency_proofs_bind_the_sizes_up_to_shape(
    case: tuple[int, int], other1: int, other2: int
) -> None:
    size1, size2 = case
    tree = _big_tree()
    proof = tree.consistency_proof(size1, size2)
    root1, root2 = tree.root_at(size1), tree.root_at(size2)
    for new1, new2 in [(other1, size2), (size1, other2), (other1, other2)]:
        if (new1, new2) == (size1, size2):
            continue
        if size1 == size2:
            accepted = new1 == new2 and new1 > 0 and root1 == root2
        else:
            accepted = (
                0 < new1 < new2
                and _consistency_shape(new1, new2)[:2] == (_consistency_shape(size1, size2)[:2])
            )
        if accepted:
            verify_consistency(new1, new2, proof, root1, root2)
        else:
            with pytest.raises(ProofError):
                verify_consistency(new1, new2, proof, root1, root2)


@settings(max_examples=60, deadline=None)
@given(case=_consistency_case())
def test_shapes_match_generated_proofs(case: tuple[int, int]) -> None:
    size1, size2 = case
    tree = _big_tree()
    assert len(tree.inclusion_proof(size1 - 1, size2)) == _path_shape(size1 - 1, size2)[1]
    if size1 < size2:
        assert len(tree.consistency_proof(size1, size2)) == _consistency_shape(size1, size2)[2]
