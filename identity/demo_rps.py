"""Two demonstration relying parties served by the development server, so a newcomer sees the
OpenID Provider from the outside: a transit app (on ``127.0.0.1``) and a city services app (on
``localhost``). Different hosts are different sectors, so the same citizen gets two different
pseudonyms, and each app receives only the claims its registration entitles it to.

They are ordinary confidential clients (``client_secret_basic``, PKCE S256, state, nonce) that
talk to the provider over HTTP like any other relying party; they exist only in development.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import jwt
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from identity.web import render_page
from oidc.clients import AuthMethod, Client, GrantType
from oidc.secrets import generate_client_secret, hash_client_secret

log = logging.getLogger("nicecard.demo")
router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class DemoApp:
    name: str
    title: str
    host: str
    scope: str
    claims: frozenset[str]
    #: what the app may do as a partner, for itself (client_credentials), if anything
    partner_scope: str = ""

    @property
    def client_id(self) -> str:
        return f"demo-{self.name}"

    def base(self, issuer: str) -> str:
        port = urlsplit(issuer).port
        return f"http://{self.host}:{port}/demo/{self.name}"


DEMO_APPS = {
    "transit": DemoApp(
        "transit",
        "Lignes d’Azur (démo)",
        "127.0.0.1",
        "openid age",
        frozenset({"age_over_18", "age_bracket"}),
        partner_scope="acts:write",
    ),
    "city": DemoApp(
        "city",
        "Allo Mairie (démo)",
        "localhost",
        "openid profile email",
        frozenset({"given_name", "family_name", "preferred_username", "email"}),
    ),
}


def register_demo_clients(registry: Any, issuer: str, data_dir: Path) -> dict[str, str]:
    """Register the demo clients once; their secrets are kept in the data directory."""
    path = data_dir / "demo-clients.json"
    stored: dict[str, str] = json.loads(path.read_text("utf-8")) if path.exists() else {}
    for app in DEMO_APPS.values():
        base = app.base(issuer)
        client = Client(
            client_id=app.client_id,
            client_name=app.title,
            token_endpoint_auth_method=AuthMethod.CLIENT_SECRET_BASIC,
            grant_types=frozenset(
                {GrantType.AUTHORIZATION_CODE}
                | ({GrantType.CLIENT_CREDENTIALS} if app.partner_scope else set())
            ),
            response_types=frozenset({"code"}),
            redirect_uris=(base + "/callback",),
            post_logout_redirect_uris=(base + "/",),
            scope=frozenset(app.scope.split()) | frozenset(app.partner_scope.split()),
            claims=app.claims,
        )
        secret = stored.get(app.client_id)
        existing = registry.get(app.client_id)
        if secret is None or existing is None:
            secret = generate_client_secret()
            stored[app.client_id] = secret
            registered = Client(**{**client.__dict__, "secret_hash": hash_client_secret(secret)})
            if existing is None:
                registry.add(registered)
            else:
                registry.update(registered)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(stored, fh)
    return stored


def _sessions(request: Request) -> dict[str, dict[str, Any]]:
    """The demo apps' own sessions, held by the application (one process, development only)."""
    sessions: dict[str, dict[str, Any]] = request.app.state.demo_sessions
    return sessions


def _app(name: str) -> DemoApp:
    app = DEMO_APPS.get(name)
    if app is None:
        raise HTTPException(404)
    return app


def _cookie(app: DemoApp) -> str:
    return f"demo_{app.name}"


@router.get("/demo/{name}/", response_class=HTMLResponse)
async def demo_home(request: Request, name: str) -> Response:
    app = _app(name)
    session = _sessions(request).get(request.cookies.get(_cookie(app), ""), {})
    return render_page(
        request,
        "demo.html",
        app=app,
        result=session.get("result"),
        issuer=request.app.state.settings.issuer,
    )


@router.get("/demo/{name}/login")
async def demo_login(request: Request, name: str) -> Response:
    app = _app(name)
    issuer = request.app.state.settings.issuer
    key = secrets.token_urlsafe(16)
    verifier, state, nonce = (
        secrets.token_urlsafe(48),
        secrets.token_urlsafe(16),
        secrets.token_urlsafe(16),
    )
    _sessions(request)[key] = {"verifier": verifier, "state": state, "nonce": nonce}
    params = {
        "response_type": "code",
        "client_id": app.client_id,
        "redirect_uri": app.base(issuer) + "/callback",
        "scope": app.scope,
        "state": state,
        "nonce": nonce,
        "code_challenge": create_s256_code_challenge(verifier),
        "code_challenge_method": "S256",
        "ui_locales": "fr en",
    }
    response = RedirectResponse(f"{issuer}/authorize?{urlencode(params)}", status_code=303)
    response.set_cookie(_cookie(app), key, httponly=True, samesite="lax", path=f"/demo/{name}")
    return response


@router.get("/demo/{name}/callback")
async def demo_callback(request: Request, name: str) -> Response:
    app = _app(name)
    issuer = request.app.state.settings.issuer
    session = _sessions(request).get(request.cookies.get(_cookie(app), ""))
    params = request.query_params
    if session is None or params.get("state") != session.get("state"):
        raise HTTPException(400, "state does not match")
    if params.get("iss") != issuer:
        raise HTTPException(400, "iss does not match (RFC 9207)")
    if "error" in params:
        session["result"] = {"error": params["error"]}
        return RedirectResponse(f"/demo/{name}/", status_code=303)
    secret = request.app.state.demo_secrets[app.client_id]
    async with httpx.AsyncClient(timeout=10) as http:
        token = await http.post(
            f"{issuer}/token",
            auth=(app.client_id, secret),
            data={
                "grant_type": "authorization_code",
                "code": params.get("code", ""),
                "redirect_uri": app.base(issuer) + "/callback",
                "code_verifier": session["verifier"],
            },
        )
        if token.status_code != 200:
            session["result"] = {"error": token.json().get("error", "token_error")}
            return RedirectResponse(f"/demo/{name}/", status_code=303)
        tokens = token.json()
        jwks = (await http.get(f"{issuer}/jwks")).json()
        userinfo = (
            await http.get(
                f"{issuer}/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"}
            )
        ).json()
    id_token = str(tokens["id_token"])
    header = jwt.get_unverified_header(id_token)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = await run_in_threadpool(
        jwt.decode,
        id_token,
        jwt.PyJWK(key).key,
        algorithms=[header["alg"]],
        audience=app.client_id,
        issuer=issuer,
    )
    if claims.get("nonce") != session["nonce"]:
        raise HTTPException(400, "nonce does not match")
    session["result"] = {"id_token": claims, "userinfo": userinfo}
    log.info("demo sign-in", extra={"demo": name})
    return RedirectResponse(f"/demo/{name}/", status_code=303)


@router.post("/demo/{name}/ride")
async def demo_ride(request: Request, name: str) -> Response:
    """The transit app records a tram ride for its signed-in user, as a real partner would:
    a client-credentials token with ``acts:write``, then ``POST /v1/acts`` naming the user by
    the pairwise ``sub`` this app knows."""
    app = _app(name)
    session = _sessions(request).get(request.cookies.get(_cookie(app), ""))
    result = (session or {}).get("result") or {}
    if not app.partner_scope or "id_token" not in result:
        raise HTTPException(400, "sign in first")
    issuer = request.app.state.settings.issuer
    secret = request.app.state.demo_secrets[app.client_id]
    ticket = secrets.token_hex(16)
    async with httpx.AsyncClient(timeout=10) as http:
        token = await http.post(
            f"{issuer}/token",
            auth=(app.client_id, secret),
            data={"grant_type": "client_credentials", "scope": app.partner_scope},
        )
        token.raise_for_status()
        act = {
            "sub": result["id_token"]["sub"],
            "type": "tram_ride",
            "occurred_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "evidence_digest": "sha256:" + hashlib.sha256(ticket.encode()).hexdigest(),
            "idempotency_key": "ride-" + ticket,
        }
        answer = await http.post(
            f"{issuer}/v1/acts",
            json=act,
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        )
    result["ride"] = answer.json()
    return RedirectResponse(f"/demo/{name}/", status_code=303)
