"""Mounting the OpenID Provider on the application, and the clients file.

:func:`mount_oidc` adds the provider's routes and, when the application starts (after the
runtime exists), builds the :class:`oidc.provider.OpenIDProvider` from the runtime's identity
engine and keyring, and loads the clients file named by ``NICECARD_CLIENTS_FILE``.

The clients file is TOML (``.toml``) or JSON (anything else): a list ``clients`` of RFC 7591
client metadata objects, plus ``jwks_file`` (a JWK or a JWK Set in a file, relative to the
clients file) as a convenience for ``jwks``::

    [[clients]]
    client_id = "transit"
    client_name = "Lignes d'Azur"
    token_endpoint_auth_method = "private_key_jwt"
    grant_types = ["client_credentials"]
    scope = "acts:write"
    jwks_uri = "https://transit.example/jwks"

The file is authoritative for the clients it lists: at every start they are created or
updated, and clients it listed before but no longer does are removed. Clients added with
``nicecard clients add`` are left alone. Secrets never appear in the file: a client using
``client_secret_basic`` or ``client_secret_post`` gets its secret from
``nicecard clients rotate-secret``, which keeps it across restarts.

A client with a ``sector_identifier_uri`` has that document fetched and checked (it must list
every redirect URI, :mod:`oidc.sector`) when the entry is new or its redirect URIs or sector
identifier changed; a failed check stops the start, naming the client. Certificates are checked
against the default trust store, or only against ``NICECARD_SECTOR_IDENTIFIER_CA_FILE``.

``security_profile = "fapi2"`` registers a client under the FAPI 2.0 Security Profile (see
:class:`oidc.clients.SecurityProfile`)::

    [[clients]]
    client_id = "bank"
    security_profile = "fapi2"     # private_key_jwt, PAR, DPoP, ES256 ID tokens by default
    redirect_uris = ["https://bank.example/cb"]
    scope = "openid offline_access"
    jwks_uri = "https://bank.example/jwks"
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import tomllib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from identity.errors import ConfigurationError
from identity.settings import Settings
from keys.keyring import Clock, utc_now
from oidc.clients import Client, ClientRegistry, InvalidClientMetadata, client_from_metadata
from oidc.provider import OpenIDProvider, build_provider
from oidc.routes import oidc_router
from oidc.sector import SectorFetch, SectorFetcher, verify_sector_identifier

log = logging.getLogger("nicecard.oidc")


def get_provider(request: Request) -> OpenIDProvider:
    provider: OpenIDProvider = request.app.state.oidc
    return provider


def _jwks_from_file(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text("utf-8"))
    if isinstance(data, dict) and "keys" in data:
        return data
    return {"keys": [data]}


def read_clients_file(path: Path) -> list[Client]:
    """The clients a file declares, validated; :class:`ConfigurationError` names the entry."""
    setting = "NICECARD_CLIENTS_FILE"
    try:
        text = path.read_text("utf-8")
        data: Any = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise ConfigurationError(f"{setting}: cannot read {path} ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigurationError(f"{setting}: {path} is not valid ({exc})") from None
    entries = data.get("clients") if isinstance(data, Mapping) else None
    if not isinstance(entries, list):
        raise ConfigurationError(f"{setting}: {path} must hold a list named 'clients'")
    clients: list[Client] = []
    for number, entry in enumerate(entries, start=1):
        where = f"{setting}: client #{number}"
        if not isinstance(entry, Mapping):
            raise ConfigurationError(f"{where} is not a table/object")
        metadata = dict(entry)
        where = f"{setting}: client {metadata.get('client_id', f'#{number}')!r}"
        jwks_file = metadata.pop("jwks_file", None)
        if jwks_file is not None:
            try:
                metadata["jwks"] = _jwks_from_file(path.parent / str(jwks_file))
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"{where}: jwks_file ({exc})") from None
        try:
            clients.append(client_from_metadata(metadata, source="file"))
        except InvalidClientMetadata as exc:
            raise ConfigurationError(f"{where}: {exc.description}") from None
    ids = [c.client_id for c in clients]
    if len(set(ids)) != len(ids):
        raise ConfigurationError(f"{setting}: a client_id appears twice")
    return clients


def sector_fetcher(settings: Settings) -> SectorFetcher:
    """The fetcher of ``sector_identifier_uri`` documents: the default trust store, or only
    the CA certificates of ``NICECARD_SECTOR_IDENTIFIER_CA_FILE``; public addresses only
    unless ``NICECARD_SECTOR_IDENTIFIER_ALLOW_PRIVATE`` (on by default in development)."""
    allow_private = settings.sector_identifier_private_allowed
    path = settings.sector_identifier_ca_file
    if path is None:
        return SectorFetcher(allow_private_addresses=allow_private)
    try:
        context = ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"NICECARD_SECTOR_IDENTIFIER_CA_FILE: cannot load {path} ({type(exc).__name__})"
        ) from None
    return SectorFetcher(verify=context, allow_private_addresses=allow_private)


def check_sectors(clients: list[Client], registry: ClientRegistry, fetch: SectorFetch) -> None:
    """Check the ``sector_identifier_uri`` of the file's clients that are new or whose redirect
    URIs or sector identifier changed since they were stored (blocking: network and database).
    """
    for client in clients:
        if client.sector_identifier_uri is None:
            continue
        stored = registry.get(client.client_id)
        if (
            stored is not None
            and stored.source == "file"
            and stored.sector_identifier_uri == client.sector_identifier_uri
            and stored.redirect_uris == client.redirect_uris
        ):
            continue
        try:
            verify_sector_identifier(client, fetch)
        except InvalidClientMetadata as exc:
            raise ConfigurationError(
                f"NICECARD_CLIENTS_FILE: client {client.client_id!r}: {exc.description}"
            ) from None


def sync_clients(
    clients: list[Client], registry: ClientRegistry, fetch: SectorFetch | None = None
) -> None:
    """Make the registry hold exactly the file's clients (see the module doc), after checking
    their sector identifiers with ``fetch`` (when given)."""
    if fetch is not None:
        check_sectors(clients, registry, fetch)
    try:
        registry.sync_file_clients(clients)
    except IntegrityError:
        registry.sync_file_clients(clients)  # another process loaded it at the same moment
    for client in clients:
        if client.token_endpoint_auth_method.uses_secret:
            stored = registry.get(client.client_id)
            if stored is not None and stored.secret_hash is None:
                log.warning(
                    "client has no secret yet; run 'nicecard clients rotate-secret'",
                    extra={"client_id": client.client_id},
                )


def mount_oidc(app: FastAPI, *, clock: Clock | None = None) -> None:
    """Add the provider's routes and build the provider when the application starts.

    The clock is ``clock``, else the application's (``app.state.clock``), else the system's.
    """
    app.include_router(oidc_router(get_provider))
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            settings = app_.state.settings
            runtime = app_.state.runtime
            now = clock or getattr(app_.state, "clock", None) or utc_now
            provider = build_provider(
                runtime.identity_engine,
                runtime.keyring,
                issuer=settings.issuer,
                access_token_ttl=settings.access_token_ttl,
                client_cache_seconds=settings.client_cache_seconds,
                clock=now,
                db_threads=settings.db_pool_size,
                sector_fetch=sector_fetcher(settings),
            )
            if settings.clients_file is not None:
                clients = read_clients_file(settings.clients_file)
                try:
                    await run_in_threadpool(
                        sync_clients, clients, provider.registry, provider.sector_fetch
                    )
                except SQLAlchemyError as exc:
                    log.warning(
                        "clients file not loaded; run 'nicecard db upgrade'",
                        extra={"error": type(exc).__name__},
                    )
                else:
                    log.info("clients file loaded", extra={"clients": len(clients)})
            app_.state.oidc = provider
            try:
                yield state
            finally:
                await provider.aclose()

    app.router.lifespan_context = lifespan
