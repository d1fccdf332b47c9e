"""Envelope encryption of private keys at rest (AES-256-GCM).

Each private key is encrypted under its own random data-encryption key (DEK); the DEK is wrapped
under the key-encryption key (KEK) from settings or a file. Rotating the KEK re-wraps DEKs only.
The kid and purpose are bound as associated data, so a sealed blob cannot be moved to another
record. Layout of a sealed blob (all lengths fixed but the last)::

    b"NCK1" | kek_id (8) | dek_nonce (12) | wrapped_dek (32 + 16) | key_nonce (12) | ciphertext
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.errors import KeyDecryptionError

_MAGIC = b"NCK1"
_KEK_ID_LEN = 8
_NONCE_LEN = 12
_WRAPPED_LEN = 32 + 16
_HEADER_LEN = len(_MAGIC) + _KEK_ID_LEN + _NONCE_LEN + _WRAPPED_LEN + _NONCE_LEN

RandomBytes = Callable[[int], bytes]


class KeyEncryptionKey:
    """A 256-bit AES-GCM key that wraps data-encryption keys. Never printed, never logged."""

    __slots__ = ("_aead", "kek_id")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a key-encryption key is exactly 32 bytes")
        self._aead = AESGCM(key)
        #: identifies which KEK sealed a blob; a hash, so it reveals nothing of the key
        self.kek_id = hashlib.sha256(b"nicecard kek id\x00" + key).digest()[:_KEK_ID_LEN]

    def __repr__(self) -> str:
        return f"KeyEncryptionKey(kek_id={self.kek_id.hex()})"

    def seal(self, plaintext: bytes, aad: bytes, random_bytes: RandomBytes = os.urandom) -> bytes:
        dek = random_bytes(32)
        dek_nonce = random_bytes(_NONCE_LEN)
        key_nonce = random_bytes(_NONCE_LEN)
        wrapped = self._aead.encrypt(dek_nonce, dek, _MAGIC + self.kek_id + aad)
        ciphertext = AESGCM(dek).encrypt(key_nonce, plaintext, _MAGIC + aad)
        return _MAGIC + self.kek_id + dek_nonce + wrapped + key_nonce + ciphertext

    def sealed_this(self, sealed: bytes) -> bool:
        """Whether ``sealed`` was sealed under this key (by its kek id; no decryption)."""
        start = len(_MAGIC)
        return sealed[start : start + _KEK_ID_LEN] == self.kek_id

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < _HEADER_LEN + 16 or not sealed.startswith(_MAGIC):
            raise KeyDecryptionError("sealed key blob is malformed")
        offset = len(_MAGIC)
        kek_id = sealed[offset : offset + _KEK_ID_LEN]
        offset += _KEK_ID_LEN
        if kek_id != self.kek_id:
            raise KeyDecryptionError(
                f"key sealed under key-encryption key {kek_id.hex()}, "
                f"configured key-encryption key is {self.kek_id.hex()}"
            )
        dek_nonce = sealed[offset : offset + _NONCE_LEN]
        offset += _NONCE_LEN
        wrapped = sealed[offset : offset + _WRAPPED_LEN]
        offset += _WRAPPED_LEN
        key_nonce = sealed[offset : offset + _NONCE_LEN]
        ciphertext = sealed[offset + _NONCE_LEN :]
        try:
            dek = self._aead.decrypt(dek_nonce, wrapped, _MAGIC + self.kek_id + aad)
            return AESGCM(dek).decrypt(key_nonce, ciphertext, _MAGIC + aad)
        except InvalidTag:
            raise KeyDecryptionError("sealed key failed authentication") from None

    def rewrap(self, sealed: bytes, aad: bytes, new: KeyEncryptionKey) -> bytes:
        """The same private key sealed under ``new`` (for KEK rotation)."""
        return new.seal(self.open(sealed, aad), aad)
