"""Liveness and readiness probes.

``/healthz``: the process answers. ``/readyz``: both databases answer, both are migrated to the
head revision, and every key purpose has an active key; otherwise 503 naming what is missing.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from identity import migrate
from identity.db import is_reachable
from identity.deps import RuntimeDep
from identity.runtime import REQUIRED_PURPOSES, Runtime
from keys.errors import KeyNotFound

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


def _readiness(runtime: Runtime) -> dict[str, str]:
    checks: dict[str, str] = {}
    for name, store, engine in (
        ("identity_database", migrate.Store.IDENTITY, runtime.identity_engine),
        ("ledger_database", migrate.Store.LEDGER, runtime.ledger_engine),
    ):
        if not is_reachable(engine):
            checks[name] = "unreachable"
        elif migrate.current(store, engine) != migrate.head(store):
            checks[name] = "not migrated"
        else:
            checks[name] = "ok"
    missing = []
    for purpose in REQUIRED_PURPOSES:
        try:
            runtime.keyring.active(purpose)
        except KeyNotFound:
            missing.append(purpose.value)
    checks["keys"] = "ok" if not missing else "no active key: " + ", ".join(missing)
    return checks


@router.get("/readyz")
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    checks = await run_in_threadpool(_readiness, runtime)
    ready = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"},
    )
