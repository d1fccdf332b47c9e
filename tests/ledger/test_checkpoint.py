"""C2SP tlog-checkpoint bodies, signed checkpoints, and C2SP tlog-proof files."""

from __future__ import annotations

import base64
from functools import cache

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from keys.note import NoteSigner, sign_note
from ledger.checkpoint import (
    TLOG_PROOF_HEADER,
    Checkpoint,
    TlogProof,
    open_checkpoint,
    sign_checkpoint,
)
from ledger.errors import CheckpointError, LedgerError, ProofError
from ledger.merkle import MemoryTree, leaf_hash

ORIGIN = "nice.example/ledger"
LOG = NoteSigner.from_private_key(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
WITNESS = NoteSigner.from_private_key(
    "witness.example", Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
)

# The example body of c2sp.org/tlog-checkpoint.
SPEC_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
ROOT = base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")


@cache
def _tree() -> MemoryTree:
    return MemoryTree.from_leaf_hashes(leaf_hash(b"entry %d" % i) for i in range(50))


def _checkpoint(size: int) -> Checkpoint:
    return Checkpoint(ORIGIN, size, _tree().root_at(size))


# --- body format -----------------------------------------------------------------------------


def test_spec_example_body() -> None:
    checkpoint = Checkpoint.parse(SPEC_TEXT)
    assert checkpoint == Checkpoint("example.com/behind-the-sofa", 20852163, ROOT)
    assert checkpoint.to_note_text() == SPEC_TEXT


def test_extension_lines_and_empty_tree() -> None:
    checkpoint = Checkpoint("o", 0, bytes(32), ("ext one", "ext-two"))
    text = checkpoint.to_note_text()
    assert text == "o\n0\n" + base64.b64encode(bytes(32)).decode() + "\next one\next-two\n"
    assert Checkpoint.parse(text) == checkpoint


@pytest.mark.parametrize(
    "text",
    [
        SPEC_TEXT[:-1],  # no final newline
        "example.com/x\n5\n",  # no root line
        "\n5\n" + SPEC_TEXT.split("\n")[2] + "\n",  # empty origin
        SPEC_TEXT.replace("20852163", "020852163"),  # leading zero
        SPEC_TEXT.replace("20852163", "+20852163"),
        SPEC_TEXT.replace("20852163", " 20852163"),
        SPEC_TEXT.replace("20852163", "20_852_163"),
        SPEC_TEXT.replace("20852163", "٢٠٨٥٢١٦٣"),  # non-ASCII digits
        SPEC_TEXT.replace("20852163", "-1"),
        SPEC_TEXT.replace("20852163", "18446744073709551616"),  # 2**64
        SPEC_TEXT.replace("20852163", ""),
        SPEC_TEXT.replace("q2I=", "q2J="),  # non-canonical padding bits
        SPEC_TEXT.replace("q2I=", "q2I"),  # unpadded
        SPEC_TEXT.replace("CsUYap", "CsUY-p"),  # URL-safe alphabet
        SPEC_TEXT.replace("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=", "AAAA"),  # 3 bytes
        SPEC_TEXT + "\n",  # empty extension line
        SPEC_TEXT + "ext\n\n",
        SPEC_TEXT.replace("\n", "\r\n"),
        SPEC_TEXT.replace("sofa", "so\tfa"),
    ],
)
def test_malformed_bodies_are_rejected(text: str) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(text)


def test_largest_size_is_accepted() -> None:
    text = SPEC_TEXT.replace("20852163", str(2**64 - 1))
    assert Checkpoint.parse(text).size == 2**64 - 1


@pytest.mark.parametrize(
    ("origin", "size", "root", "extensions"),
    [
        ("", 1, ROOT, ()),
        ("a\nb", 1, ROOT, ()),
        ("o", -1, ROOT, ()),
        ("o", 2**64, ROOT, ()),
        ("o", True, ROOT, ()),
        ("o", 1, ROOT[:31], ()),
        ("o", 1, ROOT, ("",)),
        ("o", 1, ROOT, ("a\nb",)),
        ("o", 1, ROOT, ["list"]),
    ],
)
def test_invalid_checkpoints_cannot_be_built(
    origin: str, size: int, root: bytes, extensions: tuple[str, ...]
) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint(origin, size, root, extensions)


_line = st.text(
    st.characters(exclude_categories=["Cs"], min_codepoint=0x20), min_size=1, max_size=40
)


@settings(max_examples=100, deadline=None)
@given(
    origin=_line,
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_line, max_size=3).map(tuple),
)
def test_body_round_trips(origin: str, size: int, root: bytes, extensions: tuple[str, ...]) -> None:
    checkpoint = Checkpoint(origin, size, root, extensions)
    assert Checkpoint.parse(checkpoint.to_note_text()) == checkpoint


# --- signed checkpoints ----------------------------------------------------------------------


def test_sign_and_open() -> None:
    checkpoint = _checkpoint(50)
    msg = sign_checkpoint(checkpoint, [LOG])
    assert msg.startswith((checkpoint.to_note_text() + "\n\u2014 nice.example/ledger ").encode())
    assert open_checkpoint(msg, [LOG.verifier], origin=ORIGIN) == checkpoint


def test_witness_cosignatures_are_ignored_unless_trusted() -> None:
    checkpoint = _checkpoint(7)
    msg = sign_checkpoint(checkpoint, [LOG, WITNESS])
    assert open_checkpoint(msg, [LOG.verifier], origin=ORIGIN) == checkpoint
    assert open_checkpoint(msg, [WITNESS.verifier], origin=ORIGIN) == checkpoint


def test_open_failures_are_checkpoint_errors() -> None:
    checkpoint = _checkpoint(9)
    msg = sign_checkpoint(checkpoint, [LOG])
    with pytest.raises(CheckpointError):
        open_checkpoint(msg, [WITNESS.verifier], origin=ORIGIN)  # unknown key
    with pytest.raises(CheckpointError):
        open_checkpoint(msg, [LOG.verifier], origin="other.example/log")
    with pytest.raises(CheckpointError):
        open_checkpoint(msg.replace(b"\n9\n", b"\n8\n"), [LOG.verifier], origin=ORIGIN)
    with pytest.raises(CheckpointError):
        open_checkpoint(msg[:-1], [LOG.verifier], origin=ORIGIN)
    # A validly signed note whose body is not a checkpoint.
    not_a_checkpoint = sign_note(f"{ORIGIN}\n09\n{base64.b64encode(ROOT).decode()}\n", [LOG])
    with pytest.raises(CheckpointError):
        open_checkpoint(not_a_checkpoint, [LOG.verifier], origin=ORIGIN)
    with pytest.raises(LedgerError):
        open_checkpoint(b"", [LOG.verifier], origin=ORIGIN)
    with pytest.raises(CheckpointError):
        sign_checkpoint(checkpoint, [])


# --- tlog-proof ------------------------------------------------------------------------------

SPEC_PROOF = b"""c2sp.org/tlog-proof@v1
extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ
index 73894
gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=
B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=
EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=
RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=
AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=

example.com/fancylog
109482
sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=

\xe2\x80\x94 example.com/fancylog hI2DJw[...]1roloI=
"""


def test_spec_example_proof_layout() -> None:
    proof = TlogProof.parse(SPEC_PROOF)
    assert proof.index == 73894
    assert len(proof.inclusion_proof) == 5
    assert proof.extra is not None
    assert proof.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    assert proof.checkpoint.startswith(b"example.com/fancylog\n109482\n")
    assert proof.to_bytes() == SPEC_PROOF


def _tlog_proof(index: int, size: int, extra: bytes | None = None) -> TlogProof:
    tree = _tree()
    return TlogProof(
        index,
        tuple(tree.inclusion_proof(index, size)),
        sign_checkpoint(_checkpoint(size), [LOG, WITNESS]),
        extra,
    )


@pytest.mark.parametrize(("index", "size"), [(0, 1), (0, 50), (31, 50), (49, 50), (5, 6)])
def test_tlog_proof_round_trip_and_verify(index: int, size: int) -> None:
    proof = _tlog_proof(index, size, extra=b"\x00context")
    data = proof.to_bytes()
    assert data.startswith(TLOG_PROOF_HEADER.encode() + b"\nextra AGNvbnRleHQ=\nindex ")
    parsed = TlogProof.parse(data)
    assert parsed == proof
    checkpoint = parsed.verify(_tree().leaf_hash(index), [LOG.verifier], origin=ORIGIN)
    assert checkpoint == _checkpoint(size)
    without_extra = _tlog_proof(index, size)
    assert TlogProof.parse(without_extra.to_bytes()).extra is None


def test_tlog_proof_verification_failures() -> None:
    proof = _tlog_proof(3, 50)
    leaf = _tree().leaf_hash(3)
    with pytest.raises(ProofError):
        proof.verify(_tree().leaf_hash(4), [LOG.verifier], origin=ORIGIN)
    moved = TlogProof(4, proof.inclusion_proof, proof.checkpoint)
    with pytest.raises(ProofError):
        moved.verify(leaf, [LOG.verifier], origin=ORIGIN)
    with pytest.raises(CheckpointError):
        proof.verify(leaf, [], origin=ORIGIN)
    with pytest.raises(CheckpointError):
        proof.verify(leaf, [LOG.verifier], origin="elsewhere")
    stale = TlogProof(3, proof.inclusion_proof, sign_checkpoint(_checkpoint(49), [LOG]))
    with pytest.raises(ProofError):
        stale.verify(leaf, [LOG.verifier], origin=ORIGIN)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"c2sp.org/tlog-proof@v2\nindex 0\n\ncheckpoint\n",
        b"c2sp.org/tlog-proof@v1\n\ncheckpoint\n",  # no index
        b"c2sp.org/tlog-proof@v1\nindex 01\n\ncheckpoint\n",
        b"c2sp.org/tlog-proof@v1\nindex -1\n\ncheckpoint\n",
        b"c2sp.org/tlog-proof@v1\nindex 18446744073709551616\n\ncheckpoint\n",
        b"c2sp.org/tlog-proof@v1\nindex  0\n\ncheckpoint\n",
        b"c2sp.org/tlog-proof@v1\nindex 0\n",  # no checkpoint
        b"c2sp.org/tlog-proof@v1\nindex 0\n\n",  # empty checkpoint
        b"c2sp.org/tlog-proof@v1\nindex 0\nAAAA\n\ncheckpoint\n",  # 3-byte hash
        b"c2sp.org/tlog-proof@v1\nindex 0\n" + b"A" * 42 + b"B=\n\ncheckpoint\n",  # pad bits
        b"c2sp.org/tlog-proof@v1\nextra !!\nindex 0\n\ncheckpoint\n",
        b"c2sp.org/tlog-proof@v1\nindex 0\nextra AA==\n\ncheckpoint\n",  # extra after index
        b"c2sp.org/tlog-proof@v1\r\nindex 0\r\n\r\ncheckpoint\n",
        b"c2sp.org/tlog-proof@v1\nindex 0\n"
        + (base64.b64encode(bytes(32)) + b"\n") * 65
        + b"\ncheckpoint\n",
        "c2sp.org/tlog-proof@v1\nindex ٠\n\ncheckpoint\n".encode(),
    ],
)
def test_malformed_tlog_proofs_are_rejected(data: bytes) -> None:
    with pytest.raises(ProofError):
        TlogProof.parse(data)
