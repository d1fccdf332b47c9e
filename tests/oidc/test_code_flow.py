"""The authorization code flow over real HTTP, driven by Authlib's OAuth client on the relying
party side and a scripted citizen signing in through the FranceConnect simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest
from authlib.common.security import generate_token
from fastapi import FastAPI, Request

from oidc.clients import AuthMethod, GrantType
from tests.conftest import _free_port, serve
from tests.oidc.browser import Citizen
from tests.oidc.conftest import OAuth2Client, Provider

IDENTITIES = json.loads((Path(__file__).parents[2] / "identity/fcsim/identities.json").read_text())
NICOIS = next(i for i in IDENTITIES["identities"] if i["login"] == "nicois")["claims"]
TRANSIT_CB = "https://transit.example/cb"
CITY_CB = "https://city.example/cb"


@pytest.fixture
def citizen(provider: Provider) -> Iterator[Citizen]:
    person = Citizen(provider.url)
    yield person
    person.close()


def register_rp(
    provider: Provider, client_id: str, redirect: str, claims: frozenset[str], **fields: object
) -> str:
    secret = provider.register(
        client_id,
        AuthMethod.CLIENT_SECRET_BASIC,
        scope="openid profile email age offline_access",
        grants=(GrantType.AUTHORIZATION_CODE, GrantType.REFRESH_TOKEN),
        redirect_uris=(redirect,),
        claims=claims,
        client_name=client_id.title(),
        **fields,
    )
    assert secret is not None
    return secret


CLIENTS: list[OAuth2Client] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while CLIENTS:
        CLIENTS.pop().close()


def rp(provider: Provider, client_id: str, secret: str, redirect: str, scope: str) -> OAuth2Client:
    client = OAuth2Client(
        client_id,
        secret,
        scope=scope,
        redirect_uri=redirect,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    )
    CLIENTS.append(client)
    return client


def sign_in(
    provider: Provider, citizen: Citizen, client: OAuth2Client, redirect: str, **extra: str
) -> tuple[dict[str, object], str]:
    verifier = generate_token(48)
    url, state = client.create_authorization_url(
        provider.url + "/authorize",
        code_verifier=verifier,
        nonce="nonce-" + generate_token(8),
        **extra,
    )
    back = citizen.go(url, redirect)
    location = back.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["iss"] == [provider.url]  # RFC 9207
    assert query["state"] == [state]
    token = client.fetch_token(
        provider.token_url, authorization_response=location, code_verifier=verifier
    )
    return dict(token), location


def jwks_decode(provider: Provider, token: str, audience: str) -> dict[str, object]:
    keys = jwt.PyJWKClient(provider.url + "/jwks")
    key = keys.get_signing_key_from_jwt(token)
    header = jwt.get_unverified_header(token)
    claims: dict[str, object] = jwt.decode(
        token,
        key.key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=provider.url,
        leeway=120,
    )
    return claims


def test_happy_path_and_pairwise_subjects(provider: Provider, citizen: Citizen) -> None:
    transit_secret = register_rp(provider, "transit", TRANSIT_CB, frozenset({"age_over_18"}))
    city_secret = register_rp(
        provider, "city", CITY_CB, frozenset({"given_name", "family_name", "birthdate"})
    )
    transit = rp(provider, "transit", transit_secret, TRANSIT_CB, "openid age")
    token, _ = sign_in(provider, citizen, transit, TRANSIT_CB)
    id_claims = jwks_decode(provider, str(token["id_token"]), "transit")
    assert id_claims["age_over_18"] is True
    assert "birthdate" not in id_claims
    assert id_claims["acr"] == "eidas1"
    assert {"auth_time", "sid", "at_hash", "nonce", "amr"} <= set(id_claims)
    assert jwt.get_unverified_header(str(token["id_token"]))["alg"] == "RS256"

    city = rp(provider, "city", city_secret, CITY_CB, "openid profile")
    city_token, _ = sign_in(provider, citizen, city, CITY_CB)
    city_claims = jwks_decode(provider, str(city_token["id_token"]), "city")
    assert city_claims["given_name"] == NICOIS["given_name"]
    assert "gender" not in city_claims  # not entitled
    assert city_claims["sub"] != id_claims["sub"]  # different sectors, different pseudonyms

    info = httpx.get(
        provider.url + "/userinfo",
        headers={"Authorization": f"Bearer {city_token['access_token']}"},
    ).json()
    assert info["sub"] == city_claims["sub"]
    assert info["family_name"]


@pytest.fixture
def transit(provider: Provider) -> OAuth2Client:
    secret = register_rp(provider, "transit", TRANSIT_CB, frozenset({"age_over_18", "age_bracket"}))
    return rp(provider, "transit", secret, TRANSIT_CB, "openid age offline_access")


def authorize_url(provider: Provider, client: OAuth2Client, **extra: str) -> tuple[str, str]:
    verifier = generate_token(48)
    url, _state = client.create_authorization_url(
        provider.url + "/authorize", code_verifier=verifier, **extra
    )
    return url, verifier


def test_code_is_single_use_and_replay_revokes(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    url, verifier = authorize_url(provider, transit)
    location = citizen.go(url, TRANSIT_CB).headers["location"]
    token = transit.fetch_token(
        provider.token_url, authorization_response=location, code_verifier=verifier
    )
    with pytest.raises(Exception, match="invalid_grant"):
        transit.fetch_token(
            provider.token_url, authorization_response=location, code_verifier=verifier
        )
    # The access token issued from the replayed code is now revoked.
    info = httpx.get(
        provider.url + "/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert info.status_code == 401
    assert "invalid_token" in info.headers["www-authenticate"]


def test_pkce_is_required_and_verified(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    url, _verifier = authorize_url(provider, transit)
    location = citizen.go(url, TRANSIT_CB).headers["location"]
    with pytest.raises(Exception, match="invalid_grant"):
        transit.fetch_token(
            provider.token_url, authorization_response=location, code_verifier=generate_token(48)
        )
    # No challenge at all, or a plain one: refused at the authorization endpoint.
    for extra in ({}, {"code_challenge": "a" * 43, "code_challenge_method": "plain"}):
        params = {
            "response_type": "code",
            "client_id": "transit",
            "redirect_uri": TRANSIT_CB,
            "scope": "openid",
            "state": "st",
            **extra,
        }
        response = citizen.client.get(provider.url + "/authorize", params=params)
        assert response.status_code == 303
        query = parse_qs(urlsplit(response.headers["location"]).query)
        assert query["error"] == ["invalid_request"]
        assert query["state"] == ["st"]


def test_unknown_client_or_redirect_gets_a_page_not_a_redirect(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    url, _ = authorize_url(provider, transit)
    evil = url.replace("transit.example", "evil.example")
    response = citizen.client.get(evil)
    assert response.status_code == 400
    assert "location" not in response.headers
    unknown = citizen.client.get(url.replace("client_id=transit", "client_id=nobody"))
    assert unknown.status_code == 400


def test_prompt_none_without_session(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    url, _ = authorize_url(provider, transit, prompt="none")
    response = citizen.client.get(url)
    assert response.status_code == 303
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["login_required"]
    assert query["iss"] == [provider.url]


def test_max_age_and_prompt_login(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    token, _ = sign_in(provider, citizen, transit, TRANSIT_CB)
    first = jwks_decode(provider, str(token["id_token"]), "transit")
    # max_age=10000: the session is fresh enough, no new sign-in.
    url, verifier = authorize_url(provider, transit, max_age="10000")
    response = citizen.client.get(url)
    assert response.headers["location"].startswith(TRANSIT_CB)
    # max_age=1 two seconds later, and prompt=login: both go back to FranceConnect.
    provider.clock.advance(2)
    for extra in ({"max_age": "1"}, {"prompt": "login"}):
        url, verifier = authorize_url(provider, transit, **extra)
        response = citizen.client.get(url)
        assert "/auth/franceconnect/start" in response.headers["location"]
        assert "prompt=login" in response.headers["location"]
        location = citizen.go(url, TRANSIT_CB).headers["location"]
        again = transit.fetch_token(
            provider.token_url, authorization_response=location, code_verifier=verifier
        )
        claims = jwks_decode(provider, str(again["id_token"]), "transit")
        assert claims["auth_time"] >= first["auth_time"]  # type: ignore[operator]
        assert claims["sub"] == first["sub"]


def test_id_token_hint_for_the_same_citizen(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    token, _ = sign_in(provider, citizen, transit, TRANSIT_CB)
    url, _ = authorize_url(provider, transit, prompt="none", id_token_hint=str(token["id_token"]))
    assert "code=" in citizen.client.get(url).headers["location"]
    url, _ = authorize_url(provider, transit, prompt="none", id_token_hint="not.a.token")
    assert "error=invalid_request" in citizen.client.get(url).headers["location"]


def test_refresh_rotation_and_reuse(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    token, _ = sign_in(provider, citizen, transit, TRANSIT_CB)
    first_refresh = str(token["refresh_token"])
    rotated = transit.refresh_token(provider.token_url, refresh_token=first_refresh)
    assert rotated["refresh_token"] != first_refresh
    assert "id_token" in rotated
    provider.clock.advance(30)  # past the grace for a lost response
    with pytest.raises(Exception, match="invalid_grant"):
        transit.refresh_token(provider.token_url, refresh_token=first_refresh)
    # Reuse revoked the whole grant, the rotated token included.
    with pytest.raises(Exception, match="invalid_grant"):
        transit.refresh_token(provider.token_url, refresh_token=str(rotated["refresh_token"]))


def test_refresh_grace_for_a_lost_response(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    token, _ = sign_in(provider, citizen, transit, TRANSIT_CB)
    refresh = str(token["refresh_token"])
    lost = transit.refresh_token(provider.token_url, refresh_token=refresh)
    retried = transit.refresh_token(provider.token_url, refresh_token=refresh)  # within the grace
    with pytest.raises(Exception, match="invalid_grant"):
        transit.refresh_token(provider.token_url, refresh_token=str(lost["refresh_token"]))
    assert transit.refresh_token(provider.token_url, refresh_token=str(retried["refresh_token"]))


def test_no_refresh_token_without_offline_access(provider: Provider, citizen: Citizen) -> None:
    secret = register_rp(provider, "city", CITY_CB, frozenset({"given_name"}))
    city = rp(provider, "city", secret, CITY_CB, "openid profile")
    token, _ = sign_in(provider, citizen, city, CITY_CB)
    assert "refresh_token" not in token


def test_userinfo_header_and_body(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    token, _ = sign_in(provider, citizen, transit, TRANSIT_CB)
    access = str(token["access_token"])
    get = httpx.get(provider.url + "/userinfo", headers={"Authorization": f"Bearer {access}"})
    post_header = httpx.post(
        provider.url + "/userinfo", headers={"Authorization": f"Bearer {access}"}
    )
    post_body = httpx.post(provider.url + "/userinfo", data={"access_token": access})
    for response in (get, post_header, post_body):
        assert response.status_code == 200, response.text
        assert response.json()["age_over_18"] is True
        assert response.json()["age_bracket"]
    none = httpx.get(provider.url + "/userinfo")
    assert none.status_code == 401
    both = httpx.post(
        provider.url + "/userinfo",
        data={"access_token": access},
        headers={"Authorization": f"Bearer {access}"},
    )
    assert both.status_code == 400


def test_claims_parameter_essential(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    claims = json.dumps(
        {"id_token": {"age_bracket": {"essential": True}}, "userinfo": {"email": None}}
    )
    token, _ = sign_in(provider, citizen, transit, TRANSIT_CB, claims=claims)
    id_claims = jwks_decode(provider, str(token["id_token"]), "transit")
    assert "age_bracket" in id_claims
    info = httpx.get(
        provider.url + "/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"}
    ).json()
    assert "email" not in info  # asked for, but transit is not entitled to it


def test_consent_is_asked_once_and_can_be_refused(
    provider: Provider, transit: OAuth2Client
) -> None:
    refuser = Citizen(provider.url, consent="deny")
    try:
        url, _ = authorize_url(provider, transit)
        location = refuser.go(url, TRANSIT_CB).headers["location"]
        assert parse_qs(urlsplit(location).query)["error"] == ["access_denied"]
    finally:
        refuser.close()
    person = Citizen(provider.url)
    try:
        sign_in(provider, person, transit, TRANSIT_CB)
        pages = len(person.pages)
        sign_in(provider, person, transit, TRANSIT_CB)
        assert not any('id="consent-allow"' in p for p in person.pages[pages:])
        url, _ = authorize_url(provider, transit, prompt="consent")
        assert 'id="consent-allow"' in person.client.get(url).text
    finally:
        person.close()


def test_request_objects_are_refused(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    url, _ = authorize_url(provider, transit, request="eyJhbGciOiJub25lIn0.e30.")
    query = parse_qs(urlsplit(citizen.client.get(url).headers["location"]).query)
    assert query["error"] == ["request_not_supported"]
    url, _ = authorize_url(provider, transit, request_uri="https://transit.example/req.jwt")
    query = parse_qs(urlsplit(citizen.client.get(url).headers["location"]).query)
    assert query["error"] == ["request_uri_not_supported"]


def test_pushed_authorization_request(provider: Provider, citizen: Citizen) -> None:
    secret = register_rp(
        provider,
        "fapi",
        TRANSIT_CB,
        frozenset({"age_over_18"}),
        require_pushed_authorization_requests=True,
    )
    client = rp(provider, "fapi", secret, TRANSIT_CB, "openid age")
    direct, _ = authorize_url(provider, client)
    query = parse_qs(urlsplit(citizen.client.get(direct).headers["location"]).query)
    assert query["error"] == ["invalid_request"]
    verifier = generate_token(48)
    from authlib.oauth2.rfc7636 import create_s256_code_challenge

    pushed = httpx.post(
        provider.url + "/par",
        auth=("fapi", secret),
        data={
            "response_type": "code",
            "client_id": "fapi",
            "redirect_uri": TRANSIT_CB,
            "scope": "openid age",
            "state": "par-state",
            "code_challenge": create_s256_code_challenge(verifier),
            "code_challenge_method": "S256",
        },
    )
    assert pushed.status_code == 201, pushed.text
    request_uri = pushed.json()["request_uri"]
    assert request_uri.startswith("urn:ietf:params:oauth:request_uri:")
    url = f"{provider.url}/authorize?client_id=fapi&request_uri={request_uri}"
    location = citizen.go(url, TRANSIT_CB).headers["location"]
    token = client.fetch_token(
        provider.token_url, authorization_response=location, code_verifier=verifier
    )
    assert token["access_token"]
    unauthenticated = httpx.post(
        provider.url + "/par", data={"client_id": "fapi", "response_type": "code"}
    )
    assert unauthenticated.status_code == 401


def test_discovery_describes_the_code_flow(provider: Provider) -> None:
    metadata = httpx.get(provider.url + "/.well-known/openid-configuration").json()
    assert metadata["issuer"] == provider.url
    assert metadata["authorization_endpoint"] == provider.url + "/authorize"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert "authorization_code" in metadata["grant_types_supported"]
    assert metadata["subject_types_supported"] == ["pairwise"]
    assert metadata["authorization_response_iss_parameter_supported"] is True


def test_pairwise_subject_survives_a_restart(
    provider_factory: object, settings_factory: object
) -> None:
    """Same data directory, new process: the same citizen gets the same pseudonym."""
    import tempfile

    from identity.app import create_app
    from tests.conftest import _free_port, make_settings, serve
    from tests.oidc.conftest import Clock
    from tests.oidc.conftest import Provider as P

    data = Path(tempfile.mkdtemp())
    subs = []
    port = _free_port()
    for _ in range(2):
        settings = make_settings(data, issuer=f"http://127.0.0.1:{port}")
        clock = Clock()
        app = create_app(settings, clock=clock)
        with serve(app, port=port) as url:
            op = P(url, app, clock)
            if not subs:
                secret = register_rp(op, "transit", TRANSIT_CB, frozenset({"age_over_18"}))
                (data / "secret").write_text(secret)
            client = rp(op, "transit", (data / "secret").read_text(), TRANSIT_CB, "openid")
            person = Citizen(url)
            try:
                token, _ = sign_in(op, person, client, TRANSIT_CB)
            finally:
                person.close()
            subs.append(jwks_decode(op, str(token["id_token"]), "transit")["sub"])
    assert subs[0] == subs[1]


LOGOUT_BACK = "https://transit.example/bye"


def test_rp_initiated_logout_with_hint_chains_to_franceconnect(
    provider: Provider, citizen: Citizen
) -> None:
    secret = register_rp(
        provider,
        "transit",
        TRANSIT_CB,
        frozenset({"age_over_18"}),
        post_logout_redirect_uris=(LOGOUT_BACK,),
    )
    client = rp(provider, "transit", secret, TRANSIT_CB, "openid")
    token, _ = sign_in(provider, citizen, client, TRANSIT_CB)
    url = (
        provider.url
        + "/logout?"
        + urlencode(
            {
                "id_token_hint": token["id_token"],
                "post_logout_redirect_uri": LOGOUT_BACK,
                "state": "bye-state",
            }
        )
    )
    response = citizen.client.get(url)
    assert response.status_code == 303
    assert "/fc-sim/api/v2/session/end" in response.headers["location"]
    back = citizen.go(response.headers["location"], LOGOUT_BACK)
    assert back.headers["location"] == LOGOUT_BACK + "?state=bye-state"
    # Signed out: prompt=none now needs a sign-in.
    url, _ = authorize_url(provider, client, prompt="none")
    assert "error=login_required" in citizen.client.get(url).headers["location"]


def test_logout_refuses_unregistered_redirect_and_bad_hint(
    provider: Provider, citizen: Citizen
) -> None:
    secret = register_rp(
        provider, "transit", TRANSIT_CB, frozenset(), post_logout_redirect_uris=(LOGOUT_BACK,)
    )
    client = rp(provider, "transit", secret, TRANSIT_CB, "openid")
    token, _ = sign_in(provider, citizen, client, TRANSIT_CB)
    evil = citizen.client.get(
        provider.url + "/logout",
        params={
            "id_token_hint": token["id_token"],
            "post_logout_redirect_uri": "https://evil.example/",
        },
    )
    assert evil.status_code == 400
    forged = citizen.client.get(provider.url + "/logout", params={"id_token_hint": "a.b.c"})
    assert forged.status_code == 400
    # Without a hint the citizen is asked to confirm (no silent cross-site logout).
    confirm = citizen.client.get(provider.url + "/logout")
    assert 'id="logout-confirm"' in confirm.text
    assert citizen.client.post(provider.url + "/logout").status_code == 403
    done = citizen.client.post(provider.url + "/logout", headers={"Origin": provider.url})
    assert done.status_code == 303


def test_citizen_withdraws_consent(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    token, _ = sign_in(provider, citizen, transit, TRANSIT_CB)
    page = citizen.client.get(provider.url + "/account/consents")
    assert 'data-client="transit"' in page.text
    assert (
        citizen.client.post(
            provider.url + "/account/consents/revoke", data={"client_id": "transit"}
        ).status_code
        == 403
    )  # not from our own page
    done = citizen.client.post(
        provider.url + "/account/consents/revoke",
        data={"client_id": "transit"},
        headers={"Origin": provider.url},
    )
    assert done.status_code == 303
    assert (
        'data-client="transit"' not in citizen.client.get(provider.url + "/account/consents").text
    )
    with pytest.raises(Exception, match="invalid_grant"):
        transit.refresh_token(provider.token_url, refresh_token=str(token["refresh_token"]))
    info = httpx.get(
        provider.url + "/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert info.status_code == 401


def test_jwks_after_key_rotation(
    provider: Provider, citizen: Citizen, transit: OAuth2Client
) -> None:
    """The new key signs; the old one stays published while what it signed can be valid."""
    token, _ = sign_in(provider, citizen, transit, TRANSIT_CB)
    old_kid = jwt.get_unverified_header(str(token["id_token"]))["kid"]
    keyring = provider.app.state.runtime.keyring
    from keys.model import Purpose

    new_active = keyring.rotate(Purpose.OIDC_RS256)
    kids = {k["kid"] for k in httpx.get(provider.url + "/jwks").json()["keys"]}
    assert {old_kid, new_active.kid} <= kids
    url, verifier = authorize_url(provider, transit)
    location = citizen.go(url, TRANSIT_CB).headers["location"]
    again = transit.fetch_token(
        provider.token_url, authorization_response=location, code_verifier=verifier
    )
    assert jwt.get_unverified_header(str(again["id_token"]))["kid"] == new_active.kid
    jwks_decode(provider, str(token["id_token"]), "transit")  # the old token still verifies


def test_backchannel_logout(provider: Provider, citizen: Citizen, free_port: int) -> None:
    """Signing out sends a logout token to each relying party of the session that asked."""
    received: list[str] = []
    receiver = FastAPI()

    @receiver.post("/backchannel")
    async def backchannel(request: Request) -> dict[str, str]:
        received.append(str((await request.form())["logout_token"]))
        return {}

    port = _free_port()
    secret = register_rp(
        provider,
        "transit",
        TRANSIT_CB,
        frozenset(),
        backchannel_logout_uri=f"http://127.0.0.1:{port}/backchannel",
    )
    client = rp(provider, "transit", secret, TRANSIT_CB, "openid")
    with serve(receiver, port=port):
        token, _ = sign_in(provider, citizen, client, TRANSIT_CB)
        id_claims = jwks_decode(provider, str(token["id_token"]), "transit")
        citizen.client.post(provider.url + "/auth/logout", headers={"Origin": provider.url})
    assert len(received) == 1
    header = jwt.get_unverified_header(received[0])
    assert header["typ"] == "logout+jwt"
    logout = jwks_decode(provider, received[0], "transit")
    assert logout["sub"] == id_claims["sub"]
    assert logout["sid"] == id_claims["sid"]
    assert "http://schemas.openid.net/event/backchannel-logout" in logout["events"]  # type: ignore[operator]
    assert "nonce" not in logout


def test_signed_userinfo_for_clients_that_ask(provider: Provider, citizen: Citizen) -> None:
    secret = register_rp(
        provider,
        "signed",
        TRANSIT_CB,
        frozenset({"age_over_18"}),
        userinfo_signed_response_alg="ES256",
    )
    client = rp(provider, "signed", secret, TRANSIT_CB, "openid age")
    token, _ = sign_in(provider, citizen, client, TRANSIT_CB)
    response = httpx.get(
        provider.url + "/userinfo", headers={"Authorization": f"Bearer {token['access_token']}"}
    )
    assert response.headers["content-type"].startswith("application/jwt")
    assert jwt.get_unverified_header(response.text)["alg"] == "ES256"
    claims = jwks_decode(provider, response.text, "signed")
    assert claims["age_over_18"] is True
    assert claims["iss"] == provider.url
