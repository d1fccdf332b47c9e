"""The public JWK Set endpoint (OpenID Connect Discovery §3 ``jwks_uri``; RFC 7517 §5).

No ``from __future__ import annotations`` here: FastAPI must see the closure's dependency.
"""

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from keys.keyring import Keyring

JWKS_PATH = "/jwks"


def jwks_router(keyring: Callable[..., Keyring]) -> APIRouter:
    router = APIRouter()
    # The keyring hands out the same JWK Set object until a key changes: serialize it once.
    serialized: dict[int, tuple[object, bytes]] = {}

    @router.get(JWKS_PATH, response_class=Response, tags=["openid"])
    async def jwks(ring: Annotated[Keyring, Depends(keyring)]) -> Response:
        body: dict[str, Any] = ring.jwks()
        cached = serialized.get(id(body))
        if cached is None or cached[0] is not body:
            serialized.clear()
            cached = (body, json.dumps(body, separators=(",", ":")).encode())
            serialized[id(body)] = cached
        return Response(
            cached[1],
            media_type="application/jwk-set+json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    return router
