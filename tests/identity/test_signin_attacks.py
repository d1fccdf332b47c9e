"""Attacks on the FranceConnect sign-in, each against a hostile provider over real HTTP.

Every one must end on a clear error page, with no session and no account created.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import sqlalchemy as sa

from identity.app import create_app
from identity.settings import Settings
from tests.conftest import serve
from tests.identity.hostile_fc import HostileProvider, Scenario


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class World:
    base: str
    provider: HostileProvider
    settings: Settings
    clients: list[httpx.Client]

    def client(self) -> httpx.Client:
        client = httpx.Client(base_url=self.base, follow_redirects=False)
        self.clients.append(client)
        return client

    def accounts(self) -> int:
        engine = sa.create_engine(self.settings.identity_url)
        with engine.connect() as conn:
            count = conn.execute(sa.text("SELECT count(*) FROM account")).scalar_one()
        engine.dispose()
        return int(count)

    def sign_in(self) -> tuple[httpx.Client, httpx.Response, str]:
        """Start at our service, let the provider answer, return our callback's response."""
        client = self.client()
        start = client.get("/auth/franceconnect/start")
        assert start.status_code == 303, start.text
        authorize = httpx.get(start.headers["location"], follow_redirects=False)
        assert authorize.status_code == 302
        callback_url = authorize.headers["location"]
        return client, client.get(callback_url), callback_url


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    fc_port, our_port = _port(), _port()
    fc_issuer = f"http://127.0.0.1:{fc_port}/api/v2"
    provider = HostileProvider(fc_issuer, client_id="nicecard-test")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path_factory.mktemp("var"),
        issuer=f"http://127.0.0.1:{our_port}",
        fc_simulator=False,
        fc_issuer=fc_issuer,
        fc_client_id="nicecard-test",
        fc_client_secret="s3cr3t-for-the-hostile-provider",
        fc_timeout_seconds=2,
    )
    with serve(provider.app, port=fc_port), serve(create_app(settings), port=our_port) as base:
        yield World(base, provider, settings, [])


@pytest.fixture(autouse=True)
def _close_browsers(world: World) -> Iterator[None]:
    yield
    while world.clients:
        world.clients.pop().close()


@pytest.fixture
def scenario(world: World) -> Callable[..., Scenario]:
    def set_scenario(**changes: object) -> Scenario:
        world.provider.scenario = Scenario(**changes)  # type: ignore[arg-type]
        return world.provider.scenario

    yield set_scenario  # type: ignore[misc]
    world.provider.scenario = Scenario()


def _refused(world: World, response: httpx.Response, status: int, before: int) -> None:
    assert response.status_code == status, response.text
    assert "<h1>" in response.text
    assert "Traceback" not in response.text
    assert not any(
        name.endswith("nicecard") or name == "nicecard_session" for name in response.cookies
    )
    assert world.accounts() == before


def test_the_honest_path_works(world: World, scenario: Callable[..., Scenario]) -> None:
    scenario()
    client, response, _ = world.sign_in()
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    home = client.get("/")
    assert "Hostile" in home.text  # the given_name from userinfo, shown to the citizen only


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"id_claims": {"nonce": "0" * 64}}, 502),
        ({"id_claims": {"aud": "another-client"}}, 502),
        ({"id_claims": {"iss": "https://evil.example/api/v2"}}, 502),
        ({"id_claims": {"exp": int(time.time()) - 3600, "iat": int(time.time()) - 3700}}, 502),
        ({"id_claims": {"iat": int(time.time()) + 3600}}, 502),
        ({"id_token": "unknown-kid"}, 502),
        ({"id_token": "none"}, 502),
        ({"id_token": "hs256-public"}, 502),
        ({"id_token": "other-key"}, 502),
        ({"userinfo": "json"}, 502),
        ({"userinfo": "500"}, 504),
        ({"userinfo_claims": {"sub": "b" * 64 + "v1"}}, 502),
        ({"userinfo_claims": {"aud": "another-client"}}, 502),
        ({"id_claims": {"acr": "eidas0"}}, 502),
        ({"drop_acr": True}, 502),
        ({"iss_param": "https://other-provider.example/api/v2"}, 502),  # mix-up (RFC 9207)
        ({"state": "f" * 64}, 400),  # a state this browser never started
    ],
    ids=[
        "wrong-nonce",
        "wrong-aud",
        "wrong-iss",
        "expired",
        "issued-in-the-future",
        "unknown-kid",
        "alg-none",
        "hs256-with-public-key",
        "signed-by-another-key",
        "userinfo-not-signed",
        "userinfo-500",
        "userinfo-other-sub",
        "userinfo-wrong-aud",
        "acr-below-eidas1",
        "acr-missing",
        "mix-up",
        "wrong-state",
    ],
)
def test_attack_refused(
    world: World, scenario: Callable[..., Scenario], changes: dict[str, object], status: int
) -> None:
    before = world.accounts()
    scenario(**changes)
    _client, response, _ = world.sign_in()
    _refused(world, response, status, before)


def test_rs256_is_accepted_too(world: World, scenario: Callable[..., Scenario]) -> None:
    scenario(id_token="rs256")
    _client, response, _ = world.sign_in()
    assert response.status_code == 303


def test_provider_key_rotation_is_followed(world: World, scenario: Callable[..., Scenario]) -> None:
    """A kid we have not seen makes the client refetch the JWKS once, then verify."""
    scenario()
    assert world.sign_in()[1].status_code == 303
    time.sleep(1.1)  # the refetch rate limit
    scenario(id_token="rotated")
    assert world.sign_in()[1].status_code == 303


def test_replayed_callback_is_refused(world: World, scenario: Callable[..., Scenario]) -> None:
    scenario()
    client, first, callback_url = world.sign_in()
    assert first.status_code == 303
    before = world.accounts()
    replay = client.get(callback_url)
    _refused(world, replay, 400, before)


def test_callback_from_another_browser_is_refused(
    world: World, scenario: Callable[..., Scenario]
) -> None:
    scenario()
    client = world.client()
    start = client.get("/auth/franceconnect/start")
    callback_url = httpx.get(start.headers["location"]).headers["location"]
    before = world.accounts()
    stranger = world.client()
    _refused(world, stranger.get(callback_url), 400, before)


def test_callback_without_state(world: World) -> None:
    response = httpx.get(f"{world.base}/auth/franceconnect/callback?code=abc")
    assert response.status_code == 400
    assert "<h1>" in response.text


def test_open_redirect_refused(world: World, scenario: Callable[..., Scenario]) -> None:
    scenario()
    client = world.client()
    start = client.get("/auth/franceconnect/start", params={"return_to": "//evil.example/x"})
    callback_url = httpx.get(start.headers["location"]).headers["location"]
    assert client.get(callback_url).headers["location"] == "/"
