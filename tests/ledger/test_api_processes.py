"""``POST /v1/acts`` served by real server processes (``nicecard serve``) on one PostgreSQL.

Two processes and many concurrent partners: no fork, no gap, one credit per idempotency key and
caps that hold across both processes. A server killed with SIGKILL in the middle of a load of
appends: after a restart every act it acknowledged is in the log, and the log verifies with
``ledger-audit``.

Each test gets its own identity and ledger databases (dropped afterwards), a production-mode
deployment made with the ``nicecard`` CLI as an operator would, and citizens seeded in the
identity store with the pairwise ``sub`` each partner knows them by.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from ledger.entries import ActCredited
from ledger.store import LedgerStore
from tests.conftest import POSTGRES_ENV
from tests.ledger.test_append_concurrency import _check_log

pytestmark = pytest.mark.postgres

BIN = Path(sys.executable).parent
CAPPED = 3  # tram_ride: per day
MONTHLY = 5  # tram_ride: per month
CATALOGUE = f"""
[acts.tram_ride]
points = 2
max_per_day = {CAPPED}
max_per_month = {MONTHLY}
partners = ["transit-a", "transit-b"]

[acts.bike_share_trip]
points = 1
max_per_day = 100000
max_per_month = 100000
partners = ["transit-a", "transit-b"]
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str


@dataclass
class Deployment:
    """A production-mode deployment on two fresh PostgreSQL databases."""

    directory: Path
    identity_url: str
    ledger_url: str
    env: dict[str, str] = field(default_factory=dict)
    servers: list[Server] = field(default_factory=list)
    secrets: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        (self.directory / "catalogue.toml").write_text(CATALOGUE)
        self.env = {
            "PATH": os.environ["PATH"],
            "NICECARD_MODE": "production",
            "NICECARD_ISSUER": "https://nicecard.test",
            "NICECARD_FC_SIMULATOR": "false",
            "NICECARD_FC_ISSUER": "https://fc.test/api/v2",
            "NICECARD_FC_CLIENT_SECRET": base64.b64encode(os.urandom(32)).decode(),
            "NICECARD_KEK": base64.b64encode(os.urandom(32)).decode(),
            "NICECARD_IDENTITY_DATABASE_URL": self.identity_url,
            "NICECARD_LEDGER_DATABASE_URL": self.ledger_url,
            "NICECARD_CATALOGUE_FILE": str(self.directory / "catalogue.toml"),
            "NICECARD_WORKERS": "1",
            "NICECARD_LOG_LEVEL": "warning",
            "NICECARD_DATA_DIR": str(self.directory / "var"),
        }

    def cli(self, *commands: list[str], tool: str = "nicecard") -> list[str]:
        """Run CLI commands side by side (each a process); their outputs, in order."""
        running = [
            subprocess.Popen(
                [str(BIN / tool), *args],
                env=self.env,
                cwd=self.directory,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for args in commands
        ]
        outputs = []
        for args, process in zip(commands, running, strict=True):
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, f"{tool} {' '.join(args)}:\n{out}\n{err}"
            outputs.append(out)
        return outputs

    def setup(self, partners: list[str]) -> None:
        self.cli(["db", "upgrade"])
        add = ["--grant-type", "client_credentials", "--scope", "acts:write", "--json"]
        _, *added = self.cli(["keys", "init"], *(["clients", "add", p, *add] for p in partners))
        for partner, out in zip(partners, added, strict=True):
            self.secrets[partner] = json.loads(out.strip().splitlines()[-1])["client_secret"]

    def seed(self, partners: list[str], citizens: int) -> dict[str, list[str]]:
        """Citizens 0..n-1 (pseudonym ``f"{i:032x}"``); each partner's ``sub`` for each."""
        now = datetime.now(UTC)
        subs = {p: [secrets.token_urlsafe(24) for _ in range(citizens)] for p in partners}
        engine = sa.create_engine(self.identity_url)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO account (id, fc_sub_hash, fc_sub_kid, ledger_pseudonym,"
                    " created_at, last_login_at) VALUES (:id, :h, 'test', :p, :t, :t)"
                ),
                [
                    {"id": f"{i:032x}", "h": os.urandom(32), "p": pseudonym(i), "t": now}
                    for i in range(citizens)
                ],
            )
            conn.execute(
                sa.text(
                    "INSERT INTO partner_subject (sector, sub_hash, account_id, created_at)"
                    " VALUES (:sector, :h, :id, :t)"
                ),
                [
                    {
                        "sector": f"client:{partner}",
                        "h": hashlib.sha256(sub.encode()).digest(),
                        "id": f"{i:032x}",
                        "t": now,
                    }
                    for partner, known in subs.items()
                    for i, sub in enumerate(known)
                ],
            )
        engine.dispose()
        return subs

    def start(self, *ports: int) -> list[Server]:
        """``nicecard serve`` (one process each) on these ports, once they all answer."""
        started = []
        for port in ports:
            with (self.directory / f"server-{port}.log").open("ab") as log:
                process = subprocess.Popen(
                    [str(BIN / "nicecard"), "serve"],
                    env={**self.env, "NICECARD_PORT": str(port)},
                    cwd=self.directory,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started.append(Server(process, f"http://127.0.0.1:{port}"))
        self.servers += started
        deadline = time.monotonic() + 30
        for port, server in zip(ports, started, strict=True):
            while True:
                assert server.process.poll() is None, self.log(port)
                assert time.monotonic() < deadline, f"not ready:\n{self.log(port)}"
                try:
                    if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        return started

    def log(self, port: int) -> str:
        return (self.directory / f"server-{port}.log").read_text(errors="replace")[-4000:]

    def token(self, server: Server, partner: str) -> str:
        answer = httpx.post(
            server.url + "/token",
            auth=(partner, self.secrets[partner]),
            data={"grant_type": "client_credentials", "scope": "acts:write"},
        )
        assert answer.status_code == 200, answer.text
        return str(answer.json()["access_token"])

    def stop_all(self) -> None:
        for server in self.servers:
            if server.process.poll() is None:
                os.killpg(server.process.pid, signal.SIGTERM)
                try:
                    server.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(server.process.pid, signal.SIGKILL)
                    server.process.wait()

    def audit(self) -> dict[str, Any]:
        """``nicecard ledger export`` then ``ledger-audit verify`` with the pinned note key."""
        export = self.directory / "ledger.export"
        _, keys = self.cli(["ledger", "export", str(export)], ["ledger", "keys"])
        verify = ["verify", "--export", str(export), *(f"--key={k}" for k in keys.split())]
        (report,) = self.cli([*verify, "--json"], tool="ledger-audit")
        result: dict[str, Any] = json.loads(report)
        assert result["status"] == "ok"
        return result


def pseudonym(i: int) -> str:
    return f"{i:032x}"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against")
    url = make_url(base).set(drivername="postgresql+psycopg")
    stem = f"nicecard_test_{secrets.token_hex(5)}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    names = [f"{stem}_identity", f"{stem}_ledger"]
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    urls = [url.set(database=name).render_as_string(hide_password=False) for name in names]
    built = Deployment(tmp_path, *urls)
    try:
        yield built
    finally:
        built.stop_all()
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def act(sub: str, key: str, kind: str, when: datetime) -> dict[str, str]:
    return {
        "sub": sub,
        "type": kind,
        "occurred_at": when.isoformat().replace("+00:00", "Z"),
        "evidence_digest": "sha256:" + hashlib.sha256(f"{kind} {key}".encode()).hexdigest(),
        "idempotency_key": key,
    }


@dataclass
class Answer:
    """One act's answer as a partner received it."""

    partner: str
    key: str
    status: int
    body: dict[str, Any]


async def post(
    client: httpx.AsyncClient, url: str, token: str, body: dict[str, Any]
) -> list[tuple[int, dict[str, Any]]]:
    """``(status, result)`` per act sent: one for a single act, one per act of a batch."""
    response = await client.post(
        url + "/v1/acts", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    if "acts" not in body:
        return [(response.status_code, response.json())]
    assert response.status_code == 207, response.text
    return [(r["status"], r) for r in response.json()["results"]]


def log_entries(ledger_url: str) -> tuple[LedgerStore, list[Any]]:
    store = LedgerStore(sa.create_engine(make_url(ledger_url)))
    _check_log(store)  # no gap, no fork: indexes 0..n-1, every node and the root recomputed
    return store, store.entries(0, store.head().size)


def months_ago(months: int, day: int) -> datetime:
    """Noon UTC on ``day`` of the month ``months`` before this one."""
    today = datetime.now(UTC)
    year, month = divmod(today.year * 12 + today.month - 1 - months, 12)
    return datetime(year, month + 1, day, 12, tzinfo=UTC)


def test_two_processes_and_many_partners(deployment: Deployment) -> None:
    partners = ["transit-a", "transit-b"]
    deployment.setup(partners)
    subs = deployment.seed(partners, citizens=16)
    servers = deployment.start(_free_port(), _free_port())
    tokens = {(s.url, p): deployment.token(s, p) for s in servers for p in partners}

    now = datetime.now(UTC) - timedelta(minutes=1)
    capped_days = [months_ago(1, day) for day in (3, 4, 5)]  # a past month: caps of 3 and 5
    workers, shared_keys = 32, 6
    answers: list[Answer] = []

    async def partner(n: int, clients: list[httpx.AsyncClient]) -> None:
        who = partners[n % 2]
        known = subs[who]
        for step in range(15):
            # Every request goes to one of the two processes, alternately, and each citizen's
            # capped acts (citizen n % 2 below) go to both.
            server = servers[(n // 4 + step) % 2]
            client = clients[(n // 4 + step) % 2]
            token = tokens[server.url, who]
            sent: list[tuple[str, dict[str, Any]]] = []
            if step < 4:
                # Capped acts first, all tasks at once: 2 citizens, each with 16 attempts a
                # wave, half through each process, on one day of a past month, then the next.
                key = f"tram-{n}-{step}"
                day = capped_days[step if step < 3 else n % 3]
                sent.append((key, act(known[n % 2], key, "tram_ride", day)))
            elif step < 4 + shared_keys:
                # Every partner task sends every shared key, to both processes: one credit.
                key = f"shared-{step}"
                sent.append((key, act(known[step], key, "bike_share_trip", now)))
            elif step < 13:
                key = f"trip-{n}-{step}"
                sent.append((key, act(known[4 + (n + step) % 12], key, "bike_share_trip", now)))
            else:
                for i in range(10):
                    key = f"batch-{n}-{step}-{i}"
                    sent.append((key, act(known[4 + i], key, "bike_share_trip", now)))
            body = {"acts": [a for _, a in sent]} if step >= 13 else sent[0][1]
            for (key, _), (status, result) in zip(
                sent, await post(client, server.url, token, body), strict=True
            ):
                answers.append(Answer(who, key, status, result))

    async def load() -> None:
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        async with (
            httpx.AsyncClient(timeout=30, limits=limits) as first,
            httpx.AsyncClient(timeout=30, limits=limits) as second,
        ):
            await asyncio.gather(*(partner(n, [first, second]) for n in range(workers)))

    asyncio.run(load())

    # Every act got an answer: 201, or 409 for capped ones only.
    outcomes = {(a.status, a.key.split("-")[0]) for a in answers}
    assert outcomes <= {
        (201, "shared"),
        (201, "tram"),
        (201, "trip"),
        (201, "batch"),
        (409, "tram"),
    }
    refused = [a for a in answers if a.status == 409]
    assert all(a.body["type"].endswith("/problems/cap-exceeded") for a in refused)

    store, entries = log_entries(deployment.ledger_url)
    by_index = {item.index: item for item in entries}
    # Every receipt names the entry the log holds, with its leaf hash.
    accepted = [a for a in answers if a.status == 201]
    for answer in accepted:
        assert by_index[answer.body["index"]].leaf_hash.hex() == answer.body["leaf_hash"]
    # One entry per (partner, key), whoever sent it to whichever process; nothing else logged.
    indexes: dict[tuple[str, str], set[int]] = {}
    for answer in accepted:
        indexes.setdefault((answer.partner, answer.key), set()).add(answer.body["index"])
    assert all(len(found) == 1 for found in indexes.values())
    acts = [item for item in entries if isinstance(item.entry.event, ActCredited)]
    assert {i for found in indexes.values() for i in found} == {item.index for item in acts}
    shared = [a for a in accepted if a.key.startswith("shared-")]
    assert len(shared) == workers * shared_keys
    assert len({(a.partner, a.key) for a in shared}) == len(partners) * shared_keys
    assert sum(not a.body["replayed"] for a in shared) == len(partners) * shared_keys

    # Caps are per citizen, across partners and processes: 3 a day, 5 in the month.
    trams: Counter[tuple[str, date]] = Counter()
    for item in acts:
        event = item.entry.event
        assert isinstance(event, ActCredited)
        if event.act_type == "tram_ride":
            day = datetime.fromtimestamp(event.occurred_at, UTC).date()
            trams[event.pseudonym, day] += 1
    assert max(trams.values()) <= CAPPED
    per_citizen: Counter[str] = Counter()
    for (who, _), count in trams.items():
        per_citizen[who] += count
    assert per_citizen == {pseudonym(i): MONTHLY for i in range(2)}

    # Balances kept with the entries match the log, and the auditor verifies it all.
    credited: Counter[str] = Counter()
    for item in acts:
        event = item.entry.event
        assert isinstance(event, ActCredited)
        credited[event.pseudonym] += event.points
    assert all(store.balance(who) == points for who, points in credited.items())
    report = deployment.audit()
    assert report["entries"] == len(entries)
    assert report["points_credited"] == sum(credited.values())
    store.engine.dispose()


def test_sigkill_during_load_loses_no_acknowledged_act(deployment: Deployment) -> None:
    partner = "transit-a"
    deployment.setup([partner])
    subs = deployment.seed([partner], citizens=8)[partner]
    port = _free_port()
    (server,) = deployment.start(port)
    token = deployment.token(server, partner)
    now = datetime.now(UTC) - timedelta(minutes=1)
    acknowledged: dict[str, dict[str, Any]] = {}
    unanswered: dict[str, dict[str, Any]] = {}
    sent: dict[str, dict[str, Any]] = {}
    killed = asyncio.Event()

    async def partner_task(n: int, client: httpx.AsyncClient) -> None:
        step = 0
        while not killed.is_set():
            key = f"crash-{n}-{step}"
            body = act(subs[(n + step) % len(subs)], key, "bike_share_trip", now)
            sent[key] = body
            step += 1
            try:
                ((status, result),) = await post(client, server.url, token, body)
            except httpx.TransportError:
                unanswered[key] = body  # in flight when the server died
                return
            assert status == 201, result
            acknowledged[key] = result

    async def killer() -> None:
        while len(acknowledged) < 300:
            await asyncio.sleep(0.01)
        os.kill(server.process.pid, signal.SIGKILL)  # mid-load: appends are in flight
        killed.set()

    async def load() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            await asyncio.gather(killer(), *(partner_task(n, client) for n in range(24)))

    asyncio.run(asyncio.wait_for(load(), timeout=60))
    assert server.process.wait(timeout=10) == -signal.SIGKILL
    assert len(acknowledged) >= 300
    assert unanswered  # the kill did catch appends in flight

    # Restart on the same database: every acknowledged act is in the log as acknowledged.
    (restarted,) = deployment.start(port)
    store, entries = log_entries(deployment.ledger_url)
    store.engine.dispose()
    by_index = {item.index: item for item in entries}
    for result in acknowledged.values():
        assert by_index[result["index"]].leaf_hash.hex() == result["leaf_hash"]
    assert len({r["index"] for r in acknowledged.values()}) == len(acknowledged)

    # The partner retries what got no answer and replays some answered acts: one credit each.
    token = deployment.token(restarted, partner)
    retried = [*list(acknowledged)[:20], *unanswered]

    async def retry() -> list[list[tuple[int, dict[str, Any]]]]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(post(client, restarted.url, token, sent[key]) for key in retried)
            )

    for key, ((status, reply),) in zip(retried, asyncio.run(retry()), strict=True):
        assert status == 201, reply
        if key in acknowledged:
            assert reply["replayed"] is True
            assert reply["index"] == acknowledged[key]["index"]
    store, entries = log_entries(deployment.ledger_url)
    logged = [item for item in entries if isinstance(item.entry.event, ActCredited)]
    assert len(logged) == len(acknowledged) + len(unanswered)

    report = deployment.audit()
    assert report["entries"] == len(entries)
    assert report["points_credited"] == len(logged)
    store.engine.dispose()
