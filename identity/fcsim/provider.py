"""FranceConnect v2's OpenID Provider routes, as a service provider sees them (FranceConnect
documentation, *Fournisseur de service › Documentation technique › Endpoints*): discovery,
JWKS, authorize (GET and POST), userinfo and session/end. The token endpoint is in ``token``,
the login pages in ``login``.

Errors are raised as the types of ``identity.fcsim.errors``; the app's handlers present them.
"""

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.datastructures import FormData, QueryParams
from starlette.responses import JSONResponse, Response

from identity.fcsim.authorize import EIDAS_LEVELS, parse_authorization_request
from identity.fcsim.config import API_PREFIX, ASSERTION_ALGS, SIGNING_ALGS
from identity.fcsim.errors import ErrorPage, InvalidToken
from identity.fcsim.identities import IDENTITY_CLAIMS, SCOPE_CLAIMS, Scenario
from identity.fcsim.keys import InvalidSignature
from identity.fcsim.pages import redirect
from identity.fcsim.simulator import BROWSER_COOKIE, Simulator

JWT_MEDIA_TYPE = "application/jwt; charset=utf-8"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
#: What the ``userinfo-malformed`` identity gets: three dot-separated parts, none of them valid.
MALFORMED_JWT = "eyJhbGciOiJFUzI1NiJ9.c2ltdWxhdGVkIG1hbGZvcm1lZCB1c2VyaW5mbw.%%not-a-signature%%"
#: Claims of the ID token (and the UserInfo JWT's envelope) besides the identity claims.
TOKEN_CLAIMS = ("sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid")


def discovery_document(sim: Simulator) -> dict[str, Any]:
    """OpenID Connect Discovery 1.0 §3; every URL derives from the configured issuer."""
    config = sim.config
    return {
        "issuer": config.issuer,
        "authorization_endpoint": config.endpoint("authorize"),
        "token_endpoint": config.endpoint("token"),
        "userinfo_endpoint": config.endpoint("userinfo"),
        "jwks_uri": config.endpoint("jwks"),
        "end_session_endpoint": config.endpoint("session/end"),
        "scopes_supported": list(SCOPE_CLAIMS),
        "claims_supported": [*TOKEN_CLAIMS, *IDENTITY_CLAIMS],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code"],
        "subject_types_supported": ["pairwise"],
        "acr_values_supported": list(EIDAS_LEVELS),
        "prompt_values_supported": ["login", "consent"],
        "id_token_signing_alg_values_supported": list(SIGNING_ALGS),
        "userinfo_signing_alg_values_supported": list(SIGNING_ALGS),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "claims_parameter_supported": True,
        "claim_types_supported": ["normal"],
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        "authorization_response_iss_parameter_supported": True,
        "ui_locales_supported": ["fr", "en"],
    }


async def _params(request: Request) -> dict[str, list[str]]:
    """Query (GET) or form (POST) parameters, every value of every name, files dropped."""
    source: QueryParams | FormData
    source = await request.form() if request.method == "POST" else request.query_params
    return {name: [v for v in source.getlist(name) if isinstance(v, str)] for name in source}


async def authorize(sim: Simulator, request: Request) -> Response:
    """OpenID Connect Core 1.0 §3.1.2.1; GET and POST alike (FranceConnect accepts both)."""
    config, store = sim.config, sim.store
    auth = parse_authorization_request(await _params(request), config)
    browser_id = request.cookies.get(BROWSER_COOKIE)
    session = store.browser(browser_id)
    if session is None or browser_id is None:
        browser_id, new_browser = store.new_browser(), True
    else:
        new_browser = False
    response: Response
    if session is not None and session.login and session.sid and not auth.force_login:
        # An active simulator session: single sign-on, as FranceConnect's session allows.
        assert session.auth_time is not None
        response = sim.code_redirect(auth, session.login, session.sid, session.auth_time)
    else:
        uid = store.start_interaction(auth, browser_id)
        response = redirect(config.endpoint(f"interaction/{uid}"))
    if new_browser:
        sim.set_browser_cookie(response, browser_id)
    return response


async def userinfo(sim: Simulator, request: Request) -> Response:
    """OpenID Connect Core 1.0 §5.3, answered as a signed JWT (§5.3.2; FranceConnect:
    ``application/jwt``); the bearer token in the header only (RFC 6750 §2.1)."""
    authorization = request.headers.get("authorization")
    if not authorization:
        raise InvalidToken("an access token is required", missing=True)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken("the Authorization header must be: Bearer <access token>")
    grant, expires_at = sim.store.access_token(token.strip())
    scenario = sim.identities[grant.login].scenario
    if scenario is Scenario.USERINFO_500:
        return JSONResponse(
            {"error": "server_error", "error_description": "simulated failure (userinfo-500)"},
            status_code=500,
            headers=NO_STORE,
        )
    if scenario is Scenario.USERINFO_MALFORMED:
        return Response(MALFORMED_JWT, media_type=JWT_MEDIA_TYPE, headers=NO_STORE)
    if scenario is Scenario.SLOW:
        await asyncio.sleep(sim.config.slow_seconds)
    return Response(sim.userinfo(grant, expires_at), media_type=JWT_MEDIA_TYPE, headers=NO_STORE)


async def session_end(sim: Simulator, request: Request) -> Response:
    """OpenID Connect RP-Initiated Logout 1.0 §2–§3 with FranceConnect's requirements:
    ``id_token_hint`` (issued here; an expired one is fine), ``state`` and a
    ``post_logout_redirect_uri`` registered for the hint's client. Anything else: error page."""
    config = sim.config
    params = await _params(request)
    value = {name: values[0] for name, values in params.items() if len(values) == 1}
    hint = value.get("id_token_hint")
    if not hint:
        raise ErrorPage("id_token_hint est obligatoire / id_token_hint is required")
    try:
        claims = sim.keys.verify(hint)
    except InvalidSignature:
        raise ErrorPage(
            "id_token_hint n'a pas été émis par ce simulateur / "
            "id_token_hint was not issued by this simulator"
        ) from None
    audience = claims.get("aud")
    client_id = audience[0] if isinstance(audience, list) and audience else audience
    client = config.client(client_id) if isinstance(client_id, str) else None
    # an ID token (it has a nonce), not a UserInfo JWT signed with the same keys
    if claims.get("iss") != config.issuer or client is None or "nonce" not in claims:
        raise ErrorPage("id_token_hint invalide / invalid id_token_hint")
    if value.get("client_id", client.client_id) != client.client_id:
        raise ErrorPage("client_id ne correspond pas / client_id does not match the hint")
    target = value.get("post_logout_redirect_uri")
    if target is None or target not in client.post_logout_redirect_uris:
        raise ErrorPage(
            "post_logout_redirect_uri non enregistrée / post_logout_redirect_uri is not "
            "registered for this service provider"
        )
    state = value.get("state")
    if not state:
        raise ErrorPage("state est obligatoire / state is required")
    if isinstance(claims.get("sid"), str):
        sim.store.end_session(claims["sid"])
    browser = sim.store.browser(request.cookies.get(BROWSER_COOKIE))
    if browser is not None and browser.sid is not None:
        sim.store.end_session(browser.sid)
    return redirect(target, {"state": state})


def provider_router(sim: Simulator) -> APIRouter:
    router = APIRouter(prefix=API_PREFIX)
    cache = {"Cache-Control": "max-age=60"}

    @router.get("/.well-known/openid-configuration")
    async def discovery_route() -> JSONResponse:
        return JSONResponse(discovery_document(sim), headers=cache)

    @router.get("/jwks")
    async def jwks_route() -> JSONResponse:
        return JSONResponse(sim.keys.jwks(), headers=cache)

    @router.api_route("/authorize", methods=["GET", "POST"])
    async def authorize_route(request: Request) -> Response:
        return await authorize(sim, request)

    @router.api_route("/userinfo", methods=["GET", "POST"])
    async def userinfo_route(request: Request) -> Response:
        return await userinfo(sim, request)

    @router.api_route("/session/end", methods=["GET", "POST"])
    async def session_end_route(request: Request) -> Response:
        return await session_end(sim, request)

    return router
