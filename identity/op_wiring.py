"""Mounting the citizen-facing OpenID Provider (code flow, PAR, userinfo, logout) on top of the
machine-to-machine provider that :func:`identity.oidc_wiring.mount_oidc` builds."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import date
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from identity.demo_rps import register_demo_clients
from identity.demo_rps import router as demo_router
from identity.op_web import claims_of_session, released_claims
from identity.op_web import router as op_router
from identity.registration_web import router as registration_router
from oidc.backchannel import logout_token, notify
from oidc.claims import SUPPORTED_CLAIMS
from oidc.clients import ID_TOKEN_ALGS
from oidc.code_flow import CodeFlow
from oidc.dpop import ALGS as DPOP_ALGS
from oidc.grants import GrantStore
from oidc.par import PushedRequests


def _metadata(issuer: str) -> dict[str, Any]:
    """Discovery members of the code flow (OpenID Connect Discovery §3; RFC 9126 §5; RFC 9207)."""
    return {
        "authorization_endpoint": issuer + "/authorize",
        "userinfo_endpoint": issuer + "/userinfo",
        "end_session_endpoint": issuer + "/logout",
        "pushed_authorization_request_endpoint": issuer + "/par",
        "require_pushed_authorization_requests": False,
        "authorization_response_iss_parameter_supported": True,
        "code_challenge_methods_supported": ["S256"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": list(ID_TOKEN_ALGS),
        "userinfo_signing_alg_values_supported": list(ID_TOKEN_ALGS),
        "dpop_signing_alg_values_supported": list(DPOP_ALGS),
        "response_modes_supported": ["query"],
        "claims_supported": [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "acr",
            "amr",
            "sid",
            *SUPPORTED_CLAIMS,
        ],
        "claims_parameter_supported": True,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": True,
        "ui_locales_supported": ["fr", "en"],
        "acr_values_supported": ["eidas1"],
        "prompt_values_supported": ["none", "login", "consent"],
        "frontchannel_logout_supported": False,
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
    }


def _backchannel_logout(app: FastAPI) -> Any:
    """Send logout tokens to the relying parties that got tokens in the ended session."""

    async def on_session_end(citizen: Any) -> None:
        flow: CodeFlow = app.state.code_flow
        now = app.state.clock()
        grants = await run_in_threadpool(flow.grants.grants_of_session, citizen.sid)
        deliveries = []
        for client_id in sorted({g.client_id for g in grants}):
            client = await flow.provider.directory.get(client_id)
            if client is None or not client.backchannel_logout_uri:
                continue
            token = logout_token(
                app.state.runtime.keyring,
                client,
                issuer=flow.provider.issuer,
                sub=flow.subject(client, citizen.account_id),
                sid=citizen.sid,
                now=now,
            )
            deliveries.append((client, token))
        if deliveries:
            async with httpx.AsyncClient() as http:
                await notify(http, deliveries)

    return on_session_end


def mount_code_flow(app: FastAPI) -> None:
    app.include_router(op_router)
    if app.state.settings.registration_token is not None:
        app.include_router(registration_router)
    if app.state.settings.is_development:
        app.include_router(demo_router)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            runtime = app_.state.runtime
            provider = app_.state.oidc
            clock = app_.state.clock
            engine, keyring = runtime.identity_engine, runtime.keyring

            def today() -> date:
                now: date = clock().date()
                return now

            app_.state.code_flow = CodeFlow(
                provider,
                GrantStore(engine),
                keyring,
                claims_of_session=lambda sid: claims_of_session(engine, keyring, sid),
                release=released_claims(today),
                clock=clock,
            )
            app_.state.par_store = PushedRequests(engine)
            app_.state.on_session_end = _backchannel_logout(app_)
            settings = app_.state.settings
            if settings.is_development:
                app_.state.demo_sessions = {}
                app_.state.demo_secrets = await run_in_threadpool(
                    register_demo_clients, provider.registry, settings.issuer, settings.data_dir
                )
            features = provider.features
            registration = (
                {"registration_endpoint": provider.issuer + "/register"}
                if settings.registration_token is not None
                else {}
            )
            provider.features = dataclasses.replace(
                features,
                grant_types=(*features.grant_types, "authorization_code", "refresh_token"),
                response_types=("code",),
                scopes=(
                    "openid",
                    "offline_access",
                    "profile",
                    "email",
                    "birth",
                    "age",
                    "points",
                    "points:redeem",
                    "acts:write",
                    "deposits:write",
                    "audit",
                ),
                extra={**features.extra, **_metadata(provider.issuer), **registration},
            )
            yield state

    app.router.lifespan_context = lifespan
