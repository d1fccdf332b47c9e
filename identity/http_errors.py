"""The one place where errors become HTTP responses.

- OAuth/OpenID errors keep their wire codes (``{"error": ..., "error_description": ...}``), with
  ``Cache-Control: no-store`` (RFC 6749 §5.1) and ``WWW-Authenticate`` where RFC 6750 asks.
- The partner and citizen APIs under ``/v1/`` answer RFC 7807 problem details with a stable type.
- Anything unexpected is a 500 with the request id only: no stack trace, no message.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from identity.observability import request_id_var
from ledger.api import (
    BatchTooLarge,
    BodyTooLarge,
    EntryNotFound,
    InsufficientScope,
    InvalidAct,
    InvalidParameter,
    Unauthenticated,
    UnknownSubject,
)
from ledger.catalogue import (
    ActNotAllowed,
    ActOutsideValidity,
    ActTypeUnknown,
    CapExceeded,
    CatalogueError,
)
from ledger.errors import (
    IdempotencyConflict,
    InsufficientBalance,
    LedgerError,
    LedgerStoreError,
    ProofError,
    TileError,
)
from ledger.mint import (
    AmountMismatch,
    CoinAlreadySpent,
    DenominationExpired,
    DenominationsUnavailable,
    InvalidCoin,
    InvalidPermission,
    MalformedCoinRequest,
    RequestConflict,
    UnknownDenomination,
    WithdrawalLimit,
)
from oidc.errors import InvalidClient, InvalidRequest, InvalidToken, OAuthError

log = logging.getLogger("nicecard.errors")

PROBLEM_JSON = "application/problem+json"

#: Ledger errors: HTTP status and the stable problem type slug (``/problems/<slug>``).
LEDGER_PROBLEMS: Mapping[type[LedgerError], tuple[int, str]] = {
    ProofError: (400, "invalid-proof"),
    Unauthenticated: (401, "invalid-token"),
    InsufficientScope: (403, "insufficient-scope"),
    InvalidAct: (422, "invalid-act"),
    BatchTooLarge: (413, "batch-too-large"),
    BodyTooLarge: (413, "request-too-large"),
    UnknownSubject: (422, "unknown-subject"),
    EntryNotFound: (404, "entry-not-found"),
    InvalidParameter: (400, "invalid-parameter"),
    ActTypeUnknown: (422, "act-type-unknown"),
    ActNotAllowed: (403, "act-not-allowed"),
    ActOutsideValidity: (422, "act-outside-validity"),
    CapExceeded: (409, "cap-exceeded"),
    CatalogueError: (503, "catalogue-unavailable"),
    IdempotencyConflict: (409, "idempotency-conflict"),
    TileError: (404, "tile-not-found"),
    InsufficientBalance: (409, "insufficient-points"),
    MalformedCoinRequest: (400, "malformed-request"),
    UnknownDenomination: (422, "unknown-denomination"),
    DenominationExpired: (422, "denomination-expired"),
    InvalidCoin: (422, "invalid-coin"),
    InvalidPermission: (422, "invalid-permission"),
    AmountMismatch: (422, "amount-mismatch"),
    CoinAlreadySpent: (409, "coin-already-spent"),
    RequestConflict: (409, "request-conflict"),
    WithdrawalLimit: (422, "withdrawal-limit"),
    DenominationsUnavailable: (503, "denominations-unavailable"),
    LedgerStoreError: (503, "ledger-unavailable"),
    LedgerError: (400, "ledger-error"),
}


def problem(
    request: Request,
    status: int,
    slug: str,
    title: str,
    *,
    detail: str | None = None,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """An RFC 7807 problem details response whose ``type`` is stable across releases."""
    issuer = request.app.state.settings.issuer
    body: dict[str, Any] = {"type": f"{issuer}/problems/{slug}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    request_id = request_id_var.get()
    if request_id:
        body["instance"] = f"urn:nicecard:request:{request_id}"
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def oauth_response(exc: OAuthError, scheme: str = "Bearer") -> JSONResponse:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if isinstance(exc, InvalidToken):
        headers["WWW-Authenticate"] = f'{scheme} error="{exc.error}"'
    elif isinstance(exc, InvalidClient):
        headers["WWW-Authenticate"] = 'Basic realm="nicecard"'
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=headers)


def _is_api(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


def ledger_problem(request: Request, exc: LedgerError) -> JSONResponse:
    for cls in type(exc).__mro__:
        if cls in LEDGER_PROBLEMS:
            status, slug = LEDGER_PROBLEMS[cls]
            title = (type(exc).__doc__ or slug).strip().splitlines()[0]
            extra = {"coins": exc.coins} if isinstance(exc, CoinAlreadySpent) else None
            return problem(request, status, slug, title, detail=str(exc), extra=extra)
    return problem(request, 400, "ledger-error", "Ledger error", detail=str(exc))


def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = sorted(
        {".".join(str(p) for p in err.get("loc", ()) if p != "body") for err in exc.errors()}
    )
    if _is_api(request):
        return problem(
            request,
            422,
            "invalid-request",
            "The request is not valid",
            detail="invalid or missing: " + ", ".join(fields),
            extra={"invalid_params": [{"name": f} for f in fields]},
        )
    return oauth_response(InvalidRequest("invalid or missing: " + ", ".join(fields)))


def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if _is_api(request):
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        return problem(request, exc.status_code, slug, str(exc.detail), headers=exc.headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    if _is_api(request):
        return problem(request, 500, "internal-error", "Internal error")
    return JSONResponse(
        {"error": "server_error", "request_id": request_id_var.get()},
        status_code=500,
        headers={"Cache-Control": "no-store"},
    )


def install(app: FastAPI) -> None:
    async def on_oauth(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OAuthError)
        return oauth_response(exc)

    async def on_ledger(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LedgerError)
        return ledger_problem(request, exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return _validation(request, exc)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return _http(request, exc)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _unexpected(request, exc)

    async def on_disconnect(_request: Request, _exc: Exception) -> Response:
        # The client went away while sending its body: nothing to answer, nothing failed.
        # Handled here, not by the Exception handler, which Starlette's ServerErrorMiddleware
        # re-raises after answering, so that the server logs an error for every such request.
        log.info("client disconnected")
        return Response(status_code=400)

    app.add_exception_handler(OAuthError, on_oauth)
    app.add_exception_handler(LedgerError, on_ledger)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
