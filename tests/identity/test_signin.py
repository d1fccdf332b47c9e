"""Sign-in through the built-in FranceConnect simulator, over real HTTP, for every test
identity and every error scenario; logout; and what stays at rest afterwards."""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from identity.app import create_app
from identity.settings import Settings
from tests.conftest import _free_port, make_settings, serve
from tests.identity.signin_helpers import fc_sub_of, sign_in, submit_login, to_simulator_login

IDENTITIES = json.loads((Path(__file__).parents[2] / "identity/fcsim/identities.json").read_text())
PEOPLE = [i for i in IDENTITIES["identities"] if "scenario" not in i]


@dataclass
class Service:
    base: str
    settings: Settings

    clients: list[httpx.Client]

    def client(self) -> httpx.Client:
        """A fresh browser (cookie jar), closed when the test ends."""
        client = httpx.Client(base_url=self.base, follow_redirects=False, timeout=10)
        self.clients.append(client)
        return client


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    port = _free_port()
    settings = make_settings(
        tmp_path_factory.mktemp("var"),
        issuer=f"http://127.0.0.1:{port}",
        fc_timeout_seconds=1.0,
        fc_simulator_slow_seconds=2.0,
    )
    with serve(create_app(settings), port=port) as base:
        yield Service(base, settings, [])


@pytest.fixture(autouse=True)
def _close_browsers(service: Service) -> Iterator[None]:
    yield
    while service.clients:
        service.clients.pop().close()


@pytest.mark.parametrize("person", PEOPLE, ids=[p["login"] for p in PEOPLE])
def test_every_test_identity_signs_in(service: Service, person: dict[str, object]) -> None:
    client = service.client()
    response = sign_in(client, str(person["login"]))
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/"
    assert "nicecard_session" in client.cookies
    page = client.get("/").text
    assert 'id="logout"' in page
    claims = person["claims"]
    assert isinstance(claims, dict)
    for name in ("given_name", "family_name"):
        assert str(claims[name]) in html.unescape(page)
    assert "eidas1" in page


def test_prompt_login_is_passed_to_franceconnect(service: Service) -> None:
    client = service.client()
    start = client.get("/auth/franceconnect/start", params={"prompt": "login"})
    assert "prompt=login" in start.headers["location"]
    odd = client.get("/auth/franceconnect/start", params={"prompt": "none select_account"})
    assert "prompt=" not in odd.headers["location"]


def test_return_to_is_honoured(service: Service) -> None:
    client = service.client()
    back = submit_login(client, to_simulator_login(client, return_to="/docs"), "nicois")
    assert client.get(back).headers["location"] == "/docs"


@pytest.mark.parametrize(
    ("login", "status", "words"),
    [
        ("userinfo-500", 504, "ne répond pas"),
        ("userinfo-malformed", 502, "pas pu être vérifiée"),
        ("slow", 504, "ne répond pas"),
    ],
)
def test_error_scenarios_end_on_a_clear_page(
    service: Service, login: str, status: int, words: str
) -> None:
    client = service.client()
    response = sign_in(client, login)
    assert response.status_code == status
    assert words in response.text
    assert "Référence" in response.text
    assert "nicecard_session" not in client.cookies
    assert 'id="logout"' not in client.get("/").text


def test_cancel_ends_on_a_clear_page(service: Service) -> None:
    client = service.client()
    back = submit_login(client, to_simulator_login(client), "nicois", action="cancel")
    response = client.get(back)
    assert response.status_code == 200
    assert "annulé" in response.text
    assert "nicecard_session" not in client.cookies


def test_pages_in_english(service: Service) -> None:
    page = httpx.get(f"{service.base}/?lang=en").text
    assert "Sign in with" in page
    assert "What is FranceConnect?" in page
    french = httpx.get(f"{service.base}/").text
    assert "S’identifier avec" in french
    assert 'href="https://franceconnect.gouv.fr/"' in french
    assert 'rel="noopener"' in french


def test_logout_chains_to_franceconnect_and_back(service: Service) -> None:
    client = service.client()
    assert sign_in(client, "nicois").status_code == 303
    response = client.post("/auth/logout", headers={"Origin": service.base})
    assert response.status_code == 303
    end_session = response.headers["location"]
    assert "/fc-sim/api/v2/session/end?" in end_session
    assert "id_token_hint=" in end_session
    back = client.get(end_session)
    assert back.status_code in (302, 303)
    done = client.get(back.headers["location"])
    assert done.status_code == 200, done.text
    assert "déconnecté" in done.text
    assert 'id="logout"' not in client.get("/").text


def test_logout_refuses_cross_site_posts_and_wrong_state(service: Service) -> None:
    client = service.client()
    assert sign_in(client, "nicois").status_code == 303
    assert client.post("/auth/logout").status_code == 403
    assert (
        client.post("/auth/logout", headers={"Origin": "https://evil.example"}).status_code == 403
    )
    assert 'id="logout"' in client.get("/").text  # still signed in
    wrong = client.get("/auth/franceconnect/logout-callback", params={"state": "0" * 64})
    assert wrong.status_code == 400


def test_same_citizen_same_account_across_sign_ins(service: Service) -> None:
    engine = sa.create_engine(service.settings.identity_url)
    for _ in range(2):
        assert sign_in(service.client(), "corse-du-sud").status_code == 303
    with engine.connect() as conn:
        hashes = conn.execute(sa.text("SELECT fc_sub_hash FROM account")).scalars().all()
    engine.dispose()
    assert len(hashes) == len(set(hashes))


def test_nothing_personal_at_rest(service: Service, tmp_path: Path) -> None:
    """After sign-ins, no column of either database (nor any byte of their files) holds the
    FranceConnect sub or a claim value in clear."""
    person = PEOPLE[0]
    assert sign_in(service.client(), person["login"]).status_code == 303
    sub = fc_sub_of(service.base, service.settings.data_dir, person["login"])
    assert len(sub) == 66
    needles = {sub} | {
        str(v) for k, v in person["claims"].items() if isinstance(v, str) and len(str(v)) >= 4
    }
    sub_bytes = bytes.fromhex(sub[:64])  # the digest part, had anyone stored it decoded
    for url in (service.settings.identity_url, service.settings.ledger_url):
        engine = sa.create_engine(url)
        inspector = sa.inspect(engine)
        with engine.connect() as conn:
            for table in inspector.get_table_names():
                for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')):
                    for value in row:
                        # Bytes are compared as bytes (their hex would match short digit
                        # strings such as a birthplace code by chance).
                        raw = value if isinstance(value, bytes) else str(value).encode()
                        for needle in needles:
                            assert needle.encode() not in raw, (table, needle)
                        assert sub_bytes not in raw, (table, "sub as bytes")
        engine.dispose()
    for path in Path(service.settings.data_dir).glob("*.db*"):
        blob = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in blob, (path.name, needle)
        assert sub_bytes not in blob, (path.name, "sub as bytes")
