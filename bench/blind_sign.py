"""Blind signatures per second per core, next to OpenSSL's RSA signing speed.

    .venv/bin/python bench/blind_sign.py [--rounds 3] [--seconds 3] [--bits 2048]

Measures ``keys.blind_rsa.blind_sign`` in one thread (so: per core) as the server runs it:
length and range checks, RSASP1 on the backend a key chooses by default (OpenSSL's private
operation through ctypes where the system libcrypto is OpenSSL 3, see
``keys/_openssl_rsa.py``), the fault check, byte conversions. Beside it, the same key on the
portable gmpy2 fallback (CRT with ``gmpy2.powmod_sec``). Each round times both, then
``openssl speed -seconds N rsaBITS`` (also one core), and prints the ratio of each sign rate
to OpenSSL's; the summary is the median round. The target is a ratio of at least 0.5 for
the backend the server uses. All rates are per second of CPU time, as ``openssl speed``
counts by default, so that other work on a shared machine does not bias the ratios; the
load average is printed beside each round all the same.

It then splits a signature into its parts, for the OpenSSL backend (OpenSSL's operation, the
fault check, the rest) and for gmpy2 (the two ``powmod_sec`` halves, Garner's recombination,
the fault check, the rest), and says what each side runs on this CPU: which ``libgmp`` is
loaded and whether GMP's run-time CPU dispatch knows the CPU, and whether OpenSSL takes its
AVX-512 IFMA path, which ``openssl speed`` then measures again with IFMA masked out
(``OPENSSL_ia32cap``; the in-process OpenSSL keeps IFMA, so only the gmpy2 ratio is given).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gmpy2
from cryptography.hazmat.primitives.asymmetric import rsa

from keys import _openssl_rsa
from keys.blind_rsa import BlindPrivateKey, Variant, blind, blind_sign, prepare

_IA32CAP = "OPENSSL_ia32cap"  # OpenSSL reads this exact, lower-case name
_IFMA_OFF = ":~0x200000"  # CPUID.(EAX=7,ECX=0):EBX bit 21, AVX512IFMA
_POOL = 64

# Intel family 6 models that GMP 6.3.0's fat binary dispatch (mpn/x86_64/fat/fat.c) sends to
# its MULX/ADX code (Haswell, Broadwell, Skylake, Kaby Lake). On any later Intel model it
# falls back to generic x86_64 code, which is what the PyPI gmpy2 wheels ship.
_GMP_63_FAT_MULX_MODELS = frozenset(
    {0x3C, 0x3F, 0x45, 0x46, 0x3D, 0x47, 0x4F, 0x56, 0x4E, 0x55, 0x5E, 0x8E, 0x9E}
)


def rate(operation: Callable[[int], object], seconds: float) -> float:
    """Calls of ``operation(i)`` per second of this thread's CPU time, over ``seconds`` of it.

    CPU time, not wall time, because that is what ``openssl speed`` divides by (unless given
    ``-elapsed``): on a shared machine both figures then count only the time each had a core.
    """
    for i in range(20):  # warm caches and the allocator
        operation(i)
    clock = time.thread_time
    count, start = 0, clock()
    deadline = start + seconds
    while True:
        operation(count)
        count += 1
        if count % 16 == 0 and clock() >= deadline:
            break
    return count / (clock() - start)


def blinded_pool(sk: BlindPrivateKey) -> list[bytes]:
    pk, variant = sk.public_key(), Variant.PSS_RANDOMIZED
    return [blind(variant, pk, prepare(variant, b"coin %d" % i)).blinded_msg for i in range(_POOL)]


def signing(sk: BlindPrivateKey, pool: list[bytes]) -> Callable[[int], bytes]:
    """``blind_sign`` with ``sk`` on the i-th message of the pool, for :func:`rate`."""
    return lambda i: blind_sign(sk, pool[i % _POOL])


def per_call(operation: Callable[[int], object], seconds: float) -> float:
    return 1e6 / rate(operation, seconds)


def openssl_breakdown(sk: BlindPrivateKey, pool: list[bytes], seconds: float) -> dict[str, float]:
    """Microseconds per signature in each step of ``blind_sign`` on the OpenSSL backend."""
    handle = sk._private
    assert isinstance(handle, _openssl_rsa.OpenSSLRSAKey)
    numbers = sk.key.public_key().public_numbers()
    n, e = gmpy2.mpz(numbers.n), gmpy2.mpz(numbers.e)
    sigs = [gmpy2.mpz.from_bytes(blind_sign(sk, b), "big") for b in pool]
    parts = {
        "OpenSSL RSA private operation": per_call(
            lambda i: handle.raw_private(pool[i % _POOL]), seconds
        ),
        "fault check powmod(s, e, n)": per_call(
            lambda i: gmpy2.powmod(sigs[i % _POOL], e, n), seconds * 0.5
        ),
    }
    whole = per_call(signing(sk, pool), seconds)
    parts["the rest (Python, checks, conversions)"] = max(0.0, whole - sum(parts.values()))
    parts["blind_sign, whole"] = whole
    return parts


def gmpy2_breakdown(sk: BlindPrivateKey, pool: list[bytes], seconds: float) -> dict[str, float]:
    """Microseconds per signature in each step of ``blind_sign`` on the gmpy2 fallback."""
    numbers = sk.key.private_numbers()
    p, q = gmpy2.mpz(numbers.p), gmpy2.mpz(numbers.q)
    dp, dq, qinv = gmpy2.mpz(numbers.dmp1), gmpy2.mpz(numbers.dmq1), gmpy2.mpz(numbers.iqmp)
    n, e = p * q, gmpy2.mpz(numbers.public_numbers.e)
    ms = [gmpy2.mpz.from_bytes(b, "big") for b in pool]
    m1s = [gmpy2.powmod_sec(m, dp, p) for m in ms]
    m2s = [gmpy2.powmod_sec(m, dq, q) for m in ms]
    sigs = [gmpy2.mpz.from_bytes(blind_sign(sk, b), "big") for b in pool]
    k = sk.public_key().modulus_len
    parts = {
        "powmod_sec mod p": per_call(lambda i: gmpy2.powmod_sec(ms[i % _POOL], dp, p), seconds),
        "powmod_sec mod q": per_call(lambda i: gmpy2.powmod_sec(ms[i % _POOL], dq, q), seconds),
        "Garner (powmod_sec, exponent 1)": per_call(
            lambda i: gmpy2.powmod_sec(qinv * (m1s[i % _POOL] - m2s[i % _POOL] + n), 1, p),
            seconds * 0.5,
        ),
        "fault check powmod(s, e, n)": per_call(
            lambda i: gmpy2.powmod(sigs[i % _POOL], e, n), seconds * 0.5
        ),
        "bytes -> mpz -> bytes": per_call(
            lambda i: gmpy2.mpz.from_bytes(pool[i % _POOL], "big").to_bytes(k, "big"),
            seconds * 0.2,
        ),
    }
    whole = per_call(signing(sk, pool), seconds)
    parts["the rest (Python, checks)"] = max(0.0, whole - sum(parts.values()))
    parts["blind_sign, whole"] = whole
    return parts


def cpu_info() -> tuple[str, int, int, set[str]]:
    """Model name, family, model and flags of the first CPU in /proc/cpuinfo (Linux)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", -1, -1, set()
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return (
        fields.get("model name", "unknown"),
        int(fields.get("cpu family", "-1")),
        int(fields.get("model", "-1")),
        set(fields.get("flags", "").split()),
    )


def loaded_libgmp() -> str:
    """The libgmp this process maps: the wheel's bundled one, or a preloaded or system one."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    paths = {line.split()[-1] for line in maps.splitlines() if "libgmp" in line}
    return ", ".join(sorted(paths)) or "unknown"


def describe_platform(vendor_model: tuple[str, int, int, set[str]]) -> None:
    name, family, model, flags = vendor_model
    wanted = ("bmi2", "adx", "avx512f", "avx512ifma")
    print(f"CPU: {name}, family {family} model {model} ({model:#x}), {os.cpu_count()} CPUs")
    print("  flags: " + " ".join(f"{f}{'+' if f in flags else '-'}" for f in wanted))
    print(f"gmpy2 {gmpy2.version()} on {gmpy2.mp_version()}, libgmp: {loaded_libgmp()}")
    if "gmpy2.libs" in loaded_libgmp() and family == 6 and {"bmi2", "adx"} <= flags:
        if model in _GMP_63_FAT_MULX_MODELS:
            print("  the wheel's fat GMP dispatches this CPU to its MULX/ADX code")
        else:
            print(
                "  the wheel's fat GMP does not know this CPU model: it runs its generic"
                " x86_64 code, without MULX/ADX (see bench/README.md)"
            )

    available, library, detail = _openssl_rsa.availability()
    if available:
        print(f"blind_sign's OpenSSL backend: {detail}, loaded as {library}")
    else:
        print(f"blind_sign's OpenSSL backend is unavailable: {detail}")


def openssl_version() -> str:
    openssl = shutil.which("openssl")
    if openssl is None:
        return "not found"
    done = subprocess.run([openssl, "version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def openssl_sign_rate(bits: int, seconds: int, env: dict[str, str] | None = None) -> float:
    """Parse the sign/s column of ``openssl speed`` (1.1, 3.0 and 3.2+ layouts)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("openssl")
    done = subprocess.run(
        [openssl, "speed", "-seconds", str(seconds), f"rsa{bits}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds * 4 + 60,
        env=env,
    )
    header: list[str] | None = None
    for line in done.stdout.splitlines():
        if "sign/s" in line:
            header = line.split()
        match = re.match(rf"^rsa\s+{bits}\s+bits?\s+(.*)$", line.strip())
        if match and header is not None:
            values = match.group(1).split()
            return float(values[header.index("sign/s")])
    raise ValueError(f"no 'rsa {bits} bits' line in openssl speed output:\n{done.stdout}")


def openssl_path(flags: set[str], bits: int) -> str:
    """What OpenSSL 3.x runs for an RSA private key operation of this size on this CPU."""
    masked = _IFMA_OFF in os.environ.get(_IA32CAP, "")
    if "avx512ifma" in flags and not masked and bits == 2048:
        return "AVX-512 IFMA (RSAZ: the two 1024-bit CRT halves side by side, 52-bit limbs)"
    if {"bmi2", "adx"} <= flags:
        return "MULX/ADX Montgomery code (x86_64-mont5)"
    return "generic x86_64 Montgomery code"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="ours then OpenSSL, N times")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--openssl-seconds", type=int, default=3)
    parser.add_argument("--bits", type=int, default=2048, help="modulus size")
    args = parser.parse_args()

    cpu = cpu_info()
    describe_platform(cpu)
    print(
        f"OpenSSL: {openssl_version()}; rsa{args.bits} signs with {openssl_path(cpu[3], args.bits)}"
    )
    print(f"load average at start: {loadavg()}")

    key = rsa.generate_private_key(public_exponent=65537, key_size=args.bits)
    server = BlindPrivateKey(key)  # what the server gets: OpenSSL where available
    fallback = BlindPrivateKey(key, backend="gmpy2")
    # One entry when the server itself runs on gmpy2.
    keys: dict[str, BlindPrivateKey] = {server.backend: server, "gmpy2": fallback}
    pool = blinded_pool(server)
    has_openssl = shutil.which("openssl") is not None
    ratios: dict[str, list[float]] = {name: [] for name in keys}
    print(f"\nthe server signs with the {server.backend} backend")
    print("sign rates per second of CPU time, one core each:")
    columns = "".join(f"  {name + ' blind_sign/s':>21s}" for name in keys)
    ratio_columns = "".join(f"  {name + ' ratio':>13s}" for name in keys)
    print(f"round{columns}  openssl rsa{args.bits} sign/s{ratio_columns}  loadavg")
    for round_no in range(1, args.rounds + 1):
        ours = {name: rate(signing(sk, pool), args.seconds) for name, sk in keys.items()}
        rates = "".join(f"  {value:21.1f}" for value in ours.values())
        if not has_openssl:
            print(f"{round_no:5d}{rates}  (openssl not found: no ratio)")
            continue
        try:
            reference = openssl_sign_rate(args.bits, args.openssl_seconds)
        except (subprocess.SubprocessError, ValueError) as exc:
            print(f"openssl speed failed: {exc}")
            return 1
        for name, value in ours.items():
            ratios[name].append(value / reference)
        shown = "".join(f"  {ratios[name][-1]:13.2f}" for name in keys)
        print(f"{round_no:5d}{rates}  {reference:22.1f}{shown}  {loadavg()}")
    for name, values in ratios.items():
        if values:
            median = statistics.median(values)
            role = "the server's" if name == server.backend else "the fallback's"
            verdict = "meets" if median >= 0.5 else "misses"
            print(
                f"median ratio blind_sign / openssl, {name} ({role}): {median:.2f}"
                f" ({verdict} the 0.5 goal)"
            )

    print("\nwhere a signature's time goes (us, each step timed on its own):")
    if server.backend == "openssl":
        print("  OpenSSL backend:")
        for label, micros in openssl_breakdown(server, pool, args.seconds).items():
            print(f"    {label:38s} {micros:8.1f}")
    print("  gmpy2 backend:")
    for label, micros in gmpy2_breakdown(fallback, pool, args.seconds).items():
        print(f"    {label:38s} {micros:8.1f}")

    if has_openssl and "avx512ifma" in cpu[3]:
        env = {**os.environ, _IA32CAP: _IFMA_OFF}
        plain = openssl_sign_rate(args.bits, args.openssl_seconds, env)
        print(f"\nopenssl rsa{args.bits} with AVX-512 IFMA masked out: {plain:.1f} sign/s")
        ours_gmpy2 = rate(signing(fallback, pool), args.seconds)
        print(
            f"  gmpy2 blind_sign {ours_gmpy2:.1f}/s, ratio against that: {ours_gmpy2 / plain:.2f}"
        )
    print(f"load average at end: {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
