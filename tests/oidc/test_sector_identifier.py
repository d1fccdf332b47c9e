"""``sector_identifier_uri`` (OpenID Connect Core §8.1, Registration §5): the document is fetched
from a real HTTPS server whose certificate comes from a throwaway CA, and checked to list every
redirect URI; clients sharing a sector share pseudonyms. The server is on loopback, which the
fetcher refuses unless told that private addresses are allowed (no SSRF into the OP's network).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from authlib.common.security import generate_token
from pydantic import ValidationError

from identity.settings import Mode, Settings
from oidc.clients import AuthMethod, Client, InvalidClientMetadata
from oidc.pairwise import sector_of
from oidc.sector import (
    MAX_DOCUMENT_BYTES,
    Resolve,
    SectorFetcher,
    is_public_address,
    resolve_with_getaddrinfo,
    verify_sector_identifier,
)
from tests.conftest import _free_port, make_settings
from tests.oidc.browser import Citizen
from tests.oidc.conftest import OAuth2Client, Provider
from tests.oidc.tls import LOOPBACK, TEST_HOST, HttpsServer, Route, TestCA, https_server

A_CB, B_CB = "https://a.example/cb", "https://b.example/cb"
SECTOR_DOC = json.dumps([A_CB, B_CB, "https://c.example/elsewhere"]).encode()
TOKEN = "initial-access-token-5b0e94c1d7f2a3"


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA.create()


@pytest.fixture
def server(ca: TestCA, tmp_path: Path) -> Iterator[HttpsServer]:
    routes = {
        "/sector.json": Route(SECTOR_DOC),
        "/only-a.json": Route(json.dumps([A_CB]).encode()),
        "/not-json": Route(b"<html>hello</html>", content_type="text/html"),
        "/object.json": Route(json.dumps({"redirect_uris": [A_CB, B_CB]}).encode()),
        "/relative.json": Route(json.dumps([A_CB, B_CB, "/cb"]).encode()),
        "/big.json": Route(b"[" + b" " * MAX_DOCUMENT_BYTES + b"]"),
        "/big-unsized.json": Route(b"[" + b" " * MAX_DOCUMENT_BYTES + b"]", length=False),
        "/moved": Route(status=302, headers={"Location": "/sector.json"}),
        "/gone": Route(b"{}", status=404),
    }
    with https_server(ca, tmp_path, routes) as running:
        yield running


def client(*redirect_uris: str, sector: str | None) -> Client:
    return Client(
        client_id="rp",
        token_endpoint_auth_method=AuthMethod.CLIENT_SECRET_BASIC,
        redirect_uris=redirect_uris,
        sector_identifier_uri=sector,
    )


def refusal(fetch: SectorFetcher, uri: str, *redirects: str) -> str:
    with pytest.raises(InvalidClientMetadata) as info:
        verify_sector_identifier(client(*(redirects or (A_CB, B_CB)), sector=uri), fetch)
    assert info.value.error == "invalid_client_metadata"
    assert info.value.description.startswith("sector_identifier_uri: ")
    return info.value.description


def local(
    ca: TestCA | None = None, *, timeout: float = 5.0, resolve: Resolve | None = None
) -> SectorFetcher:
    """A fetcher allowed to reach the loopback test server, trusting ``ca`` if given."""
    return SectorFetcher(
        verify=ca.client_context() if ca is not None else None,
        timeout=timeout,
        allow_private_addresses=True,
        resolve=resolve or resolve_with_getaddrinfo,
    )


class FakeDNS:
    """A resolver answering from a table, counting lookups; unknown names fail like DNS."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> Sequence[str]:
        self.lookups.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.table[host]


def test_a_document_listing_every_redirect_uri(ca: TestCA, server: HttpsServer) -> None:
    fetch = local(ca)
    uri = server.url("/sector.json")
    assert fetch(uri) == (A_CB, B_CB, "https://c.example/elsewhere")
    rp = client(A_CB, B_CB, sector=uri)
    verify_sector_identifier(rp, fetch)  # no error
    assert sector_of(rp) == "127.0.0.1"  # the document's host, not a redirect URI's


def test_proxies_from_the_environment_are_not_used(
    ca: TestCA, server: HttpsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request goes to the address that was checked, not through a proxy (port 9: none)."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    assert local(ca)(server.url("/sector.json")) == (A_CB, B_CB, "https://c.example/elsewhere")


def test_refusals(ca: TestCA, server: HttpsServer) -> None:
    fetch = local(ca)
    assert B_CB in refusal(fetch, server.url("/only-a.json"))
    assert "not JSON" in refusal(fetch, server.url("/not-json"))
    assert "JSON array" in refusal(fetch, server.url("/object.json"))
    assert "absolute" in refusal(fetch, server.url("/relative.json"))
    assert "larger than" in refusal(fetch, server.url("/big.json"))
    assert "larger than" in refusal(fetch, server.url("/big-unsized.json"))
    assert "redirects are refused" in refusal(fetch, server.url("/moved"))
    assert "HTTP 404" in refusal(fetch, server.url("/gone"))
    assert "/sector.json" not in server.hits  # the redirect was not followed


def test_plain_http_is_refused_without_a_request(ca: TestCA, server: HttpsServer) -> None:
    fetch = local(ca)
    plain = server.url("/sector.json").replace("https://", "http://")
    assert "https" in refusal(fetch, plain)
    assert server.hits == []


def test_unreachable(ca: TestCA) -> None:
    fetch = local(ca, timeout=2.0)
    reason = refusal(fetch, f"https://127.0.0.1:{_free_port()}/sector.json")
    assert "cannot be fetched (ConnectError)" in reason


def test_the_default_trust_store_does_not_trust_the_test_ca(server: HttpsServer) -> None:
    reason = refusal(local(), server.url("/sector.json"))
    assert "cannot be fetched" in reason
    assert server.hits == []  # the TLS handshake failed before any request


# -- no fetch into the OP's own network (SSRF) --------------------------------------------------


def test_loopback_hosts_are_refused_without_a_request(ca: TestCA, server: HttpsServer) -> None:
    fetch = SectorFetcher(verify=ca.client_context())  # the default: public addresses only
    by_name = server.url("/sector.json").replace(LOOPBACK, "localhost")
    for uri in (server.url("/sector.json"), by_name):
        assert "no public internet address" in refusal(fetch, uri)
    assert server.hits == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("10.0.0.1", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("100.64.0.1", False),  # carrier-grade NAT
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("192.0.2.1", False),  # documentation
        ("::", False),
        ("::1", False),
        ("fe80::1", False),
        ("fe80::1%1", False),
        ("fec0::1", False),  # site-local
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2002:7f00:1::1", False),  # 6to4 of 127.0.0.1
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
        ("2001:db8::1", False),  # documentation
        ("intranet", False),  # not an address
        ("8.8.8.8", True),
        ("1.1.1.1", True),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::808:808", True),  # NAT64 of 8.8.8.8
        ("2001:4860:4860::8888", True),
    ],
)
def test_address_check(address: str, public: bool) -> None:
    assert is_public_address(address) is public


def test_a_name_with_mixed_addresses_keeps_only_public_ones() -> None:
    dns = FakeDNS({"mixed.test": ["10.0.0.1", "8.8.8.8", "::1", "2001:4860:4860::8888"]})
    fetch = SectorFetcher(resolve=dns)
    assert fetch.addresses("mixed.test", 443) == ("8.8.8.8", "2001:4860:4860::8888")
    assert dns.lookups == ["mixed.test"]
    allowed = SectorFetcher(resolve=dns, allow_private_addresses=True)
    assert allowed.addresses("mixed.test", 443) == (
        "10.0.0.1",
        "8.8.8.8",
        "::1",
        dns.table["mixed.test"][3],
    )


def test_a_name_with_only_internal_addresses_is_refused_without_naming_them(
    ca: TestCA, server: HttpsServer
) -> None:
    dns = FakeDNS({TEST_HOST: ["10.1.2.3", LOOPBACK, "fd00::7"]})
    uri = server.url("/sector.json").replace(LOOPBACK, TEST_HOST)
    reason = refusal(SectorFetcher(verify=ca.client_context(), resolve=dns), uri)
    assert reason == "sector_identifier_uri: the host has no public internet address"
    assert server.hits == []


def test_a_name_that_does_not_resolve(ca: TestCA) -> None:
    fetch = SectorFetcher(verify=ca.client_context(), resolve=FakeDNS({}))
    reason = refusal(fetch, "https://nowhere.test/sector.json")
    assert reason == "sector_identifier_uri: the host cannot be resolved"
    empty = SectorFetcher(resolve=FakeDNS({"empty.test": []}))
    assert "cannot be resolved" in refusal(empty, "https://empty.test/sector.json")


def test_the_checked_address_is_the_one_connected_to(ca: TestCA, server: HttpsServer) -> None:
    """One lookup, then a connection to its answer: no second lookup a rebinding DNS server
    could answer differently. The name still goes in Host, SNI and the certificate check."""
    dns = FakeDNS({TEST_HOST: [LOOPBACK]})  # no real DNS knows this name
    uri = server.url("/sector.json").replace(LOOPBACK, TEST_HOST)
    assert local(ca, resolve=dns)(uri) == (A_CB, B_CB, "https://c.example/elsewhere")
    assert dns.lookups == [TEST_HOST]
    port = urlsplit(uri).port
    assert server.hosts == [f"{TEST_HOST}:{port}"]


def test_the_certificate_is_checked_against_the_name(ca: TestCA, server: HttpsServer) -> None:
    dns = FakeDNS({"elsewhere.test": [LOOPBACK]})  # not a name the certificate holds
    uri = server.url("/sector.json").replace(LOOPBACK, "elsewhere.test")
    assert "cannot be fetched (ConnectError)" in refusal(local(ca, resolve=dns), uri)
    assert server.hits == []


def test_localhost_with_private_addresses_allowed(ca: TestCA, server: HttpsServer) -> None:
    """getaddrinfo may answer ::1 first, where nothing listens: the next address is tried."""
    uri = server.url("/sector.json").replace(LOOPBACK, "localhost")
    assert local(ca)(uri) == (A_CB, B_CB, "https://c.example/elsewhere")
    assert server.hits == ["/sector.json"]


def test_private_addresses_are_allowed_in_development_only(tmp_path: Path) -> None:
    assert make_settings(tmp_path).sector_identifier_private_allowed
    off = make_settings(tmp_path, sector_identifier_allow_private=False)
    assert not off.sector_identifier_private_allowed
    assert not Settings.model_construct(mode=Mode.PRODUCTION).sector_identifier_private_allowed
    with pytest.raises(ValidationError, match="NICECARD_SECTOR_IDENTIFIER_ALLOW_PRIVATE"):
        make_settings(tmp_path, mode="production", sector_identifier_allow_private=True)


# -- through dynamic registration (RFC 7591) over HTTP ------------------------------------------


@pytest.fixture
def op(provider_factory: Callable[..., Provider], ca: TestCA, tmp_path: Path) -> Provider:
    return provider_factory(
        registration_token=TOKEN, sector_identifier_ca_file=ca.write(tmp_path / "ca.pem")
    )


def register(op: Provider, **metadata: object) -> httpx.Response:
    body = {"scope": "openid", "token_endpoint_auth_method": "client_secret_basic", **metadata}
    return httpx.post(op.url + "/register", json=body, headers={"Authorization": f"Bearer {TOKEN}"})


def subject_of(op: Provider, citizen: Citizen, registered: dict[str, str], redirect: str) -> str:
    """Sign the citizen in to a registered client; the ``sub`` of its ID token."""
    rp = OAuth2Client(
        registered["client_id"],
        registered["client_secret"],
        scope="openid",
        redirect_uri=redirect,
        code_challenge_method="S256",
    )
    try:
        verifier = generate_token(48)
        url, _ = rp.create_authorization_url(op.url + "/authorize", code_verifier=verifier)
        location = citizen.go(url, redirect).headers["location"]
        assert urlsplit(location).netloc == urlsplit(redirect).netloc
        token = rp.fetch_token(
            op.token_url, authorization_response=location, code_verifier=verifier
        )
        claims = jwt.decode(token["id_token"], options={"verify_signature": False})
        return str(claims["sub"])
    finally:
        rp.close()


def test_clients_of_one_sector_share_pseudonyms(op: Provider, server: HttpsServer) -> None:
    sector = server.url("/sector.json")
    first = register(op, redirect_uris=[A_CB], sector_identifier_uri=sector)
    assert first.status_code == 201, first.text
    assert first.json()["sector_identifier_uri"] == sector
    second = register(op, redirect_uris=[B_CB], sector_identifier_uri=sector)
    assert second.status_code == 201, second.text
    both_hosts = register(op, redirect_uris=[A_CB, B_CB], sector_identifier_uri=sector)
    assert both_hosts.status_code == 201, both_hosts.text
    alone = register(op, redirect_uris=[A_CB])  # its sector is a.example
    assert alone.status_code == 201, alone.text
    citizen = Citizen(op.url)
    try:
        sub_first = subject_of(op, citizen, first.json(), A_CB)
        sub_second = subject_of(op, citizen, second.json(), B_CB)
        sub_both = subject_of(op, citizen, both_hosts.json(), B_CB)
        sub_alone = subject_of(op, citizen, alone.json(), A_CB)
    finally:
        citizen.close()
    assert sub_first == sub_second == sub_both
    assert sub_alone != sub_first
    assert server.hits.count("/sector.json") == 3  # fetched once per registration


@pytest.mark.parametrize(
    ("path", "redirects", "reason"),
    [
        ("/only-a.json", [A_CB, B_CB], "does not list the redirect URI https://b.example/cb"),
        ("/not-json", [A_CB], "not JSON"),
        ("/big.json", [A_CB], "larger than"),
        (None, [A_CB, B_CB], "required when redirect URIs span several hosts"),
    ],
    ids=["missing-redirect-uri", "not-json", "too-big", "several-hosts-without-sector"],
)
def test_registration_refusals(
    op: Provider, server: HttpsServer, path: str | None, redirects: list[str], reason: str
) -> None:
    extra = {"sector_identifier_uri": server.url(path)} if path else {}
    response = register(op, redirect_uris=redirects, **extra)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client_metadata"
    assert reason in response.json()["error_description"]


def test_registration_refuses_http_and_unreachable_documents(op: Provider) -> None:
    port = _free_port()
    for uri, reason in (
        (f"http://127.0.0.1:{port}/sector.json", "must be https"),
        (f"https://127.0.0.1:{port}/sector.json", "cannot be fetched"),
    ):
        response = register(op, redirect_uris=[A_CB], sector_identifier_uri=uri)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_client_metadata"
        assert reason in response.json()["error_description"]


def test_registration_refuses_internal_hosts_when_not_allowed(
    provider_factory: Callable[..., Provider], ca: TestCA, server: HttpsServer, tmp_path: Path
) -> None:
    op = provider_factory(
        registration_token=TOKEN,
        sector_identifier_ca_file=ca.write(tmp_path / "ca.pem"),
        sector_identifier_allow_private=False,
    )
    response = register(op, redirect_uris=[A_CB], sector_identifier_uri=server.url("/sector.json"))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client_metadata"
    assert "no public internet address" in response.json()["error_description"]
    assert server.hits == []
