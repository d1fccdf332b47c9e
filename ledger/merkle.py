"""RFC 9162 Merkle tree hashing, proof generation and proof verification.

Pure functions over bytes; the only dependency is ``hashlib.sha256``.

Hashing (RFC 9162 §2.1.1)::

    MTH({})        = SHA-256()
    MTH({d(0)})    = SHA-256(0x00 || d(0))                  leaf hash
    MTH(D[n])      = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))
                     k = the largest power of two smaller than n

Proof generation is written against a *node source* (:class:`SubtreeHashes`): the hash of the
*perfect* subtree at ``(level, index)``, i.e. ``MTH(D[index * 2**level : (index + 1) * 2**level])``.
The ledger stores every perfect-subtree node, as C2SP tlog-tiles do, so a proof costs
O(log n) lookups; the few non-perfect subtrees on the right edge of a tree are folded from
perfect ones (RFC 9162 §2.1.1: the tree of size n is the right-leaning fold of the perfect
subtrees given by the binary decomposition of n).

Verification (RFC 9162 §2.1.3.2 and §2.1.4.2) returns nothing and raises :class:`ProofError` on
any failure, malformed inputs included; it never returns a boolean.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping, Sequence
from hashlib import sha256
from typing import Protocol

from ledger.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MemoryTree",
    "SubtreeHashes",
    "SubtreeMap",
    "consistency_proof",
    "consistency_proof_nodes",
    "inclusion_proof",
    "inclusion_proof_nodes",
    "leaf_hash",
    "leaf_hashes",
    "node_hash",
    "root_from_leaf_hashes",
    "subtree_levels",
    "tree_root",
    "tree_root_nodes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
"""Size in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT = sha256(b"").digest()
"""RFC 9162 §2.1.1: "The hash of an empty list is the hash of an empty string"."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``MTH({d(0)}) = HASH(0x00 || d(0))``."""
    return sha256(_LEAF_PREFIX + entry).digest()


def leaf_hashes(entries: Iterable[bytes]) -> list[bytes]:
    """:func:`leaf_hash` of every entry, without a Python call per entry (auditor hot path)."""
    return [sha256(b"\x00" + entry).digest() for entry in entries]


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 §2.1.1: ``HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n]))``."""
    return sha256(_NODE_PREFIX + left + right).digest()


class SubtreeHashes(Protocol):
    """Where proofs get their hashes: the perfect subtrees of a log.

    ``subtree(level, index)`` returns ``MTH(D[index * 2**level : (index + 1) * 2**level])``;
    level 0 holds the leaf hashes. Callers only ask for subtrees that lie entirely inside the
    tree size they work with.
    """

    def subtree(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree of height ``level`` at position ``index``."""
        ...


def _check_hash(value: bytes, what: str) -> None:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ValueError(f"{what} must be {HASH_SIZE} bytes")


# --- bulk hashing (the auditor's hot path) ----------------------------------------------------


def subtree_levels(leaf_hashes: Iterable[bytes]) -> list[list[bytes]]:
    """Every perfect-subtree hash over ``leaf_hashes``: ``levels[l][i]`` is node ``(l, i)``.

    ``levels[0]`` is a copy of the leaf hashes; ``len(levels[l]) == n >> l``. This is the hot
    path of an auditor recomputing a whole log, so it is a tight loop of ``hashlib`` calls with
    one ``bytes`` object per node and nothing else per node. Raises ``ValueError`` if a leaf hash
    is not 32 bytes.
    """
    level = list(leaf_hashes)
    if level and set(map(len, level)) != {HASH_SIZE}:
        raise ValueError(f"leaf hashes must be {HASH_SIZE} bytes")
    levels = [level]
    while len(level) > 1:
        pairs = iter(level)
        # zip(it, it) walks the level two at a time without slicing copies; an odd last hash
        # has no sibling yet and is dropped, as it is not the root of a perfect subtree.
        level = [
            sha256(b"\x01" + left + right).digest()
            for left, right in zip(pairs, pairs, strict=False)
        ]
        levels.append(level)
    return levels


def _root_from_levels(levels: Sequence[Sequence[bytes]], size: int) -> bytes:
    """Fold the perfect subtrees of the binary decomposition of ``size``, right to left."""
    if size == 0:
        return EMPTY_ROOT
    root: bytes | None = None
    start = size
    for level in range(size.bit_length()):
        if size >> level & 1:
            start -= 1 << level
            node = levels[level][start >> level]
            root = node if root is None else node_hash(node, root)
    assert root is not None
    return root


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.1 Merkle Tree Hash of a list of leaf hashes (``EMPTY_ROOT`` if empty)."""
    levels = subtree_levels(leaf_hashes)
    return _root_from_levels(levels, len(levels[0]))


# --- proofs over a node source ----------------------------------------------------------------


class _Ranges:
    """``MTH(D[start:end])`` for the ranges RFC 9162 proofs use, over a :class:`SubtreeHashes`.

    Every range in an RFC 9162 proof starts at a multiple of a power of two at least as large
    as the range. Such a range is either a perfect subtree (one lookup) or ends at the tree
    size, in which case it is the fold of the perfect subtrees of the decomposition of
    ``end - start``. Right-edge folds are cached, so the nested right-edge ranges of one
    consistency proof cost O(log n) lookups in total.
    """

    def __init__(self, source: SubtreeHashes, size: int) -> None:
        self._source = source
        self._size = size
        self._right_edge: dict[int, bytes] = {}

    def hash(self, start: int, end: int) -> bytes:
        width = end - start
        if width & (width - 1) == 0:
            level = width.bit_length() - 1
            assert start % width == 0, "RFC 9162 ranges are aligned"
            return self._source.subtree(level, start >> level)
        assert end == self._size, "only the right edge of the tree is not perfect"
        return self._right_edge_hash(start)

    def _right_edge_hash(self, start: int) -> bytes:
        cached = self._right_edge.get(start)
        if cached is not None:
            return cached
        # Perfect subtrees covering D[start:size], largest first.
        nodes: list[tuple[int, bytes]] = []
        offset = start
        remaining = self._size - start
        for level in reversed(range(remaining.bit_length())):
            if remaining >> level & 1:
                nodes.append((offset, self._source.subtree(level, offset >> level)))
                offset += 1 << level
        # Fold right to left, remembering every suffix (they are the smaller right edges).
        acc: bytes | None = None
        for node_start, node in reversed(nodes):
            acc = node if acc is None else node_hash(node, acc)
            self._right_edge[node_start] = acc
        assert acc is not None
        return acc


def tree_root(source: SubtreeHashes, size: int) -> bytes:
    """RFC 9162 §2.1.1 ``MTH(D[0:size])`` folded from at most log2(size) perfect subtrees."""
    if size < 0:
        raise ProofError("tree size must not be negative")
    if size == 0:
        return EMPTY_ROOT
    return _Ranges(source, size).hash(0, size)


def inclusion_proof(source: SubtreeHashes, index: int, size: int) -> list[bytes]:
    """RFC 9162 §2.1.3.1 ``PATH(index, D[0:size])``, leaf sibling first, root child last.

    The RFC recursion, unrolled: below level ``inner = bit_length(index XOR (size - 1))`` the
    leaf's path runs inside a perfect subtree, so each sibling is perfect (the one at level
    ``inner - 1`` may reach the right edge); from ``inner`` up the path runs along the right
    border of the tree, where only left siblings exist and are perfect.
    Raises :class:`ProofError` unless ``0 <= index < size``.
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    ranges = _Ranges(source, size)
    inner = (index ^ (size - 1)).bit_length()
    proof = []
    for level in range(inner):
        start = ((index >> level) ^ 1) << level
        proof.append(ranges.hash(start, min(start + (1 << level), size)))
    for level in range(inner, (size - 1).bit_length()):
        if index >> level & 1:
            proof.append(source.subtree(level, (index >> level) ^ 1))
    return proof


def consistency_proof(source: SubtreeHashes, size1: int, size2: int) -> list[bytes]:
    """RFC 9162 §2.1.4.1 ``PROOF(size1, D[0:size2])``.

    ``SUBPROOF(m, D[start:end], b)`` is walked from the top: each step records one subtree
    hash and narrows the range; the RFC appends the outer hash after the inner proof, so the
    recorded hashes are returned in reverse. Raises :class:`ProofError` unless
    ``0 < size1 <= size2`` (a proof from the empty tree is meaningless; equal sizes give ``[]``).
    """
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof from size {size1} to size {size2}")
    ranges = _Ranges(source, size2)
    outer_first: list[bytes] = []
    m, start, end, whole = size1, 0, size2, True
    while True:
        n = end - start
        if m == n:
            # SUBPROOF(m, D[m], b) = {} if b is true, else {MTH(D[m])}
            if not whole:
                outer_first.append(ranges.hash(start, end))
            break
        k = 1 << ((n - 1).bit_length() - 1)  # largest power of two smaller than n
        if m <= k:
            # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            outer_first.append(ranges.hash(start + k, end))
            end = start + k
        else:
            # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            outer_first.append(ranges.hash(start, start + k))
            m, start, whole = m - k, start + k, False
    outer_first.reverse()
    return outer_first


class _Recorder:
    """A node source that records which perfect subtrees an algorithm asks for."""

    def __init__(self) -> None:
        self.requested: list[tuple[int, int]] = []
        self._placeholder = bytes(HASH_SIZE)

    def subtree(self, level: int, index: int) -> bytes:
        self.requested.append((level, index))
        return self._placeholder


def tree_root_nodes(size: int) -> list[tuple[int, int]]:
    """The ``(level, index)`` perfect subtrees :func:`tree_root` reads, for one batched query."""
    recorder = _Recorder()
    tree_root(recorder, size)
    return recorder.requested


def inclusion_proof_nodes(index: int, size: int) -> list[tuple[int, int]]:
    """The ``(level, index)`` perfect subtrees :func:`inclusion_proof` reads (at most ~2 log n).

    Which nodes a proof needs depends only on the sizes, never on hash values, so a store can
    fetch them in one query and serve them through :class:`SubtreeMap`.
    """
    recorder = _Recorder()
    inclusion_proof(recorder, index, size)
    return recorder.requested


def consistency_proof_nodes(size1: int, size2: int) -> list[tuple[int, int]]:
    """The ``(level, index)`` perfect subtrees :func:`consistency_proof` reads."""
    recorder = _Recorder()
    consistency_proof(recorder, size1, size2)
    return recorder.requested


class SubtreeMap:
    """A :class:`SubtreeHashes` over a mapping ``(level, index) -> hash`` fetched in advance."""

    def __init__(self, nodes: Mapping[tuple[int, int], bytes]) -> None:
        self._nodes = nodes

    def subtree(self, level: int, index: int) -> bytes:
        """The stored hash; ``KeyError`` if it was not fetched."""
        return self._nodes[level, index]


# --- verification ----------------------------------------------------------------------------


def _require_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise ProofError(f"{what} is not a {HASH_SIZE}-byte hash")
    return bytes(value)


def _require_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProofError(f"{what} is not a non-negative integer")
    return value


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2: check that ``leaf_hash`` is leaf ``index`` of the tree ``root``.

    Returns ``None``; raises :class:`ProofError` if the proof does not verify, if
    ``index >= size``, or if any hash is not 32 bytes.
    """
    _require_size(index, "leaf index")
    _require_size(size, "tree size")
    leaf_hash = _require_hash(leaf_hash, "leaf hash")
    root = _require_hash(root, "root hash")
    proof = [_require_hash(node, f"proof[{i}]") for i, node in enumerate(proof)]
    # 1. If leaf_index is greater than or equal to tree_size, then stop and fail.
    if index >= size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    # 2. Set fn to leaf_index and sn to tree_size - 1.  3. Set r to hash.
    fn, sn, r = index, size - 1, leaf_hash
    # 4. For each value p in the inclusion_path array:
    for p in proof:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError("inclusion proof is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            # If LSB(fn) is not set, right-shift fn and sn equally until either LSB(fn)
            # is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 5. Compare sn to 0. Compare r against the root_hash.
    if sn != 0:
        raise ProofError("inclusion proof is too short")
    if not hmac.compare_digest(r, root):
        raise ProofError("inclusion proof does not lead to the root hash")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """RFC 9162 §2.1.4.2: check that tree ``root2`` (size2) extends tree ``root1`` (size1).

    Returns ``None``; raises :class:`ProofError` on any failure. Conventions (those of the
    transparency-dev test vectors): ``size1 > size2`` is refused; a proof from size 0 is refused
    (it proves nothing); equal sizes need an empty proof and equal roots; every hash, the roots
    included, must be 32 bytes.
    """
    _require_size(size1, "size1")
    _require_size(size2, "size2")
    root1 = _require_hash(root1, "root1")
    root2 = _require_hash(root2, "root2")
    path = [_require_hash(node, f"proof[{i}]") for i, node in enumerate(proof)]
    if size1 > size2:
        raise ProofError(f"size1 {size1} is larger than size2 {size2}")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    if size1 == size2:
        if path:
            raise ProofError("equal tree sizes need an empty consistency proof")
        if not hmac.compare_digest(root1, root2):
            raise ProofError("equal tree sizes with different roots")
        return
    # 1. If consistency_path is an empty array, stop and fail the proof verification.
    if not path:
        raise ProofError("empty consistency proof between different tree sizes")
    # 2. If first is an exact power of 2, then prepend first_hash to the consistency_path.
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # 3. Set fn to first - 1 and sn to second - 1.
    fn, sn = size1 - 1, size2 - 1
    # 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. Set both fr and sr to the first value in the consistency_path array.
    fr = sr = path[0]
    # 6. For each subsequent value c in the consistency_path array:
    for c in path[1:]:
        # a. If sn is 0, then stop the iteration and fail the proof verification.
        if sn == 0:
            raise ProofError("consistency proof is too long")
        # b. If LSB(fn) is set, or if fn is equal to sn, then:
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            # If LSB(fn) is not set, right-shift both fn and sn equally until either
            # LSB(fn) is set or fn is 0.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        # c. Finally, right-shift both fn and sn one time.
        fn >>= 1
        sn >>= 1
    # 7. Verify that fr equals first_hash, sr equals second_hash, and sn is 0.
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if not hmac.compare_digest(fr, root1):
        raise ProofError("consistency proof does not lead to root1")
    if not hmac.compare_digest(sr, root2):
        raise ProofError("consistency proof does not lead to root2")


# --- in-memory tree ---------------------------------------------------------------------------


class MemoryTree:
    """An append-only Merkle tree in memory that keeps every perfect-subtree node.

    It is a :class:`SubtreeHashes`, so it serves RFC 9162 proofs for any past size. Used by the
    tests and by the auditor to recompute a log (build it with :meth:`from_leaf_hashes`).
    """

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]

    @classmethod
    def from_leaf_hashes(cls, leaf_hashes: Iterable[bytes]) -> MemoryTree:
        """Build a tree in bulk (see :func:`subtree_levels`)."""
        tree = cls()
        tree._levels = subtree_levels(leaf_hashes)
        return tree

    @property
    def size(self) -> int:
        """Number of leaves."""
        return len(self._levels[0])

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash (``leaf_hash(entry)``) and the perfect nodes it completes."""
        _check_hash(leaf_hash, "leaf hash")
        node = bytes(leaf_hash)
        levels = self._levels
        level = 0
        while True:
            levels[level].append(node)
            if len(levels[level]) % 2:
                return
            node = node_hash(levels[level][-2], node)
            level += 1
            if level == len(levels):
                levels.append([])

    def leaf_hash(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        return self.subtree(0, index)

    def subtree(self, level: int, index: int) -> bytes:
        """:class:`SubtreeHashes` lookup; ``IndexError`` outside the perfect part of the tree."""
        if level < 0 or index < 0 or level >= len(self._levels):
            raise IndexError(f"no perfect subtree at ({level}, {index})")
        nodes = self._levels[level]
        if index >= len(nodes):
            raise IndexError(f"no perfect subtree at ({level}, {index})")
        return nodes[index]

    def root(self) -> bytes:
        """Root hash of the whole tree."""
        return _root_from_levels(self._levels, self.size)

    def root_at(self, size: int) -> bytes:
        """Root hash of the tree as it was at ``size`` leaves."""
        self._check_size(size)
        return tree_root(self, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 §2.1.3.1 proof that leaf ``index`` is in the tree of ``size`` leaves."""
        self._check_size(size)
        return inclusion_proof(self, index, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """RFC 9162 §2.1.4.1 proof that the tree at ``size2`` extends the tree at ``size1``."""
        self._check_size(size2)
        return consistency_proof(self, size1, size2)

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ProofError(f"tree size {size} is outside 0..{self.size}")
