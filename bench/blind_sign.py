"""Blind signatures per second per core, next to OpenSSL's RSA signing speed.

    .venv/bin/python bench/blind_sign.py [--seconds 5] [--bits 2048] [--openssl-seconds 5]

Measures ``keys.blind_rsa.blind_sign`` in one thread (so: per core) for a fixed time, as the
server runs it: CRT with ``gmpy2.powmod_sec``, the fault check, length and range checks, and
byte conversions. It also times the two bare ``powmod_sec`` half-exponentiations, the
ceiling GMP allows, then runs ``openssl speed -seconds N rsaBITS`` and prints the ratio of
the two sign rates. The target is a ratio of at least 0.5.

``--openssl-without-ifma`` adds a second OpenSSL run with AVX-512 IFMA masked out
(``OPENSSL_ia32cap``), for CPUs where OpenSSL's vectorised RSA code is what sets the pace.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import gmpy2

from keys.blind_rsa import (
    BlindPrivateKey,
    Variant,
    blind,
    blind_sign,
    generate_private_key,
    prepare,
)

_IFMA_OFF = ":~0x200000"  # CPUID.(EAX=7,ECX=0):EBX bit 21, AVX512IFMA


def rate(operation: Callable[[int], object], seconds: float) -> float:
    """Calls per second of ``operation(i)`` over ``seconds`` of wall time."""
    for i in range(20):  # warm caches and the allocator
        operation(i)
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        operation(count)
        count += 1
        if count % 16 == 0 and time.perf_counter() >= deadline:
            break
    return count / (time.perf_counter() - start)


def our_rates(sk: BlindPrivateKey, seconds: float) -> tuple[float, float]:
    pk = sk.public_key()
    variant = Variant.PSS_RANDOMIZED
    pool = [blind(variant, pk, prepare(variant, b"coin %d" % i)).blinded_msg for i in range(64)]
    signing = rate(lambda i: blind_sign(sk, pool[i % 64]), seconds)

    numbers = sk.key.private_numbers()
    p, q = gmpy2.mpz(numbers.p), gmpy2.mpz(numbers.q)
    dp, dq = gmpy2.mpz(numbers.dmp1), gmpy2.mpz(numbers.dmq1)
    ms = [gmpy2.mpz(int.from_bytes(b, "big")) for b in pool]

    def halves(i: int) -> None:
        gmpy2.powmod_sec(ms[i % 64], dp, p)
        gmpy2.powmod_sec(ms[i % 64], dq, q)

    return signing, rate(halves, seconds)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument("--bits", type=int, default=2048, help="modulus size")
    parser.add_argument("--openssl-seconds", type=int, default=5)
    parser.add_argument("--openssl-without-ifma", action="store_true")
    args = parser.parse_args()

    print(f"gmpy2 {gmpy2.version()} on {gmpy2.mp_version()}, {os.cpu_count()} CPUs, one thread")
    sk = generate_private_key(args.bits)
    signing, ceiling = our_rates(sk, args.seconds)
    print(f"blind_sign, RSA-{args.bits}:          {signing:9.1f} signatures/s per core")
    print(f"  (bare CRT powmod_sec halves:    {ceiling:9.1f} /s, the GMP ceiling)")

    try:
        reference = openssl_sign_rate(args.bits, args.openssl_seconds)
    except FileNotFoundError:
        print("openssl: not found on PATH; no reference figure, no ratio")
        return 0
    except (subprocess.SubprocessError, ValueError) as exc:
        print(f"openssl speed failed: {exc}")
        return 1
    ratio = signing / reference
    verdict = "meets" if ratio >= 0.5 else "misses"
    print(f"openssl speed rsa{args.bits}:            {reference:9.1f} signs/s per core")
    print(f"ratio blind_sign / openssl:       {ratio:9.2f}  ({verdict} the 0.5 goal)")

    if args.openssl_without_ifma:
        env = {**os.environ, "OPENSSL_ia32cap": _IFMA_OFF}
        plain = openssl_sign_rate(args.bits, args.openssl_seconds, env)
        print(f"openssl without AVX-512 IFMA:     {plain:9.1f} signs/s per core")
        print(f"ratio against that:               {signing / plain:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
