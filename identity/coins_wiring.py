"""Mounting the coins API: the mint over the ledger store, with the keyring's keys.

The routes and the mint are the ledger's (:mod:`ledger.coins_api`, :mod:`ledger.mint`); this
module only builds the :class:`~ledger.mint.Mint` from settings when the app starts (after the
ledger service, whose authenticator the routes use, and whose group-commit appender the mint's
appends share with the acts). An hourly task makes the current and next epochs' keys ahead of
time and wipes expired private halves. The current epoch's keys are made on first use, not at
start: starting a process stays cheap, and a start never appends to the log behind a reader's
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from identity.settings import Settings
from keys.errors import KeysError
from ledger.coins_api import coins_router
from ledger.errors import LedgerError
from ledger.mint import Mint, MintPolicy

log = logging.getLogger("nicecard.coins")

_UPKEEP_SECONDS = 3600.0


def mint_policy(settings: Settings) -> MintPolicy:
    """The denomination values, lifetimes and limits that settings give."""
    return MintPolicy(
        values=tuple(settings.coin_values),
        epoch=settings.coin_epoch,
        deposit_grace=settings.coin_deposit_grace,
        legal_grace=settings.coin_legal_grace,
        key_bits=settings.coin_key_bits,
        max_coins=settings.withdraw_max_coins,
        max_points_per_day=settings.withdraw_max_points_per_day,
    )


def mount_coins(app: FastAPI) -> None:
    """Add the coins routes and build the mint when the app starts (after ``mount_ledger``)."""
    app.include_router(coins_router())
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            service = app_.state.ledger
            mint = Mint(
                service.store,
                service.keyring,
                service.origin,
                mint_policy(app_.state.settings),
                clock=app_.state.clock,
                appender=service.appender,
            )
            app_.state.mint = mint
            upkeep = asyncio.create_task(_upkeep(mint, _UPKEEP_SECONDS))
            try:
                yield state
            finally:
                upkeep.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upkeep

    app.router.lifespan_context = lifespan


async def _upkeep(mint: Mint, first: float) -> None:
    """Keep the next epoch's keys made and announced, and expired private halves wiped."""
    delay = first
    while True:
        await asyncio.sleep(delay)
        delay = _UPKEEP_SECONDS
        try:
            await run_in_threadpool(mint.ensure_denominations)
        except (LedgerError, KeysError) as exc:
            log.warning("denomination upkeep failed", extra={"error": type(exc).__name__})
