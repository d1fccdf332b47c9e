"""The citizen's points, from their browser session: balance, history, and a receipt per entry
(a C2SP tlog-proof file that ``ledger-audit receipt`` checks offline)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from identity.web import current_citizen, render_page
from ledger.api import describe_for_citizen, own_receipt, receipt_response

router = APIRouter(include_in_schema=False)


@router.get("/account/points", response_class=HTMLResponse)
async def points(request: Request) -> Response:
    citizen = await current_citizen(request)
    if citizen is None:
        return RedirectResponse("/", status_code=303)
    store = request.app.state.ledger.store
    balance = await run_in_threadpool(store.balance, citizen.ledger_pseudonym)
    entries = await run_in_threadpool(
        lambda: store.history(citizen.ledger_pseudonym, before=None, limit=50)
    )
    return render_page(
        request,
        "points.html",
        balance=balance,
        entries=[describe_for_citizen(e) for e in entries],
    )


@router.get("/account/receipts/{index}")
async def receipt(request: Request, index: int) -> Response:
    citizen = await current_citizen(request)
    if citizen is None:
        return RedirectResponse("/", status_code=303)
    data = await run_in_threadpool(
        own_receipt, request.app.state.ledger, citizen.ledger_pseudonym, index
    )
    return receipt_response(data, index)
