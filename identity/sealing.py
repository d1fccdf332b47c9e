"""Sealing small server-side records (login sessions, pending sign-ins) with AES-256-GCM under
the active ``session-seal`` key. The record's own key (a hash) is bound as associated data, so a
sealed blob cannot be moved to another row; older keys still open what they sealed."""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from identity.errors import SignInExpired
from keys.keyring import Keyring
from keys.model import Purpose


def seal(keyring: Keyring, data: dict[str, Any], aad: bytes) -> tuple[bytes, str]:
    kid, key = keyring.secret(Purpose.SESSION_SEAL)
    nonce = os.urandom(12)
    plaintext = json.dumps(data, separators=(",", ":")).encode("utf-8")
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad), kid


def unseal(keyring: Keyring, sealed: bytes, kid: str, aad: bytes) -> dict[str, Any]:
    keys = dict(keyring.secrets(Purpose.SESSION_SEAL))
    key = keys.get(kid)
    if key is None:
        # The key was destroyed: whatever it sealed has outlived every lifetime it had.
        raise SignInExpired("sealed record outlived its key")
    try:
        plaintext = AESGCM(key).decrypt(sealed[:12], sealed[12:], aad)
    except InvalidTag:
        raise SignInExpired("sealed record failed authentication") from None
    data: dict[str, Any] = json.loads(plaintext)
    return data
