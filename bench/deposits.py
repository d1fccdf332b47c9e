"""Deposits per second through ``POST /v1/deposits`` on PostgreSQL, with 16 and 64 concurrent
partners, beside the in-process rate of :meth:`ledger.mint.Mint.deposit`; zero double spends
checked in the database and by the auditor.

    .venv/bin/python bench/deposits.py [--seconds 10] [--workers 2] [--coins-per-deposit 1 8]

What it does: creates two fresh PostgreSQL databases (identity, ledger), runs ``nicecard db
upgrade`` and ``nicecard keys init``, registers 64 partner clients (client_secret_basic, scope
``deposits:write``) and mints a pool of 1-point coins ahead of time with an in-process
:class:`~ledger.mint.Mint` on the same databases and keys (citizens credited by a logged act,
then withdrawals blind-signed and finalized as the reference wallet does; not measured). Then
``nicecard serve`` runs in production mode (NICECARD_WORKERS processes) and wrk drives it. With
N connections, deposits go round-robin over N partners (each with its own access token), so N
partners deposit at once; every deposit is made by ``ledger.wallet.pay`` (one Ed25519
permission per coin for its partner, order and amount) and every coin is paid once.

After each run, once the server has finished what it accepted: the deposits recorded must all
have their entry in the log, ``coin_spent`` must hold exactly their coins, no double-spend
evidence, no non-2xx answer, and the deposits recorded but not acknowledged can only be those
wrk cut off when it stopped (at most one per connection). After the server stops,
``Mint.deposit`` is timed from 16 threads in this process (the library rate, no HTTP). At the
end the log is exported and verified by :func:`ledger.audit.verify_log` (no coin deposited
twice, no more coins of a denomination deposited than withdrawn, balances as replayed), and the
coins it counts must equal the ``coin_spent`` rows.

Printed per run: deposits/s, coins/s, p50/p99 latency, non-2xx answers, the CPU used by the
server processes, by every PostgreSQL process and by the whole box (% of one core; the box has
os.cpu_count() cores shared with anything else running), and the ratio to the goal of 1,000
coins/s. Requirements: PostgreSQL on 127.0.0.1:5432 (trust) and wrk (Debian package).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _harness import (
    CLK_TCK,
    PG,
    Server,
    access_token,
    drop_database,
    environment,
    fresh_database,
    one_act_catalogue,
    processes,
    production_settings,
    serving,
    upgrade_and_init_keys,
    wrk,
)

from identity.coins_wiring import mint_policy
from identity.runtime import Runtime, open_runtime
from identity.settings import Settings
from keys.keyring import utc_now
from keys.note import parse_verifier_key
from ledger.audit import verify_log
from ledger.catalogue import load_catalogue, publish_catalogue
from ledger.checkpoints import issue_checkpoint, verifier_keys
from ledger.coins import Coin, b64decode
from ledger.entries import ActCredited
from ledger.export import ExportReader, export
from ledger.group_commit import GroupCommitAppender
from ledger.mint import Mint, PaidCoin
from ledger.store import LedgerStore
from ledger.wallet import OwnedCoin, PaymentRequest, finish_withdrawal, pay, prepare_withdrawal
from oidc.clients import AuthMethod, Client, GrantType
from oidc.secrets import generate_client_secret, hash_client_secret
from oidc.tables import SqlClientRegistry

DATABASES = ("nicecard_bench_deposits_identity", "nicecard_bench_deposits_ledger")
GOAL = 1000.0  # coins/s (issue 6)
PARTNERS = (16, 64)
GRANT = 1000  # points credited to each provisioning citizen, withdrawn as 1-point coins
SERVERS = {"nicecard-serve": "nicecard serve as shipped"}
COIN_FIELDS = ("denomination", "coin_pub", "randomizer", "signature")

CATALOGUE = one_act_catalogue("bench_grant", 1000, "bench-issuer")

WRK_SCRIPT = r"""
local lines = {}
for line in io.lines(os.getenv("BENCH_BODIES")) do lines[#lines + 1] = line end
local n = 0
sent, ok, replayed, refused, failed, other, exhausted = 0, 0, 0, 0, 0, 0, 0
function request()
  n = n + 1
  local line = lines[n]
  if line == nil then
    exhausted = exhausted + 1
    return wrk.format("GET", "/healthz")
  end
  sent = n
  local tab = string.find(line, "\t", 1, true)
  return wrk.format("POST", "/v1/deposits", {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. string.sub(line, 1, tab - 1)}, string.sub(line, tab + 1))
end
function response(status, headers, body)
  if status == 201 then ok = ok + 1
  elseif status == 200 then
    if string.find(body, '"replayed"', 1, true) then replayed = replayed + 1 end
  elseif status >= 500 then failed = failed + 1
  elseif status >= 400 then refused = refused + 1
  else other = other + 1 end
end
local threads = {}
function setup(thread) threads[#threads + 1] = thread end
function done(summary, latency, requests)
  local t = {sent = 0, ok = 0, replayed = 0, refused = 0, failed = 0, other = 0, exhausted = 0}
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + thread:get(k) end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"sent":%d,"ok":%d,"replayed":%d,"refused":%d,"failed":%d,"other":%d,' ..
    '"exhausted":%d,"socket_errors":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d}\n',
    t.sent, t.ok, t.replayed, t.refused, t.failed, t.other, t.exhausted,
    e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
"""


# --- provisioning (not measured) ----------------------------------------------------------------


@contextmanager
def opened(values: dict[str, Any]) -> Iterator[tuple[Runtime, Mint]]:
    """The bench's databases and keys, and a mint on them built as the server builds it (but
    without the daily withdrawal limit)."""
    settings = Settings(_env_file=None, **values)
    with open_runtime(settings, migrate_dev=False) as runtime:
        store = LedgerStore(runtime.ledger_engine)
        policy = dataclasses.replace(mint_policy(settings), max_points_per_day=10**12)
        yield runtime, Mint(store, runtime.keyring, settings.effective_ledger_origin, policy)


_minter: list[Mint] = []  # the mint of a provisioning process, made by its initializer


def _start_minter(values: dict[str, Any]) -> None:
    _minter.append(opened(values).__enter__()[1])  # lives as long as the process


def _mint(catalogue: int, count: int) -> list[dict[str, Any]]:
    """A new citizen credited ``count`` points by a logged act, withdrawn as 1-point coins."""
    mint = _minter[0]
    citizen = secrets.token_hex(16)
    when = int(time.time()) - 60
    mint.store.append(
        ActCredited(citizen, "bench-issuer", "bench_grant", count, catalogue, when, os.urandom(32))
    )
    one = next(d for d in mint.denominations() if d.value == 1)
    coins: list[dict[str, Any]] = []
    while len(coins) < count:
        pending = prepare_withdrawal([one], min(count - len(coins), mint.policy.max_coins))
        done = mint.withdraw(
            citizen,
            secrets.token_urlsafe(18),
            [(p.denomination.id, p.blinding.blinded_msg) for p in pending],
        )
        coins += [c.to_json() for c in finish_withdrawal(pending, done.signatures)]
    return coins


def mint_coins(values: dict[str, Any], catalogue: int, count: int) -> list[OwnedCoin]:
    """``count`` coins of 1 point, minted in two processes."""
    grants = [GRANT] * (count // GRANT) + ([count % GRANT] if count % GRANT else [])
    with ProcessPoolExecutor(2, initializer=_start_minter, initargs=(values,)) as pool:
        chunks = pool.map(_mint, [catalogue] * len(grants), grants)
        return [OwnedCoin.from_json(c) for chunk in chunks for c in chunk]


def register_partners(runtime: Runtime, names: Sequence[str]) -> dict[str, str]:
    """Partner clients allowed to deposit; returns their generated secrets."""
    registry = SqlClientRegistry(runtime.identity_engine, utc_now)
    issued = {}
    for name in names:
        secret = generate_client_secret()
        registry.add(
            Client(
                name,
                AuthMethod.CLIENT_SECRET_BASIC,
                grant_types=frozenset({GrantType.CLIENT_CREDENTIALS}),
                response_types=frozenset(),
                scope=frozenset({"deposits:write"}),
                secret_hash=hash_client_secret(secret),
            )
        )
        issued[name] = secret
    return issued


def payments(
    coins: Sequence[OwnedCoin], partners: Sequence[str], per_deposit: int, tag: str
) -> list[tuple[str, dict[str, Any]]]:
    """``(partner, deposit body)`` for every ``per_deposit`` coins, round-robin over partners."""
    out = []
    for n in range(len(coins) // per_deposit):
        partner = partners[n % len(partners)]
        paid = coins[n * per_deposit : (n + 1) * per_deposit]
        out.append((partner, pay(paid, PaymentRequest(partner, f"{tag}-{n}", per_deposit))))
    return out


# --- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticks:
    """CPU clock ticks used so far by the server processes, by PostgreSQL, by the box."""

    server: int
    postgres: int
    box: int

    @classmethod
    def now(cls, server: Sequence[int]) -> Ticks:
        used = {"server": 0, "postgres": 0}
        for process in processes():
            if process.pid in server:
                used["server"] += process.ticks
            elif process.name == "postgres":
                # utime + stime, and cutime + cstime: the postmaster's holds its ended backends
                used["postgres"] += process.ticks + process.children_ticks
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        busy = sum(int(x) for x in cpu[:8]) - int(cpu[3]) - int(cpu[4])  # all but idle, iowait
        return cls(used["server"], used["postgres"], busy)

    def percent(self, before: Ticks, seconds: float) -> tuple[float, float, float]:
        """% of one core used by the server, PostgreSQL and the box since ``before``."""
        scale = 100 / CLK_TCK / seconds
        return (
            (self.server - before.server) * scale,
            (self.postgres - before.postgres) * scale,
            (self.box - before.box) * scale,
        )


def wrk_run(url: str, seconds: int, connections: int, bodies: Path) -> dict[str, int]:
    """One wrk run of WRK_SCRIPT sending the deposits of ``bodies``; the figures it prints."""
    script = bodies.with_suffix(".lua")
    script.write_text(WRK_SCRIPT)
    out = wrk(url, seconds, connections, script, {"BENCH_BODIES": str(bodies)}, timeout="10s")
    match = re.search(r"^BENCH (\{.*\})$", out, re.MULTILINE)
    if match is None:
        raise SystemExit(f"wrk printed no result:\n{out}")
    result: dict[str, int] = json.loads(match.group(1))
    return result


def settled(engine: sa.Engine, tag: str) -> tuple[int, int, int]:
    """Once the server finished what it accepted: deposits recorded for orders ``tag-*``,
    those whose entry is not in the log (none, since they commit together), and their spent
    coins."""
    last = None
    for _ in range(120):
        with engine.connect() as conn:
            now = tuple(
                conn.execute(
                    sa.text(
                        "SELECT (SELECT count(*) FROM coin_deposits WHERE order_ref LIKE :p),"
                        " (SELECT count(*) FROM coin_deposits d WHERE order_ref LIKE :p"
                        "  AND NOT EXISTS (SELECT 1 FROM ledger_entries e"
                        "                  WHERE e.idx = d.entry_idx)),"
                        " (SELECT count(*) FROM coin_spent WHERE order_ref LIKE :p)"
                    ),
                    {"p": f"{tag}-%"},
                ).one()
            )
        if now == last and now[1] == 0:
            break
        last = now
        time.sleep(0.5)
    return int(now[0]), int(now[1]), int(now[2])


def access_tokens(base: str, issued: dict[str, str], partners: Sequence[str]) -> dict[str, str]:
    return {p: access_token(base, p, issued[p], "deposits:write") for p in partners}


def library_rate(mint: Mint, bodies: Sequence[tuple[str, dict[str, Any]]], threads: int) -> float:
    """Deposits/s of ``Mint.deposit`` called from ``threads`` threads of this process."""
    items = [
        (
            partner,
            str(body["order"]),
            int(body["amount"]),
            [
                PaidCoin(
                    Coin.from_json({k: c[k] for k in COIN_FIELDS}),
                    c["signed_at"],
                    b64decode(c["permission"], "permission", 64),
                )
                for c in body["coins"]
            ],
        )
        for partner, body in bodies
    ]
    count = len(items)
    lock = threading.Lock()
    failures: list[Exception] = []

    def work() -> None:
        while True:
            with lock:
                if not items:
                    return
                partner, order, amount, coins = items.pop()
            try:
                mint.deposit(partner, order, amount, coins)
            except Exception as exc:  # reported below: the run fails
                failures.append(exc)

    start = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{len(failures)} library deposits failed, first: {failures[0]!r}")
    return count / elapsed


# --- the run ------------------------------------------------------------------------------------


class Pool:
    """The minted coins, handed out in order; coins of deposits never sent are handed again."""

    def __init__(self, coins: list[OwnedCoin]) -> None:
        self.coins = coins
        self.next = 0

    def take(self, count: int) -> list[OwnedCoin]:
        taken = self.coins[self.next : self.next + count]
        self.next += len(taken)
        return taken

    def give_back(self, count: int) -> None:
        self.next -= count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--coins-per-deposit", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--coins", type=int, default=80_000, help="coins minted for the runs")
    parser.add_argument(
        "--ceiling", type=int, default=3000, help="most coins/s a run is given coins for"
    )
    parser.add_argument("--library-deposits", type=int, default=500)
    parser.add_argument("--servers", nargs="+", choices=list(SERVERS), default=list(SERVERS))
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required (apt-get install wrk)")

    work = Path(tempfile.mkdtemp(prefix="nicecard-bench-deposits-"))
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    identity_url, ledger_url = (fresh_database(admin, name) for name in DATABASES)
    (work / "catalogue.toml").write_text(CATALOGUE)
    values = production_settings(identity_url, ledger_url, work, args.workers, args.port)
    # At most 2 x 6 connections per worker: the PostgreSQL server may be shared
    values |= {"db_pool_size": 4, "db_max_overflow": 2}
    env = environment(values)
    upgrade_and_init_keys(env)
    with admin.connect() as conn:
        used, most = conn.execute(
            sa.text(
                "SELECT count(*), current_setting('max_connections') FROM pg_stat_activity"
                " WHERE backend_type = 'client backend'"
            )
        ).one()
    print(f"# PostgreSQL: {used} of {most} connections in use before the bench")
    try:
        ok = bench(args, values, env, work)
    finally:
        if not args.keep:
            for name in DATABASES:
                drop_database(admin, name)
        shutil.rmtree(work, ignore_errors=True)
        admin.dispose()
    if not ok:
        raise SystemExit(1)


def bench(
    args: argparse.Namespace, values: dict[str, Any], env: dict[str, str], work: Path
) -> bool:
    started = time.perf_counter()
    partners = [f"bench-shop-{i:02d}" for i in range(max(PARTNERS))]
    widest = max(args.coins_per_deposit)
    library_coins = args.library_deposits * (widest + 1) * 2
    with opened(values) as (runtime, mint):
        issued = register_partners(runtime, partners)
        catalogue = publish_catalogue(mint.store, load_catalogue(work / "catalogue.toml"))
        mint.ensure_denominations()  # made and announced before the server loads them
        coins = mint_coins(values, catalogue.version, args.coins + library_coins)
        library, pool = coins[:library_coins], Pool(coins[library_coins:])
        print(
            f"# provisioned {len(coins):,} coins and {len(partners)} partners"
            f" in {time.perf_counter() - started:.0f} s (not measured)",
            flush=True,
        )
        ok, recorded = True, 0
        for server in args.servers:
            with serving(env, args.port) as running:
                print(
                    f"# server: {SERVERS[server]}; production, {args.workers} workers,"
                    f" PostgreSQL; wrk -t1, {args.seconds} s per run;"
                    f" {os.cpu_count()} CPUs shared by everything on the box"
                )
                print(
                    "run             deposits/s  coins/s  p50_ms  p99_ms  non2xx"
                    "  srv_cpu%  pg_cpu%  box_cpu%  goal_ratio"
                )
                acknowledged = spent = 0
                for per_deposit in args.coins_per_deposit:
                    for connections in PARTNERS:
                        tokens = access_tokens(running.url, issued, partners[:connections])
                        run_ok, ack, run_spent = http_run(
                            args, runtime, pool, running, tokens, per_deposit, work
                        )
                        ok = ok and run_ok
                        acknowledged, spent = acknowledged + ack, spent + run_spent
                recorded += spent
                print(
                    f"# coins acknowledged (201) {acknowledged:,}, spent {spent:,}: the others"
                    " are of deposits wrk cut off when it stopped, which the server finished"
                    " (at most one per connection and run)"
                )

        # The library, with the servers stopped (their pooled connections closed).
        for appender in (None, GroupCommitAppender(mint.store)):
            mint.appender = appender
            for per_deposit in sorted({widest, 1}, reverse=True):  # once each
                count = args.library_deposits * per_deposit
                shops = [f"lib-{i:02d}" for i in range(16)]
                tag = f"lib{per_deposit}{'g' if appender else ''}"
                made = payments(library[:count], shops, per_deposit, tag)
                library = library[count:]
                rate = library_rate(mint, made, threads=16)
                recorded += count
                print(
                    f"# in-process Mint.deposit{' + group commit' if appender else ''},"
                    f" 16 threads, {per_deposit} coin(s) per deposit: {rate:,.0f} deposits/s,"
                    f" {rate * per_deposit:,.0f} coins/s ({rate * per_deposit / GOAL:.2f} of"
                    " the goal)"
                )
            if appender is not None:
                appender.close()
        mint.appender = None
        return audit(runtime, mint, work, recorded) and ok


def http_run(
    args: argparse.Namespace,
    runtime: Runtime,
    pool: Pool,
    server: Server,
    tokens: dict[str, str],
    per_deposit: int,
    work: Path,
) -> tuple[bool, int, int]:
    """One wrk run; prints its line and returns (checks held, coins acknowledged, recorded)."""
    connections = len(tokens)
    tag = f"r{secrets.token_hex(3)}"
    partners = list(tokens)
    bodies = work / f"{tag}.txt"
    offered = pool.take(args.ceiling * args.seconds)
    with bodies.open("w") as out:
        for partner, body in payments(offered, partners, per_deposit, tag):
            out.write(f"{tokens[partner]}\t{json.dumps(body)}\n")
    before = Ticks.now(server.pids)
    result = wrk_run(server.url + "/v1/deposits", args.seconds, connections, bodies)
    seconds = result["duration_us"] / 1e6
    srv, pg, box = Ticks.now(server.pids).percent(before, seconds)
    pool.give_back(len(offered) - result["sent"] * per_deposit)
    deposits, unfinished, spent = settled(runtime.ledger_engine, tag)
    rate = result["ok"] / seconds
    non2xx = result["refused"] + result["failed"] + result["other"]
    clean = (
        spent == deposits * per_deposit
        and unfinished == 0
        and 0 <= deposits - result["ok"] <= connections
        and non2xx + result["replayed"] + result["socket_errors"] == 0
    )
    print(
        f"{connections:>2} partners x{per_deposit:<2} {rate:>10,.0f}"
        f" {rate * per_deposit:>8,.0f} {result['p50_us'] / 1000:>7.1f}"
        f" {result['p99_us'] / 1000:>7.1f} {non2xx:>7} {srv:>9.0f} {pg:>8.0f}"
        f" {box:>9.0f} {rate * per_deposit / GOAL:>11.2f}"
        + ("" if clean else f"  CHECK FAILED {result} {deposits=} {spent=}")
        + ("  (out of coins: a lower bound)" if result["exhausted"] else ""),
        flush=True,
    )
    return clean, result["ok"] * per_deposit, spent


def audit(runtime: Runtime, mint: Mint, work: Path, recorded: int) -> bool:
    """Zero double spends: the tables, then the auditor over an export of the whole log."""
    with runtime.ledger_engine.connect() as conn:
        spent = int(conn.execute(sa.text("SELECT count(*) FROM coin_spent")).scalar_one())
        evidence = int(
            conn.execute(sa.text("SELECT count(*) FROM coin_double_spends")).scalar_one()
        )
    issue_checkpoint(mint.store, runtime.keyring, origin=mint.origin)
    export(mint.store, work / "ledger.export", origin=mint.origin)
    reader = ExportReader(work / "ledger.export")
    report = verify_log(
        reader,
        reader.checkpoints,
        [parse_verifier_key(k) for k in verifier_keys(runtime.keyring, mint.origin)],
        origin=mint.origin,
        tree_size=reader.tree_size,
        balances=reader.balances,
    )
    audited = sum(report.deposited_coins.values())
    ok = spent == recorded == audited and evidence == 0
    print(
        f"# coin_spent rows {spent:,}, coins of recorded deposits {recorded:,}, coins deposited"
        f" in the audited log {audited:,} ({report.entries:,} entries verified), double-spend"
        f" evidence rows {evidence}: {'zero double spends' if ok else 'MISMATCH'}"
    )
    return ok


if __name__ == "__main__":
    main()
