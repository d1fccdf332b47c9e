"""Generating, serializing and loading key material for each algorithm.

Private halves are serialized to bytes only to be sealed (``keys.envelope``); public halves are
kept as SubjectPublicKeyInfo DER (raw 32 bytes for Ed25519, nothing for HMAC secrets). Key ids of
asymmetric keys are RFC 7638 JWK thumbprints, so they are derived, never chosen.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from keys.errors import KeysError
from keys.model import Algorithm

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

RSA_BITS = 2048


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate(algorithm: Algorithm) -> tuple[bytes, bytes]:
    """A new key as ``(private_bytes, public_bytes)``; private bytes are to be sealed at once."""
    if algorithm in (Algorithm.HMAC_SHA256, Algorithm.A256GCM):
        return os.urandom(32), b""
    if algorithm is Algorithm.ED25519:
        ed = ed25519.Ed25519PrivateKey.generate()
        raw = ed.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return raw, public_bytes(ed.public_key())
    key: PrivateKey
    if algorithm in (Algorithm.RS256, Algorithm.PS256):
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    elif algorithm is Algorithm.ES256:
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        raise KeysError(f"no generator for {algorithm}")
    private = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private, public_bytes(key.public_key())


def public_bytes(public: PublicKey) -> bytes:
    if isinstance(public, ed25519.Ed25519PublicKey):
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private(algorithm: Algorithm, private: bytes) -> PrivateKey:
    if algorithm is Algorithm.ED25519:
        return ed25519.Ed25519PrivateKey.from_private_bytes(private)
    key = serialization.load_der_private_key(private, password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise KeysError(f"stored key is not usable for {algorithm}")
    return key


def load_public(algorithm: Algorithm, public: bytes) -> PublicKey:
    if algorithm is Algorithm.ED25519:
        return ed25519.Ed25519PublicKey.from_public_bytes(public)
    key = serialization.load_der_public_key(public)
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise KeysError(f"stored public key is not usable for {algorithm}")
    return key


def public_jwk(algorithm: Algorithm, public: bytes) -> dict[str, Any]:
    """The public JWK (RFC 7517) without ``kid``/``alg``/``use``, for JOSE algorithms only."""
    key = load_public(algorithm, public)
    if isinstance(key, rsa.RSAPublicKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(key, as_dict=True)
    else:
        jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64url(public)}
    return {k: v for k, v in jwk.items() if k in _THUMBPRINT_MEMBERS[jwk["kty"]]}


_THUMBPRINT_MEMBERS = {
    "RSA": ("e", "kty", "n"),
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
}


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3: SHA-256 over the required members, sorted, without whitespace."""
    members = {k: jwk[k] for k in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def new_kid(algorithm: Algorithm, public: bytes) -> str:
    if algorithm in (Algorithm.HMAC_SHA256, Algorithm.A256GCM):
        return "sec-" + b64url(os.urandom(12))
    return thumbprint(public_jwk(algorithm, public))
