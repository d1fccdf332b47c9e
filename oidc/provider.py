"""The OpenID Provider's parts, assembled once per application (by ``identity.oidc_wiring``).

:func:`build_provider` takes the identity database engine, the keyring and a few settings and
returns an :class:`OpenIDProvider`: the client directory, the authenticator, the token
endpoint, access token issuer and verifier, the revocation list, Authlib's server (with the
introspection and revocation endpoints) and the discovery features. Nothing is created at
import time; the clock is a parameter.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import anyio
import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from keys.keyring import Clock, Keyring, utc_now
from oidc.access_tokens import AccessTokenIssuer, AccessTokenVerifier
from oidc.authlib_server import AuthlibServer, token_endpoints
from oidc.client_auth import ClientAuthenticator, ClientKeys, JwksFetch, fetch_jwks
from oidc.clients import ClientDirectory
from oidc.discovery import ProviderFeatures, provider_metadata
from oidc.dpop import DPoPVerifier
from oidc.errors import TemporarilyUnavailable
from oidc.sector import SectorFetch, SectorFetcher
from oidc.tables import (
    AsyncPgReplayCache,
    AsyncPgRevocationList,
    ReplayStoreError,
    SqlClientRegistry,
    SqlReplayCache,
    SqlRevocationList,
    async_replay_cache,
    async_revocation_list,
)
from oidc.token_endpoint import TokenEndpoint

T = TypeVar("T")
log = logging.getLogger("nicecard.oidc")


class Offload:
    """Blocking database work in worker threads, under a limiter of its own.

    Authlib runs in worker threads and waits there for coroutines (client lookups) that may
    themselves need a thread for the database: with a single shared limiter, enough concurrent
    Authlib requests would hold every slot and wait forever for one more.
    """

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._limiter: anyio.CapacityLimiter | None = None

    async def __call__(self, func: Callable[..., T], *args: object) -> T:
        if self._limiter is None:  # created on the event loop that uses it
            self._limiter = anyio.CapacityLimiter(self._threads)
        return await anyio.to_thread.run_sync(functools.partial(func, *args), limiter=self._limiter)


@dataclass
class OpenIDProvider:
    features: ProviderFeatures
    registry: SqlClientRegistry
    directory: ClientDirectory
    authenticator: ClientAuthenticator
    access_tokens: AccessTokenIssuer
    verifier: AccessTokenVerifier
    revocations: SqlRevocationList
    replay: SqlReplayCache
    token_endpoint: TokenEndpoint
    authlib: AuthlibServer
    clock: Clock
    async_replay: AsyncPgReplayCache | None = None
    #: the revocation lookups of the ledger API's bearer tokens, on PostgreSQL (asyncio)
    async_revocations: AsyncPgRevocationList | None = None
    #: fetches ``sector_identifier_uri`` documents when a client registers (blocking)
    sector_fetch: SectorFetch = field(default_factory=SectorFetcher)
    _discovery: tuple[ProviderFeatures, bytes] | None = field(default=None, repr=False)

    async def aclose(self) -> None:
        if self.async_replay is not None:
            await self.async_replay.aclose()
        if self.async_revocations is not None:
            await self.async_revocations.aclose()

    @property
    def discovery_document(self) -> bytes:
        """The discovery document, serialized again only when ``features`` is replaced."""
        cached = self._discovery
        if cached is None or cached[0] is not self.features:
            cached = (self.features, json.dumps(provider_metadata(self.features)).encode())
            self._discovery = cached
        return cached[1]

    @property
    def issuer(self) -> str:
        return self.features.issuer

    def url(self, path: str | None) -> str:
        """The absolute URL of one of the provider's endpoints."""
        return self.features.issuer + (path or "")


def build_provider(
    engine: sa.Engine,
    keyring: Keyring,
    *,
    issuer: str,
    access_token_ttl: int = 300,
    client_cache_seconds: float = 5.0,
    clock: Clock = utc_now,
    jwks_fetch: JwksFetch = fetch_jwks,
    features: ProviderFeatures | None = None,
    db_threads: int = 10,
    sector_fetch: SectorFetch | None = None,
) -> OpenIDProvider:
    """The provider on ``engine`` (the identity database); ``db_threads`` bounds the threads
    doing blocking database work at once (keep it within the engine's pool); ``sector_fetch``
    defaults to a :class:`oidc.sector.SectorFetcher` with the default trust store."""
    features = features or ProviderFeatures(issuer=issuer)
    offload = Offload(db_threads)
    registry = SqlClientRegistry(engine, clock)
    directory = ClientDirectory(registry, offload, ttl=client_cache_seconds)
    replay = SqlReplayCache(engine)
    async_replay = async_replay_cache(engine)
    async_revocations = async_revocation_list(engine)

    async def replay_check(client_id: str, jti: str, keep_until: datetime) -> None:
        try:
            if async_replay is not None:
                await async_replay.use(client_id, jti, keep_until, clock())
            else:
                await offload(replay.use, client_id, jti, keep_until, clock())
        except (ReplayStoreError, SQLAlchemyError) as exc:
            log.warning("replay store unavailable", extra={"error": str(exc) or type(exc).__name__})
            raise TemporarilyUnavailable("client assertions cannot be checked now") from None

    audiences = [issuer]
    if features.token_path is not None:
        audiences.append(issuer + features.token_path)
    authenticator = ClientAuthenticator(
        directory, ClientKeys(jwks_fetch), replay_check, audiences=audiences, clock=clock
    )
    access_tokens = AccessTokenIssuer(keyring, issuer=issuer, ttl=access_token_ttl, clock=clock)
    verifier = AccessTokenVerifier(keyring, issuer=issuer, clock=clock)
    revocations = SqlRevocationList(engine)
    authlib = AuthlibServer(directory, authenticator)
    token_endpoints(authlib, verifier, revocations, clock)
    token_endpoint = TokenEndpoint(authenticator, access_tokens)
    token_endpoint.dpop = DPoPVerifier(replay, clock)
    token_endpoint.url = features.issuer + (features.token_path or "")
    return OpenIDProvider(
        features=features,
        registry=registry,
        directory=directory,
        authenticator=authenticator,
        access_tokens=access_tokens,
        verifier=verifier,
        revocations=revocations,
        replay=replay,
        token_endpoint=token_endpoint,
        authlib=authlib,
        clock=clock,
        async_replay=async_replay,
        async_revocations=async_revocations,
        sector_fetch=sector_fetch or SectorFetcher(),
    )
