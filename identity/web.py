"""Citizen pages and the FranceConnect sign-in routes.

``/`` shows the FranceConnect button or the signed-in session; ``/auth/franceconnect/start``
begins a sign-in (state and nonce bound to this browser), ``/auth/franceconnect/callback``
completes it, ``/auth/logout`` ends the local session and chains to FranceConnect's logout.
Every failure ends on a clear page in the citizen's language, with a request id for support and
a log line without personal data.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from identity import signin
from identity.deps import current_time, get_runtime
from identity.errors import SignInCancelled, SignInError, SignInExpired
from identity.franceconnect.client import FranceConnectClient
from identity.i18n import TEXTS, language
from identity.observability import request_id_var
from identity.signin import CitizenSession
from keys.model import Purpose

log = logging.getLogger("nicecard.signin")
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
router = APIRouter(include_in_schema=False)

SIGNIN_COOKIE = "nicecard_signin"
LOGOUT_COOKIE = "nicecard_logout"
LOGOUT_NEXT_COOKIE = "nicecard_logout_next"
T = TypeVar("T")

ERROR_STATUS = {"cancelled": 200, "expired": 400, "rejected": 502, "unavailable": 504}


def session_cookie_name(request: Request) -> str:
    # __Host- cookies need Secure, so https; development on http uses a plain name.
    return "__Host-nicecard" if _secure(request) else "nicecard_session"


def _secure(request: Request) -> bool:
    return bool(request.app.state.settings.issuer.startswith("https://"))


async def _db(request: Request, work: Callable[[Session], T]) -> T:
    """Run ``work`` with an identity-store session, off the event loop."""
    engine = get_runtime(request).identity_engine

    def run() -> T:
        with Session(engine) as session:
            return work(session)

    return await run_in_threadpool(run)


async def current_citizen(request: Request) -> CitizenSession | None:
    cookie = request.cookies.get(session_cookie_name(request))
    if not cookie:
        return None
    keyring, now = get_runtime(request).keyring, current_time(request)
    return await _db(request, lambda s: signin.load_session(s, keyring, cookie, now))


def render_page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    lang = language(request)
    response = templates.TemplateResponse(
        request, name, {"lang": lang, "t": TEXTS[lang], **context}, status_code=status
    )
    response.headers["Cache-Control"] = "no-store"
    if request.query_params.get("lang") in TEXTS:
        response.set_cookie("lang", language(request), max_age=31536000, samesite="lax")
    return response


def message_page(request: Request, heading: str, message: str, status: int = 200) -> HTMLResponse:
    return render_page(
        request,
        "message.html",
        status,
        heading=heading,
        message=message,
        request_id=request_id_var.get() if status >= 400 else None,
    )


def _error_page(request: Request, error: SignInError) -> HTMLResponse:
    texts = TEXTS[language(request)]
    log.info("sign-in ended", extra={"outcome": error.reason})
    return message_page(
        request,
        texts["error_title"],
        texts.get(f"error_{error.reason}", texts["error_signin_failed"]),
        ERROR_STATUS.get(error.reason, 400),
    )


def safe_return_to(value: str | None) -> str:
    """Only a local absolute path: never another origin (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def _fc(request: Request) -> FranceConnectClient:
    client: FranceConnectClient = request.app.state.franceconnect
    return client


@router.get("/", response_class=HTMLResponse)
async def home(request: Request) -> HTMLResponse:
    citizen = await current_citizen(request)
    claims = sorted(citizen.claims.items()) if citizen else []
    hidden = {"iss", "aud", "sub", "iat", "exp", "nbf", "jti"}
    return render_page(
        request,
        "home.html",
        citizen=citizen,
        claims=[(k, v) for k, v in claims if k not in hidden],
        return_to="/",
    )


#: What may be passed on to FranceConnect as ``prompt`` (e.g. when a relying party asks for a
#: fresh authentication with prompt=login or max_age).
FC_PROMPTS = frozenset({"login", "consent", "login consent"})


@router.get("/auth/franceconnect/start")
async def start(
    request: Request, return_to: str | None = None, prompt: str | None = None
) -> Response:
    browser = request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(32)
    keyring, now, target = (
        get_runtime(request).keyring,
        current_time(request),
        safe_return_to(return_to),
    )
    state, nonce = await _db(request, lambda s: signin.begin(s, keyring, browser, target, now))
    try:
        url = await _fc(request).authorization_url(
            state, nonce, prompt if prompt in FC_PROMPTS else None
        )
    except SignInError as exc:
        return _error_page(request, exc)
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        SIGNIN_COOKIE,
        browser,
        max_age=int(signin.SIGNIN_TTL.total_seconds()),
        httponly=True,
        secure=_secure(request),
        samesite="lax",
        path="/auth/franceconnect",
    )
    return response


@router.get("/auth/franceconnect/callback")
async def callback(request: Request) -> Response:
    params = request.query_params
    runtime, now = get_runtime(request), current_time(request)
    fc = _fc(request)
    try:
        state = params.get("state")
        if not state:
            raise SignInExpired("callback without state")
        browser = request.cookies.get(SIGNIN_COOKIE)
        pending = await _db(
            request, lambda s: signin.consume(s, runtime.keyring, state, browser, now)
        )
        issuer = params.get("iss")
        # RFC 9207 §2.4: when present, iss must be the provider the request went to (mix-up).
        if issuer is not None and not hmac.compare_digest(issuer, fc.config.issuer):
            raise SignInError("authorization response from another issuer", reason="rejected")
        if params.get("error"):
            raise SignInCancelled("FranceConnect returned an error")
        code = params.get("code")
        if not code:
            raise SignInError("callback without code", reason="rejected")
        identity = await fc.sign_in(code, pending.nonce)
        ttl = runtime.settings.session_ttl
        cookie = await _db(
            request, lambda s: signin.open_session(s, runtime.keyring, identity, now, ttl)
        )
    except SignInError as exc:
        response: Response = _error_page(request, exc)
        response.delete_cookie(SIGNIN_COOKIE, path="/auth/franceconnect")
        return response
    log.info("sign-in completed", extra={"acr": identity.acr})
    response = RedirectResponse(pending.return_to, status_code=303)
    response.delete_cookie(SIGNIN_COOKIE, path="/auth/franceconnect")
    response.set_cookie(
        session_cookie_name(request),
        cookie,
        max_age=int(runtime.settings.session_ttl.total_seconds()),
        httponly=True,
        secure=_secure(request),
        samesite="lax",
        path="/",
    )
    return response


def same_origin(request: Request) -> bool:
    """A form POST from our own pages: Origin (or Referer) names our issuer's origin."""
    issuer = urlsplit(request.app.state.settings.issuer)
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return False
    parts = urlsplit(origin)
    return (parts.scheme, parts.netloc) == (issuer.scheme, issuer.netloc)


@router.post("/auth/logout")
async def logout(request: Request) -> Response:
    if not same_origin(request):
        return message_page(request, "403", "Cross-site sign-out refused.", 403)
    return await sign_out(request)


async def sign_out(request: Request, next_url: str | None = None) -> Response:
    """End the local session and chain to FranceConnect's logout; come back to ``next_url``
    (a relying party's validated post_logout_redirect_uri) or to our signed-out page."""
    citizen = await current_citizen(request)
    cookie = request.cookies.get(session_cookie_name(request))
    await _db(request, lambda s: signin.end_session(s, cookie))
    hook = getattr(request.app.state, "on_session_end", None)
    if citizen is not None and hook is not None:
        await hook(citizen)
    texts = TEXTS[language(request)]
    response: Response
    if citizen is None:
        response = (
            RedirectResponse(next_url, status_code=303)
            if next_url
            else message_page(request, texts["logout"], texts["logged_out"])
        )
    else:
        state = secrets.token_hex(32)
        try:
            url = await _fc(request).end_session_url(citizen.fc_id_token, state)
        except SignInError:
            # Local session is gone already; FranceConnect's own ends when it expires.
            response = (
                RedirectResponse(next_url, status_code=303)
                if next_url
                else message_page(request, texts["logout"], texts["logged_out"])
            )
        else:
            response = RedirectResponse(url, status_code=303)
            response.set_cookie(
                LOGOUT_COOKIE,
                state,
                max_age=600,
                httponly=True,
                secure=_secure(request),
                samesite="lax",
                path="/auth/franceconnect",
            )
            if next_url:
                response.set_cookie(
                    LOGOUT_NEXT_COOKIE,
                    next_url,
                    max_age=600,
                    httponly=True,
                    secure=_secure(request),
                    samesite="lax",
                    path="/auth/franceconnect",
                )
    response.delete_cookie(session_cookie_name(request), path="/")
    log.info("signed out")
    return response


@router.get("/auth/franceconnect/logout-callback")
async def logout_callback(request: Request, state: str = "") -> Response:
    texts = TEXTS[language(request)]
    expected = request.cookies.get(LOGOUT_COOKIE, "")
    if not expected or not hmac.compare_digest(state.encode(), expected.encode()):
        return message_page(request, texts["logout"], texts["error_logout_state"], 400)
    next_url = request.cookies.get(LOGOUT_NEXT_COOKIE)
    response: Response = (
        RedirectResponse(next_url, status_code=303)
        if next_url
        else message_page(request, texts["logout"], texts["logged_out"])
    )
    response.delete_cookie(LOGOUT_COOKIE, path="/auth/franceconnect")
    response.delete_cookie(LOGOUT_NEXT_COOKIE, path="/auth/franceconnect")
    return response


@router.get("/auth/franceconnect/jwks")
async def client_jwks(request: Request) -> JSONResponse:
    """Our public keys for ``private_key_jwt`` at FranceConnect (to register as jwks_uri)."""
    return JSONResponse(
        get_runtime(request).keyring.jwks([Purpose.FC_CLIENT]),
        media_type="application/jwk-set+json",
        headers={"Cache-Control": "public, max-age=300"},
    )
