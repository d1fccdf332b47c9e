"""``create_simulator(config)``: the FranceConnect v2 simulator as a FastAPI application.

Mount it (``app.mount("/fc-sim", create_simulator(config))``) or run it alone
(``uvicorn.run(create_simulator(config))``); routes are relative to its root and every URL it
publishes derives from ``config.issuer``. Keys are generated (or loaded from ``key_file``) here,
when the app is built, never at import time.

Errors map to FranceConnect's presentation in one place: error pages (400), redirected
authorization errors, OAuth JSON errors (``Cache-Control: no-store``), and RFC 6750 challenges.
"""

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from identity.fcsim.config import SimulatorConfig
from identity.fcsim.errors import AuthorizationError, ErrorPage, InvalidToken, TokenError
from identity.fcsim.login import login_router
from identity.fcsim.provider import NO_STORE, provider_router
from identity.fcsim.simulator import Simulator
from identity.fcsim.token import token_router


def create_simulator(config: SimulatorConfig) -> FastAPI:
    sim = Simulator.build(config)
    app = FastAPI(
        title="FranceConnect simulator (not FranceConnect)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.simulator = sim
    app.include_router(provider_router(sim))
    app.include_router(token_router(sim))
    app.include_router(login_router(sim))

    async def on_error_page(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ErrorPage)
        return sim.pages.error(exc.title, exc.detail)

    async def on_authorization_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AuthorizationError)
        return sim.error_redirect(exc)

    async def on_token_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TokenError)
        body = {"error": exc.error, "error_description": exc.description}
        return JSONResponse(body, status_code=exc.status_code, headers=NO_STORE)

    async def on_invalid_token(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InvalidToken)
        if exc.missing:
            challenge = 'Bearer realm="FranceConnect simulator"'
            body = {"error": "invalid_request", "error_description": exc.description}
        else:
            challenge = f'Bearer error="invalid_token", error_description="{exc.description}"'
            body = {"error": "invalid_token", "error_description": exc.description}
        headers = {**NO_STORE, "WWW-Authenticate": challenge}
        return JSONResponse(body, status_code=401, headers=headers)

    app.add_exception_handler(ErrorPage, on_error_page)
    app.add_exception_handler(AuthorizationError, on_authorization_error)
    app.add_exception_handler(TokenError, on_token_error)
    app.add_exception_handler(InvalidToken, on_invalid_token)
    return app
