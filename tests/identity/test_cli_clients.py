"""``nicecard clients`` and the clients file, as an operator uses them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from identity.app import create_app
from identity.cli import app as nicecard
from identity.db import create_engine
from identity.errors import ConfigurationError
from identity.oidc_wiring import read_clients_file
from identity.settings import Settings
from keys.keyring import utc_now
from oidc.clients import AuthMethod
from oidc.secrets import hash_client_secret
from oidc.tables import SqlClientRegistry, oauth_client
from tests.conftest import make_settings, serve
from tests.oidc.conftest import es256_key
from tests.oidc.tls import HttpsServer, Route, TestCA, https_server

NICECARD = str(Path(sys.executable).parent / "nicecard")


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    """Run ``nicecard`` in-process with a development data directory under tmp_path."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    env = {"NICECARD_DATA_DIR": str(tmp_path / "var"), "NICECARD_MODE": "development"}

    def run(*args: str, ok: bool = True) -> object:
        result = runner.invoke(nicecard, list(args), env=env)
        if ok:
            assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
        return result

    run("db", "upgrade")
    return run


def _rows(tmp_path: Path) -> list[dict[str, object]]:
    settings = make_settings(tmp_path / "var")
    engine = create_engine(settings.identity_url, settings)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(oauth_client))]
    finally:
        engine.dispose()


def test_add_prints_the_secret_once_and_stores_its_hash(
    cli: Callable[..., object], tmp_path: Path
) -> None:
    result = cli(
        "clients", "add", "partner", "--scope", "acts:write", "--name", "Transit", "--json"
    )
    printed = json.loads(result.stdout)  # type: ignore[attr-defined]
    secret = printed["client_secret"]
    assert len(secret) == 43  # 256 bits, base64url
    [row] = _rows(tmp_path)
    assert row["secret_hash"] == hash_client_secret(secret)
    assert secret not in repr(row)

    shown = cli("clients", "show", "partner")
    metadata = json.loads(shown.stdout)  # type: ignore[attr-defined]
    assert metadata["token_endpoint_auth_method"] == "client_secret_basic"
    assert metadata["grant_types"] == ["client_credentials"]
    assert metadata["scope"] == "acts:write"
    assert metadata["client_secret"].startswith("set ")
    assert secret not in shown.stdout  # type: ignore[attr-defined]

    listed = json.loads(cli("clients", "list", "--json").stdout)  # type: ignore[attr-defined]
    assert [c["client_id"] for c in listed] == ["partner"]
    table = cli("clients", "list").stdout  # type: ignore[attr-defined]
    assert "partner" in table
    assert secret not in table


def test_rotate_secret_and_remove(cli: Callable[..., object], tmp_path: Path) -> None:
    first = json.loads(cli("clients", "add", "partner", "--json").stdout)["client_secret"]  # type: ignore[attr-defined]
    human = cli("clients", "rotate-secret", "partner")
    second = human.stdout.split("client_secret: ", 1)[1].split()[0]  # type: ignore[attr-defined]
    assert "shown once" in human.stderr  # type: ignore[attr-defined]
    assert second != first
    [row] = _rows(tmp_path)
    assert row["secret_hash"] == hash_client_secret(second)
    cli("clients", "remove", "partner")
    assert _rows(tmp_path) == []
    missing = cli("clients", "remove", "partner", ok=False)
    assert missing.exit_code == 1  # type: ignore[attr-defined]
    assert "no client" in missing.stderr  # type: ignore[attr-defined]


def test_add_private_key_jwt_and_refusals(cli: Callable[..., object], tmp_path: Path) -> None:
    key = es256_key()
    jwk_file = tmp_path / "partner.jwk.json"
    jwk_file.write_text(json.dumps(key.public_jwk()))
    result = cli(
        "clients",
        "add",
        "signer",
        "--auth-method",
        "private_key_jwt",
        "--jwks-file",
        str(jwk_file),
        "--scope",
        "acts:write",
    )
    assert "client_secret" not in result.stdout  # type: ignore[attr-defined]
    assert cli("clients", "rotate-secret", "signer", ok=False).exit_code == 1  # type: ignore[attr-defined]
    duplicate = cli("clients", "add", "signer", ok=False)
    assert "already registered" in duplicate.stderr  # type: ignore[attr-defined]
    private = dict(key.public_jwk(), d="AAAA")
    jwk_file.write_text(json.dumps(private))
    leaked = cli(
        "clients",
        "add",
        "leaky",
        "--auth-method",
        "private_key_jwt",
        "--jwks-file",
        str(jwk_file),
        ok=False,
    )
    assert "private key material" in leaked.stderr  # type: ignore[attr-defined]
    fragment = cli(
        "clients", "add", "web", "--redirect-uri", "https://app.example/cb#frag", ok=False
    )
    assert "fragment" in fragment.stderr  # type: ignore[attr-defined]
    public_cc = cli(
        "clients",
        "add",
        "pub",
        "--auth-method",
        "none",
        "--grant-type",
        "client_credentials",
        ok=False,
    )
    assert "confidential" in public_cc.stderr  # type: ignore[attr-defined]
    web = cli(
        "clients",
        "add",
        "web",
        "--redirect-uri",
        "https://app.example/cb",
        "--post-logout-redirect-uri",
        "https://app.example/bye",
        "--backchannel-logout-uri",
        "https://app.example/bcl",
        "--claims",
        "given_name age_over_18",
        "--scope",
        "openid profile",
        "--id-token-alg",
        "ES256",
        "--require-par",
        "--dpop",
    )
    assert "client_secret:" in web.stdout  # type: ignore[attr-defined]
    shown = json.loads(cli("clients", "show", "web").stdout)  # type: ignore[attr-defined]
    assert shown["redirect_uris"] == ["https://app.example/cb"]
    assert shown["response_types"] == ["code"]
    assert shown["claims"] == ["age_over_18", "given_name"]
    assert shown["require_pushed_authorization_requests"] is True
    assert shown["dpop_bound_access_tokens"] is True
    assert shown["subject_type"] == "pairwise"


def test_without_migrations_the_error_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        nicecard, ["clients", "list"], env={"NICECARD_DATA_DIR": str(tmp_path / "var")}
    )
    assert result.exit_code == 1
    assert "db upgrade" in result.stderr


def test_through_the_nicecard_command_in_production(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "NICECARD_DATA_DIR": str(tmp_path / "var"),
        "NICECARD_MODE": "production",
        "NICECARD_ISSUER": "https://id.nicecotedazur.example",
        "NICECARD_FC_SIMULATOR": "false",
        "NICECARD_FC_ISSUER": "https://fc.example/api/v2",
        "NICECARD_FC_CLIENT_SECRET": base64.b64encode(os.urandom(24)).decode(),
        "NICECARD_KEK": base64.b64encode(os.urandom(32)).decode(),
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NICECARD, *args], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
        )

    assert run("db", "upgrade").returncode == 0
    added = run("clients", "add", "bench", "--scope", "acts:write", "--json")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["client_id"] == "bench"
    assert "Traceback" not in added.stderr


# -- the clients file -------------------------------------------------------------------------


def _write_file(path: Path, key_file: str) -> None:
    path.write_text(
        f"""
[[clients]]
client_id = "transit"
client_name = "Lignes d'Azur"
token_endpoint_auth_method = "private_key_jwt"
grant_types = ["client_credentials"]
scope = "acts:write"
jwks_file = "{key_file}"

[[clients]]
client_id = "recycling"
grant_types = ["client_credentials"]
scope = "acts:write"
"""
    )


def test_clients_file_is_loaded_at_start_and_stays_authoritative(
    settings_factory: Callable[..., Settings], tmp_path: Path, free_port: int
) -> None:
    key = es256_key()
    (tmp_path / "transit.jwk.json").write_text(json.dumps(key.public_jwk()))
    clients_file = tmp_path / "clients.toml"
    _write_file(clients_file, "transit.jwk.json")
    issuer = f"http://127.0.0.1:{free_port}"
    settings = settings_factory(issuer=issuer, clients_file=clients_file)
    with serve(create_app(settings), port=free_port) as url:
        engine = create_engine(settings.identity_url, settings)
        registry = SqlClientRegistry(engine, utc_now)
        transit = registry.get("transit")
        assert transit is not None
        assert transit.source == "file"
        assert transit.token_endpoint_auth_method is AuthMethod.PRIVATE_KEY_JWT
        response = httpx.post(
            url + "/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": key.assertion("transit", issuer),
            },
        )
        assert response.status_code == 200, response.text
        recycling = registry.get("recycling")
        assert recycling is not None
        assert recycling.secret_hash is None  # no secret until an operator rotates one
        engine.dispose()

    # The file drops a client and the server restarts: it is gone; the other keeps its data.
    clients_file.write_text(
        clients_file.read_text().split('[[clients]]\nclient_id = "recycling"')[0]
    )
    with serve(create_app(settings), port=free_port):
        engine = create_engine(settings.identity_url, settings)
        registry = SqlClientRegistry(engine, utc_now)
        assert registry.get("recycling") is None
        assert registry.get("transit") is not None
        engine.dispose()


def test_clients_file_errors_name_the_entry(tmp_path: Path) -> None:
    bad = tmp_path / "clients.json"
    cases = {
        "{": "not valid",
        "{}": "list named 'clients'",
        '{"clients": [{"client_id": "x", "grant_types": ["implicit"]}]}': "'x'",
        '{"clients": [{"client_id": "x", "scope": "a", "colour": "blue"}]}': "colour",
        '{"clients": [{"client_id": "x", "grant_types": ["client_credentials"]},'
        ' {"client_id": "x", "grant_types": ["client_credentials"]}]}': "twice",
        '{"clients": [{"client_id": "x", "token_endpoint_auth_method": "private_key_jwt",'
        ' "grant_types": ["client_credentials"], "jwks_file": "missing.json"}]}': "jwks_file",
    }
    for text, fragment in cases.items():
        bad.write_text(text)
        with pytest.raises(ConfigurationError, match="NICECARD_CLIENTS_FILE") as info:
            read_clients_file(bad)
        assert fragment in str(info.value)
    with pytest.raises(ConfigurationError, match="cannot read"):
        read_clients_file(tmp_path / "absent.toml")


def test_a_bad_clients_file_stops_the_start(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    clients_file = tmp_path / "clients.toml"
    clients_file.write_text('[[clients]]\nclient_id = "x"\ngrant_types = ["nope"]\n')
    app = create_app(settings_factory(clients_file=clients_file))

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    with pytest.raises(ConfigurationError, match="client 'x'"):
        asyncio.run(start())


# -- sector identifiers and the FAPI 2.0 profile -----------------------------------------------

A_CB, B_CB = "https://a.example/cb", "https://b.example/cb"


@pytest.fixture
def sector_server(tmp_path: Path) -> Iterator[tuple[HttpsServer, Path]]:
    """An HTTPS server with sector identifier documents, and its CA certificate file."""
    ca = TestCA.create()
    (tmp_path / "tls").mkdir()
    routes = {
        "/sector.json": Route(json.dumps([A_CB, B_CB]).encode()),
        "/only-a.json": Route(json.dumps([A_CB]).encode()),
    }
    with https_server(ca, tmp_path / "tls", routes) as server:
        yield server, ca.write(tmp_path / "tls" / "ca.pem")


def test_add_checks_the_sector_identifier(
    cli: Callable[..., object],
    sector_server: tuple[HttpsServer, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, ca_file = sector_server
    web = ("clients", "add", "web", "--redirect-uri", A_CB, "--redirect-uri", B_CB)
    several = cli(*web, ok=False)
    assert several.exit_code == 1  # type: ignore[attr-defined]
    assert "required when redirect URIs span several hosts" in several.stderr  # type: ignore[attr-defined]
    untrusted = cli(*web, "--sector-identifier-uri", server.url("/sector.json"), ok=False)
    assert "cannot be fetched" in untrusted.stderr  # type: ignore[attr-defined]

    monkeypatch.setenv("NICECARD_SECTOR_IDENTIFIER_CA_FILE", str(ca_file))
    missing = cli(*web, "--sector-identifier-uri", server.url("/only-a.json"), ok=False)
    assert missing.exit_code == 1  # type: ignore[attr-defined]
    assert (
        "sector_identifier_uri: the document does not list the redirect URI https://b.example/cb"
        in missing.stderr  # type: ignore[attr-defined]
    )
    plain = server.url("/sector.json").replace("https:", "http:")
    assert "must be https" in cli(*web, "--sector-identifier-uri", plain, ok=False).stderr  # type: ignore[attr-defined]
    cli(*web, "--sector-identifier-uri", server.url("/sector.json"))
    shown = json.loads(cli("clients", "show", "web").stdout)  # type: ignore[attr-defined]
    assert shown["sector_identifier_uri"] == server.url("/sector.json")

    monkeypatch.setenv("NICECARD_SECTOR_IDENTIFIER_CA_FILE", str(ca_file.parent / "absent.pem"))
    other = ("clients", "add", "other", "--redirect-uri", A_CB)
    bad_ca = cli(*other, "--sector-identifier-uri", server.url("/sector.json"), ok=False)
    assert "NICECARD_SECTOR_IDENTIFIER_CA_FILE: cannot load" in bad_ca.stderr  # type: ignore[attr-defined]


def test_add_a_fapi2_client(cli: Callable[..., object], tmp_path: Path) -> None:
    jwk_file = tmp_path / "bank.jwk.json"
    jwk_file.write_text(json.dumps(es256_key().public_jwk()))
    bank = (
        "clients",
        "add",
        "bank",
        "--security-profile",
        "fapi2",
        "--jwks-file",
        str(jwk_file),
        "--redirect-uri",
        "https://bank.example/cb",
        "--scope",
        "openid offline_access",
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "refresh_token",
    )
    for extra, reason in (
        (("--auth-method", "client_secret_basic"), "token_endpoint_auth_method must be"),
        (("--id-token-alg", "RS256"), "id_token_signed_response_alg must be one of PS256, ES256"),
        (("--signing-alg", "RS256"), "token_endpoint_auth_signing_alg must be one of"),
    ):
        refused = cli(*bank, *extra, ok=False)
        assert refused.exit_code == 1  # type: ignore[attr-defined]
        assert f"security_profile fapi2: {reason}" in refused.stderr  # type: ignore[attr-defined]
    added = cli(*bank)
    assert "client_secret" not in added.stdout  # type: ignore[attr-defined]
    shown = json.loads(cli("clients", "show", "bank").stdout)  # type: ignore[attr-defined]
    assert shown["security_profile"] == "fapi2"
    assert shown["token_endpoint_auth_method"] == "private_key_jwt"
    assert shown["require_pushed_authorization_requests"] is True
    assert shown["dpop_bound_access_tokens"] is True
    assert shown["id_token_signed_response_alg"] == "ES256"
    unknown = cli("clients", "add", "x", "--security-profile", "fapi1", ok=False)
    assert unknown.exit_code == 2  # type: ignore[attr-defined]


def _sector_file(path: Path, sector: str) -> None:
    path.write_text(
        f"""
[[clients]]
client_id = "city"
grant_types = ["authorization_code"]
redirect_uris = ["{A_CB}", "{B_CB}"]
scope = "openid"
sector_identifier_uri = "{sector}"
"""
    )


def test_clients_file_sector_identifiers(
    settings_factory: Callable[..., Settings],
    sector_server: tuple[HttpsServer, Path],
    tmp_path: Path,
) -> None:
    server, ca_file = sector_server
    clients_file = tmp_path / "clients.toml"
    _sector_file(clients_file, server.url("/sector.json"))
    settings = settings_factory(clients_file=clients_file, sector_identifier_ca_file=ca_file)

    async def start(settings: Settings) -> None:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            pass

    asyncio.run(start(settings))
    engine = create_engine(settings.identity_url, settings)
    try:
        city = SqlClientRegistry(engine, utc_now).get("city")
    finally:
        engine.dispose()
    assert city is not None
    assert city.sector_identifier_uri == server.url("/sector.json")
    assert server.hits == ["/sector.json"]
    asyncio.run(start(settings))  # unchanged entry: not fetched again
    assert server.hits == ["/sector.json"]

    _sector_file(clients_file, server.url("/only-a.json"))
    with pytest.raises(ConfigurationError, match="client 'city'") as info:
        asyncio.run(start(settings))
    assert "does not list the redirect URI https://b.example/cb" in str(info.value)
    _sector_file(clients_file, server.url("/sector.json?v=2"))
    with pytest.raises(ConfigurationError, match="cannot be fetched"):
        asyncio.run(start(settings_factory(clients_file=clients_file)))  # default trust store
    assert server.hits == ["/sector.json", "/only-a.json"]  # the TLS handshake failed
