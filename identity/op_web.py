"""The citizen-facing half of the OpenID Provider: ``/authorize`` (sign-in through
FranceConnect when needed, consent, code), ``/userinfo`` and RP-initiated logout (``/logout``).

The protocol rules live in ``oidc`` (request validation, codes, tokens); this module decides
what the citizen sees, from their login session. Claims released to a relying party are the
intersection of what it asks for (scopes, ``claims``), what it is entitled to (its
registration) and what the citizen consented to; derived claims come from ``oidc.claims``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import jwt
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlmodel import Session, select
from starlette.concurrency import run_in_threadpool

from identity import signin
from identity.deps import current_time, get_runtime
from identity.errors import SignInExpired
from identity.i18n import TEXTS, language
from identity.ledger_wiring import remember_subject
from identity.sealing import seal, unseal
from identity.tables import LoginSession
from identity.web import (
    current_citizen,
    message_page,
    render_page,
    same_origin,
    sign_out,
)
from keys.errors import KeysError
from oidc.authorization import (
    AuthorizationRequest,
    ErrorPage,
    ErrorRedirect,
    error_url,
    response_url,
    validate,
)
from oidc.claims import SUPPORTED_CLAIMS, release, requested_claims
from oidc.client_auth import read_client_credentials
from oidc.clients import FAPI2_ALGS, Client
from oidc.code_flow import Citizen, CodeFlow
from oidc.dpop import ALGS as DPOP_ALGS
from oidc.errors import (
    AccessDenied,
    ConsentRequired,
    InvalidRequest,
    InvalidToken,
    LoginRequired,
    ServerError,
)
from oidc.grants import Grant
from oidc.id_tokens import PURPOSE_FOR_ALG, sign
from oidc.par import PAR_TTL, PushedRequests
from oidc.routes import read_body
from oidc.token_endpoint import form_parameters

log = logging.getLogger("nicecard.op")
router = APIRouter(include_in_schema=False)

#: Internal parameter set when we send the citizen to sign in: a session authenticated after
#: this time satisfies prompt=login and max_age (it can only weaken the client's own request).
LOGIN_AFTER = "_login_after"


def _flow(request: Request) -> CodeFlow:
    flow: CodeFlow = request.app.state.code_flow
    return flow


def claims_of_session(engine: sa.Engine, keyring: Any, sid: str) -> Mapping[str, Any] | None:
    """FranceConnect's claims from the login session ``sid``, while it lasts."""
    with Session(engine) as session:
        record = session.exec(select(LoginSession).where(LoginSession.sid == sid)).first()
        if record is None:
            return None
    try:
        data = unseal(keyring, record.sealed, record.sealed_kid, record.id_hash)
    except SignInExpired:
        return None
    claims: Mapping[str, Any] = data["claims"]
    return claims


def released_claims(clock_today: Any) -> Any:
    def release_for(grant: Grant, source: Mapping[str, Any]) -> dict[str, Any]:
        return release(source, grant.claims, clock_today())

    return release_for


async def _params(request: Request) -> dict[str, str]:
    """Query (GET) or form (POST) parameters; a repeated parameter is an error (RFC 6749 §3.1)."""
    if request.method == "POST":
        form = await request.form()
        items = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    else:
        items = list(request.query_params.multi_items())
    params: dict[str, str] = {}
    for name, value in items:
        if name in params:
            raise ErrorPage("invalid_request", f"the {name} parameter is repeated")
        if value != "":
            params[name] = value
    return params


def _error_page(request: Request, error: ErrorPage) -> HTMLResponse:
    texts = TEXTS[language(request)]
    log.info("authorization refused", extra={"error": error.error})
    return message_page(request, texts["error_title"], error.description, 400)


async def _lookup_client(request: Request, client_id: str) -> Any:
    return await _flow(request).provider.directory.get(client_id)


async def _pushed(request: Request, request_uri: str, client_id: str) -> Mapping[str, str] | None:
    store = getattr(request.app.state, "par_store", None)
    if store is None:
        return None
    found: Mapping[str, str] | None = await run_in_threadpool(
        store.get, request_uri, client_id, current_time(request)
    )
    return found


def _resume_params(req: AuthorizationRequest) -> dict[str, str]:
    if req.request_uri is not None:
        return {"client_id": req.client.client_id, "request_uri": req.request_uri}
    return {k: v for k, v in req.params.items() if k != LOGIN_AFTER}


def _hint_subject(request: Request, hint: str) -> str | None:
    """The ``sub`` of an ID token we issued (expired ones too, Core §3.1.2.1), else None."""
    keyring = get_runtime(request).keyring
    try:
        header = jwt.get_unverified_header(hint)
        purpose = PURPOSE_FOR_ALG.get(str(header.get("alg")))
        record, key = keyring.public_key(str(header.get("kid")))
        if purpose is None or record.purpose is not purpose:
            return None
        claims = jwt.decode(
            hint,
            key,
            algorithms=[str(header["alg"])],
            options={"verify_exp": False, "verify_aud": False},
            issuer=_flow(request).provider.issuer,
        )
    except (jwt.PyJWTError, KeysError, KeyError, ValueError):
        return None
    sub = claims.get("sub")
    return str(sub) if sub else None


@router.api_route("/authorize", methods=["GET", "POST"])
async def authorize(request: Request) -> Response:
    flow = _flow(request)
    issuer = flow.provider.issuer
    try:
        params = await _params(request)
        req = await validate(
            params,
            lambda cid: _lookup_client(request, cid),
            lambda uri, cid: _pushed(request, uri, cid),
        )
        return await _decide(request, req, params)
    except ErrorPage as exc:
        return _error_page(request, exc)
    except ErrorRedirect as exc:
        log.info("authorization error sent to client", extra={"error": exc.error.error})
        return RedirectResponse(error_url(issuer, exc), status_code=303)


async def _decide(
    request: Request, req: AuthorizationRequest, params: Mapping[str, str]
) -> Response:
    flow, now = _flow(request), current_time(request)
    citizen = await current_citizen(request)
    fresh_after = params.get(LOGIN_AFTER, "")
    fresh = (
        citizen is not None
        and fresh_after.isdigit()
        and citizen.auth_time.timestamp() >= int(fresh_after)
    )
    needs_login = citizen is None
    if citizen is not None and not fresh:
        if "login" in req.prompt:
            needs_login = True
        if req.max_age is not None and (now - citizen.auth_time).total_seconds() > req.max_age:
            needs_login = True
    if citizen is not None and req.id_token_hint:
        hinted = _hint_subject(request, req.id_token_hint)
        if hinted is None:
            raise ErrorRedirect(
                req.redirect_uri, req.state, InvalidRequest("id_token_hint is not valid")
            )
        if hinted != flow.subject(req.client, citizen.account_id):
            needs_login = True
    if needs_login:
        if "none" in req.prompt:
            raise ErrorRedirect(
                req.redirect_uri, req.state, LoginRequired("the citizen must sign in")
            )
        resume = {**_resume_params(req), LOGIN_AFTER: str(int(now.timestamp()))}
        query = {"return_to": "/authorize?" + urlencode(resume)}
        if citizen is not None:
            query["prompt"] = "login"
        return RedirectResponse("/auth/franceconnect/start?" + urlencode(query), status_code=303)
    assert citizen is not None
    entitled = requested_claims(req.scope, req.claims) & req.client.claims
    consent = await run_in_threadpool(flow.grants.consent, citizen.account_id, req.client.client_id)
    scope_needed = req.scope - {"openid"}
    covered = consent is not None and scope_needed <= consent[0] and entitled <= consent[1]
    if "consent" in req.prompt or not covered:
        if "none" in req.prompt:
            raise ErrorRedirect(req.redirect_uri, req.state, ConsentRequired("consent is needed"))
        return _consent_page(request, req, citizen.sid, entitled)
    return await _issue(request, req, citizen, entitled)


async def _issue(
    request: Request,
    req: AuthorizationRequest,
    citizen: signin.CitizenSession,
    claims: frozenset[str],
) -> Response:
    flow = _flow(request)
    await remember_subject(request, req.client, citizen.account_id)
    code = await flow.issue_code(
        req,
        Citizen(
            account_id=citizen.account_id,
            sid=citizen.sid,
            auth_time=citizen.auth_time,
            acr=citizen.acr,
            amr=citizen.amr,
        ),
        claims,
    )
    if req.request_uri is not None and getattr(request.app.state, "par_store", None) is not None:
        await run_in_threadpool(request.app.state.par_store.use, req.request_uri)
    log.info("authorization code issued")
    url = response_url(
        req.redirect_uri, {"code": code, "state": req.state, "iss": flow.provider.issuer}
    )
    return RedirectResponse(url, status_code=303)


def _consent_page(
    request: Request, req: AuthorizationRequest, sid: str, claims: frozenset[str]
) -> HTMLResponse:
    keyring = get_runtime(request).keyring
    blob, kid = seal(keyring, {"params": _resume_params(req)}, sid.encode())
    ordered = [c for c in SUPPORTED_CLAIMS if c in claims]
    return render_page(
        request,
        "consent.html",
        client_name=req.client.client_name or req.client.client_id,
        claims=ordered,
        scopes=sorted(req.scope - {"openid"}),
        sealed=blob.hex(),
        sealed_kid=kid,
    )


@router.post("/authorize/consent")
async def consent(request: Request) -> Response:
    flow, now = _flow(request), current_time(request)
    form = await request.form()
    citizen = await current_citizen(request)
    texts = TEXTS[language(request)]
    if citizen is None:
        return message_page(request, texts["error_title"], texts["error_expired"], 400)
    try:
        data = unseal(
            get_runtime(request).keyring,
            bytes.fromhex(str(form.get("sealed", ""))),
            str(form.get("sealed_kid", "")),
            citizen.sid.encode(),
        )
        req = await validate(
            data["params"],
            lambda cid: _lookup_client(request, cid),
            lambda uri, cid: _pushed(request, uri, cid),
        )
    except (SignInExpired, ValueError):
        return message_page(request, texts["error_title"], texts["error_expired"], 400)
    except ErrorPage as exc:
        return _error_page(request, exc)
    except ErrorRedirect as exc:
        return RedirectResponse(error_url(flow.provider.issuer, exc), status_code=303)
    if form.get("decision") != "allow":
        denied = ErrorRedirect(req.redirect_uri, req.state, AccessDenied("the citizen refused"))
        return RedirectResponse(error_url(flow.provider.issuer, denied), status_code=303)
    entitled = requested_claims(req.scope, req.claims) & req.client.claims
    await run_in_threadpool(
        flow.grants.save_consent,
        citizen.account_id,
        req.client.client_id,
        req.scope - {"openid"},
        entitled,
        now,
    )
    return await _issue(request, req, citizen, entitled)


def _access_token(request: Request, form: Mapping[str, Any] | None) -> tuple[str, str]:
    """``(scheme, token)``: RFC 6750 §2.1 (header) or §2.2 (form body), or RFC 9449 §7.1
    (``Authorization: DPoP``); exactly one method."""
    header = request.headers.get("authorization")
    body_token = form.get("access_token") if form else None
    if header and body_token:
        raise InvalidRequest("use one method to send the access token")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "dpop") or not token.strip():
            raise InvalidToken("a Bearer or DPoP access token is required")
        return scheme.lower(), token.strip()
    if isinstance(body_token, str) and body_token:
        return "bearer", body_token
    raise InvalidToken("a Bearer or DPoP access token is required")


async def _check_binding(
    request: Request, scheme: str, token: str, claims: Any, client: Client | None
) -> None:
    """RFC 9449 §7 at /userinfo; a FAPI 2.0 client's proofs are PS256 or ES256."""
    verifier = _flow(request).provider.token_endpoint.dpop
    assert verifier is not None
    await verifier.check_bound(
        scheme=scheme,
        token=token,
        bound=(claims.extra.get("cnf") or {}).get("jkt"),
        proof=request.headers.get("dpop"),
        method=request.method,
        url=_flow(request).provider.issuer + "/userinfo",
        algs=client.allowed_algs(DPOP_ALGS) if client is not None else DPOP_ALGS,
    )


#: Client authentication parameters: not part of the pushed authorization request.
_CLIENT_AUTH_PARAMS = frozenset({"client_secret", "client_assertion", "client_assertion_type"})


async def _par_dpop_jkt(request: Request, client: Client, pushed: dict[str, str]) -> None:
    """RFC 9449 §10.1, for FAPI 2.0 clients (FAPI 2.0 Security Profile §5.3.2.2 item 13): a DPoP
    proof sent with the pushed request binds the code to its key, as ``dpop_jkt`` would; both
    must then name the same key (``invalid_request`` otherwise)."""
    proof = request.headers.get("dpop")
    verifier = _flow(request).provider.token_endpoint.dpop
    if not client.fapi2 or proof is None or verifier is None:
        return
    url = _flow(request).provider.issuer + "/par"
    jkt = await verifier.check(proof, method="POST", url=url, algs=client.allowed_algs(DPOP_ALGS))
    if pushed.setdefault("dpop_jkt", jkt) != jkt:
        raise InvalidRequest("dpop_jkt is not the thumbprint of the DPoP proof's key")


@router.post("/par")
async def pushed_authorization_request(request: Request) -> JSONResponse:
    """RFC 9126 §2: an authenticated client pushes its authorization request."""
    flow = _flow(request)
    body = await read_body(request)
    params = form_parameters(body, request.headers.get("content-type"))
    credentials = read_client_credentials(params, request.headers.get("authorization"))
    client = await flow.provider.authenticator.authenticate(credentials)
    pushed = {k: v for k, v in params.items() if k not in _CLIENT_AUTH_PARAMS}
    if "request_uri" in pushed:
        raise InvalidRequest("request_uri cannot be pushed (RFC 9126 §2.1)")
    if pushed.get("client_id", client.client_id) != client.client_id:
        raise InvalidRequest("client_id does not match the authenticated client")
    pushed["client_id"] = client.client_id
    await _par_dpop_jkt(request, client, pushed)
    try:
        await validate(pushed, lambda cid: _lookup_client(request, cid), _no_pushed, at_par=True)
    except ErrorPage as exc:
        raise InvalidRequest(exc.description) from None
    except ErrorRedirect as exc:
        raise exc.error from None
    store: PushedRequests = request.app.state.par_store
    uri = await run_in_threadpool(store.push, client.client_id, pushed, current_time(request))
    return JSONResponse(
        {"request_uri": uri, "expires_in": int(PAR_TTL.total_seconds())},
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


async def _no_pushed(_uri: str, _client_id: str) -> Mapping[str, str] | None:
    return None


@router.api_route("/userinfo", methods=["GET", "POST"])
async def userinfo(request: Request) -> Response:
    """OpenID Connect Core §5.3: the released claims of the token's grant."""
    form = None
    if request.method == "POST" and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        form = await request.form()
    scheme, token = _access_token(request, form)
    flow = _flow(request)
    claims, grant = await run_in_threadpool(flow.access_token_grant, token)
    client = await _lookup_client(request, claims.client_id)
    await _check_binding(request, scheme, token, claims, client)
    if "openid" not in claims.scope:
        raise InvalidToken("the access token was not issued for openid")
    runtime = get_runtime(request)
    source = (
        await run_in_threadpool(
            claims_of_session, runtime.identity_engine, runtime.keyring, grant.sid
        )
        or {}
    )
    body = {"sub": claims.sub, **release(source, grant.claims, current_time(request).date())}
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if client is not None and client.userinfo_signed_response_alg:
        if client.fapi2 and client.userinfo_signed_response_alg not in FAPI2_ALGS:
            # Registration refuses this (FAPI 2.0 §5.4.1); a record that bypassed it gets none.
            raise ServerError("the client's registration does not fit its security profile")
        # OpenID Connect Core §5.3.2: a signed response carries iss and aud.
        signed = sign(
            runtime.keyring,
            client.userinfo_signed_response_alg,
            {**body, "iss": flow.provider.issuer, "aud": client.client_id},
        )
        return Response(signed, media_type="application/jwt", headers=headers)
    return JSONResponse(body, headers=headers)


@router.get("/logout")
async def end_session(request: Request) -> Response:
    """OpenID Connect RP-Initiated Logout 1.0 §2-§3: end our session (and FranceConnect's),
    then go back to the client's registered ``post_logout_redirect_uri`` with ``state``."""
    params = request.query_params
    texts = TEXTS[language(request)]
    hint = params.get("id_token_hint")
    target = params.get("post_logout_redirect_uri")
    client_id = params.get("client_id")
    if hint:
        unverified: dict[str, Any] = {}
        if _hint_subject(request, hint) is None:
            return message_page(request, texts["logout"], "id_token_hint is not valid", 400)
        unverified = jwt.decode(hint, options={"verify_signature": False})
        audience = unverified.get("aud")
        hinted_client = audience[0] if isinstance(audience, list) else audience
        if client_id and client_id != hinted_client:
            return message_page(request, texts["logout"], "client_id does not match the hint", 400)
        client_id = hinted_client
    back: str | None = None
    if target:
        client = await _lookup_client(request, client_id) if client_id else None
        if client is None or target not in client.post_logout_redirect_uris:
            return message_page(
                request, texts["logout"], "post_logout_redirect_uri is not registered", 400
            )
        back = response_url(target, {"state": params.get("state")})
    citizen = await current_citizen(request)
    if citizen is not None and not hint:
        return render_page(request, "logout_confirm.html", back=back or "")
    return await _logout_and_return(request, back)


@router.post("/logout")
async def end_session_confirmed(request: Request) -> Response:
    form = await request.form()
    back = str(form.get("back") or "") or None
    # The URL was validated when the confirmation page was built; only accept our own pages'
    # posts (Origin), so the value cannot come from elsewhere.
    if not same_origin(request):
        return message_page(request, "403", "Cross-site sign-out refused.", 403)
    return await _logout_and_return(request, back)


async def _logout_and_return(request: Request, back: str | None) -> Response:
    return await sign_out(request, next_url=back)


@router.get("/account/consents", response_class=HTMLResponse)
async def consents(request: Request) -> Response:
    """The relying parties the citizen has consented to, each with a button to withdraw."""
    citizen = await current_citizen(request)
    if citizen is None:
        return RedirectResponse("/", status_code=303)
    flow = _flow(request)
    rows = await run_in_threadpool(flow.grants.consents_of, citizen.account_id)
    listed = []
    for client_id, scope, claims, granted_at in rows:
        client = await _lookup_client(request, client_id)
        name = (client.client_name if client else "") or client_id
        listed.append(
            {
                "client_id": client_id,
                "name": name,
                "claims": sorted(claims),
                "scope": sorted(scope),
                "at": granted_at,
            }
        )
    return render_page(request, "consents.html", consents=listed)


@router.post("/account/consents/revoke")
async def revoke_consent(request: Request) -> Response:
    """Withdraw a consent; the client's refresh tokens and live access tokens are revoked."""
    if not same_origin(request):
        return message_page(request, "403", "Cross-site request refused.", 403)
    citizen = await current_citizen(request)
    if citizen is None:
        return RedirectResponse("/", status_code=303)
    form = await request.form()
    client_id = str(form.get("client_id", ""))
    flow, now = _flow(request), current_time(request)
    issued = await run_in_threadpool(flow.grants.revoke_consent, citizen.account_id, client_id, now)
    for jti, expires_at in issued:
        await run_in_threadpool(flow.provider.revocations.revoke, jti, client_id, expires_at, now)
    log.info("consent withdrawn")
    return RedirectResponse("/account/consents", status_code=303)
