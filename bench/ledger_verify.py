"""Auditing an export of N ledger entries, next to hashing the same leaves and nodes alone.

    .venv/bin/python bench/ledger_verify.py [--entries 1000000] [--jobs 1 2] [--keep FILE]

Builds a realistic export file (acts, withdrawals, deposits, denomination announcements, a
catalogue; a signed checkpoint every 100,000 entries and one at the end; the balances), then
times ``ledger.audit.verify_log`` reading it from disk (what ``ledger-audit verify`` runs), with
one process and with two. Beside it: the time to compute the same RFC 9162 leaf hashes and
perfect-subtree nodes with a bare ``hashlib`` loop over entries already in memory. The goal is
an audit within 2x of that.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import tempfile
import time
from pathlib import Path

from keys.note import generate_signer
from ledger.audit import verify_log
from ledger.checkpoint import Checkpoint, sign_checkpoint
from ledger.entries import (
    ActCredited,
    CatalogueChanged,
    CoinCount,
    CoinsDeposited,
    DenominationAnnounced,
    Entry,
    Event,
    SpentCoin,
    WithdrawalDebited,
    encode_entry,
)
from ledger.export import ExportReader, write_export
from ledger.merkle import MemoryTree, leaf_hashes

ORIGIN = "nicecotedazur.example/ledger"
ACT_TYPES = ["tram_ride", "bike_share_trip", "recycling_dropoff", "energy_saving_month"]
PARTNERS = ["lignes-azur", "velobleu", "dechetterie-nice", "metropole-energie"]


def build_entries(count: int, seed: int = 7) -> tuple[list[bytes], dict[str, int]]:
    """A log of ``count`` entries: 88% acts, 8% withdrawals, 4% deposits; and its balances."""
    rng = random.Random(seed)
    start = 1_790_000_000
    keys = [rng.randbytes(294) for _ in range(3)]
    denominations = [
        DenominationAnnounced(key, value, 0, 2**40, 2**40, 2**40)
        for key, value in zip(keys, (10, 50, 100), strict=True)
    ]
    events: list[Event] = [CatalogueChanged(1, b'{"acts": "..."}'), *denominations]
    pseudonyms = [f"{rng.getrandbits(128):032x}" for _ in range(max(10, count // 20))]
    balances: dict[str, int] = {}
    unspent: list[tuple[bytes, int]] = []  # (denomination id, value) of coins withdrawn
    entries = [encode_entry(Entry(start, event)) for event in events]
    for i in range(len(entries), count):
        roll = rng.random()
        event: Event
        if roll < 0.08:
            pseudonym = rng.choice(pseudonyms)
            denomination = rng.choice(denominations)
            coins = rng.randint(1, 3)
            if balances.get(pseudonym, 0) >= denomination.value * coins:
                points = denomination.value * coins
                balances[pseudonym] -= points
                unspent += [(denomination.denomination, denomination.value)] * coins
                event = WithdrawalDebited(
                    pseudonym, points, (CoinCount(denomination.denomination, coins),)
                )
                entries.append(encode_entry(Entry(start + i, event)))
                continue
        elif roll < 0.12 and unspent:
            denomination_id, value = unspent.pop(rng.randrange(len(unspent)))
            event = CoinsDeposited(
                rng.choice(PARTNERS),
                value,
                rng.randbytes(32),
                (SpentCoin(denomination_id, rng.randbytes(32)),),
            )
            entries.append(encode_entry(Entry(start + i, event)))
            continue
        pseudonym = rng.choice(pseudonyms)
        points = rng.choice((5, 10, 20, 50))
        balances[pseudonym] = balances.get(pseudonym, 0) + points
        event = ActCredited(
            pseudonym,
            rng.choice(PARTNERS),
            rng.choice(ACT_TYPES),
            points,
            1,
            start + i - 60,
            rng.randbytes(32),
        )
        entries.append(encode_entry(Entry(start + i, event)))
    return entries, balances


def hashlib_alone(entries: list[bytes]) -> float:
    """Seconds to compute every leaf hash and perfect-subtree node with bare hashlib calls."""
    sha256 = hashlib.sha256
    begin = time.perf_counter()
    level = [sha256(b"\x00" + entry).digest() for entry in entries]
    while len(level) > 1:
        pairs = iter(level)
        level = [sha256(b"\x01" + a + b).digest() for a, b in zip(pairs, pairs, strict=False)]
    return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--keep", type=Path, help="write the export here and keep it")
    args = parser.parse_args()

    begin = time.perf_counter()
    entries, balances = build_entries(args.entries)
    built = time.perf_counter() - begin
    signer = generate_signer(ORIGIN)
    tree = MemoryTree.from_leaf_hashes(leaf_hashes(entries))
    sizes = [*range(100_000, len(entries), 100_000), len(entries)]
    notes = [
        sign_checkpoint(Checkpoint(ORIGIN, size, tree.root_at(size)), [signer]) for size in sizes
    ]
    del tree

    workdir = None if args.keep else Path(tempfile.mkdtemp(prefix="ledger-verify-"))
    path: Path = args.keep if workdir is None else workdir / "ledger.export"
    with path.open("wb") as out:
        write_export(
            out,
            origin=ORIGIN,
            tree_size=len(entries),
            checkpoints=notes,
            entries=[entries],
            balances=sorted(balances.items()),
        )
    size_mb = path.stat().st_size / 1e6
    print(f"built {len(entries):,} entries in {built:.1f} s; export {size_mb:.0f} MB at {path}")
    print(f"  verifier key: {signer.verifier.to_text()}")

    baseline = min(hashlib_alone(entries) for _ in range(3))
    hashes = 2 * len(entries) - 1
    print(f"hashlib alone, {hashes:,} hashes (leaves + nodes), in memory: {baseline:.3f} s")
    del entries
    for jobs in args.jobs:
        times = []
        for _ in range(3):
            reader = ExportReader(path)
            begin = time.perf_counter()
            report = verify_log(
                reader,
                reader.checkpoints,
                [signer.verifier],
                origin=reader.origin,
                tree_size=reader.tree_size,
                balances=reader.balances,
                jobs=jobs,
            )
            times.append(time.perf_counter() - begin)
        best = min(times)
        print(
            f"verify_log from the export file, jobs={jobs}: {best:.3f} s "
            f"({report.entries:,} entries, {report.checkpoints} checkpoints, "
            f"{report.pseudonyms:,} pseudonyms)  ratio to hashlib alone: {best / baseline:.2f}x"
        )
    if workdir is not None:
        path.unlink()
        os.rmdir(workdir)


if __name__ == "__main__":
    main()
