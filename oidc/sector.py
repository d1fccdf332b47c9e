"""Sector identifier documents (OpenID Connect Core 1.0 §8.1; OpenID Connect Dynamic Client
Registration 1.0 §2 ``sector_identifier_uri`` and §5).

A client whose redirect URIs span several hosts, or several clients of one organisation that
want to share pseudonyms, register a ``sector_identifier_uri``: an https URL whose document is a
JSON array of redirect URIs. When the client is registered, the OP fetches the document and
checks that it lists every redirect URI the client registers; the pairwise sector is then that
URL's host (:func:`oidc.pairwise.sector_of`).

The fetch (:class:`SectorFetcher`) is https only, follows no redirect, gives up after
:data:`FETCH_TIMEOUT_SECONDS` in all and past :data:`MAX_DOCUMENT_BYTES`. It is synchronous:
every registration path already runs off the event loop (the CLI, the clients file in a worker
thread at start, RFC 7591 registration in a worker thread). Certificates are checked against
the default trust store unless another TLS context is given (a private CA, or a test's).

Every failure raises :class:`oidc.clients.InvalidClientMetadata` naming
``sector_identifier_uri``; the description never quotes the fetched document.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import httpx

from oidc.clients import Client, InvalidClientMetadata

MAX_DOCUMENT_BYTES = 65536
FETCH_TIMEOUT_SECONDS = 5.0
#: At most this many redirect URIs in a document (a sector of a few dozen clients fits).
MAX_URIS = 1000

SectorFetch = Callable[[str], Sequence[str]]
"""``sector_identifier_uri`` → the redirect URIs its document lists, or
:class:`InvalidClientMetadata`."""


def _refused(reason: str) -> InvalidClientMetadata:
    return InvalidClientMetadata(f"sector_identifier_uri: {reason}")


class SectorFetcher:
    """GET a sector identifier document and return the redirect URIs it lists."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | None = None,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``verify``: the TLS context that checks the server's certificate; None for the
        default trust store (httpx's: ``SSL_CERT_FILE``/``SSL_CERT_DIR`` if set, else certifi's
        Mozilla bundle). There is no way to turn the check off."""
        self._verify: ssl.SSLContext | bool = verify if verify is not None else True
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._monotonic = monotonic

    def __call__(self, uri: str) -> tuple[str, ...]:
        parts = urlsplit(uri)
        if parts.scheme != "https" or not parts.hostname:
            raise _refused("must be an https URL")
        return _redirect_uris(self._get(uri))

    def _get(self, uri: str) -> bytes:
        deadline = self._monotonic() + self._timeout
        body = bytearray()
        try:
            with (
                httpx.Client(
                    verify=self._verify, timeout=self._timeout, follow_redirects=False
                ) as http,
                http.stream("GET", uri, headers={"Accept": "application/json"}) as response,
            ):
                if response.is_redirect:
                    raise _refused(f"answered HTTP {response.status_code}: redirects are refused")
                if response.status_code != 200:
                    raise _refused(f"answered HTTP {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self._max_bytes:
                    raise _refused(f"the document is larger than {self._max_bytes} bytes")
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise _refused(f"the document is larger than {self._max_bytes} bytes")
                    if self._monotonic() > deadline:
                        raise _refused(f"the document took more than {self._timeout:g} s")
        except httpx.HTTPError as exc:
            raise _refused(f"cannot be fetched ({type(exc).__name__})") from None
        return bytes(body)


def _redirect_uris(body: bytes) -> tuple[str, ...]:
    """The document as a tuple of absolute URIs (Registration §5: a JSON array of
    ``redirect_uri`` values)."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _refused("the document is not JSON") from None
    if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
        raise _refused("the document must be a JSON array of URIs")
    if len(data) > MAX_URIS:
        raise _refused(f"the document lists more than {MAX_URIS} URIs")
    for item in data:
        parts = urlsplit(item)
        if not parts.scheme or not parts.netloc:
            raise _refused("the document must be a JSON array of absolute URIs")
    return tuple(data)


def verify_sector_identifier(client: Client, fetch: SectorFetch) -> None:
    """Registration §5: the document at the client's ``sector_identifier_uri`` must list every
    one of its redirect URIs (compared as exact strings, as redirect URIs are at /authorize).
    A client without a ``sector_identifier_uri`` passes (nothing to fetch)."""
    uri = client.sector_identifier_uri
    if uri is None:
        return
    listed = set(fetch(uri))
    for redirect_uri in client.redirect_uris:
        if redirect_uri not in listed:
            raise _refused(f"the document does not list the redirect URI {redirect_uri}")
