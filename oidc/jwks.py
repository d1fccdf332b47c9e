"""The public JWK Set endpoint (OpenID Connect Discovery §3 ``jwks_uri``; RFC 7517 §5).

A plain Starlette route (FastAPI's dependency solving would cost more than the answer): the
keyring hands out the same JWK Set object until a key changes, so it is serialized once.
"""

import json
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from keys.keyring import Keyring

JWKS_PATH = "/jwks"


def jwks_router(keyring: Callable[[Request], Keyring]) -> APIRouter:
    router = APIRouter()
    serialized: dict[int, tuple[object, bytes]] = {}

    async def jwks(request: Request) -> Response:
        body: dict[str, Any] = keyring(request).jwks()
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

    router.add_route(JWKS_PATH, jwks, methods=["GET"], include_in_schema=False)
    return router
