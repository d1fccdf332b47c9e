"""Errors raised by the ``keys`` package.

The tree::

    KeysError
    ├── KeyNotFound          no key with that kid, or no active key for a purpose
    ├── KeyStateError        a transition the lifecycle does not allow (e.g. retire a destroyed key)
    ├── KeyDecryptionError   a stored private key could not be unwrapped (wrong KEK, tampering)
    ├── KeyStoreError        the store could not be read or written
    ├── NoteError            a C2SP signed note is malformed or carries no valid signature
    └── BlindRSAError        an RFC 9474 operation failed (keys/blind_rsa.py)
        ├── InvalidInput         wrong length or out of range
        ├── InvalidKey           key too small, malformed, or not the published encoding
        ├── BlindingError        the blinding factor has no inverse
        ├── SigningFailure       RSASP1 failed or its result failed the fault check
        └── VerificationError    the signature does not verify

Every error carries a message safe to log: no key material, no plaintext.
"""

from __future__ import annotations


class KeysError(Exception):
    """Base of every error raised by ``keys``."""


class KeyNotFound(KeysError):
    """No key matches: unknown kid, or no active key for the purpose."""


class KeyStateError(KeysError):
    """The requested lifecycle transition is not allowed from the key's state."""


class KeyDecryptionError(KeysError):
    """A stored private key could not be decrypted (wrong key-encryption key or tampering)."""


class KeyStoreError(KeysError):
    """The key store could not be read or written."""


class NoteError(KeysError):
    """A C2SP signed note is malformed or has no signature from a known key."""


class BlindRSAError(KeysError):
    """An RFC 9474 blind RSA operation failed."""
