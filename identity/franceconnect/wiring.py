"""Building the FranceConnect client (and, in development, the simulator it talks to) from
settings. The simulator's secrets are generated once into the data directory, so pairwise subs
and client credentials survive restarts."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from identity.errors import ConfigurationError
from identity.fcsim import SimulatorClient, SimulatorConfig, SimulatorConfigError
from identity.franceconnect.client import ClientConfig
from identity.settings import Settings
from keys.keyring import Keyring
from keys.model import Purpose

CALLBACK_PATH = "/auth/franceconnect/callback"
LOGOUT_CALLBACK_PATH = "/auth/franceconnect/logout-callback"


def _simulator_secrets(settings: Settings) -> dict[str, str]:
    path = settings.data_dir / "fc-sim-secrets.json"
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text("utf-8"))
        return data
    data = {"client_secret": secrets.token_urlsafe(32), "sub_secret": secrets.token_hex(32)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    return data


def client_config(settings: Settings, keyring: Keyring) -> ClientConfig:
    if settings.fc_simulator and settings.fc_issuer is None:
        secret: str | None = _simulator_secrets(settings)["client_secret"]
    elif settings.fc_client_secret is not None:
        secret = settings.fc_client_secret.get_secret_value()
    elif settings.fc_auth_method == "client_secret_post":
        raise ConfigurationError("NICECARD_FC_CLIENT_SECRET is required for client_secret_post")
    else:
        secret = None

    def assertion_key() -> tuple[str, Any]:
        return keyring.signing_key(Purpose.FC_CLIENT)

    return ClientConfig(
        issuer=settings.fc_effective_issuer,
        client_id=settings.fc_client_id,
        redirect_uri=settings.issuer + CALLBACK_PATH,
        post_logout_redirect_uri=settings.issuer + LOGOUT_CALLBACK_PATH,
        scopes=settings.fc_scopes,
        acr_values=settings.fc_acr_values,
        timeout_seconds=settings.fc_timeout_seconds,
        auth_method=settings.fc_auth_method,
        client_secret=secret,
        assertion_key=assertion_key,
    )


def simulator_clients_from_file(path: Path) -> tuple[SimulatorClient, ...]:
    """Service providers registered at the simulator, from a JSON list."""
    try:
        entries = json.loads(path.read_text("utf-8"))
        return tuple(
            SimulatorClient(
                client_id=e["client_id"],
                redirect_uris=tuple(e["redirect_uris"]),
                post_logout_redirect_uris=tuple(e.get("post_logout_redirect_uris", ())),
                client_secret=e.get("client_secret"),
                jwks=e.get("jwks"),
                id_token_signed_response_alg=e.get("id_token_signed_response_alg", "ES256"),
                userinfo_signed_response_alg=e.get("userinfo_signed_response_alg", "ES256"),
            )
            for e in entries
        )
    except (OSError, ValueError, KeyError, TypeError, SimulatorConfigError) as exc:
        raise ConfigurationError(
            f"NICECARD_FC_SIMULATOR_CLIENTS_FILE: cannot load {path}: {exc}"
        ) from None


def simulator_config(settings: Settings, issuer: str | None = None) -> SimulatorConfig:
    """The built-in simulator, with this service registered as its client, plus the clients
    of ``NICECARD_FC_SIMULATOR_CLIENTS_FILE``."""
    extra_clients = (
        simulator_clients_from_file(settings.fc_simulator_clients_file)
        if settings.fc_simulator_clients_file
        else ()
    )
    sim = _simulator_secrets(settings)
    service = SimulatorClient(
        client_id=settings.fc_client_id,
        redirect_uris=(settings.issuer + CALLBACK_PATH,),
        post_logout_redirect_uris=(settings.issuer + LOGOUT_CALLBACK_PATH,),
        client_secret=sim["client_secret"],
    )
    return SimulatorConfig(
        issuer=issuer or settings.fc_simulator_issuer,
        clients=(service, *extra_clients),
        sub_secret=bytes.fromhex(sim["sub_secret"]),
        key_file=Path(settings.data_dir) / "fc-sim-keys.json",
        slow_seconds=settings.fc_simulator_slow_seconds,
    )
