"""The composition root: :func:`create_app` builds the FastAPI application from settings.

Engines, keyring and background tasks are created in the lifespan, never at import time, so
importing this module has no effect and tests build as many apps as they need.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from identity import http_errors
from identity.coins_wiring import mount_coins
from identity.deps import get_keyring
from identity.fcsim import create_simulator
from identity.franceconnect.client import FranceConnectClient
from identity.franceconnect.wiring import client_config, simulator_config
from identity.health import router as health_router
from identity.ledger_wiring import mount_ledger
from identity.observability import RequestContextMiddleware, configure_logging
from identity.oidc_wiring import mount_oidc
from identity.op_wiring import mount_code_flow
from identity.runtime import Runtime, open_runtime
from identity.settings import Settings, load_settings
from identity.web import router as web_router
from keys.errors import KeysError
from keys.keyring import Clock, utc_now
from oidc.jwks import jwks_router

log = logging.getLogger("nicecard.app")
STATIC_DIR = Path(__file__).parent / "static"


async def _refresh_keys(runtime: Runtime) -> None:
    """Pick up rotations made by other processes or the CLI; destroy keys past their overlap."""
    while True:
        await asyncio.sleep(runtime.settings.key_reload_seconds)
        try:
            await run_in_threadpool(runtime.keyring.reload)
            await run_in_threadpool(runtime.keyring.prune)
        except KeysError as exc:
            log.warning("key reload failed", extra={"error": type(exc).__name__})


def create_app(settings: Settings, *, clock: Clock = utc_now) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        with open_runtime(settings, clock=clock) as runtime:
            app.state.runtime = runtime
            async with httpx.AsyncClient(follow_redirects=False) as http:
                app.state.franceconnect = FranceConnectClient(
                    client_config(settings, runtime.keyring),
                    http,
                    clock=lambda: clock().timestamp(),
                )
                refresher = asyncio.create_task(_refresh_keys(runtime))
                log.info("started", extra={"mode": settings.mode.value, "issuer": settings.issuer})
                try:
                    yield
                finally:
                    refresher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await refresher

    app = FastAPI(
        title="Nice Identity Card",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if settings.is_development else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.is_development else None,
    )
    app.state.settings = settings
    app.state.clock = clock
    http_errors.install(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health_router)
    app.include_router(jwks_router(get_keyring))
    mount_oidc(app, clock=clock)
    mount_code_flow(app)
    mount_ledger(app)
    mount_coins(app)
    app.include_router(web_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.fc_simulator:
        # Settings refuse the simulator outside development.
        app.mount("/fc-sim", create_simulator(simulator_config(settings)))
    return app


def app_from_environment() -> FastAPI:
    """Factory for uvicorn workers (``nicecard serve``): settings from the environment."""
    settings = load_settings()
    configure_logging(settings.log_level)
    return create_app(settings)
