"""Denomination keys: the RFC 9474 blind-signing keys that mint coins, sealed at rest.

A denomination key signs coins of one value during one epoch. There are many at once (one per
value per epoch, created ahead of time), so they do not fit the keyring's one-active-key-per-
purpose records; the ledger keeps them in its own table. This module makes and opens them: the
private half is PKCS#8 DER encrypted under the keyring's key-encryption key, bound to the
denomination id, so a sealed blob cannot be moved to another denomination.

The denomination id is the RFC 9474 key id: SHA-256 of the published SubjectPublicKeyInfo (with
the RSASSA-PSS OID and SHA-384 parameters), the exact bytes wallets and auditors hash.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keys.blind_rsa import BlindPrivateKey, BlindPublicKey, generate_private_key
from keys.errors import KeyDecryptionError
from keys.keyring import Keyring

__all__ = ["SealedDenominationKey", "new_denomination_key", "open_denomination_key"]


def _label(denomination: bytes) -> str:
    return "denomination:" + denomination.hex()


@dataclass(frozen=True)
class SealedDenominationKey:
    """A new denomination key as stored: its id, public SPKI and sealed private half."""

    denomination: bytes
    spki: bytes
    sealed: bytes


def new_denomination_key(keyring: Keyring, bits: int = 2048) -> SealedDenominationKey:
    """Generate a blind-signing key of ``bits`` (at least 2048) and seal its private half."""
    private = generate_private_key(bits)
    public = private.public_key()
    denomination = public.key_id()
    der = private.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return SealedDenominationKey(
        denomination, public.spki(), keyring.seal_external(der, _label(denomination))
    )


def open_denomination_key(keyring: Keyring, spki: bytes, sealed: bytes) -> BlindPrivateKey:
    """Decrypt a sealed denomination key and check it is the key ``spki`` publishes."""
    public = BlindPublicKey.from_spki(spki)
    der = keyring.open_external(sealed, _label(public.key_id()))
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyDecryptionError("a denomination key is not an RSA key")
    private = BlindPrivateKey(key)
    if private.public_key().n != public.n or private.public_key().e != public.e:
        raise KeyDecryptionError("a denomination key does not match its public key")
    return private
