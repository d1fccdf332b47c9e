"""RSASP1 on the system's OpenSSL (keys/_openssl_rsa.py) and the choice of backend.

The RFC 9474 vectors and round trips run on both backends in ``test_blind_rsa.py``; here: the
raw operation, its refusals and OpenSSL's error queue, agreement with gmpy2, threads, and how
:class:`BlindPrivateKey` picks its backend.
"""

from __future__ import annotations

import copy
import pickle
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from keys import _openssl_rsa
from keys.blind_rsa import (
    BlindPrivateKey,
    SigningFailure,
    blind_sign,
    generate_private_key,
)
from keys.errors import BlindRSAError

OPENSSL = _openssl_rsa.availability()
needs_openssl = pytest.mark.skipif(
    not OPENSSL.available, reason=f"no usable system libcrypto: {OPENSSL.detail}"
)


def pkcs8(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def error_queue() -> int:
    """The first code in this thread's OpenSSL error queue: 0 when it is empty."""
    lib = _openssl_rsa._load().lib
    assert lib is not None
    code: int = lib.ERR_peek_error()
    return code


@pytest.fixture(scope="module")
def rsa_keys() -> list[rsa.RSAPrivateKey]:
    return [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2)]


@pytest.fixture
def clean_queue() -> Iterator[None]:
    """Start with an empty error queue, as Python's ``_ssl`` and ``_hashlib`` leave it."""
    lib = _openssl_rsa._load().lib
    assert lib is not None
    lib.ERR_clear_error()
    yield
    assert error_queue() == 0


def reference(key: rsa.RSAPrivateKey, m: int) -> bytes:
    """m^d mod n with Python's ``pow``: no CRT, no OpenSSL, no gmpy2."""
    numbers = key.private_numbers()
    n = numbers.public_numbers.n
    return pow(m, numbers.d, n).to_bytes((n.bit_length() + 7) // 8, "big")


@needs_openssl
def test_raw_private_is_rsasp1(rsa_keys: list[rsa.RSAPrivateKey], clean_queue: None) -> None:
    key = rsa_keys[0]
    handle = _openssl_rsa.OpenSSLRSAKey(pkcs8(key))
    assert handle.modulus_len == 256
    n = key.private_numbers().public_numbers.n
    for m in (0, 1, 2, 12345, n - 1):  # small results keep their leading zero bytes
        assert handle.raw_private(m.to_bytes(256, "big")) == reference(key, m)


@needs_openssl
def test_refusals_raise_and_leave_the_error_queue_empty(
    rsa_keys: list[rsa.RSAPrivateKey], clean_queue: None
) -> None:
    """What blind_sign's own checks keep from OpenSSL is refused there too, queue emptied."""
    key = rsa_keys[0]
    handle = _openssl_rsa.OpenSSLRSAKey(pkcs8(key))
    n_bytes = key.private_numbers().public_numbers.n.to_bytes(256, "big")
    for m in (b"", b"\x01", bytes(255), bytes(257), n_bytes, b"\xff" * 256):
        with pytest.raises(BlindRSAError, match=r"^OpenSSL: EVP_PKEY_sign failed \(.+\)$"):
            handle.raw_private(m)
        assert error_queue() == 0
    assert handle.raw_private(bytes(255) + b"\x02") == reference(key, 2)  # still usable


@needs_openssl
def test_the_queue_would_keep_openssl_errors_without_clearing(
    rsa_keys: list[rsa.RSAPrivateKey], monkeypatch: pytest.MonkeyPatch, clean_queue: None
) -> None:
    """The check above means something: OpenSSL does queue errors for these refusals."""
    lib = _openssl_rsa._load().lib
    assert lib is not None
    clear = lib.ERR_clear_error
    handle = _openssl_rsa.OpenSSLRSAKey(pkcs8(rsa_keys[0]))
    monkeypatch.setattr(lib, "ERR_clear_error", lambda: None)
    with pytest.raises(BlindRSAError):
        handle.raw_private(b"\x01")
    assert error_queue() != 0
    clear()


@needs_openssl
def test_keys_openssl_cannot_use_are_refused(clean_queue: None) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(BlindRSAError, match="not an rsaEncryption private key"):
        _openssl_rsa.OpenSSLRSAKey(pkcs8(ec_key))
    for der in (b"", b"\x30\x03\x02\x01\x00", b"not DER at all"):
        with pytest.raises(BlindRSAError, match="d2i_AutoPrivateKey cannot parse the key"):
            _openssl_rsa.OpenSSLRSAKey(der)
        assert error_queue() == 0


@needs_openssl
def test_a_mismatched_openssl_key_never_yields_a_signature(
    rsa_keys: list[rsa.RSAPrivateKey], clean_queue: None
) -> None:
    """Signing with another key's private half: OpenSSL refuses m >= its own n with a
    SigningFailure (queue emptied), and a value it does sign fails the fault check."""
    small, large = sorted(rsa_keys, key=lambda k: k.private_numbers().public_numbers.n)
    sk = BlindPrivateKey(large, backend="openssl")
    object.__setattr__(sk, "_private", BlindPrivateKey(small, backend="openssl")._private)
    n_small = small.private_numbers().public_numbers.n
    with pytest.raises(SigningFailure, match=r"^signing failure: OpenSSL: EVP_PKEY_sign failed"):
        blind_sign(sk, n_small.to_bytes(256, "big"))  # below large's n: passes our checks
    with pytest.raises(SigningFailure, match=r"^signing failure: the signature failed"):
        blind_sign(sk, (n_small - 1).to_bytes(256, "big"))


@needs_openssl
@settings(max_examples=40, deadline=None)
@given(data=st.data(), key_index=st.integers(0, 1))
def test_both_backends_sign_alike(
    rsa_keys: list[rsa.RSAPrivateKey], data: st.DataObject, key_index: int
) -> None:
    """RSA signing is deterministic: the same key and input give the same bytes on both."""
    key = rsa_keys[key_index]
    ours = BlindPrivateKey(key, backend="openssl"), BlindPrivateKey(key, backend="gmpy2")
    n = key.private_numbers().public_numbers.n
    m = data.draw(st.integers(0, n - 1) | st.sampled_from([0, 1, n - 1]), label="m")
    blinded = m.to_bytes(256, "big")
    assert blind_sign(ours[0], blinded) == blind_sign(ours[1], blinded) == reference(key, m)


@needs_openssl
def test_threads_sign_at_once(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    """One key, eight threads signing together (OpenSSL runs without the GIL)."""
    key = rsa_keys[0]
    sk = BlindPrivateKey(key, backend="openssl")
    n = key.private_numbers().public_numbers.n
    ms = [(n - 1 - 7919 * i) * (i + 3) % n for i in range(64)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        signed = list(pool.map(lambda m: blind_sign(sk, m.to_bytes(256, "big")), ms))
    assert signed == [reference(key, m) for m in ms]


@needs_openssl
def test_handle_is_shared_not_copied_and_not_pickled(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    sk = BlindPrivateKey(rsa_keys[0], backend="openssl")
    handle = sk._private
    assert copy.copy(handle) is handle
    assert copy.deepcopy(handle) is handle
    with pytest.raises(TypeError):
        pickle.dumps(handle)


def test_backend_choice(rsa_keys: list[rsa.RSAPrivateKey]) -> None:
    key = rsa_keys[0]
    if OPENSSL.available:
        assert OPENSSL.library
        assert OPENSSL.detail.startswith("OpenSSL ")
    chosen = BlindPrivateKey(key)
    if OPENSSL.available:  # OpenSSL loads the key and passes the self-test here
        assert (chosen.backend, chosen.backend_note) == ("openssl", OPENSSL.detail)
    else:
        assert chosen.backend == "gmpy2"
        assert chosen.backend_note == f"OpenSSL is not available: {OPENSSL.detail}"
    assert BlindPrivateKey(key, backend="gmpy2").backend == "gmpy2"
    assert "gmpy2" in repr(BlindPrivateKey(key, backend="gmpy2"))
    with pytest.raises(ValueError, match="unknown blind RSA backend"):
        BlindPrivateKey(key, backend="gmp")  # type: ignore[arg-type]


def test_without_libcrypto_auto_falls_back_and_openssl_is_refused(
    rsa_keys: list[rsa.RSAPrivateKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = _openssl_rsa.Availability(False, "", "no libcrypto found")
    monkeypatch.setattr(_openssl_rsa, "_load", lambda: _openssl_rsa._Loaded(None, missing))
    assert _openssl_rsa.availability() == missing
    key = rsa_keys[0]
    assert BlindPrivateKey(key).backend == "gmpy2"
    assert BlindPrivateKey(key).backend_note == "OpenSSL is not available: no libcrypto found"
    assert generate_private_key(2048).backend == "gmpy2"
    with pytest.raises(BlindRSAError, match=r"^OpenSSL is not available: no libcrypto found$"):
        BlindPrivateKey(key, backend="openssl")
    m = 5
    assert blind_sign(BlindPrivateKey(key), m.to_bytes(256, "big")) == reference(key, m)


def _flip_last_bit(
    real: Callable[[_openssl_rsa.OpenSSLRSAKey, bytes], bytes],
) -> Callable[[_openssl_rsa.OpenSSLRSAKey, bytes], bytes]:
    def wrong(handle: _openssl_rsa.OpenSSLRSAKey, m: bytes) -> bytes:
        out = real(handle, m)
        return out[:-1] + bytes([out[-1] ^ 1])

    return wrong


@needs_openssl
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("load", r"OpenSSL: d2i_AutoPrivateKey cannot parse the key$"),
        ("no padding refused", r"OpenSSL's self-test: OpenSSL: EVP_PKEY_CTX_set_rsa_padding"),
        ("wrong result", r"OpenSSL's self-test failed the check s\^e mod n == m$"),
    ],
)
def test_an_openssl_that_cannot_sign_is_left_for_gmpy2(
    rsa_keys: list[rsa.RSAPrivateKey],
    monkeypatch: pytest.MonkeyPatch,
    clean_queue: None,
    fault: str,
    reason: str,
) -> None:
    """libcrypto loads, but its configuration (FIPS, providers) refuses the key or unpadded
    RSA, or it signs wrongly: "auto" falls back to gmpy2 and says why, "openssl" refuses."""
    lib = _openssl_rsa._load().lib
    assert lib is not None
    if fault == "load":
        monkeypatch.setattr(lib, "d2i_AutoPrivateKey", lambda *args: None)
    elif fault == "no padding refused":
        monkeypatch.setattr(lib, "EVP_PKEY_CTX_set_rsa_padding", lambda ctx, padding: 0)
    else:
        real = _openssl_rsa.OpenSSLRSAKey.raw_private
        monkeypatch.setattr(_openssl_rsa.OpenSSLRSAKey, "raw_private", _flip_last_bit(real))
    key = rsa_keys[0]
    fallback = BlindPrivateKey(key)
    assert fallback.backend == "gmpy2"
    assert fallback.backend_note.startswith(f"{OPENSSL.detail} cannot sign with this key: ")
    assert re.search(reason, fallback.backend_note)
    with pytest.raises(BlindRSAError, match=reason):
        BlindPrivateKey(key, backend="openssl")
    m = 12345
    assert blind_sign(fallback, m.to_bytes(256, "big")) == reference(key, m)
    assert error_queue() == 0
