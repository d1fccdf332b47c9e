"""HTML pages of the simulator (Jinja2, autoescaped) and the redirects it sends browsers.

Pages are French with the English alongside, and say on every line that matters that this is a
simulator, not FranceConnect. They carry no script, forbid framing and are never cached.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jinja2
from starlette.responses import HTMLResponse, RedirectResponse

_TEMPLATES = Path(__file__).parent / "templates"

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


class Pages:
    """Renders the templates of ``identity/fcsim/templates``; one environment per simulator."""

    def __init__(self) -> None:
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(_TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def render(self, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self._env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)

    def error(self, title: str, detail: str = "") -> HTMLResponse:
        """FranceConnect's answer to a request it cannot send back anywhere: a 400 page."""
        return self.render("error.html", status_code=400, title=title, detail=detail)


def with_query(uri: str, params: dict[str, str]) -> str:
    """``uri`` with ``params`` added to its query, keeping what it already has (RFC 6749 §3.1.2)."""
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def redirect(uri: str, params: dict[str, str] | None = None) -> RedirectResponse:
    """A 303 to ``uri`` (FranceConnect answers ``/authorize`` with 303), never cached."""
    target = with_query(uri, params) if params else uri
    return RedirectResponse(
        target, status_code=303, headers={"Cache-Control": "no-store", "Pragma": "no-cache"}
    )
