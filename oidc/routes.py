"""HTTP routes of the OpenID Provider's machine-to-machine endpoints:

- ``POST /token`` (RFC 6749 §3.2; client_credentials per §4.4; JWT access tokens per RFC 9068),
- ``POST /introspect`` (RFC 7662), ``POST /revoke`` (RFC 7009), both through Authlib,
- ``GET /.well-known/openid-configuration`` (OpenID Connect Discovery 1.0 §4).

Routes only read the request and write the response; errors are :mod:`oidc.errors` classes
that ``identity.http_errors`` presents.

They are plain Starlette routes on a FastAPI router: these endpoints take form bodies and have
no use for FastAPI's parameter validation or dependency solving, which cost more per request
(about 70 µs) than the whole client credentials grant with client_secret_basic (see
``bench/README.md``). The provider comes from the ``provider`` callable given to the factory.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from oidc.authlib_server import OAuthRequest
from oidc.discovery import (
    DISCOVERY_PATH,
    INTROSPECTION_PATH,
    REVOCATION_PATH,
    TOKEN_PATH,
)
from oidc.errors import InvalidRequest
from oidc.provider import OpenIDProvider
from oidc.token_endpoint import MAX_BODY_BYTES, NO_STORE, TokenHttpRequest, form_parameters

ProviderLookup = Callable[[Request], OpenIDProvider]


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
    query = request.scope.get("query_string", b"").decode("latin-1")
    return form_parameters(await read_body(request), request.headers.get("content-type"), query)


def oidc_router(provider: ProviderLookup) -> APIRouter:
    """The routes; ``provider(request)`` returns the application's :class:`OpenIDProvider`."""

    async def token(request: Request) -> Response:
        op = provider(request)
        params = await _params(request)
        headers = request.headers
        body = await op.token_endpoint.handle(
            TokenHttpRequest(params, headers.get("authorization"), headers.get("dpop"))
        )
        return JSONResponse(body, headers=NO_STORE)

    async def authlib_endpoint(request: Request, name: str, path: str | None) -> Response:
        op = provider(request)
        oauth_request = OAuthRequest(op.url(path), await _params(request), request.headers)
        status, body, _ = await anyio.to_thread.run_sync(
            op.authlib.create_endpoint_response, name, oauth_request
        )
        return JSONResponse(body, status_code=status, headers=NO_STORE)

    async def introspect(request: Request) -> Response:
        features = provider(request).features
        return await authlib_endpoint(request, "introspection", features.introspection_path)

    async def revoke(request: Request) -> Response:
        features = provider(request).features
        return await authlib_endpoint(request, "revocation", features.revocation_path)

    async def discovery(request: Request) -> Response:
        return Response(
            provider(request).discovery_document,
            media_type="application/json",
            headers={"Cache-Control": "public, max-age=300"},
        )

    router = APIRouter(tags=["openid"])
    router.routes.extend(
        [
            Route(TOKEN_PATH, token, methods=["POST"], name="token"),
            Route(INTROSPECTION_PATH, introspect, methods=["POST"], name="introspect"),
            Route(REVOCATION_PATH, revoke, methods=["POST"], name="revoke"),
            Route(DISCOVERY_PATH, discovery, methods=["GET"], name="openid_configuration"),
        ]
    )
    return router
