"""The application over real HTTP: probes, JWKS, error formats, and what the logs may hold."""

from __future__ import annotations

import base64
import json
import logging
import os
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi import APIRouter

from identity import migrate
from identity.app import create_app
from identity.db import create_engine
from identity.observability import JsonFormatter, RequestIdFilter
from identity.settings import Settings
from tests.conftest import serve


@pytest.fixture
def base_url(settings_factory: Callable[..., Settings]) -> Iterator[str]:
    with serve(create_app(settings_factory())) as url:
        yield url


def test_healthz(base_url: str) -> None:
    response = httpx.get(f"{base_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert len(response.headers["x-request-id"]) == 16


def test_readyz_when_everything_is_there(base_url: str) -> None:
    response = httpx.get(f"{base_url}/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {
        "identity_database": "ok",
        "ledger_database": "ok",
        "keys": "ok",
    }


def test_readyz_names_what_is_missing_in_production(
    settings_factory: Callable[..., Settings],
) -> None:
    """Production neither migrates nor creates keys by itself: readiness says so."""
    settings = settings_factory(
        mode="production",
        issuer="https://id.nicecotedazur.example",
        fc_simulator=False,
        fc_issuer="https://oidc.franceconnect.gouv.fr/api/v2",
        fc_client_secret=base64.b64encode(os.urandom(32)).decode(),
        kek=base64.b64encode(os.urandom(32)).decode(),
    )
    with serve(create_app(settings)) as url:
        body = httpx.get(f"{url}/readyz").json()
        assert body["status"] == "not ready"
        assert body["checks"]["identity_database"] == "not migrated"
        assert body["checks"]["keys"].startswith("no active key: oidc-rs256")
        for store, db_url in (
            (migrate.Store.IDENTITY, settings.identity_url),
            (migrate.Store.LEDGER, settings.ledger_url),
        ):
            engine = create_engine(db_url, settings)
            migrate.upgrade(store, engine)
            engine.dispose()
        checks = httpx.get(f"{url}/readyz").json()["checks"]
        assert checks["identity_database"] == "ok"
        assert checks["ledger_database"] == "ok"
        assert httpx.get(f"{url}/docs").status_code == 404  # no API docs in production


def test_jwks_publishes_only_public_members(base_url: str) -> None:
    response = httpx.get(f"{base_url}/jwks")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jwk-set+json")
    keys = response.json()["keys"]
    # Active and next key for each of the three OpenID signing algorithms.
    assert sorted(k["alg"] for k in keys) == ["ES256", "ES256", "PS256", "PS256", "RS256", "RS256"]
    for key in keys:
        assert set(key) <= {"kty", "n", "e", "crv", "x", "y", "kid", "use", "alg"}
        assert key["use"] == "sig"
    assert len({k["kid"] for k in keys}) == 6


def test_unknown_route_and_api_problem_details(base_url: str) -> None:
    assert httpx.get(f"{base_url}/nothing-here").status_code == 404
    response = httpx.get(f"{base_url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/problems/not-found")
    assert body["status"] == 404
    assert body["instance"].startswith("urn:nicecard:request:")


def test_unexpected_error_is_a_clean_500(settings_factory: Callable[..., Settings]) -> None:
    app = create_app(settings_factory())
    router = APIRouter()

    @router.get("/v1/boom")
    def boom() -> None:
        raise RuntimeError("citizen Jean Dupont born 1980-01-01")

    @router.get("/boom")
    def boom_page() -> None:
        raise RuntimeError("citizen Jean Dupont born 1980-01-01")

    app.include_router(router)
    with serve(app) as url:
        for path in ("/v1/boom", "/boom"):
            response = httpx.get(f"{url}{path}")
            assert response.status_code == 500
            assert "Dupont" not in response.text
            assert "Traceback" not in response.text


def test_log_lines_are_json_without_query_strings_or_messages(
    settings_factory: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_factory())
    router = APIRouter()

    @router.get("/v1/fail")
    def fail() -> None:
        raise ValueError("email=jean.dupont@example.org")

    app.include_router(router)
    formatter = JsonFormatter()
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO), serve(app) as url:
        httpx.get(f"{url}/healthz?code=SECRETCODE&state=abcdef")
        httpx.get(f"{url}/v1/fail")
    # Every line the server wrote (the test's own HTTP client logs its URLs: not the server's).
    lines = [formatter.format(r) for r in caplog.records if not r.name.startswith("httpx")]
    text = "\n".join(lines)
    assert "SECRETCODE" not in text
    assert "jean.dupont" not in text
    parsed = [json.loads(line) for line in lines]
    access = [p for p in parsed if p["logger"] == "nicecard.access"]
    assert {p["path"] for p in access} >= {"/healthz", "/v1/fail"}
    assert all(len(p["request_id"]) == 16 for p in access)
    errors = [p for p in parsed if p.get("exc_type") == "ValueError"]
    assert errors
    assert errors[0]["exc_frames"]
