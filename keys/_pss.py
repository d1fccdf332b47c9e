"""EMSA-PSS with SHA-384 and MGF1-SHA-384 (RFC 8017), as RFC 9474 uses it.

Private to ``keys``: :mod:`keys.blind_rsa` is the only caller. Every RFC 9474 variant
(RFC 9474 Section 5) uses SHA-384 for both the message hash and MGF1, so the hash is fixed
here rather than a parameter. The salt length varies: 48 bytes for the PSS variants, 0 for
PSSZERO.

``emBits`` is always ``bit_len(n) - 1`` (RFC 8017 Sections 8.1.1 and 8.1.2), which is what
RSASSA-PSS-VERIFY in Finalize (RFC 9474 Section 4.4) needs and what the published RFC 9474
vectors use. RFC 9474 Section 4.2 step 1 writes ``EMSA-PSS-ENCODE(msg, bit_len(n))``;
read literally, with a modulus whose length is a multiple of 8, the top bit of the encoded
message would be left set about half the time and such a signature would fail
RSASSA-PSS-VERIFY, so the interoperable implementations use ``bit_len(n) - 1`` too.
"""

from __future__ import annotations

import hashlib
import hmac

HASH_LEN = 48
"""hLen: the output length of SHA-384, in bytes."""

_PADDING1 = bytes(8)
"""The eight zero octets that prefix M' (RFC 8017 Section 9.1.1 step 5)."""


def mgf1_sha384(seed: bytes, mask_len: int) -> bytes:
    """MGF1 with SHA-384 (RFC 8017 Appendix B.2.1).

    ``mask_len`` is far below the ``2^32 * hLen`` limit for any RSA modulus, so the
    "mask too long" error of step 1 cannot occur and is not checked.
    """
    blocks = -(-mask_len // HASH_LEN)
    out = b"".join(
        hashlib.sha384(seed + counter.to_bytes(4, "big")).digest() for counter in range(blocks)
    )
    return out[:mask_len]


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _em_len(em_bits: int) -> int:
    return -(-em_bits // 8)


def _top_mask(em_len: int, em_bits: int) -> int:
    """The mask keeping the low ``em_bits - 8 * (em_len - 1)`` bits of the first octet."""
    return 0xFF >> (8 * em_len - em_bits)


def emsa_pss_encode(msg: bytes, em_bits: int, salt: bytes) -> bytes:
    """EMSA-PSS-ENCODE (RFC 8017 Section 9.1.1), SHA-384, MGF1-SHA-384, ``len(salt)`` = sLen.

    The salt is drawn by the caller so that the randomness stays injectable. Raises
    ``ValueError`` ("encoding error", step 3) if ``em_bits`` is too small for the salt; the
    caller's minimum modulus size makes that unreachable.
    """
    em_len = _em_len(em_bits)
    if em_len < HASH_LEN + len(salt) + 2:
        raise ValueError("encoding error: modulus too short for SHA-384 and this salt")
    m_hash = hashlib.sha384(msg).digest()
    h = hashlib.sha384(_PADDING1 + m_hash + salt).digest()
    db = bytes(em_len - len(salt) - HASH_LEN - 2) + b"\x01" + salt
    masked_db = bytearray(_xor(db, mgf1_sha384(h, em_len - HASH_LEN - 1)))
    masked_db[0] &= _top_mask(em_len, em_bits)
    return bytes(masked_db) + h + b"\xbc"


def emsa_pss_verify(msg: bytes, em: bytes, em_bits: int, salt_len: int) -> bool:
    """EMSA-PSS-VERIFY (RFC 8017 Section 9.1.2): True for "consistent".

    The salt length is checked exactly (step 10), never recovered from the encoding.
    ``em`` must already be ``ceil(em_bits / 8)`` octets long (RSASSA-PSS-VERIFY step 2c).
    """
    em_len = _em_len(em_bits)
    if len(em) != em_len or em_len < HASH_LEN + salt_len + 2:
        return False
    if em[-1] != 0xBC:
        return False
    masked_db, h = em[: em_len - HASH_LEN - 1], em[em_len - HASH_LEN - 1 : -1]
    top = _top_mask(em_len, em_bits)
    if masked_db[0] & ~top & 0xFF:
        return False
    db = bytearray(_xor(masked_db, mgf1_sha384(h, em_len - HASH_LEN - 1)))
    db[0] &= top
    ps_len = em_len - HASH_LEN - salt_len - 2
    if any(db[:ps_len]) or db[ps_len] != 0x01:
        return False
    salt = bytes(db[ps_len + 1 :])
    m_hash = hashlib.sha384(msg).digest()
    h_prime = hashlib.sha384(_PADDING1 + m_hash + salt).digest()
    return hmac.compare_digest(h, h_prime)
