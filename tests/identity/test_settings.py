"""Settings validation: development defaults, and every production refusal names its setting."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from identity.settings import Mode, Settings, load_settings

GOOD_KEK = base64.b64encode(os.urandom(32)).decode()


def production(**overrides: object) -> Settings:
    values: dict[str, object] = {
        "mode": "production",
        "issuer": "https://id.nicecotedazur.example",
        "fc_simulator": False,
        "fc_issuer": "https://oidc.franceconnect.gouv.fr/api/v2",
        "fc_client_secret": base64.b64encode(os.urandom(32)).decode(),
        "kek": GOOD_KEK,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_development_defaults() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.mode is Mode.DEVELOPMENT
    assert settings.issuer == "http://127.0.0.1:8000"
    assert settings.identity_url == "sqlite:///var/identity.db"
    assert settings.ledger_url == "sqlite:///var/ledger.db"
    assert settings.identity_url != settings.ledger_url


def test_a_complete_production_configuration_starts() -> None:
    assert production().mode is Mode.PRODUCTION


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"issuer": "http://id.nicecotedazur.example"}, "NICECARD_ISSUER must be an https URL"),
        ({"fc_simulator": True}, "NICECARD_FC_SIMULATOR must be false"),
        ({"kek": None}, "NICECARD_KEK or NICECARD_KEK_FILE must be set"),
        ({"fc_issuer": None}, "NICECARD_FC_ISSUER must be FranceConnect's https issuer"),
        ({"fc_issuer": "http://fc.example/api/v2"}, "NICECARD_FC_ISSUER must be"),
        ({"fc_client_secret": None}, "NICECARD_FC_CLIENT_SECRET must be"),
        ({"fc_client_secret": "change-me-please-1234"}, "NICECARD_FC_CLIENT_SECRET must be"),
        (
            {"kek": base64.b64encode(b"change-me" + b"\0" * 23).decode()},
            "NICECARD_KEK is a placeholder",
        ),
        ({"kek": base64.b64encode(b"\0" * 32).decode()}, "NICECARD_KEK is a placeholder"),
    ],
)
def test_production_refuses(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        production(**overrides)


def test_production_refuses_the_generated_development_kek(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="generated development key"):
        production(kek=None, data_dir=tmp_path, kek_file=tmp_path / "dev-kek.b64")


def test_production_lists_every_problem_at_once() -> None:
    with pytest.raises(ValidationError) as info:
        production(issuer="http://x.example", fc_simulator=True, kek=None)
    message = str(info.value)
    for setting in ("NICECARD_ISSUER", "NICECARD_FC_SIMULATOR", "NICECARD_KEK"):
        assert setting in message


@pytest.mark.parametrize(
    ("kek", "named"),
    [
        ("not base64!", "NICECARD_KEK must be base64"),
        (base64.b64encode(b"x" * 16).decode(), "32 bytes"),
    ],
)
def test_malformed_kek(kek: str, named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Settings(_env_file=None, kek=kek)  # type: ignore[call-arg]


def test_development_issuer_must_be_loopback() -> None:
    with pytest.raises(ValidationError, match="loopback"):
        Settings(_env_file=None, issuer="http://id.example.org")  # type: ignore[call-arg]
    assert (
        Settings(_env_file=None, issuer="http://localhost:9000/").issuer == "http://localhost:9000"
    )  # type: ignore[call-arg]


def test_issuer_without_query_or_fragment() -> None:
    with pytest.raises(ValidationError, match="query or fragment"):
        production(issuer="https://id.example/?a=b")


def test_directory_key_store_needs_a_directory() -> None:
    with pytest.raises(ValidationError, match="NICECARD_KEY_DIRECTORY"):
        Settings(_env_file=None, key_store="directory")  # type: ignore[call-arg]


def test_environment_prefix_and_secrets_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "nicecard_kek").write_text(GOOD_KEK)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NICECARD_MODE", "production")
    monkeypatch.setenv("NICECARD_ISSUER", "https://id.nicecotedazur.example")
    monkeypatch.setenv("NICECARD_FC_SIMULATOR", "false")
    monkeypatch.setenv("NICECARD_FC_ISSUER", "https://fcp-low.sbx.dev-franceconnect.fr/api/v2")
    (secrets_dir / "nicecard_fc_client_secret").write_text(
        base64.b64encode(os.urandom(32)).decode()
    )
    monkeypatch.setenv("NICECARD_SECRETS_DIR", str(secrets_dir))
    settings = load_settings()
    assert settings.kek is not None
    assert settings.kek.get_secret_value() == GOOD_KEK
    assert GOOD_KEK not in repr(settings)


def test_dotenv_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("NICECARD_PORT=8123\n")
    assert load_settings().port == 8123
