"""What the benchmarks share: fresh PostgreSQL databases, a production ``nicecard serve`` on
them, and the tools that measure it (CPU ticks from ``/proc``, wrk, pgbench).

The scripts run as ``.venv/bin/python bench/<name>.py``, so ``bench/`` is the script directory
and this module is imported as ``_harness`` (from elsewhere, put ``bench/`` on ``sys.path``).
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

BIN = Path(sys.executable).parent
PG = os.environ.get("BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def run(*cmd: str, env: Mapping[str, str] | None = None) -> str:
    """The standard output of ``cmd``; exits with both outputs if it fails."""
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


# --- databases ----------------------------------------------------------------------------------


def fresh_database(admin: sa.Engine, name: str) -> str:
    """Drop database ``name`` if it exists and create it empty; returns its URL (with any
    password, for settings and environment variables)."""
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    return admin.url.set(database=name).render_as_string(hide_password=False)


def drop_database(admin: sa.Engine, name: str) -> None:
    """Drop database ``name``, closing the connections still open on it."""
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- the server ---------------------------------------------------------------------------------


def one_act_catalogue(act: str, points: int, partner: str) -> str:
    """A catalogue (TOML) of one act worth ``points`` that ``partner`` attests, with daily and
    monthly caps high enough not to interfere with a bench."""
    return f"""
[acts.{act}]
points = {points}
max_per_day = 1000000
max_per_month = 1000000
partners = ["{partner}"]
valid_from = 2020-01-01
"""


def production_settings(
    identity_url: str, ledger_url: str, work: Path, workers: int, port: int
) -> dict[str, Any]:
    """Settings values of a production deployment on these databases, with fresh secrets, the
    catalogue in ``work/catalogue.toml`` and the data directory ``work/var``."""
    return {
        "mode": "production",
        "issuer": "https://bench.nicecard.example",
        "fc_simulator": False,
        "fc_issuer": "https://fc.example/api/v2",
        "fc_client_secret": base64.b64encode(os.urandom(32)).decode(),
        "kek": base64.b64encode(os.urandom(32)).decode(),
        "identity_database_url": identity_url,
        "ledger_database_url": ledger_url,
        "catalogue_file": str(work / "catalogue.toml"),
        "workers": workers,
        "port": port,
        "log_level": "warning",
        "data_dir": str(work / "var"),
    }


def environment(values: Mapping[str, Any]) -> dict[str, str]:
    """The environment that gives ``nicecard`` these settings values (and nothing else but
    ``PATH``)."""
    env = {"PATH": os.environ["PATH"]}
    for key, value in values.items():
        text = str(value).lower() if isinstance(value, bool) else str(value)
        env[f"NICECARD_{key.upper()}"] = text
    return env


def nicecard(*args: str, env: Mapping[str, str]) -> str:
    """The standard output of this environment's ``nicecard`` command."""
    return run(str(BIN / "nicecard"), *args, env=env)


def upgrade_and_init_keys(env: Mapping[str, str]) -> None:
    """What an operator runs before the first start: ``nicecard db upgrade``, ``keys init``."""
    nicecard("db", "upgrade", env=env)
    nicecard("keys", "init", env=env)


@dataclass(frozen=True)
class Server:
    """A running ``nicecard serve``: its base URL and the pids of its processes."""

    url: str
    pids: list[int]


@contextmanager
def serving(env: Mapping[str, str], port: int) -> Iterator[Server]:
    """Start ``nicecard serve`` and wait until it is ready; stops it on leaving."""
    process = subprocess.Popen([str(BIN / "nicecard"), "serve"], env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("the server did not become ready")
        children = [p.pid for p in processes() if p.ppid == process.pid]  # uvicorn's workers
        yield Server(base, [process.pid, *children])
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def access_token(base: str, client_id: str, secret: str, scope: str) -> str:
    """An access token for a client_credentials grant (client_secret_basic)."""
    answer = httpx.post(
        base + "/token",
        auth=(client_id, secret),
        data={"grant_type": "client_credentials", "scope": scope},
    )
    return str(answer.json()["access_token"])


# --- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` a bench reads (proc(5)); times in clock ticks."""

    pid: int
    name: str
    ppid: int
    ticks: int  # utime + stime
    children_ticks: int  # cutime + cstime: of the children it has waited for

    @classmethod
    def read(cls, pid: int) -> ProcStat:
        """The process's figures now; ``OSError`` if it has ended."""
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return cls(
            pid,
            stat[stat.index("(") + 1 : stat.rindex(")")],
            int(fields[1]),
            int(fields[11]) + int(fields[12]),
            int(fields[13]) + int(fields[14]),
        )


def processes() -> Iterator[ProcStat]:
    """Every process of the box (those that end while this reads are left out)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                yield ProcStat.read(int(entry))
            except OSError:
                continue


def wrk(
    url: str,
    seconds: int,
    connections: int,
    script: Path,
    env: Mapping[str, str],
    timeout: str | None = None,
) -> str:
    """wrk's output for one thread and ``connections`` connections over ``seconds``, running
    the Lua ``script`` with ``env`` added to this process's environment."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s"]
    if timeout is not None:
        command += ["--timeout", timeout]
    return run(*command, "-s", str(script), url, env={**os.environ, **env})


def pgbench_tps(url: sa.URL, script: str, seconds: int, binary: str = "pgbench") -> float:
    """pgbench's transactions per second (without connection time) running the SQL ``script``
    from 16 clients on 2 threads for ``seconds``, in ``url``'s database."""
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = url.password
    with tempfile.TemporaryDirectory(prefix="nicecard-pgbench-") as folder:
        path = Path(folder) / "script.sql"
        path.write_text(script)
        output = run(
            binary,
            "-n",
            "-c",
            "16",
            "-j",
            "2",
            "-T",
            str(seconds),
            "-f",
            str(path),
            "-h",
            url.host or "127.0.0.1",
            "-p",
            str(url.port or 5432),
            "-U",
            url.username or "postgres",
            url.database or "postgres",
            env=env,
        )
    match = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", output)
    if match is None:
        raise SystemExit(f"cannot read pgbench's output:\n{output}")
    return float(match.group(1))
