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

The fetch is no way into the OP's own network (server-side request forgery): the host is
resolved once, every address that is not globally routable (:func:`is_public_address`:
loopback, private, link-local, shared, multicast, reserved...) is dropped, and the request is
sent to one of the remaining addresses themselves, never to the name again, so a DNS answer that
changes between the check and the connection (DNS rebinding) cannot steer it inside. The
original host still goes in the ``Host`` header, in TLS SNI and in the certificate check. A
host with no public address is refused. Development and tests whose sector host is local pass
``allow_private_addresses=True``.

Every failure raises :class:`oidc.clients.InvalidClientMetadata` naming
``sector_identifier_uri``; the description never quotes the fetched document.
"""

from __future__ import annotations

import ipaddress
import json
import socket
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

Resolve = Callable[[str, int], Sequence[str]]
"""(host, port) → the host's addresses, most preferred first; ``OSError`` if it has none."""

#: RFC 6052 well-known NAT64 prefix: the last 32 bits are the IPv4 address reached
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _refused(reason: str) -> InvalidClientMetadata:
    return InvalidClientMetadata(f"sector_identifier_uri: {reason}")


def resolve_with_getaddrinfo(host: str, port: int) -> list[str]:
    """The host's TCP addresses in ``getaddrinfo`` order (RFC 6724 preference), once each."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in found))


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a globally routable unicast address the OP may connect to.

    Refused: anything :attr:`ipaddress.IPv4Address.is_global` refuses (RFC 1918 and RFC 4193
    private, loopback, link-local, 100.64.0.0/10 shared, documentation, benchmarking...) and
    also multicast, reserved, unspecified and IPv6 site-local addresses, scoped IPv6 addresses,
    and Teredo. An IPv6 address carrying an IPv4 one (IPv4-mapped, NAT64 ``64:ff9b::/96``,
    6to4) is judged by that IPv4 address too. Not an IP address: refused."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(str(ip.ipv4_mapped))
        if ip in _NAT64:
            return is_public_address(str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)))
        if ip.sixtofour is not None and not is_public_address(str(ip.sixtofour)):
            return False
        if ip.teredo is not None or ip.is_site_local or ip.scope_id is not None:
            return False
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_private
    )


class SectorFetcher:
    """GET a sector identifier document and return the redirect URIs it lists."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | None = None,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        monotonic: Callable[[], float] = time.monotonic,
        allow_private_addresses: bool = False,
        resolve: Resolve = resolve_with_getaddrinfo,
    ) -> None:
        """``verify``: the TLS context that checks the server's certificate; None for the
        default trust store (httpx's: ``SSL_CERT_FILE``/``SSL_CERT_DIR`` if set, else certifi's
        Mozilla bundle). There is no way to turn the check off.

        ``allow_private_addresses``: also fetch from hosts that are not globally routable
        (development and tests only). ``resolve``: the name resolver (``getaddrinfo``)."""
        # The default trust store as httpx reads it (SSL_CERT_FILE/SSL_CERT_DIR, else certifi),
        # built here because the client itself ignores the environment (no proxies).
        self._verify: ssl.SSLContext = (
            verify if verify is not None else httpx.create_ssl_context(trust_env=True)
        )
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._monotonic = monotonic
        self._allow_private = allow_private_addresses
        self._resolve = resolve

    def __call__(self, uri: str) -> tuple[str, ...]:
        parts = urlsplit(uri)
        if parts.scheme != "https" or not parts.hostname:
            raise _refused("must be an https URL")
        try:
            url = httpx.URL(uri)
        except httpx.InvalidURL:
            raise _refused("must be an https URL") from None
        return _redirect_uris(self._get(url))

    def addresses(self, host: str, port: int) -> tuple[str, ...]:
        """The addresses a fetch from ``host`` may connect to, in the resolver's order: an IP
        literal as it is, else the resolved ones; only public ones unless private addresses
        are allowed. Refused when none is left or the host does not resolve."""
        found = [host] if _is_ip_literal(host) else self._lookup(host, port)
        allowed = tuple(a for a in found if self._allow_private or is_public_address(a))
        if not allowed:
            # Which internal address the name has is no business of the registrant's.
            raise _refused("the host has no public internet address")
        return allowed

    def _lookup(self, host: str, port: int) -> Sequence[str]:
        try:
            found = self._resolve(host, port)
        except (OSError, UnicodeError):
            found = ()
        if not found:
            raise _refused("the host cannot be resolved")
        return found

    def _get(self, url: httpx.URL) -> bytes:
        deadline = self._monotonic() + self._timeout
        host = url.raw_host.decode("ascii")
        addresses = self.addresses(host, url.port or 443)
        failure = "ConnectError"
        for address in addresses:
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                failure = "ConnectTimeout"
                break
            try:
                return self._get_from(url, address, deadline, remaining)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = type(exc).__name__  # the next address may answer
            except httpx.HTTPError as exc:
                raise _refused(f"cannot be fetched ({type(exc).__name__})") from None
        raise _refused(f"cannot be fetched ({failure})")

    def _get_from(self, url: httpx.URL, address: str, deadline: float, timeout: float) -> bytes:
        """GET ``url`` from the server at ``address`` (pinned: no second name lookup), with the
        URL's own host in the Host header, in TLS SNI and in the certificate check."""
        pinned = url.copy_with(host=address)
        extensions = {"sni_hostname": url.raw_host.decode("ascii")}
        headers = {"Accept": "application/json", "Host": url.netloc.decode("ascii")}
        body = bytearray()
        with (
            # trust_env=False: no proxy from the environment, so the request goes to the checked
            # address itself (a proxy's tunnel would also ignore sni_hostname).
            httpx.Client(
                verify=self._verify, timeout=timeout, follow_redirects=False, trust_env=False
            ) as http,
            http.stream("GET", pinned, headers=headers, extensions=extensions) as response,
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
        return bytes(body)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
