"""The public JWK Set endpoint (OpenID Connect Discovery §3 ``jwks_uri``; RFC 7517 §5).

No ``from __future__ import annotations`` here: FastAPI must see the closure's dependency.
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from keys.keyring import Keyring

JWKS_PATH = "/jwks"


def jwks_router(keyring: Callable[..., Keyring]) -> APIRouter:
    router = APIRouter()

    @router.get(JWKS_PATH, response_class=JSONResponse, tags=["openid"])
    def jwks(ring: Annotated[Keyring, Depends(keyring)]) -> JSONResponse:
        body: dict[str, Any] = ring.jwks()
        return JSONResponse(
            body,
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    return router
