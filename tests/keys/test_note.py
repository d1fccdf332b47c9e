"""C2SP signed notes: the golang.org/x/mod/sumdb/note example, malformed notes, properties."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from keys.errors import KeysError, NoteError
from keys.note import (
    MAX_SIGNATURES,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    format_signer_key,
    format_verifier_key,
    generate_signer,
    is_valid_key_name,
    key_id,
    open_note,
    parse_signer_key,
    parse_verifier_key,
    sign_note,
)

# From the package documentation and example_test.go of golang.org/x/mod/sumdb/note
# (ExampleSign, ExampleOpen), BSD-3-Clause, The Go Authors.
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_SIGNED = (
    GO_TEXT
    + "\n"
    + "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
    "ngotpRZb6KE6RyyBwJnAM=\n"
).encode("utf-8")


def _seeded(name: str, seed: int) -> NoteSigner:
    return NoteSigner.from_private_key(
        name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)
    )


ALICE = _seeded("log.example/alice", 1)
BOB = _seeded("witness.example/bob", 2)


# --- the Go example --------------------------------------------------------------------------


def test_go_example_sign_is_byte_exact() -> None:
    signer = parse_signer_key(GO_SIGNER_KEY)
    assert signer.name == "PeterNeumann"
    assert signer.key_id == 0xC74F20A3
    assert sign_note(GO_TEXT, [signer]) == GO_SIGNED


def test_go_example_open() -> None:
    verifier = parse_verifier_key(GO_VERIFIER_KEY)
    note = open_note(GO_SIGNED, [verifier])
    assert note.text == GO_TEXT
    assert [(s.name, s.key_id) for s in note.signatures] == [("PeterNeumann", 0xC74F20A3)]
    assert note.unverified == ()


def test_go_example_key_texts_round_trip() -> None:
    signer = parse_signer_key(GO_SIGNER_KEY)
    verifier = parse_verifier_key(GO_VERIFIER_KEY)
    assert signer.verifier == verifier
    assert key_id("PeterNeumann", verifier.public_key) == 0xC74F20A3
    assert format_verifier_key("PeterNeumann", verifier.public_key) == GO_VERIFIER_KEY
    assert verifier.to_text() == GO_VERIFIER_KEY
    assert format_signer_key("PeterNeumann", signer.private_key) == GO_SIGNER_KEY
    assert "AYEKFALV" not in repr(signer)


# --- signatures from several keys ------------------------------------------------------------


def test_unknown_signatures_are_ignored_but_one_known_must_verify() -> None:
    msg = sign_note("hello\n", [ALICE, BOB])
    note = open_note(msg, [ALICE.verifier])
    assert [s.name for s in note.signatures] == [ALICE.name]
    assert [s.name for s in note.unverified] == [BOB.name]
    assert open_note(msg, [ALICE.verifier, BOB.verifier]).unverified == ()
    with pytest.raises(NoteError):
        open_note(msg, [])
    with pytest.raises(NoteError):
        open_note(msg, [_seeded("someone.else", 3).verifier])


def test_same_name_other_key_is_ignored() -> None:
    """C2SP: ignore signatures from unknown keys "even if they share a name or ID"."""
    impostor = _seeded(ALICE.name, 9)
    assert impostor.key_id != ALICE.key_id
    msg = sign_note("hello\n", [impostor, ALICE])
    note = open_note(msg, [ALICE.verifier])
    assert [s.key_id for s in note.signatures] == [ALICE.key_id]
    with pytest.raises(NoteError):
        open_note(sign_note("hello\n", [impostor]), [ALICE.verifier])


def test_a_bad_signature_from_a_known_key_rejects_the_note() -> None:
    good = sign_note("hello\n", [ALICE, BOB]).decode()
    text, _, sigs = good.partition("\n\n")
    alice_line, bob_line = sigs.splitlines()
    forged = NoteSignature(BOB.name, BOB.key_id, bytes(64)).to_line()
    msg = f"{text}\n\n{alice_line}\n{forged}\n".encode()
    with pytest.raises(NoteError):
        open_note(msg, [ALICE.verifier, BOB.verifier])
    # Unknown to this verifier set: ignored, Alice's signature suffices.
    open_note(msg, [ALICE.verifier])
    assert bob_line.startswith("\u2014 " + BOB.name + " ")


def test_ambiguous_verifiers_are_refused() -> None:
    clash = NoteVerifier(ALICE.name, ALICE.key_id, BOB.verifier.public_key)
    with pytest.raises(NoteError):
        open_note(sign_note("x\n", [ALICE]), [ALICE.verifier, clash])
    open_note(sign_note("x\n", [ALICE]), [ALICE.verifier, ALICE.verifier])


def test_text_with_blank_lines_and_signature_like_lines() -> None:
    text = "a\n\n\u2014 fake AAAA\n\nb\n\n"
    note = open_note(sign_note(text, [ALICE]), [ALICE.verifier])
    assert note.text == text
    assert open_note(sign_note("\n", [ALICE]), [ALICE.verifier]).text == "\n"


def test_many_signatures() -> None:
    signers = [_seeded(f"w{i}.example", i) for i in range(16)]
    msg = sign_note("checkpoint\n", signers)
    note = open_note(msg, [s.verifier for s in signers])
    assert len(note.signatures) == 16
    too_many = msg + b"".join(
        NoteSignature(f"x{i}", i, b"\x00").to_line().encode() + b"\n" for i in range(MAX_SIGNATURES)
    )
    with pytest.raises(NoteError):
        open_note(too_many, [signers[0].verifier])
    with pytest.raises(NoteError):
        sign_note("x\n", [ALICE] * (MAX_SIGNATURES + 1))


def test_generated_signer() -> None:
    signer = generate_signer("fresh.example/log")
    assert parse_signer_key(format_signer_key(signer.name, signer.private_key)).verifier == (
        signer.verifier
    )
    assert parse_verifier_key(signer.verifier.to_text()) == signer.verifier
    open_note(sign_note("x\n", [signer]), [signer.verifier])


# --- malformed notes -------------------------------------------------------------------------

SIG_LINE = GO_SIGNED.decode().split("\n\n")[1]
SIG_B64 = SIG_LINE.split(" ")[2].rstrip("\n")


@pytest.mark.parametrize(
    "msg",
    [
        GO_SIGNED[:-1],  # no final newline
        GO_TEXT.encode(),  # no signature block
        GO_TEXT.encode() + b"\n",  # empty signature block
        GO_TEXT.encode() + b"\n\n",  # blank signature line
        GO_TEXT.encode() + b"\n" + SIG_LINE.replace("\u2014", "-").encode(),
        GO_TEXT.encode() + b"\n" + SIG_LINE.replace("\u2014 ", "\u2014").encode(),
        GO_TEXT.encode() + b"\n" + SIG_LINE.replace(" x08", "  x08").encode(),
        GO_TEXT.encode() + b"\n" + SIG_LINE.replace("PeterNeumann", "Peter+Neumann").encode(),
        GO_TEXT.encode() + b"\n" + SIG_LINE.replace("=", "").encode(),  # unpadded base64
        GO_TEXT.encode() + b"\n" + SIG_LINE.replace("AM=", "AN=").encode(),  # padding bits
        GO_TEXT.encode() + b"\n" + SIG_LINE.replace(SIG_B64, SIG_B64[:-4] + "!AM=").encode(),
        GO_TEXT.encode() + b"\n" + SIG_LINE.replace(SIG_B64, "x08go/Y=").encode(),  # short
        GO_TEXT.encode() + b"\n" + SIG_LINE.replace(SIG_B64, "x08go/ZJ").encode(),  # sig 2 B
        GO_SIGNED.replace(b"\n\n", b"\r\n\r\n"),
        GO_SIGNED.replace(b"If you", b"If\tyou"),
        GO_SIGNED.replace(b"If you", b"If\xffyou"),  # not UTF-8
        GO_SIGNED.replace(b"If you", b"If you "),  # text changed
        GO_SIGNED + b"garbage\n",  # trailing garbage
        b"",
        b"\n",
        b"\n\n",
    ],
)
def test_malformed_or_tampered_notes_are_rejected(msg: bytes) -> None:
    with pytest.raises(NoteError):
        open_note(msg, [parse_verifier_key(GO_VERIFIER_KEY)])


def test_note_error_is_a_keys_error() -> None:
    with pytest.raises(KeysError):
        open_note(b"nothing", [])


@pytest.mark.parametrize(
    "text", ["no newline", "", "tab\there\n", "cr\r\n", "nul\x00\n", "surrogate \ud800\n"]
)
def test_sign_refuses_bad_text(text: str) -> None:
    with pytest.raises(NoteError):
        sign_note(text, [ALICE])


def test_sign_needs_a_signer_with_a_valid_name() -> None:
    with pytest.raises(NoteError):
        sign_note("x\n", [])
    bad = NoteSigner("has space", 0, ALICE.private_key)
    with pytest.raises(NoteError):
        sign_note("x\n", [bad])


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("sum.golang.org", True),
        ("example.com/log42", True),
        ("Ünïcödé/名前", True),
        ("", False),
        ("a+b", False),
        ("a b", False),
        ("a\u00a0b", False),
        ("a\u3000b", False),
        ("a\u2028b", False),
        ("a\nb", False),
        ("a\x01b", False),
        ("a\ud800b", False),
    ],
)
def test_key_names(name: str, valid: bool) -> None:
    assert is_valid_key_name(name) is valid


@pytest.mark.parametrize(
    "text",
    [
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong ID
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # not canonical
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong type byte
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",  # not base64
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy",  # short key
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        GO_SIGNER_KEY,
    ],
)
def test_malformed_verifier_keys(text: str) -> None:
    with pytest.raises(NoteError):
        parse_verifier_key(text)


@pytest.mark.parametrize(
    "text",
    [
        GO_VERIFIER_KEY,
        GO_SIGNER_KEY.replace("PRIVATE+KEY+", "PRIVATE+"),
        GO_SIGNER_KEY.replace("c74f20a3", "c74f20a4"),
        GO_SIGNER_KEY.replace("+AYEK", "+AoEK"),  # type byte 0x02
        GO_SIGNER_KEY[:-4],
    ],
)
def test_malformed_signer_keys(text: str) -> None:
    with pytest.raises(NoteError):
        parse_signer_key(text)


# --- properties ------------------------------------------------------------------------------

# Note text: any Unicode scalar except control characters other than newline, ending in newline.
_note_char = st.characters(
    exclude_categories=["Cs"], exclude_characters=[chr(c) for c in range(32) if c != 10]
)
note_texts = st.text(_note_char, max_size=200).map(lambda s: s + "\n")


@settings(max_examples=100, deadline=None)
@given(text=note_texts, count=st.integers(1, 3))
def test_sign_then_open_round_trips(text: str, count: int) -> None:
    signers = [ALICE, BOB, _seeded("third.example", 3)][:count]
    msg = sign_note(text, signers)
    note = open_note(msg, [s.verifier for s in signers])
    assert note.text == text
    assert {s.key_id for s in note.signatures} == {s.key_id for s in signers}


@settings(max_examples=300, deadline=None)
@given(text=note_texts, data=st.data())
def test_any_single_byte_change_is_rejected(text: str, data: st.DataObject) -> None:
    msg = sign_note(text, [ALICE])
    position = data.draw(st.integers(0, len(msg) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != msg[position]), label="value")
    tampered = msg[:position] + bytes([value]) + msg[position + 1 :]
    with pytest.raises(NoteError):
        open_note(tampered, [ALICE.verifier])


@settings(max_examples=100, deadline=None)
@given(text=note_texts, data=st.data())
def test_any_single_byte_change_in_the_signature_is_rejected(
    text: str, data: st.DataObject
) -> None:
    msg = sign_note(text, [ALICE])
    start = len(text.encode()) + 1  # the signature block
    position = data.draw(st.integers(start, len(msg) - 1), label="position")
    value = data.draw(st.integers(0, 255).filter(lambda b: b != msg[position]), label="value")
    tampered = msg[:position] + bytes([value]) + msg[position + 1 :]
    with pytest.raises(NoteError):
        open_note(tampered, [ALICE.verifier])


def test_signature_blob_layout() -> None:
    msg = sign_note("x\n", [ALICE]).decode()
    blob = base64.b64decode(msg.split(" ")[-1])
    assert int.from_bytes(blob[:4], "big") == ALICE.key_id
    assert len(blob) == 4 + 64
    ALICE.verifier.verify(b"x\n", blob[4:])
