"""HTTP routes of the OpenID Provider's machine-to-machine endpoints:

- ``POST /token`` (RFC 6749 §3.2; client_credentials per §4.4; JWT access tokens per RFC 9068),
- ``POST /introspect`` (RFC 7662), ``POST /revoke`` (RFC 7009), both through Authlib,
- ``GET /.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4).

Routes only read the request and write the response; errors are :mod:`oidc.errors` classes
that ``identity.http_errors`` presents. No ``from __future__ import annotations`` here:
FastAPI must see the closures' dependencies.
"""

import json
from collections.abc import Callable
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from oidc.authlib_server import OAuthRequest
from oidc.discovery import (
    DISCOVERY_PATH,
    INTROSPECTION_PATH,
    REVOCATION_PATH,
    TOKEN_PATH,
    provider_metadata,
)
from oidc.errors import InvalidRequest
from oidc.provider import OpenIDProvider
from oidc.token_endpoint import MAX_BODY_BYTES, NO_STORE, TokenHttpRequest, form_parameters


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused once it grows past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidRequest("the request body is too large")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise InvalidRequest("the request body is too large")
    except ClientDisconnect:
        raise InvalidRequest("the client went away before sending its request") from None
    return bytes(body)


async def _params(request: Request) -> dict[str, str]:
    return form_parameters(
        await read_body(request), request.headers.get("content-type"), request.url.query
    )


def oidc_router(provider: Callable[..., OpenIDProvider]) -> APIRouter:
    router = APIRouter(tags=["openid"])
    ProviderDep = Annotated[OpenIDProvider, Depends(provider)]

    @router.post(TOKEN_PATH)
    async def token(request: Request, op: ProviderDep) -> Response:
        params = await _params(request)
        body = await op.token_endpoint.handle(
            TokenHttpRequest(
                params, request.headers.get("authorization"), request.headers.get("dpop")
            )
        )
        return JSONResponse(body, headers=NO_STORE)

    async def _authlib_endpoint(request: Request, op: OpenIDProvider, name: str) -> Response:
        path = (
            op.features.introspection_path
            if name == "introspection"
            else (op.features.revocation_path)
        )
        oauth_request = OAuthRequest(op.url(path), await _params(request), request.headers)
        status, body, _ = await anyio.to_thread.run_sync(
            op.authlib.create_endpoint_response, name, oauth_request
        )
        return JSONResponse(body, status_code=status, headers=NO_STORE)

    @router.post(INTROSPECTION_PATH)
    async def introspect(request: Request, op: ProviderDep) -> Response:
        return await _authlib_endpoint(request, op, "introspection")

    @router.post(REVOCATION_PATH)
    async def revoke(request: Request, op: ProviderDep) -> Response:
        return await _authlib_endpoint(request, op, "revocation")

    @router.get(DISCOVERY_PATH)
    async def discovery(op: ProviderDep) -> Response:
        return Response(
            json.dumps(provider_metadata(op.features)),
            media_type="application/json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    return router
