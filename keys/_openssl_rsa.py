"""RSASP1 (the raw RSA private-key operation) by the system's OpenSSL libcrypto, through ctypes.

Private to ``keys``: :mod:`keys.blind_rsa` is the only caller. It checks the input's length
and range before :meth:`OpenSSLRSAKey.raw_private` and the result (RFC 9474 Section 4.3 fault
check) after it.

Why OpenSSL: an RSA private operation with ``RSA_NO_PADDING`` is exactly RSASP1 (RFC 8017
Section 5.2.1), and OpenSSL computes it in constant time (``BN_mod_exp_mont_consttime`` on both
CRT halves, or its AVX-512 IFMA code doing both at once), with base blinding (``m * r^e``
before, ``* r^-1`` after), and checks its own CRT result (on a mismatch it recomputes without
the CRT rather than return the faulty CRT value). It is also two to three times faster than gmpy2's
``powmod_sec`` with the GMP of the PyPI wheel (``bench/README.md``). ``cryptography`` offers no
unpadded private operation, hence ctypes, on the libcrypto that ``ctypes.util.find_library``
finds: on Linux the one Python's ``ssl`` and ``hashlib`` load and ``openssl speed`` measures.

The library is looked up, loaded and checked (OpenSSL 3.0 or later) once per process, on first
use. Where it cannot be used (macOS, whose ``/usr/lib/libcrypto`` aborts a process that loads
it unversioned; Windows; OpenSSL before 3.0), :func:`availability` says why and the caller
falls back to gmpy2. Loading is not the whole answer: a FIPS or provider configuration may
still refuse a key or unpadded RSA, so :mod:`keys.blind_rsa` has each key sign a test value
before use, and falls back the same way if that fails.

Threads: ctypes releases the GIL for each foreign call, so threads sign in parallel while
OpenSSL works. One ``EVP_PKEY`` may serve several threads at once; each call makes its own
``EVP_PKEY_CTX``.

Errors: OpenSSL keeps one error queue per thread, shared by everything in the process that
uses this libcrypto (Python's ``_ssl`` and ``_hashlib`` among them). Every failure here empties
it (``ERR_clear_error``) before raising :class:`keys.errors.BlindRSAError`, so that no stale
entry surfaces later in an unrelated TLS or hash call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
import weakref
from typing import NamedTuple, NoReturn

from keys.errors import BlindRSAError

__all__ = ["Availability", "OpenSSLRSAKey", "availability"]

_MIN_VERSION = 0x3000_0000  # OpenSSL_version_num() of 3.0.0
_OPENSSL_VERSION = 0  # OpenSSL_version(t): the "OpenSSL 3.0.19 27 Jan 2026" text
_EVP_PKEY_RSA = 6  # NID_rsaEncryption
_RSA_NO_PADDING = 3

_P = ctypes.c_void_p
_SIGNATURES: dict[str, tuple[type | None, list[type]]] = {  # name: (restype, argtypes)
    "OpenSSL_version_num": (ctypes.c_ulong, []),
    "OpenSSL_version": (ctypes.c_char_p, [ctypes.c_int]),
    # EVP_PKEY *d2i_AutoPrivateKey(EVP_PKEY **a, const unsigned char **pp, long length)
    "d2i_AutoPrivateKey": (_P, [_P, ctypes.POINTER(_P), ctypes.c_long]),
    "EVP_PKEY_free": (None, [_P]),
    "EVP_PKEY_get_base_id": (ctypes.c_int, [_P]),
    "EVP_PKEY_get_size": (ctypes.c_int, [_P]),
    "EVP_PKEY_CTX_new": (_P, [_P, _P]),  # (pkey, ENGINE *e)
    "EVP_PKEY_CTX_free": (None, [_P]),
    "EVP_PKEY_sign_init": (ctypes.c_int, [_P]),
    "EVP_PKEY_CTX_set_rsa_padding": (ctypes.c_int, [_P, ctypes.c_int]),
    # int EVP_PKEY_sign(ctx, unsigned char *sig, size_t *siglen, const unsigned char *tbs,
    #                   size_t tbslen)
    "EVP_PKEY_sign": (
        ctypes.c_int,
        [_P, _P, ctypes.POINTER(ctypes.c_size_t), _P, ctypes.c_size_t],
    ),
    "ERR_peek_error": (ctypes.c_ulong, []),
    "ERR_reason_error_string": (ctypes.c_char_p, [ctypes.c_ulong]),
    "ERR_clear_error": (None, []),
}


class Availability(NamedTuple):
    """Whether RSASP1 can run on the system's OpenSSL, and what it is or why not."""

    available: bool
    library: str
    """The library loaded (as ``ctypes`` was given it), or "" when none was."""
    detail: str
    """OpenSSL's version text when available, else why not."""


class _Loaded(NamedTuple):
    lib: ctypes.CDLL | None
    availability: Availability


@functools.cache
def _load() -> _Loaded:
    """Find, load and bind libcrypto, once per process."""
    if sys.platform == "darwin":
        reason = "macOS's libcrypto aborts a process that loads it without a version"
        return _Loaded(None, Availability(False, "", reason))
    name = ctypes.util.find_library("crypto")
    if name is None:
        return _Loaded(None, Availability(False, "", "no libcrypto found"))
    try:
        lib = ctypes.CDLL(name)
        version_num = lib.OpenSSL_version_num
    except (OSError, AttributeError) as exc:  # not loadable, or not OpenSSL 1.1 or later
        return _Loaded(None, Availability(False, name, f"cannot use {name}: {exc}"))
    version_num.restype, version_num.argtypes = ctypes.c_ulong, []
    if version_num() < _MIN_VERSION:
        return _Loaded(None, Availability(False, name, f"{name} is older than OpenSSL 3.0"))
    try:
        for symbol, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(lib, symbol)
            function.restype, function.argtypes = restype, argtypes
    except AttributeError as exc:
        return _Loaded(None, Availability(False, name, f"cannot use {name}: {exc}"))
    version: bytes = lib.OpenSSL_version(_OPENSSL_VERSION)
    return _Loaded(lib, Availability(True, name, version.decode("ascii", "replace")))


def availability() -> Availability:
    """Whether :class:`OpenSSLRSAKey` can be used here; loads libcrypto on the first call."""
    return _load().availability


def _fail(lib: ctypes.CDLL, what: str, *, queued: bool = True) -> NoReturn:
    """Empty this thread's OpenSSL error queue, then raise.

    ``queued``: the failure is OpenSSL's own, so the first reason it queued is worth quoting.
    """
    reason: bytes | None = lib.ERR_reason_error_string(lib.ERR_peek_error()) if queued else None
    lib.ERR_clear_error()
    because = f" ({reason.decode('ascii', 'replace')})" if reason else ""
    raise BlindRSAError(f"OpenSSL: {what}{because}")


class OpenSSLRSAKey:
    """An RSA private key held by libcrypto (an ``EVP_PKEY``), freed when this object is.

    Immutable, so copying returns the same object; it cannot be pickled.
    """

    modulus_len: int
    """The length of n in bytes: of every input and output of :meth:`raw_private`."""

    def __init__(self, pkcs8_der: bytes | bytearray) -> None:
        """Load an unencrypted PKCS#8 DER rsaEncryption private key into libcrypto.

        OpenSSL parses a copy, which is zeroed right after; the caller's bytes are its own.
        """
        loaded = _load()
        lib = loaded.lib
        if lib is None:
            raise BlindRSAError(f"OpenSSL is not available: {loaded.availability.detail}")
        copy = (ctypes.c_ubyte * len(pkcs8_der)).from_buffer_copy(pkcs8_der)
        cursor = _P(ctypes.addressof(copy))
        try:
            pkey: int | None = lib.d2i_AutoPrivateKey(None, ctypes.byref(cursor), len(copy))
        finally:
            ctypes.memset(copy, 0, len(copy))
        if not pkey:
            _fail(lib, "d2i_AutoPrivateKey cannot parse the key")
        size: int = lib.EVP_PKEY_get_size(pkey)
        if lib.EVP_PKEY_get_base_id(pkey) != _EVP_PKEY_RSA or size <= 0:
            lib.EVP_PKEY_free(pkey)
            _fail(lib, "not an rsaEncryption private key", queued=False)
        self._lib = lib
        self._pkey = pkey
        self.modulus_len = size
        weakref.finalize(self, lib.EVP_PKEY_free, pkey)

    def raw_private(self, m: bytes) -> bytes:
        """RSASP1 without padding: ``m^d mod n``, exactly :attr:`modulus_len` bytes.

        ``m`` must be :attr:`modulus_len` bytes and below n; the caller checks, and OpenSSL
        refuses anything else with :class:`~keys.errors.BlindRSAError`. The GIL is released
        while OpenSSL computes.
        """
        lib, k = self._lib, self.modulus_len
        out = ctypes.create_string_buffer(k)
        out_len = ctypes.c_size_t(k)
        ctx: int | None = lib.EVP_PKEY_CTX_new(self._pkey, None)
        if not ctx:
            _fail(lib, "EVP_PKEY_CTX_new failed")
        try:
            if lib.EVP_PKEY_sign_init(ctx) != 1:
                _fail(lib, "EVP_PKEY_sign_init failed")
            if lib.EVP_PKEY_CTX_set_rsa_padding(ctx, _RSA_NO_PADDING) != 1:
                _fail(lib, "EVP_PKEY_CTX_set_rsa_padding failed")
            if lib.EVP_PKEY_sign(ctx, out, ctypes.byref(out_len), m, len(m)) != 1:
                _fail(lib, "EVP_PKEY_sign failed")
        finally:
            lib.EVP_PKEY_CTX_free(ctx)
        if out_len.value != k:
            _fail(lib, f"EVP_PKEY_sign returned {out_len.value} bytes, not {k}", queued=False)
        return out.raw

    def __copy__(self) -> OpenSSLRSAKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> OpenSSLRSAKey:
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError("an OpenSSL key handle cannot be pickled")
