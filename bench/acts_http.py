"""Acts per second through ``POST /v1/acts`` on PostgreSQL, beside PostgreSQL's own single-row
INSERT rate measured by pgbench in the same run.

    .venv/bin/python bench/acts_http.py [--seconds 10] [--workers 2] [--citizens 2000]

What it does: creates two fresh PostgreSQL databases (identity, ledger), migrates them, starts
``nicecard serve`` in production mode (NICECARD_WORKERS processes), registers a partner client
(client_secret_basic, acts:write) allowed to attest ``tram_ride`` with caps high enough not to
interfere, seeds citizens the partner knows by pairwise ``sub``, then drives the API with wrk
(single acts at 16 and 64 connections, and batches of 50 acts at 16 connections; every act has
its own idempotency key). It then verifies that the ledger holds exactly the acknowledged acts
(no gap, no double credit), and prints acts/s and the ratio to pgbench's inserts/s.

Beside each rate: the CPU the server processes (``srv_cpu%``, 100 = one core) and the
PostgreSQL backends of the bench's databases (``pg_cpu%``) used, and the server's CPU time per
act (``srv_us/act``), which a busy machine changes much less than the rate; the load average at
the start says how busy it was.
Requirements: PostgreSQL on 127.0.0.1:5432 (trust), wrk and pgbench (Debian packages).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from _harness import (
    CLK_TCK,
    PG,
    ProcStat,
    access_token,
    drop_database,
    environment,
    fresh_database,
    nicecard,
    one_act_catalogue,
    pgbench_tps,
    production_settings,
    run,
    serving,
    upgrade_and_init_keys,
    wrk,
)

CATALOGUE = one_act_catalogue("tram_ride", 1, "bench-partner")

WRK_SCRIPT = r"""
local subs = {}
for line in io.lines(os.getenv("BENCH_SUBS")) do subs[#subs + 1] = line end
local batch = tonumber(os.getenv("BENCH_BATCH") or "1")
local token = os.getenv("BENCH_TOKEN")
local prefix = os.getenv("BENCH_PREFIX")
local counter = 0
local thread_id = 0
function setup(thread) thread_id = thread_id + 1; thread:set("tid", thread_id) end
local function act()
  counter = counter + 1
  local sub = subs[(counter % #subs) + 1]
  return string.format(
    '{"sub":"%s","type":"tram_ride","occurred_at":"%s","evidence_digest":"sha256:%064x","idempotency_key":"%s-%d-%d"}',
    sub, os.getenv("BENCH_WHEN"), counter, prefix, tid or 0, counter)
end
function request()
  local body
  if batch == 1 then body = act() else
    local items = {}
    for i = 1, batch do items[i] = act() end
    body = '{"acts":[' .. table.concat(items, ",") .. ']}'
  end
  return wrk.format("POST", "/v1/acts", {["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token}, body)
end
"""


def pgbench_inserts(admin: sa.Engine, seconds: int) -> float:
    """Single-row INSERTs per second (16 clients), the plain baseline."""
    url = fresh_database(admin, "nicecard_bench_pgbench")
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    run("psql", conninfo, "-qc", "CREATE TABLE scratch (id bigserial primary key, body bytea)")
    script = "INSERT INTO scratch (body) VALUES ('\\x00112233445566778899');\n"
    return pgbench_tps(sa.make_url(url), script, seconds)


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """User and system clock ticks of each of these processes that still runs."""
    ticks = {}
    for pid in pids:
        try:
            ticks[pid] = ProcStat.read(pid).ticks
        except OSError:
            continue
    return ticks


def cpu_seconds(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds used between two readings (processes started in between count in full)."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / CLK_TCK


def postgres_pids() -> list[int]:
    """PostgreSQL backends serving the bench's databases (their title names the database)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"nicecard_bench_" in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def wrk_rate(
    url: str, seconds: int, connections: int, script: Path, env: dict[str, str]
) -> tuple[float, int]:
    """Requests per second and non-2xx count."""
    out = wrk(url, seconds, connections, script, env)
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, int(bad.group(1)) if bad else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--citizens", type=int, default=2000)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    for tool in ("wrk", "pgbench", "psql"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is required (apt-get install wrk postgresql-client)")

    work = Path(tempfile.mkdtemp(prefix="nicecard-bench-"))
    admin = sa.create_engine(PG, isolation_level="AUTOCOMMIT")
    identity_url = fresh_database(admin, "nicecard_bench_identity")
    ledger_url = fresh_database(admin, "nicecard_bench_ledger")
    (work / "catalogue.toml").write_text(CATALOGUE)
    (work / "acts.lua").write_text(WRK_SCRIPT)
    env = environment(production_settings(identity_url, ledger_url, work, args.workers, args.port))
    upgrade_and_init_keys(env)
    added = json.loads(
        nicecard(
            "clients",
            "add",
            "bench-partner",
            "--grant-type",
            "client_credentials",
            "--scope",
            "acts:write",
            "--json",
            env=env,
        )
        .strip()
        .splitlines()[-1]
    )
    secret = added["client_secret"]

    # Citizens the partner knows: an account and the partner's pairwise sub for it.
    identity = sa.create_engine(identity_url)
    subs = [secrets.token_urlsafe(32) for _ in range(args.citizens)]
    now = datetime.now(UTC)
    with identity.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO account (id, fc_sub_hash, fc_sub_kid, ledger_pseudonym, created_at,"
                " last_login_at) VALUES (:id, :h, 'bench', :p, :t, :t)"
            ),
            [
                {"id": f"{i:032x}", "h": os.urandom(32), "p": f"{i:032x}", "t": now}
                for i in range(args.citizens)
            ],
        )
        conn.execute(
            sa.text(
                "INSERT INTO partner_subject (sector, sub_hash, account_id, created_at)"
                " VALUES ('client:bench-partner', :h, :id, :t)"
            ),
            [
                {"h": hashlib.sha256(sub.encode()).digest(), "id": f"{i:032x}", "t": now}
                for i, sub in enumerate(subs)
            ],
        )
    identity.dispose()
    (work / "subs.txt").write_text("\n".join(subs) + "\n")

    with serving(env, args.port) as server:
        token = access_token(server.url, "bench-partner", secret, "acts:write")
        common = {
            "BENCH_SUBS": str(work / "subs.txt"),
            "BENCH_TOKEN": token,
            "BENCH_WHEN": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        load = Path("/proc/loadavg").read_text().split()[0]
        baseline = pgbench_inserts(admin, args.seconds)
        print(f"# pgbench single-row INSERT (16 clients): {baseline:,.0f}/s")
        print(f"# server: nicecard serve, production, {args.workers} workers, PostgreSQL")
        print(f"# {os.cpu_count()} CPUs, load average {load} at the start")
        print(
            "scenario            requests/s   acts/s  non2xx  ratio_to_pgbench"
            "  srv_cpu%  pg_cpu%  srv_us/act"
        )
        for name, conns, batch in (
            ("single@c16", 16, 1),
            ("single@c64", 64, 1),
            ("batch50@c16", 16, 50),
        ):
            srv_before = cpu_ticks(server.pids)
            pg_before, started = cpu_ticks(postgres_pids()), time.monotonic()
            rate, bad = wrk_rate(
                server.url + "/v1/acts",
                args.seconds,
                conns,
                work / "acts.lua",
                {**common, "BENCH_BATCH": str(batch), "BENCH_PREFIX": name},
            )
            elapsed = time.monotonic() - started
            srv = cpu_seconds(srv_before, cpu_ticks(server.pids))
            pg = cpu_seconds(pg_before, cpu_ticks(postgres_pids()))
            acts = rate * batch
            print(
                f"{name:<18} {rate:>11,.0f} {acts:>8,.0f} {bad:>7}  {acts / baseline:>8.2f}"
                f"  {100 * srv / elapsed:>16.0f} {100 * pg / elapsed:>8.0f}"
                f"  {1e6 * srv / max(acts * elapsed, 1):>10,.0f}"
            )
        ledger = sa.create_engine(ledger_url)
        with ledger.connect() as conn:  # one statement, one snapshot: appends may still land
            size, gaps = conn.execute(
                sa.text(
                    "SELECT (SELECT size FROM ledger_head), (SELECT count(*) FROM ledger_entries)"
                )
            ).one()
        ledger.dispose()
        print(f"# ledger size {size}, entries {gaps}: {'no gap' if size == gaps else 'GAP'}")
    for name in ("nicecard_bench_identity", "nicecard_bench_ledger", "nicecard_bench_pgbench"):
        drop_database(admin, name)
    admin.dispose()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
