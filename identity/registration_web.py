"""``POST /register`` (RFC 7591 §3), enabled when ``NICECARD_REGISTRATION_TOKEN`` is set: the
initial access token, presented as a Bearer token and compared in constant time."""

from __future__ import annotations

import hmac
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from oidc.clients import InvalidClientMetadata
from oidc.errors import InvalidToken
from oidc.registration import register

router = APIRouter(include_in_schema=False)


@router.post("/register")
async def register_client(request: Request) -> JSONResponse:
    settings = request.app.state.settings
    expected = settings.registration_token
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if (
        expected is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(token.strip().encode(), expected.get_secret_value().encode())
    ):
        raise InvalidToken("a valid initial access token is required")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise InvalidClientMetadata("the request body must be application/json")
    try:
        metadata = json.loads(await request.body())
    except ValueError:
        raise InvalidClientMetadata("the request body is not valid JSON") from None
    if not isinstance(metadata, dict):
        raise InvalidClientMetadata("the request body must be a JSON object")
    provider = request.app.state.oidc
    _client, _secret, body = await run_in_threadpool(
        lambda: register(
            metadata,
            provider.registry,
            request.app.state.clock(),
            sector_fetch=provider.sector_fetch,
        )
    )
    return JSONResponse(
        body, status_code=201, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )
