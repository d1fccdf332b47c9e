"""Settings, read once by the entry points and passed down; never a module-level global.

Sources, highest first: constructor arguments, ``NICECARD_*`` environment variables, a ``.env``
file, files in the secrets directory (one file per setting, as Docker and Kubernetes mount them).
Two modes: ``development`` (generated keys, SQLite, the FranceConnect simulator, a plain-http
issuer on loopback) and ``production``, which refuses to start on anything only fit for a laptop
and names the setting at fault.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import os
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Values that mark a secret nobody chose. A production secret containing one is refused.
PLACEHOLDER_MARKERS = ("change-me", "changeme", "placeholder", "dev-only", "example", "secret")


class Mode(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class SettingsError(ValueError):
    """A setting is invalid for the chosen mode; the message names it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NICECARD_",
        env_file=".env",
        env_file_encoding="utf-8",
        secrets_dir=None,
        extra="ignore",
        validate_default=True,
    )

    mode: Mode = Mode.DEVELOPMENT
    #: the OpenID Provider's issuer identifier; every URL the service publishes derives from it
    issuer: str = "http://127.0.0.1:8000"
    data_dir: Path = Path("var")

    identity_database_url: str | None = None
    ledger_database_url: str | None = None
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=200)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)

    #: where private keys live: the identity database or a directory
    key_store: Literal["database", "directory"] = "database"
    key_directory: Path | None = None
    #: base64 of a 32-byte key-encryption key, or a file holding it
    kek: SecretStr | None = None
    kek_file: Path | None = None
    key_overlap: timedelta = timedelta(days=1)
    key_reload_seconds: float = Field(default=60.0, gt=0)

    #: mount the built-in FranceConnect simulator under /fc-sim and sign in through it
    fc_simulator: bool = True
    #: FranceConnect issuer (discovery at <issuer>/.well-known/openid-configuration); defaults to
    #: the built-in simulator in development
    fc_issuer: str | None = None
    fc_client_id: str = "nicecard-dev"
    fc_client_secret: SecretStr | None = None
    fc_auth_method: Literal["client_secret_post", "private_key_jwt"] = "client_secret_post"
    fc_scopes: str = (
        "openid given_name family_name birthdate gender birthplace birthcountry email "
        "preferred_username"
    )
    fc_acr_values: str = "eidas1"
    fc_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    #: extra service providers registered at the simulator: a JSON list of objects with the
    #: fields of identity.fcsim.SimulatorClient
    fc_simulator_clients_file: Path | None = None
    #: how long the simulator's "slow" identity makes userinfo wait (development only)
    fc_simulator_slow_seconds: float = Field(default=30.0, ge=0)
    #: initial access token for dynamic client registration (RFC 7591); unset: no /register
    registration_token: SecretStr | None = None
    #: how often a checkpoint is signed when the ledger grew
    checkpoint_seconds: float = Field(default=10.0, gt=0)
    #: the ledger's log origin (first line of its checkpoints); default: <issuer host>/ledger
    ledger_origin: str | None = None
    #: the acts catalogue (TOML) loaded at start; default: ledger/default_catalogue.toml
    catalogue_file: Path | None = None
    #: coin denominations, in points; one blind-signing key per value per epoch
    coin_values: list[int] = Field(default=[1, 2, 5, 10, 20, 50], min_length=1, max_length=32)
    #: how long one epoch's denomination keys sign withdrawals
    coin_epoch: timedelta = timedelta(days=30)
    #: how long after its withdrawals end a coin can still be deposited
    coin_deposit_grace: timedelta = timedelta(days=90)
    #: how long after deposits end a denomination's records are kept for disputes
    coin_legal_grace: timedelta = timedelta(days=365)
    #: RSA modulus size of denomination keys (RFC 9474 keys; at least 2048)
    coin_key_bits: int = Field(default=2048, ge=2048, le=4096)
    #: most coins in one withdrawal, and most points a citizen may withdraw per UTC day
    withdraw_max_coins: int = Field(default=64, ge=1, le=256)
    withdraw_max_points_per_day: int = Field(default=1000, ge=1)
    #: how long a login session (and the FranceConnect claims it holds) lives
    session_ttl: timedelta = timedelta(hours=1)

    #: OpenID Provider clients registered at start, TOML or JSON (see identity.oidc_wiring)
    clients_file: Path | None = None
    #: CA certificates (PEM) that alone are trusted when fetching clients' sector_identifier_uri
    #: documents (a private PKI); unset: the default trust store
    sector_identifier_ca_file: Path | None = None
    #: also fetch sector_identifier_uri documents from loopback, private, link-local and other
    #: non-public addresses (a local sector host); default: on in development, off in
    #: production, where turning it on is refused
    sector_identifier_allow_private: bool | None = None
    #: lifetime of JWT access tokens in seconds (RFC 9068): short, they cannot be recalled
    access_token_ttl: int = Field(default=300, ge=30, le=3600)
    #: how long a server process trusts its copy of a client registration, in seconds
    client_cache_seconds: float = Field(default=5.0, ge=0, le=300)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    #: addresses whose X-Forwarded-* headers are trusted (uvicorn's forwarded_allow_ips)
    forwarded_allow_ips: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("issuer")
    @classmethod
    def _issuer_shape(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment (OpenID Connect Discovery §3)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _mode_rules(self) -> Self:
        if self.kek is not None:
            decode_kek(self.kek.get_secret_value(), "NICECARD_KEK")
        if self.mode is Mode.PRODUCTION:
            problems = list(self._production_problems())
            if problems:
                raise SettingsError("refusing to start in production: " + "; ".join(problems))
        elif not _is_loopback_http_or_https(self.issuer):
            raise SettingsError(
                "NICECARD_ISSUER: development mode serves plain http on loopback only "
                f"(got {self.issuer})"
            )
        if self.key_store == "directory" and self.key_directory is None:
            raise SettingsError(
                "NICECARD_KEY_DIRECTORY is required when NICECARD_KEY_STORE=directory"
            )
        return self

    def _production_problems(self) -> list[str]:
        problems = []
        if urlsplit(self.issuer).scheme != "https":
            problems.append("NICECARD_ISSUER must be an https URL")
        if self.fc_simulator:
            problems.append(
                "NICECARD_FC_SIMULATOR must be false (the simulator is not FranceConnect)"
            )
        if self.kek is None and self.kek_file is None:
            problems.append(
                "NICECARD_KEK or NICECARD_KEK_FILE must be set (private keys are encrypted at rest)"
            )
        if self.kek is not None and _is_placeholder_key(self.kek.get_secret_value()):
            problems.append("NICECARD_KEK is a placeholder value")
        if self.fc_issuer is None or urlsplit(self.fc_issuer).scheme != "https":
            problems.append("NICECARD_FC_ISSUER must be FranceConnect's https issuer")
        if self.fc_auth_method == "client_secret_post" and (
            self.fc_client_secret is None
            or is_placeholder(self.fc_client_secret.get_secret_value())
        ):
            problems.append("NICECARD_FC_CLIENT_SECRET must be the secret FranceConnect issued")
        if self.registration_token is not None and is_placeholder(
            self.registration_token.get_secret_value()
        ):
            problems.append("NICECARD_REGISTRATION_TOKEN is a placeholder value")
        if self.sector_identifier_allow_private:
            problems.append(
                "NICECARD_SECTOR_IDENTIFIER_ALLOW_PRIVATE must be false (registrants could make "
                "the server fetch from its own network)"
            )
        if self.kek_file is not None and self.kek_file.resolve() == self.dev_kek_path.resolve():
            problems.append("NICECARD_KEK_FILE points at the generated development key")
        return problems

    # -- derived values ------------------------------------------------------------------------

    @property
    def is_development(self) -> bool:
        return self.mode is Mode.DEVELOPMENT

    @property
    def dev_kek_path(self) -> Path:
        return self.data_dir / "dev-kek.b64"

    @property
    def fc_simulator_issuer(self) -> str:
        return f"{self.issuer}/fc-sim/api/v2"

    @property
    def fc_effective_issuer(self) -> str:
        if self.fc_issuer:
            return self.fc_issuer.rstrip("/")
        return self.fc_simulator_issuer

    @property
    def sector_identifier_private_allowed(self) -> bool:
        if self.sector_identifier_allow_private is None:
            return self.is_development
        return self.sector_identifier_allow_private

    @property
    def effective_ledger_origin(self) -> str:
        return self.ledger_origin or f"{urlsplit(self.issuer).hostname}/ledger"

    @property
    def identity_url(self) -> str:
        return self.identity_database_url or f"sqlite:///{self.data_dir / 'identity.db'}"

    @property
    def ledger_url(self) -> str:
        return self.ledger_database_url or f"sqlite:///{self.data_dir / 'ledger.db'}"


def _is_loopback_http_or_https(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_placeholder(value: str) -> bool:
    """A secret someone typed as an example rather than generated."""
    lowered = value.lower()
    return any(marker in lowered for marker in PLACEHOLDER_MARKERS) or len(set(value)) < 8


def _is_placeholder_key(text: str) -> bool:
    # A generated 32-byte key has about 28 distinct byte values; a typed one has few.
    key = base64.b64decode(text.strip())
    printable = key.decode("latin-1").lower()
    return any(marker in printable for marker in PLACEHOLDER_MARKERS) or len(set(key)) < 16


def decode_kek(text: str, name: str) -> bytes:
    """The 32-byte key-encryption key from its base64 text; the error names the setting."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(f"{name} must be base64") from None
    if len(key) != 32:
        raise SettingsError(f"{name} must decode to 32 bytes (got {len(key)})")
    return key


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; ``NICECARD_SECRETS_DIR`` names the secrets directory."""
    secrets_dir = os.environ.get("NICECARD_SECRETS_DIR")
    return Settings(_secrets_dir=secrets_dir or None, **overrides)
