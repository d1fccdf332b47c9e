"""``sector_identifier_uri`` (OpenID Connect Core §8.1, Registration §5): the document is fetched
from a real HTTPS server whose certificate comes from a throwaway CA, and checked to list every
redirect URI; clients sharing a sector share pseudonyms."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from authlib.common.security import generate_token

from oidc.clients import AuthMethod, Client, InvalidClientMetadata
from oidc.pairwise import sector_of
from oidc.sector import MAX_DOCUMENT_BYTES, SectorFetcher, verify_sector_identifier
from tests.conftest import _free_port
from tests.oidc.browser import Citizen
from tests.oidc.conftest import OAuth2Client, Provider
from tests.oidc.tls import HttpsServer, Route, TestCA, https_server

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


def test_a_document_listing_every_redirect_uri(ca: TestCA, server: HttpsServer) -> None:
    fetch = SectorFetcher(verify=ca.client_context())
    uri = server.url("/sector.json")
    assert fetch(uri) == (A_CB, B_CB, "https://c.example/elsewhere")
    rp = client(A_CB, B_CB, sector=uri)
    verify_sector_identifier(rp, fetch)  # no error
    assert sector_of(rp) == "127.0.0.1"  # the document's host, not a redirect URI's


def test_refusals(ca: TestCA, server: HttpsServer) -> None:
    fetch = SectorFetcher(verify=ca.client_context())
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
    fetch = SectorFetcher(verify=ca.client_context())
    plain = server.url("/sector.json").replace("https://", "http://")
    assert "https" in refusal(fetch, plain)
    assert server.hits == []


def test_unreachable(ca: TestCA) -> None:
    fetch = SectorFetcher(verify=ca.client_context(), timeout=2.0)
    reason = refusal(fetch, f"https://127.0.0.1:{_free_port()}/sector.json")
    assert "cannot be fetched (ConnectError)" in reason


def test_the_default_trust_store_does_not_trust_the_test_ca(server: HttpsServer) -> None:
    reason = refusal(SectorFetcher(), server.url("/sector.json"))
    assert "cannot be fetched" in reason
    assert server.hits == []  # the TLS handshake failed before any request


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
