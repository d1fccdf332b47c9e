"""Double spending on PostgreSQL with two real server processes: a coin deposited by many
concurrent requests, or paid to two partners at once, is spent exactly once; every refused
permission is kept as evidence, and the exported log still audits with no double spend.

The two servers are ``nicecard serve`` processes in production mode on one fresh database (both
stores in it), with the same key-encryption key and settings, as two replicas behind a load
balancer would be. The test process migrates the database, creates the keys, registers the
partners and mints the coins through :class:`ledger.mint.Mint` on the same database (a citizen's
points credited by a logged act, then withdrawn with the reference wallet's blinding), so only
deposits go over HTTP.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from identity import migrate
from identity.coins_wiring import mint_policy
from identity.db import create_engine
from identity.runtime import REQUIRED_PURPOSES, Runtime, open_runtime
from keys.keyring import utc_now
from keys.note import parse_verifier_key
from ledger.audit import verify_log
from ledger.catalogue import load_catalogue, publish_catalogue
from ledger.checkpoints import issue_checkpoint, verifier_keys
from ledger.coins import b64decode, b64encode
from ledger.entries import ActCredited
from ledger.export import ExportReader, export
from ledger.mint import Mint
from ledger.store import LedgerStore
from ledger.tables import double_spends_table, spent_table
from ledger.wallet import OwnedCoin, PaymentRequest, finish_withdrawal, pay, prepare_withdrawal
from oidc.clients import AuthMethod, Client, GrantType
from oidc.secrets import generate_client_secret, hash_client_secret
from oidc.tables import SqlClientRegistry
from tests.conftest import make_settings

pytestmark = pytest.mark.postgres

NICECARD = Path(sys.executable).parent / "nicecard"
ISSUER = "https://double-spend.nicecard.example"
SHOP, CINEMA = "shop-massena", "cinema-rex"
CITIZEN = secrets.token_hex(16)  # a ledger pseudonym
CATALOGUE = """
[acts.tram_ride]
points = 100
max_per_day = 10
max_per_month = 100
partners = ["transit"]
valid_from = 2020-01-01
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """Two server processes on one database, and the test process's own view of it."""

    urls: tuple[str, str]
    tokens: dict[str, str]
    runtime: Runtime
    store: LedgerStore
    mint: Mint
    origin: str

    def coins(self, count: int) -> list[OwnedCoin]:
        """``count`` coins of 1 point, withdrawn by the citizen through the mint."""
        one = next(d for d in self.mint.denominations() if d.value == 1)
        owned: list[OwnedCoin] = []
        while len(owned) < count:
            pending = prepare_withdrawal([one], min(count - len(owned), 64))
            done = self.mint.withdraw(
                CITIZEN,
                secrets.token_urlsafe(18),
                [(p.denomination.id, p.blinding.blinded_msg) for p in pending],
            )
            owned += finish_withdrawal(pending, done.signatures)
        return owned

    def deposit(self, http: httpx.Client, server: int, partner: str, body: Any) -> httpx.Response:
        return http.post(
            self.urls[server] + "/v1/deposits",
            json=body,
            headers={"Authorization": f"Bearer {self.tokens[partner]}"},
        )

    def race(self, sends: Sequence[tuple[int, str, Any]]) -> list[httpx.Response]:
        """Send ``(server, partner, body)`` deposits at once, one thread each; answers in order."""
        answers: list[httpx.Response | None] = [None] * len(sends)
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(sends))

        def send(i: int) -> None:
            server, partner, body = sends[i]
            try:
                with httpx.Client(timeout=30) as http:
                    http.get(self.urls[server] + "/healthz")  # connected before the start
                    barrier.wait(timeout=30)
                    answers[i] = self.deposit(http, server, partner, body)
            except BaseException as exc:  # re-raised in the test's thread
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(sends))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return [answer for answer in answers if answer is not None]

    def wait_for_lock_waiters(self, count: int) -> None:
        """Wait until ``count`` sessions of the servers wait for a row lock in this database."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with self.runtime.ledger_engine.connect() as conn:
                waiting = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            if waiting >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"{count} deposits never waited on the held claim")


def _wait_ready(url: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready: {log.read_text()[-2000:]}")


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "catalogue.toml").write_text(CATALOGUE)
    values: dict[str, Any] = {
        "mode": "production",
        "issuer": ISSUER,
        "identity_database_url": postgres_url,
        "ledger_database_url": postgres_url,
        "kek": base64.b64encode(os.urandom(32)).decode(),
        "fc_simulator": False,
        "fc_issuer": "https://fc.example/api/v2",
        "fc_client_secret": base64.b64encode(os.urandom(32)).decode(),
        "catalogue_file": str(tmp_path / "catalogue.toml"),
        "coin_values": [1, 2, 5],
        "log_level": "warning",
        # Few connections: the PostgreSQL server is shared (max_connections), and requests
        # queue for a pooled connection rather than fail.
        "db_pool_size": 3,
        "db_max_overflow": 2,
    }
    settings = make_settings(tmp_path / "var", **values)
    engine = create_engine(postgres_url, settings)
    migrate.upgrade(migrate.Store.IDENTITY, engine)  # what 'nicecard db upgrade' does
    migrate.upgrade(migrate.Store.LEDGER, engine)
    engine.dispose()

    with open_runtime(settings) as runtime:
        runtime.keyring.ensure(REQUIRED_PURPOSES)  # what 'nicecard keys init' does
        registry = SqlClientRegistry(runtime.identity_engine, utc_now)
        secrets_by_partner = {}
        for partner in (SHOP, CINEMA):
            secret = generate_client_secret()
            registry.add(
                Client(
                    partner,
                    AuthMethod.CLIENT_SECRET_BASIC,
                    grant_types=frozenset({GrantType.CLIENT_CREDENTIALS}),
                    response_types=frozenset(),
                    scope=frozenset({"deposits:write"}),
                    secret_hash=hash_client_secret(secret),
                )
            )
            secrets_by_partner[partner] = secret
        store = LedgerStore(runtime.ledger_engine)
        catalogue = publish_catalogue(store, load_catalogue(tmp_path / "catalogue.toml"))
        store.append(
            ActCredited(
                CITIZEN,
                "transit",
                "tram_ride",
                100,
                catalogue.version,
                int(datetime.now(UTC).timestamp()) - 60,
                os.urandom(32),
            )
        )
        origin = settings.effective_ledger_origin
        mint = Mint(store, runtime.keyring, origin, mint_policy(settings))
        mint.ensure_denominations()  # made and announced once, before the servers load them

        env = {
            "PATH": os.environ["PATH"],
            "NICECARD_WORKERS": "1",
            "NICECARD_DATA_DIR": str(tmp_path / "var"),
            **{
                f"NICECARD_{k.upper()}": json.dumps(v) if isinstance(v, list) else str(v)
                for k, v in values.items()
            },
        }
        servers, urls = [], []
        try:
            for name in ("a", "b"):
                port = _free_port()
                log = tmp_path / f"server-{name}.log"
                with log.open("wb") as out:
                    server = subprocess.Popen(
                        [str(NICECARD), "serve"],
                        env={**env, "NICECARD_PORT": str(port)},
                        cwd=tmp_path,  # no developer .env
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                servers.append((server, log))
                urls.append(f"http://127.0.0.1:{port}")
            for url, (server, log) in zip(urls, servers, strict=True):
                _wait_ready(url, server, log)
            tokens = {}
            for i, partner in enumerate((SHOP, CINEMA)):
                answer = httpx.post(
                    urls[i] + "/token",
                    auth=(partner, secrets_by_partner[partner]),
                    data={"grant_type": "client_credentials", "scope": "deposits:write"},
                )
                assert answer.status_code == 200, answer.text
                tokens[partner] = str(answer.json()["access_token"])
            yield Cluster((urls[0], urls[1]), tokens, runtime, store, mint, origin)
        finally:
            for server, _ in servers:
                os.killpg(server.pid, signal.SIGTERM)
            for server, log in servers:
                try:
                    server.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait()
                assert "Traceback" not in log.read_text(), log.read_text()[-4000:]


def _slug(answer: httpx.Response) -> str:
    return str(answer.json()["type"]).rsplit("/", 1)[-1]


def test_a_coin_is_spent_once_across_two_server_processes(cluster: Cluster, tmp_path: Path) -> None:
    coins = cluster.coins(13)
    won: dict[bytes, tuple[str, str]] = {}  # coin -> (partner, order) that spent it
    refused: list[tuple[bytes, str, str, bytes]] = []  # (coin, partner, order, permission)

    def refuse(partner: str, body: Any) -> None:
        for paid in body["coins"]:
            coin, permission = b64decode(paid["coin_pub"], ""), b64decode(paid["permission"], "")
            refused.append((coin, partner, body["order"], permission))

    def pair(paid: list[OwnedCoin], order: str) -> None:
        """Pay ``paid`` to both partners at once (the cinema in reverse order): one wins."""
        sends = [
            (0, SHOP, pay(paid, PaymentRequest(SHOP, order, len(paid)))),
            (1, CINEMA, pay(paid[::-1], PaymentRequest(CINEMA, order, len(paid)))),
        ]
        answers = cluster.race(sends)
        assert sorted(a.status_code for a in answers) == [201, 409], [a.text for a in answers]
        for (_, partner, body), answer in zip(sends, answers, strict=True):
            if answer.status_code == 201:
                won.update((c.coin.coin, (partner, order)) for c in paid)
            else:
                assert _slug(answer) == "coin-already-spent"
                refuse(partner, body)

    # (a) One coin, twenty deposits for different orders of one partner, on both servers.
    coin = coins[0]
    sends = [(i % 2, SHOP, pay([coin], PaymentRequest(SHOP, f"race-{i}", 1))) for i in range(20)]
    answers = cluster.race(sends)
    statuses = [a.status_code for a in answers]
    assert sorted(statuses) == [201] + [409] * 19, [a.text for a in answers]
    for (_, _, body), answer in zip(sends, answers, strict=True):
        if answer.status_code == 201:
            won[coin.coin.coin] = (SHOP, body["order"])
        else:
            assert _slug(answer) == "coin-already-spent"
            assert answer.json()["coins"] == [b64encode(coin.coin.coin)]
            refuse(SHOP, body)

    # (b) Each coin paid to both partners at once, each partner on its own server.
    for n, c in enumerate(coins[1:8]):
        pair([c], f"pair-{n}")

    # Three coins paid to both at once in opposite orders, [c1, c3, c2] and [c2, c3, c1], while
    # the test holds an uncommitted claim on c3 (a writer outside the head lock, which the
    # service never is): one deposit waits on c3 holding the head lock, the other on the head
    # lock. Released, they must finish one after the other, neither deadlocked nor a 500.
    c1, c2, c3 = coins[10:13]
    with cluster.runtime.ledger_engine.connect() as conn:
        held = conn.begin()
        conn.execute(
            spent_table.insert().values(
                coin=c3.coin.coin,
                denomination=c3.coin.denomination,
                partner="test",
                order_ref="held",
                signed_at=0,
                permission=bytes(64),
                created_at=datetime.now(UTC),
            )
        )
        racing = threading.Thread(target=pair, args=([c1, c3, c2], "crossed"))
        racing.start()
        cluster.wait_for_lock_waiters(2)
        held.rollback()
        racing.join()
    assert all(c.coin.coin in won for c in (c1, c2, c3)), "the crossed deposits failed"

    # The same deposit replayed at once on both servers: one 201, the rest the same receipt.
    replayed = pay(coins[8:10], PaymentRequest(CINEMA, "replay-1", 2))
    answers = cluster.race([(i % 2, CINEMA, replayed) for i in range(8)])
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201], [a.text for a in answers]
    assert len({a.json()["receipt"] for a in answers}) == 1
    for c in coins[8:10]:
        won[c.coin.coin] = (CINEMA, "replay-1")

    # (c) One coin_spent row per coin, for the order that won; every refusal kept as evidence.
    with cluster.runtime.ledger_engine.connect() as conn:
        spent = {
            bytes(row.coin): (row.partner, row.order_ref)
            for row in conn.execute(sa.select(spent_table))
        }
        evidence = sorted(
            (bytes(row.coin), row.partner, row.order_ref, bytes(row.permission))
            for row in conn.execute(sa.select(double_spends_table))
        )
    assert spent == won
    assert evidence == sorted(refused)

    # The log, exported and audited: one deposit entry per winning order, no coin twice.
    keyring = cluster.runtime.keyring
    issue_checkpoint(cluster.store, keyring, origin=cluster.origin)
    export(cluster.store, tmp_path / "ledger.export", origin=cluster.origin)
    reader = ExportReader(tmp_path / "ledger.export")
    report = verify_log(
        reader,
        reader.checkpoints,
        [parse_verifier_key(key) for key in verifier_keys(keyring, cluster.origin)],
        origin=cluster.origin,
        tree_size=reader.tree_size,
        balances=reader.balances,
    )
    assert report.kinds["coins_deposited"] == len(set(won.values()))
    assert report.deposited == report.debited == len(won) == len(coins)
    assert sum(report.deposited_coins.values()) == len(coins)
