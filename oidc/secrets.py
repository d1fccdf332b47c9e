"""Client secrets for ``client_secret_basic`` and ``client_secret_post`` (RFC 6749 §2.3.1).

The service generates every secret (256 bits from the operating system's CSPRNG, RFC 6749 §10.10
"the probability of an attacker guessing generated tokens ... MUST be less than or equal to
2^(-128)") and keeps only a SHA-256 digest of it. A slow password hash (argon2, scrypt) protects
low-entropy, human-chosen passwords against offline guessing; a 256-bit random secret cannot be
guessed whatever the hash, so a fast one-way hash is enough and keeps the token endpoint fast
(see SECURITY.md).

Verification raises and never returns a bool, compares in constant time, and compares against a
dummy digest when the client is unknown or has no secret, so timing does not tell which.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from oidc.errors import InvalidClient

#: Bytes of randomness in a generated secret (256 bits).
SECRET_BYTES = 32
#: Domain separation: a digest of a client secret is never the digest of anything else.
_DOMAIN = b"nicecard client secret v1\x00"
#: Compared against when there is no stored digest, so both paths cost the same.
_DUMMY_DIGEST = hashlib.sha256(_DOMAIN + b"no secret").digest()
#: The longest secret accepted on the wire (a generated one has 43 characters).
MAX_SECRET_LENGTH = 512


def generate_client_secret() -> str:
    """A new secret: 32 random bytes as unpadded base64url (43 characters)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_client_secret(secret: str) -> bytes:
    """The 32-byte digest stored in place of the secret."""
    return hashlib.sha256(_DOMAIN + secret.encode("utf-8")).digest()


def verify_client_secret(presented: str, stored: bytes | None) -> None:
    """Raise :class:`InvalidClient` unless ``presented`` hashes to ``stored``.

    ``stored`` is None for an unknown client or one without a secret: the comparison still runs,
    against a dummy digest, and fails.
    """
    digest = hash_client_secret(presented[:MAX_SECRET_LENGTH])
    expected = stored if stored is not None and len(stored) == len(digest) else _DUMMY_DIGEST
    matches = hmac.compare_digest(digest, expected)
    if not matches or stored is None or len(presented) > MAX_SECRET_LENGTH:
        raise InvalidClient("client authentication failed")
