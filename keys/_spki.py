"""The one SubjectPublicKeyInfo shape a blind RSA key is published in, in DER.

Private to ``keys``: :mod:`keys.blind_rsa` is the only caller.

RFC 9474 Section 6.2 requires the RSASSA-PSS OID (RFC 5756), not rsaEncryption, when the key
is carried in an X.509 certificate, and Privacy Pass (RFC 9578, token type 0x0002) publishes
the key as exactly this SPKI and names it by ``SHA-256(SPKI)``::

    SubjectPublicKeyInfo ::= SEQUENCE {
      algorithm  SEQUENCE {
        algorithm   id-RSASSA-PSS (1.2.840.113549.1.1.10),
        parameters  RSASSA-PSS-params ::= SEQUENCE {           -- RFC 4055 Section 3.1
          hashAlgorithm    [0] SEQUENCE { id-sha384 },             -- parameters absent
          maskGenAlgorithm [1] SEQUENCE { id-mgf1, SEQUENCE { id-sha384 } },
          saltLength       [2] INTEGER 48 } },                     -- trailerField omitted
      subjectPublicKey  BIT STRING { RSAPublicKey ::= SEQUENCE { n INTEGER, e INTEGER } } }

The hash AlgorithmIdentifiers omit their parameters (RFC 4055 Section 2.1 calls that the
correct encoding, and it is the encoding the RFC 9578 test vectors and the deployed issuers
use), so the key id agrees with theirs for the same modulus. The same SPKI is published for
the PSSZERO variants: the parameters describe the key, and RFC 9474 Section 6.2 already
forbids using one key with two encodings.

The parser accepts this structure in canonical DER and nothing else; because the encoding is
canonical, the bytes it accepts are exactly the bytes :func:`encode` gives back, so a key id
computed over either is the same.
"""

from __future__ import annotations

_SEQUENCE = 0x30
_INTEGER = 0x02
_BIT_STRING = 0x03
_OID = 0x06
_CONTEXT_0, _CONTEXT_1, _CONTEXT_2 = 0xA0, 0xA1, 0xA2

SALT_LEN = 48


def _length(length: int) -> bytes:
    """X.690 Section 8.1.3 definite length, short form below 128, else minimal long form."""
    if length < 0x80:
        return bytes([length])
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _length(len(content)) + content


def _oid(dotted: str) -> bytes:
    """X.690 Section 8.19: first two arcs as ``40 * a + b``, each arc base 128, big-endian."""
    arcs = [int(arc) for arc in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        body.extend(reversed(chunk))
    return _tlv(_OID, bytes(body))


def _uint(value: int) -> bytes:
    """X.690 Section 8.3: a non-negative INTEGER in the fewest two's-complement octets."""
    return _tlv(_INTEGER, value.to_bytes(value.bit_length() // 8 + 1, "big"))


_SHA384 = _tlv(_SEQUENCE, _oid("2.16.840.1.101.3.4.2.2"))
_MGF1_SHA384 = _tlv(_SEQUENCE, _oid("1.2.840.113549.1.1.8") + _SHA384)
_PSS_PARAMS = _tlv(
    _SEQUENCE,
    _tlv(_CONTEXT_0, _SHA384) + _tlv(_CONTEXT_1, _MGF1_SHA384) + _tlv(_CONTEXT_2, _uint(SALT_LEN)),
)
ALGORITHM_IDENTIFIER = _tlv(_SEQUENCE, _oid("1.2.840.113549.1.1.10") + _PSS_PARAMS)
"""The complete, fixed ``algorithm`` field: the only one :func:`parse` accepts."""


def encode(n: int, e: int) -> bytes:
    """DER of the SubjectPublicKeyInfo for the RSA public key ``(n, e)``."""
    rsa_public_key = _tlv(_SEQUENCE, _uint(n) + _uint(e))
    return _tlv(_SEQUENCE, ALGORITHM_IDENTIFIER + _tlv(_BIT_STRING, b"\x00" + rsa_public_key))


def _read(der: bytes, pos: int, tag: int) -> tuple[int, int]:
    """Read one TLV of ``tag`` at ``pos``; return the (start, end) of its content.

    Only definite, minimally encoded lengths (X.690 Section 10.1) are accepted.
    """
    if pos + 2 > len(der) or der[pos] != tag:
        raise ValueError("unexpected tag")
    first = der[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(der) or der[pos] == 0:
            raise ValueError("bad length")
        length = int.from_bytes(der[pos : pos + count], "big")
        if length < 0x80:
            raise ValueError("long-form length for a short content")
        pos += count
    if pos + length > len(der):
        raise ValueError("truncated")
    return pos, pos + length


def _read_uint(der: bytes, pos: int) -> tuple[int, int]:
    """Read a positive, minimally encoded INTEGER; return (value, end)."""
    start, end = _read(der, pos, _INTEGER)
    content = der[start:end]
    if not content or content[0] & 0x80:
        raise ValueError("empty or negative integer")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise ValueError("non-minimal integer")
    return int.from_bytes(content, "big"), end


def parse(der: bytes) -> tuple[int, int]:
    """Return ``(n, e)`` from an SPKI of exactly the shape above; ``ValueError`` otherwise."""
    start, end = _read(der, 0, _SEQUENCE)
    if end != len(der):
        raise ValueError("trailing data after the SubjectPublicKeyInfo")
    if der[start : start + len(ALGORITHM_IDENTIFIER)] != ALGORITHM_IDENTIFIER:
        raise ValueError("not the RSASSA-PSS SHA-384/MGF1-SHA-384/48 algorithm identifier")
    bits_start, bits_end = _read(der, start + len(ALGORITHM_IDENTIFIER), _BIT_STRING)
    if bits_end != end:
        raise ValueError("trailing data in the SubjectPublicKeyInfo")
    if bits_end - bits_start < 1 or der[bits_start] != 0:
        raise ValueError("subjectPublicKey has unused bits")
    key_start, key_end = _read(der, bits_start + 1, _SEQUENCE)
    if key_end != bits_end:
        raise ValueError("trailing data in the subjectPublicKey")
    n, pos = _read_uint(der, key_start)
    e, pos = _read_uint(der, pos)
    if pos != key_end:
        raise ValueError("trailing data in the RSAPublicKey")
    if encode(n, e) != der:  # belt and braces: canonical DER round-trips byte for byte
        raise ValueError("not canonical DER")
    return n, e
