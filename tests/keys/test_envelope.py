from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keys.envelope import KeyEncryptionKey
from keys.errors import KeyDecryptionError


def test_round_trip_and_plaintext_absent() -> None:
    kek = KeyEncryptionKey(os.urandom(32))
    secret = os.urandom(64)
    sealed = kek.seal(secret, b"kid\x00purpose")
    assert secret not in sealed
    assert kek.open(sealed, b"kid\x00purpose") == secret


def test_wrong_kek_is_refused_with_its_id() -> None:
    sealed = KeyEncryptionKey(os.urandom(32)).seal(b"k" * 32, b"a")
    with pytest.raises(KeyDecryptionError, match="key-encryption key"):
        KeyEncryptionKey(os.urandom(32)).open(sealed, b"a")


def test_sealed_blob_cannot_move_to_another_record() -> None:
    kek = KeyEncryptionKey(os.urandom(32))
    sealed = kek.seal(b"k" * 32, b"kid-1\x00oidc-rs256")
    with pytest.raises(KeyDecryptionError):
        kek.open(sealed, b"kid-2\x00oidc-rs256")


@given(position=st.integers(min_value=0, max_value=10_000), bit=st.integers(0, 7))
def test_any_bit_flip_is_detected(position: int, bit: int) -> None:
    kek = KeyEncryptionKey(b"\x01" * 32)
    sealed = bytearray(kek.seal(b"private key bytes", b"aad"))
    sealed[position % len(sealed)] ^= 1 << bit
    with pytest.raises(KeyDecryptionError):
        kek.open(bytes(sealed), b"aad")


def test_rewrap_under_new_kek() -> None:
    old, new = KeyEncryptionKey(os.urandom(32)), KeyEncryptionKey(os.urandom(32))
    sealed = old.seal(b"s" * 32, b"aad")
    assert new.open(old.rewrap(sealed, b"aad", new), b"aad") == b"s" * 32


def test_kek_never_shows_in_repr() -> None:
    raw = os.urandom(32)
    assert raw.hex() not in repr(KeyEncryptionKey(raw))
    with pytest.raises(ValueError, match="32 bytes"):
        KeyEncryptionKey(b"short")
