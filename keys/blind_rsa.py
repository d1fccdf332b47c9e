"""RSA blind signatures: RFC 9474 (RSABSSA), its four SHA-384 variants.

The protocol (RFC 9474 Section 4); only the server holds the private key::

    client                                            server
    input_msg = prepare(variant, msg)                            (Section 4.1)
    result = blind(variant, pk, input_msg)                       (Section 4.2)
                      result.blinded_msg  ------------>
                                          blind_sig = blind_sign(sk, blinded_msg)   (4.3)
                      <------------  blind_sig
    sig = finalize(variant, pk, input_msg, blind_sig, result.inv)                   (4.4)
    anyone, later: verify(variant, pk, input_msg, sig)                               (4.5)

``input_msg``, not ``msg``, is what the signature covers: for the randomized variants it is a
32-byte random prefix followed by ``msg``, and the verifier needs all of it.

Errors, all under :class:`keys.errors.BlindRSAError` (RFC 9474 error names in quotes)::

    BlindRSAError
    ├── InvalidInput       wrong length or out of range: "unexpected input size", "invalid
    │                      input", "message representative out of range"
    ├── InvalidKey         a public key too small, malformed, or not in the published SPKI shape
    ├── BlindingError      r has no inverse modulo n: "blinding error"
    ├── SigningFailure     the private operation failed, or its result failed the fault check
    │                      s^e mod n == m: "signing failure"
    └── VerificationError  the signature does not verify: "invalid signature", for any reason

Side channels (RFC 9474 Section 7.1). :func:`blind_sign` is a remote private-key oracle. Its
RSASP1 runs on one of two backends, chosen once per key (:class:`BlindPrivateKey`):

- OpenSSL, wherever the system's libcrypto is OpenSSL 3.0 or later (Linux; see
  :mod:`keys._openssl_rsa`) and signs a test value correctly with the key (a FIPS or provider
  configuration may refuse the key or unpadded RSA): OpenSSL's RSA private operation without
  padding. Constant time (``BN_mod_exp_mont_consttime`` on both CRT halves, or its AVX-512
  IFMA code) and blinded: OpenSSL multiplies m by ``r^e`` for a fresh random r before
  exponentiating and the result by ``r^-1`` after, so the values it computes on are not the
  attacker's m, which also defends against power, EM and frequency-scaling channels. It checks
  its own CRT result too and, on a mismatch, recomputes without the CRT.
- gmpy2, the portable fallback (macOS, Windows, no usable libcrypto, or one that fails the
  self-test; ``BlindPrivateKey.backend_note`` says which). Both CRT half-exponentiations use
  ``gmpy2.powmod_sec`` (GMP's ``mpz_powm_sec``: same time and cache access pattern for all
  operands of the same sizes), which also reduces the blinded message modulo p and q
  internally; the only other reduction by a secret modulus, in Garner's recombination, goes
  through ``powmod_sec`` with exponent 1. What is left to observe is operand sizes. This path
  does not blind m: against remote timing and cache observers, the threat here, ``powmod_sec``
  already gives what blinding gives (the work done and the memory touched do not depend on the
  values of m, the primes or the exponents), and with gmpy2 each of blinding's four
  multiplications modulo n would be a ``powmod_sec`` of its own: a third to a half again the
  cost of a signature (``bench/README.md``).

On both, the RFC's fault check follows and uses plain ``gmpy2.powmod``: m is the client's own
input and s is sent back to it (a faulty s is never released). On the client, r and inv link a
signature to its request, so ``r^e`` uses ``powmod_sec``, products are reduced with
``powmod_sec(x, 1, n)``, the inverse is computed on ``r * t`` for a second random t
(``gmpy2.invert`` is not constant time), and the coprimality check runs on the blinded message,
which is public anyway.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import gmpy2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keys import _openssl_rsa, _pss, _spki
from keys.errors import BlindRSAError

__all__ = [
    "MIN_MODULUS_BITS",
    "Backend",
    "BlindPrivateKey",
    "BlindPublicKey",
    "BlindingError",
    "BlindingResult",
    "InvalidInput",
    "InvalidKey",
    "RandomBytes",
    "SigningFailure",
    "Variant",
    "VerificationError",
    "blind",
    "blind_sign",
    "finalize",
    "generate_private_key",
    "prepare",
    "verify",
]

RandomBytes = Callable[[int], bytes]
"""A source of randomness: ``rng(k)`` returns k uniformly random bytes."""

Backend = Literal["auto", "openssl", "gmpy2"]
"""Who computes RSASP1 in :func:`blind_sign` (see :class:`BlindPrivateKey`)."""

MIN_MODULUS_BITS = 2048
"""Smallest modulus accepted for a key (the RFC 9474 vectors use 4096 bits)."""

_MSG_PREFIX_LEN = 32  # RFC 9474 Section 4.1
_MAX_DRAWS = 128  # rejection sampling gives up after this many draws (odds 2^-128 per call)
_INVALID_SIGNATURE = "invalid signature"

_Mpz = Any  # a gmpy2.mpz; gmpy2 ships no type information


class InvalidInput(BlindRSAError):
    """An input has the wrong length or is out of range (RFC 9474 Sections 4.2 to 4.4)."""


class InvalidKey(BlindRSAError):
    """A public key is too small, malformed, or not the published RSASSA-PSS SPKI."""


class BlindingError(BlindRSAError):
    """The blinding factor r has no inverse modulo n (RFC 9474 Section 4.2, step 8)."""


class SigningFailure(BlindRSAError):
    """RSASP1 failed, or its result failed the fault check ``s^e mod n == m`` (RFC 9474 4.3)."""


class VerificationError(BlindRSAError):
    """The signature is not valid for this key, variant and prepared message.

    Raised with the same message whatever went wrong, so that it is no oracle.
    """


class Variant(StrEnum):
    """The named variants of RFC 9474 Section 5; values are the RFC's names.

    All four hash with SHA-384 and use MGF1-SHA-384; they differ in the PSS salt length and
    in whether :func:`prepare` adds a random prefix. RFC 9474 Section 5 recommends the
    randomized variants; a key must serve a single variant (Section 6.2).
    """

    PSS_RANDOMIZED = "RSABSSA-SHA384-PSS-Randomized"
    PSSZERO_RANDOMIZED = "RSABSSA-SHA384-PSSZERO-Randomized"
    PSS_DETERMINISTIC = "RSABSSA-SHA384-PSS-Deterministic"
    PSSZERO_DETERMINISTIC = "RSABSSA-SHA384-PSSZERO-Deterministic"

    @property
    def salt_len(self) -> int:
        """The PSS salt length in bytes: 48 (PSS) or 0 (PSSZERO)."""
        return 0 if "-PSSZERO-" in self.value else _pss.HASH_LEN

    @property
    def randomized(self) -> bool:
        """Whether :func:`prepare` prepends a random 32-byte prefix (PrepareRandomize)."""
        return self.value.endswith("-Randomized")


@dataclass(frozen=True)
class BlindPublicKey:
    """An RSA public key ``(n, e)`` for RSABSSA, published as an RSASSA-PSS SPKI."""

    n: int
    e: int
    _spki: bytes = field(init=False, repr=False, compare=False)
    _n: _Mpz = field(init=False, repr=False, compare=False)
    _e: _Mpz = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n.bit_length() < MIN_MODULUS_BITS or self.n % 2 == 0:
            raise InvalidKey(f"the modulus must be odd and at least {MIN_MODULUS_BITS} bits")
        if not 3 <= self.e < self.n or self.e % 2 == 0:
            raise InvalidKey("the public exponent must be odd, at least 3 and below n")
        object.__setattr__(self, "_spki", _spki.encode(self.n, self.e))
        object.__setattr__(self, "_n", gmpy2.mpz(self.n))
        object.__setattr__(self, "_e", gmpy2.mpz(self.e))

    @classmethod
    def from_spki(cls, der: bytes) -> BlindPublicKey:
        """Parse the DER SubjectPublicKeyInfo that :meth:`spki` produces, and only that.

        Anything else (rsaEncryption, other PSS parameters, non-canonical DER, trailing
        bytes) raises :class:`InvalidKey`. The key keeps the bytes it was parsed from.
        """
        try:
            n, e = _spki.parse(der)
        except ValueError as exc:
            raise InvalidKey(f"not an RSABSSA SubjectPublicKeyInfo: {exc}") from None
        key = cls(n, e)
        object.__setattr__(key, "_spki", bytes(der))
        return key

    @property
    def modulus_len(self) -> int:
        """``modulus_len`` (kLen): the length of n in bytes."""
        return (self.n.bit_length() + 7) // 8

    def spki(self) -> bytes:
        """The DER SubjectPublicKeyInfo with the RSASSA-PSS OID and SHA-384/48 parameters."""
        return self._spki

    def key_id(self) -> bytes:
        """SHA-256 of :meth:`spki`, the key id Privacy Pass calls ``token_key_id``."""
        return hashlib.sha256(self._spki).digest()


@dataclass(frozen=True, slots=True)
class _Crt:
    p: _Mpz
    q: _Mpz
    dp: _Mpz
    dq: _Mpz
    qinv: _Mpz  # q^-1 mod p
    n: _Mpz


@dataclass(frozen=True, eq=False)
class BlindPrivateKey:
    """The server's RSABSSA private key, wrapping a ``cryptography`` RSA private key.

    ``backend`` chooses, once, here, who computes RSASP1 for :func:`blind_sign`: ``"openssl"``
    hands the key to the system's libcrypto (as PKCS#8 DER, not kept) and has it sign one
    random value below n, which must pass the check ``s^e mod n == m`` (a known-answer
    self-test: one private operation); ``"gmpy2"`` converts the CRT parameters to
    ``gmpy2.mpz``; ``"auto"`` (the default) takes OpenSSL where
    :func:`keys._openssl_rsa.availability` says it can be used and it loads the key and passes
    the self-test, else gmpy2. Afterwards ``backend`` names the one in use and
    ``backend_note`` says why: OpenSSL's version text, or why ``"auto"`` fell back to gmpy2.
    Asking for ``"openssl"`` where it is not available, refuses the key or fails the self-test
    raises :class:`~keys.errors.BlindRSAError`.

    The wrapped key is trusted to be consistent (``cryptography`` checks keys it loads);
    :func:`blind_sign` still checks every signature it makes.
    """

    key: rsa.RSAPrivateKey
    backend: Backend = field(default="auto", kw_only=True)
    backend_note: str = field(init=False, default="")
    _public: BlindPublicKey = field(init=False, repr=False)
    _private: _Crt | _openssl_rsa.OpenSSLRSAKey = field(init=False, repr=False)

    def __post_init__(self) -> None:
        numbers = self.key.public_key().public_numbers()
        public = BlindPublicKey(numbers.n, numbers.e)
        private: _Crt | _openssl_rsa.OpenSSLRSAKey
        if self.backend == "auto":
            private, note = _auto_key(self.key, public)
        elif self.backend == "openssl":
            private, note = _openssl_key(self.key, public), _openssl_rsa.availability().detail
        elif self.backend == "gmpy2":
            private, note = _crt_key(self.key, public), "gmpy2 was asked for"
        else:
            raise ValueError(f"unknown blind RSA backend {self.backend!r}")
        backend = "gmpy2" if isinstance(private, _Crt) else "openssl"
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "backend_note", note)
        object.__setattr__(self, "_public", public)
        object.__setattr__(self, "_private", private)

    def public_key(self) -> BlindPublicKey:
        """The matching public key."""
        return self._public


@dataclass(frozen=True)
class BlindingResult:
    """The output of :func:`blind` (RFC 9474 Section 4.2).

    Send ``blinded_msg`` to the server; keep ``inv`` (r^-1 mod n) secret until
    :func:`finalize`, then forget it: with it, the signature links to the request.
    """

    blinded_msg: bytes
    inv: int = field(repr=False)


def generate_private_key(bits: int = 2048, *, backend: Backend = "auto") -> BlindPrivateKey:
    """Generate a fresh RSABSSA key pair with e = 65537 (RFC 9474 Section 6.2).

    Use one key for one variant only. ``backend`` is :class:`BlindPrivateKey`'s.
    """
    if bits < MIN_MODULUS_BITS:
        raise InvalidKey(f"the modulus must be at least {MIN_MODULUS_BITS} bits")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return BlindPrivateKey(key, backend=backend)


def prepare(variant: Variant, msg: bytes, rng: RandomBytes = secrets.token_bytes) -> bytes:
    """Prepare (RFC 9474 Section 4.1): the message the protocol actually signs.

    Randomized variants return ``rng(32) || msg`` (PrepareRandomize); deterministic variants
    return ``msg`` unchanged (PrepareIdentity).
    """
    if variant.randomized:
        return _draw(rng, _MSG_PREFIX_LEN) + msg
    return bytes(msg)


def blind(
    variant: Variant,
    pk: BlindPublicKey,
    prepared_msg: bytes,
    rng: RandomBytes = secrets.token_bytes,
) -> BlindingResult:
    """Blind (RFC 9474 Section 4.2): PSS-encode the prepared message and blind it.

    ``rng`` is called, in this order, for the PSS salt (48 bytes; PSS variants only), for r
    (``modulus_len`` bytes per rejection-sampling draw, uniform in [1, n)), then likewise
    for t, which only masks the computation of r^-1. A test can therefore reproduce a
    published vector by scripting the salt and ``I2OSP(r, modulus_len)``.
    """
    n, k = pk._n, pk.modulus_len
    salt = _draw(rng, variant.salt_len) if variant.salt_len else b""
    encoded_msg = _pss.emsa_pss_encode(prepared_msg, pk.n.bit_length() - 1, salt)
    m = gmpy2.mpz.from_bytes(encoded_msg, "big")
    r = _random_below(rng, pk.n)
    t = _random_below(rng, pk.n)
    try:
        inv = _mulmod(gmpy2.invert(_mulmod(r, t, n), n), t, n)
    except ZeroDivisionError:
        raise BlindingError("blinding error: r has no inverse modulo n") from None
    z = _mulmod(m, gmpy2.powmod_sec(r, pk._e, n), n)  # m * RSAVP1(pk, r) mod n
    # gcd(z, n) == gcd(m, n) because r is invertible, and z is public: this is the
    # is_coprime(m, n) check of steps 4 and 5 without running a gcd on m itself.
    if gmpy2.gcd(z, n) != 1:
        raise InvalidInput("invalid input: the encoded message is not coprime with n")
    return BlindingResult(blinded_msg=z.to_bytes(k, "big"), inv=int(inv))


def blind_sign(sk: BlindPrivateKey, blinded_msg: bytes) -> bytes:
    """BlindSign (RFC 9474 Section 4.3): the RSA private-key operation, checked.

    Computes ``s = RSASP1(sk, m)`` on the key's backend (OpenSSL or gmpy2, both with the CRT
    and constant-time exponentiation), then refuses to return s unless ``RSAVP1(pk, s) == m``
    (the fault check of Section 4.3 step 4 and Section 7.1: a faulty CRT signature would
    reveal a factor of n). With OpenSSL the GIL is released while it computes, so several
    threads sign in parallel.
    """
    pk = sk._public
    k = pk.modulus_len
    if len(blinded_msg) != k:
        raise InvalidInput(f"unexpected input size: the blinded message must be {k} bytes")
    m = gmpy2.mpz.from_bytes(blinded_msg, "big")
    if m >= pk._n:
        raise InvalidInput("message representative out of range")
    private = sk._private
    if isinstance(private, _Crt):
        s = _rsasp1_crt(private, m)
    else:
        try:
            s = gmpy2.mpz.from_bytes(private.raw_private(blinded_msg), "big")
        except BlindRSAError as exc:
            raise SigningFailure(f"signing failure: {exc}") from None
    if gmpy2.powmod(s, pk._e, pk._n) != m:
        raise SigningFailure("signing failure: the signature failed the fault check")
    blind_sig: bytes = s.to_bytes(k, "big")
    return blind_sig


def finalize(
    variant: Variant,
    pk: BlindPublicKey,
    prepared_msg: bytes,
    blind_sig: bytes,
    inv: int,
) -> bytes:
    """Finalize (RFC 9474 Section 4.4): unblind the server's answer and verify it.

    Raises :class:`InvalidInput` for a ``blind_sig`` of the wrong length or out of range,
    and :class:`VerificationError` if the unblinded signature does not verify.
    """
    k, n = pk.modulus_len, pk._n
    if len(blind_sig) != k:
        raise InvalidInput(f"unexpected input size: the blind signature must be {k} bytes")
    z = gmpy2.mpz.from_bytes(blind_sig, "big")
    if z >= n:
        raise InvalidInput("the blind signature is not below n")
    if not 0 < inv < pk.n:
        raise InvalidInput("the blinding inverse is not in [1, n)")
    sig: bytes = _mulmod(z, inv, n).to_bytes(k, "big")
    verify(variant, pk, prepared_msg, sig)
    return sig


def verify(variant: Variant, pk: BlindPublicKey, prepared_msg: bytes, sig: bytes) -> None:
    """RSASSA-PSS-VERIFY (RFC 8017 Section 8.1.2) as RFC 9474 Section 4.5 requires.

    SHA-384, MGF1-SHA-384 and the variant's exact salt length. Returns nothing; raises
    :class:`VerificationError` on any failure, including a ``sig`` of the wrong length.
    """
    if len(sig) != pk.modulus_len:
        raise VerificationError(_INVALID_SIGNATURE)
    s = gmpy2.mpz.from_bytes(sig, "big")
    if s >= pk._n:
        raise VerificationError(_INVALID_SIGNATURE)
    em_bits = pk.n.bit_length() - 1
    m = gmpy2.powmod(s, pk._e, pk._n)  # RSAVP1; public values only
    if m.bit_length() > em_bits:
        raise VerificationError(_INVALID_SIGNATURE)
    em = m.to_bytes((em_bits + 7) // 8, "big")
    if not _pss.emsa_pss_verify(prepared_msg, em, em_bits, variant.salt_len):
        raise VerificationError(_INVALID_SIGNATURE)


def _auto_key(
    key: rsa.RSAPrivateKey, public: BlindPublicKey
) -> tuple[_Crt | _openssl_rsa.OpenSSLRSAKey, str]:
    """OpenSSL's key if libcrypto loads it and passes the self-test, else gmpy2's; and why."""
    openssl = _openssl_rsa.availability()
    if not openssl.available:
        return _crt_key(key, public), f"OpenSSL is not available: {openssl.detail}"
    try:
        return _openssl_key(key, public), openssl.detail
    except BlindRSAError as exc:
        return _crt_key(key, public), f"{openssl.detail} cannot sign with this key: {exc}"


def _openssl_key(key: rsa.RSAPrivateKey, public: BlindPublicKey) -> _openssl_rsa.OpenSSLRSAKey:
    """The key inside the system's libcrypto, self-tested; the DER given to it is dropped.

    The self-test signs a random m in [2, n - 1) and checks ``s^e mod n == m``, which only
    the right s passes (e is invertible modulo lambda(n)): it proves that this libcrypto, as
    configured, loads the key and computes RSASP1 without padding, before the key serves a
    request. A comparison with gmpy2 would add nothing but a second private operation.
    """
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    private = _openssl_rsa.OpenSSLRSAKey(der)
    if private.modulus_len != public.modulus_len:
        raise InvalidKey("OpenSSL reads the key with another modulus length")
    m = gmpy2.mpz(2 + secrets.randbelow(public.n - 3))
    try:
        s = gmpy2.mpz.from_bytes(private.raw_private(m.to_bytes(public.modulus_len, "big")), "big")
    except BlindRSAError as exc:
        raise SigningFailure(f"signing failure: OpenSSL's self-test: {exc}") from None
    if gmpy2.powmod(s, public._e, public._n) != m:
        raise SigningFailure("signing failure: OpenSSL's self-test failed the check s^e mod n == m")
    return private


def _crt_key(key: rsa.RSAPrivateKey, public: BlindPublicKey) -> _Crt:
    """The CRT parameters as ``gmpy2.mpz``, converted once per key."""
    numbers = key.private_numbers()
    mpz = gmpy2.mpz
    return _Crt(
        p=mpz(numbers.p),
        q=mpz(numbers.q),
        dp=mpz(numbers.dmp1),
        dq=mpz(numbers.dmq1),
        qinv=mpz(numbers.iqmp),
        n=public._n,
    )


def _rsasp1_crt(crt: _Crt, m: _Mpz) -> _Mpz:
    """RSASP1 (RFC 8017 Section 5.2.1, case 2.b) for a two-prime key.

    ``powmod_sec`` takes m as is and reduces it modulo p and q inside GMP's
    side-channel-silent code; ``m1 - m2 + n`` is positive and congruent to ``m1 - m2``
    modulo p, so no branch depends on which half is larger.

    Garner's reduction costs 3-4% of a signature: GMP walks every bit of the exponent's
    limb, so exponent 1 means 64 Montgomery squarings. ``%`` would be cheaper, but GMP's
    division corrects its quotient estimates with data-dependent branches.
    """
    m1 = gmpy2.powmod_sec(m, crt.dp, crt.p)
    m2 = gmpy2.powmod_sec(m, crt.dq, crt.q)
    h = gmpy2.powmod_sec(crt.qinv * (m1 - m2 + crt.n), 1, crt.p)
    return m2 + h * crt.q


def _mulmod(a: _Mpz, b: _Mpz, n: _Mpz) -> _Mpz:
    """``a * b mod n``, reduced by ``powmod_sec`` so the reduction's timing is data-blind."""
    return gmpy2.powmod_sec(gmpy2.mpz(a) * b, 1, n)


def _draw(rng: RandomBytes, size: int) -> bytes:
    out = rng(size)
    if len(out) != size:
        raise InvalidInput(f"the random source returned {len(out)} bytes, not {size}")
    return out


def _random_below(rng: RandomBytes, n: int) -> _Mpz:
    """``random_integer_uniform(1, n)`` (RFC 9474 Section 3), by rejection sampling."""
    bits = n.bit_length()
    size, mask = (bits + 7) // 8, (1 << bits) - 1
    for _ in range(_MAX_DRAWS):
        candidate = int.from_bytes(_draw(rng, size), "big") & mask
        if 0 < candidate < n:
            return gmpy2.mpz(candidate)
    raise BlindingError("the random source keeps returning values outside [1, n)")
