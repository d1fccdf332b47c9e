"""The FranceConnect v2 simulator over real HTTP: discovery, JWKS, the code flow for every test
identity with both client authentication methods and both signing algorithms, expiries on an
injected clock, errors where FranceConnect shows a page and where it redirects, logout, and the
error scenarios (cancel, userinfo 500, malformed userinfo, slow userinfo)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI

from identity.fcsim import SimulatorClient, SimulatorConfig, SimulatorConfigError, create_simulator
from identity.fcsim.identities import (
    PIVOT_CLAIMS,
    Scenario,
    TestIdentity,
    load_identities,
    normalize_birthdate,
    pairwise_sub,
)
from tests.conftest import serve
from tests.identity.fcsim_helpers import (
    SUB,
    Browser,
    FakeClock,
    ServiceProvider,
    free_loopback_port,
    make_providers,
    query,
)

SUB_SECRET = b"fcsim-test-sub-secret-0123456789"
IDENTITIES = load_identities()
NORMAL = [i.login for i in IDENTITIES.values() if i.scenario is Scenario.NORMAL]
DEFAULT_SCOPE = "openid identite_pivot email preferred_username"


@dataclass
class Env:
    issuer: str
    clock: FakeClock
    providers: tuple[ServiceProvider, ...]

    def sp(self, client_id: str) -> ServiceProvider:
        return next(p for p in self.providers if p.client_id == client_id)


@pytest.fixture(scope="session")
def providers() -> tuple[ServiceProvider, ...]:
    return make_providers()


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fcsim") / "keys" / "fc-sim-keys.json"


def config_for(
    issuer: str, providers: tuple[ServiceProvider, ...], key_file: Path, **extra: object
) -> SimulatorConfig:
    values: dict[str, object] = {
        "issuer": issuer,
        "clients": tuple(p.client for p in providers),
        "sub_secret": SUB_SECRET,
        "key_file": key_file,
        "slow_seconds": 2.0,
    }
    values.update(extra)
    return SimulatorConfig(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def env(providers: tuple[ServiceProvider, ...], key_file: Path) -> Iterator[Env]:
    clock = FakeClock()
    port = free_loopback_port()
    issuer = f"http://127.0.0.1:{port}/api/v2"
    app = create_simulator(config_for(issuer, providers, key_file, clock=clock))
    with serve(app, port=port):
        yield Env(issuer, clock, providers)


@pytest.fixture(autouse=True)
def _reset_clock(env: Env) -> Iterator[None]:
    yield
    env.clock.offset = 0.0


@pytest.fixture
def browser(env: Env) -> Iterator[Browser]:
    with Browser(env.issuer) as b:
        yield b


def expected_claims(identity: TestIdentity, scope: str = DEFAULT_SCOPE) -> dict[str, str]:
    return identity.released(scope.split())


# -- discovery and keys --------------------------------------------------------------------------


def test_discovery_is_complete_and_derives_from_the_issuer(env: Env, browser: Browser) -> None:
    response = browser.http.get(f"{env.issuer}/.well-known/openid-configuration")
    assert response.status_code == 200
    doc = response.json()
    assert doc["issuer"] == env.issuer
    for name, path in {
        "authorization_endpoint": "authorize",
        "token_endpoint": "token",
        "userinfo_endpoint": "userinfo",
        "jwks_uri": "jwks",
        "end_session_endpoint": "session/end",
    }.items():
        assert doc[name] == f"{env.issuer}/{path}"
    assert set(doc["scopes_supported"]) >= {
        "openid", "given_name", "family_name", "birthdate", "gender", "birthplace",
        "birthcountry", "email", "preferred_username", "identite_pivot",
    }  # fmt: skip
    assert set(doc["claims_supported"]) >= {"sub", "acr", *PIVOT_CLAIMS, "email"}
    assert doc["response_types_supported"] == ["code"]
    assert doc["grant_types_supported"] == ["authorization_code"]
    assert doc["acr_values_supported"] == ["eidas1", "eidas2", "eidas3"]
    assert doc["id_token_signing_alg_values_supported"] == ["ES256", "RS256"]
    assert doc["userinfo_signing_alg_values_supported"] == ["ES256", "RS256"]
    assert doc["token_endpoint_auth_methods_supported"] == ["client_secret_post", "private_key_jwt"]
    assert doc["subject_types_supported"] == ["pairwise"]
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["claims_parameter_supported"] is True


def test_jwks_has_one_es256_and_one_rs256_public_key(env: Env, browser: Browser) -> None:
    keys = browser.http.get(f"{env.issuer}/jwks").json()["keys"]
    assert sorted(k["alg"] for k in keys) == ["ES256", "RS256"]
    for key in keys:
        assert key["use"] == "sig"
        assert key["kid"]
        assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
    ec_key = next(k for k in keys if k["alg"] == "ES256")
    rsa_key = next(k for k in keys if k["alg"] == "RS256")
    assert (ec_key["kty"], ec_key["crv"]) == ("EC", "P-256")
    assert rsa_key["kty"] == "RSA"
    assert jwt.PyJWK(rsa_key).key.key_size == 2048


# -- the code flow ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sp_id", ["sp-secret-es256", "sp-secret-rs256", "sp-jwt-es256", "sp-jwt-rs256"]
)
@pytest.mark.parametrize("login", NORMAL)
def test_code_flow_for_every_identity(env: Env, browser: Browser, login: str, sp_id: str) -> None:
    sp = env.sp(sp_id)
    callback = browser.sign_in(sp, login)
    assert set(callback) == {"code", "state", "iss"}
    assert callback["state"] == browser.state
    assert callback["iss"] == env.issuer

    response = browser.token(sp, callback["code"])
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 60
    assert body["scope"] == DEFAULT_SCOPE

    id_alg = sp.client.id_token_signed_response_alg
    assert jwt.get_unverified_header(body["id_token"])["alg"] == id_alg
    id_token = browser.verify(body["id_token"], id_alg, sp.client_id)
    assert SUB.match(id_token["sub"])
    assert len(id_token["sub"]) == 66
    assert id_token["nonce"] == browser.nonce
    assert id_token["acr"] == "eidas1"
    assert id_token["exp"] - id_token["iat"] == 60
    assert "amr" not in id_token
    digest = hashlib.sha256(body["access_token"].encode()).digest()[:16]
    assert id_token["at_hash"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert not set(PIVOT_CLAIMS) & set(id_token)  # identity claims come from userinfo only

    userinfo = browser.userinfo(body["access_token"])
    assert userinfo.status_code == 200
    assert userinfo.headers["content-type"].startswith("application/jwt")
    info_alg = sp.client.userinfo_signed_response_alg
    assert jwt.get_unverified_header(userinfo.text)["alg"] == info_alg
    claims = browser.verify(userinfo.text, info_alg, sp.client_id)
    assert claims["sub"] == id_token["sub"]
    identity_claims = {
        k: v for k, v in claims.items() if k not in {"iss", "aud", "sub", "iat", "exp"}
    }
    assert identity_claims == expected_claims(IDENTITIES[login])


def test_presumed_birthdates_are_padded_with_01() -> None:
    assert normalize_birthdate("1992-11-00") == "1992-11-01"
    assert normalize_birthdate("1958-00-00") == "1958-01-01"
    assert normalize_birthdate("1968-02-29") == "1968-02-29"
    assert IDENTITIES["date-presumee"].claims["birthdate"] == "1992-11-01"
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        normalize_birthdate("03/09/2012")


def test_fixtures_cover_the_cases_service_providers_meet() -> None:
    claims = {login: identity.claims for login, identity in IDENTITIES.items()}
    assert claims["nicois"]["birthplace"] == "06088"
    assert claims["nicois"]["birthcountry"] == "99100"
    assert "preferred_username" in claims["nom-usage"]
    assert "É" in claims["prenoms-composes"]["given_name"]
    assert "-" in claims["prenoms-composes"]["given_name"]
    assert len(claims["nom-long"]["family_name"]) > 60
    assert "email" not in claims["sans-email"]
    assert claims["ne-etranger"]["birthplace"] == ""
    assert claims["ne-etranger"]["birthcountry"] != "99100"
    assert {claims["corse-du-sud"]["birthplace"][:2], claims["haute-corse"]["birthplace"][:2]} == {
        "2A",
        "2B",
    }
    assert claims["outre-mer"]["birthplace"] == "97411"
    assert IDENTITIES["date-presumee"].raw_claims["birthdate"] == "1992-11-00"
    born = date.fromisoformat(claims["mineur"]["birthdate"])
    age = (date.today() - born).days // 365
    assert age < 18, "the 'mineur' test identity has come of age: update its birthdate"
    assert {i.scenario for i in IDENTITIES.values()} == set(Scenario)
    assert {c["gender"] for c in claims.values()} == {"male", "female"}


def test_scopes_limit_the_released_claims(env: Env, browser: Browser) -> None:
    sp = env.sp("sp-secret-es256")
    cases = {
        "openid email": {"email"},
        "openid profile": {
            "family_name",
            "given_name",
            "preferred_username",
            "gender",
            "birthdate",
        },
        "openid birth": {"birthplace", "birthcountry"},
        "openid": set(),
    }
    for scope, names in cases.items():
        body = browser.tokens(sp, "nom-usage", scope=scope, prompt="login")
        claims = browser.verify(browser.userinfo(body["access_token"]).text, "ES256", sp.client_id)
        assert set(claims) - {"iss", "aud", "sub", "iat", "exp"} == names, scope


def test_amr_only_when_the_claims_parameter_asks_for_it(env: Env, browser: Browser) -> None:
    sp = env.sp("sp-secret-es256")
    claims_param = json.dumps({"id_token": {"amr": {"essential": True}}})
    body = browser.tokens(sp, "multi-facteur", claims=claims_param)
    assert browser.verify(body["id_token"], "ES256", sp.client_id)["amr"] == ["pin", "pop", "mfa"]
    body = browser.tokens(sp, "nicois", claims=claims_param, prompt="login")
    assert browser.verify(body["id_token"], "ES256", sp.client_id)["amr"] == ["pwd"]


@pytest.mark.parametrize(
    ("acr_values", "granted"),
    [("eidas9", "eidas1"), ("", "eidas1"), ("eidas3 eidas2", "eidas2"), ("x eidas3", "eidas3")],
)
def test_acr_is_the_lowest_known_level_asked_for(
    env: Env, browser: Browser, acr_values: str, granted: str
) -> None:
    sp = env.sp("sp-secret-rs256")
    body = browser.tokens(sp, "nicois", acr_values=acr_values)
    assert browser.verify(body["id_token"], "RS256", sp.client_id)["acr"] == granted


def test_authorize_accepts_post(env: Env, browser: Browser) -> None:
    sp = env.sp("sp-secret-es256")
    response = browser.authorize(sp, "POST")
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith(f"{env.issuer}/interaction/")
    callback = query(browser.submit_login(location, "nicois").headers["location"])
    assert callback["state"] == browser.state


# -- the pairwise sub ------------------------------------------------------------------------


def test_sub_is_stable_and_differs_per_service_provider(env: Env) -> None:
    subs: dict[str, set[str]] = {}
    for sp_id in ("sp-secret-es256", "sp-secret-es256", "sp-jwt-es256"):
        with Browser(env.issuer) as fresh:
            sp = env.sp(sp_id)
            body = fresh.tokens(sp, "nicois")
            sub = fresh.verify(body["id_token"], sp.client.id_token_signed_response_alg, sp_id)
            subs.setdefault(sp_id, set()).add(sub["sub"])
    assert len(subs["sp-secret-es256"]) == 1  # stable across logins
    assert subs["sp-secret-es256"] != subs["sp-jwt-es256"]  # pairwise
    assert subs["sp-secret-es256"] == {
        pairwise_sub(SUB_SECRET, "sp-secret-es256", IDENTITIES["nicois"])
    }
    other_secret = pairwise_sub(
        b"another-sub-secret-0123456789abc", "sp-secret-es256", IDENTITIES["nicois"]
    )
    assert other_secret not in subs["sp-secret-es256"]


def test_a_restart_keeps_keys_and_subs(
    providers: tuple[ServiceProvider, ...], tmp_path: Path, free_port: int
) -> None:
    key_file = tmp_path / "var" / "fc-sim-keys.json"
    issuer = f"http://127.0.0.1:{free_port}/api/v2"
    sp = providers[0]
    seen = []
    for _ in range(2):
        app = create_simulator(config_for(issuer, providers, key_file))
        with serve(app, port=free_port), Browser(issuer) as fresh:
            body = fresh.tokens(sp, "outre-mer")
            kids = {k["kid"] for k in fresh.http.get(f"{issuer}/jwks").json()["keys"]}
            seen.append((fresh.verify(body["id_token"], "ES256", sp.client_id)["sub"], kids))
    assert seen[0] == seen[1]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    private = json.loads(key_file.read_text())["keys"]
    assert {k["alg"] for k in private} == {"ES256", "RS256"}
    assert all("d" in k for k in private)


# -- codes and tokens --------------------------------------------------------------------------


def test_a_code_is_single_use_and_its_reuse_revokes_the_access_token(
    env: Env, browser: Browser
) -> None:
    sp = env.sp("sp-secret-es256")
    code = browser.sign_in(sp, "nicois")["code"]
    first = browser.token(sp, code)
    assert first.status_code == 200
    second = browser.token(sp, code)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    assert second.headers["cache-control"] == "no-store"
    assert browser.userinfo(first.json()["access_token"]).status_code == 401


def test_a_code_expires_after_30_seconds(env: Env, browser: Browser) -> None:
    sp = env.sp("sp-jwt-rs256")
    code = browser.sign_in(sp, "nicois")["code"]
    env.clock.advance(31)
    response = browser.token(sp, code)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_an_access_token_expires_after_60_seconds(env: Env, browser: Browser) -> None:
    sp = env.sp("sp-secret-es256")
    token = browser.tokens(sp, "nicois")["access_token"]
    env.clock.advance(59)
    assert browser.userinfo(token).status_code == 200
    env.clock.advance(2)
    response = browser.userinfo(token)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


def test_userinfo_wants_a_bearer_header(env: Env, browser: Browser) -> None:
    token = browser.tokens(env.sp("sp-secret-es256"), "nicois")["access_token"]
    missing = browser.http.get(browser.endpoint("userinfo"), params={"access_token": token})
    assert missing.status_code == 401
    assert "error=" not in missing.headers["www-authenticate"]  # RFC 6750 §3.1: no credentials
    basic = browser.http.get(
        browser.endpoint("userinfo"), headers={"Authorization": f"Basic {token}"}
    )
    assert basic.status_code == 401


def test_token_request_errors(env: Env, browser: Browser) -> None:
    sp, other = env.sp("sp-secret-es256"), env.sp("sp-secret-rs256")
    code = browser.sign_in(sp, "nicois")["code"]
    cases = [
        ({"grant_type": "refresh_token"}, 400, "unsupported_grant_type"),
        ({"grant_type": ""}, 400, "invalid_request"),
        ({"code": ""}, 400, "invalid_request"),
        ({"redirect_uri": sp.redirect_uri + "/other"}, 400, "invalid_grant"),
        ({"client_secret": "wrong" * 8}, 401, "invalid_client"),
        ({"client_id": "nobody", "client_secret": "wrong" * 8}, 401, "invalid_client"),
        (
            {"client_id": other.client_id, "client_secret": other.client.client_secret or ""},
            400,
            "invalid_grant",
        ),
    ]
    for overrides, status, error in cases:
        response = browser.token(sp, code, **overrides)
        assert (response.status_code, response.json()["error"]) == (status, error), overrides
        assert response.headers["cache-control"] == "no-store"
    basic = browser.http.post(
        browser.endpoint("token"),
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": sp.redirect_uri},
        auth=(sp.client_id, sp.client.client_secret or ""),
    )
    assert basic.status_code == 401
    assert browser.token(sp, code).status_code == 200  # none of the failures burnt the code


def test_a_client_assertion_cannot_be_replayed(env: Env, browser: Browser) -> None:
    sp = env.sp("sp-jwt-es256")
    assertion = sp.assertion(browser.endpoint("token"))
    credentials = {"client_assertion": assertion}
    assert (
        browser.token(sp, browser.sign_in(sp, "nicois")["code"], **credentials).status_code == 200
    )
    replay = browser.token(sp, browser.sign_in(sp, "nicois")["code"], **credentials)
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_client"


def test_bad_client_assertions_are_refused(env: Env, browser: Browser) -> None:
    sp = env.sp("sp-jwt-es256")
    stranger = ServiceProvider(sp.client, ec.generate_private_key(ec.SECP256R1()), "ES256")
    token_url = browser.endpoint("token")
    assertions = {
        "audience is the issuer": (sp.assertion(env.issuer), 200),
        "wrong audience": (sp.assertion("https://elsewhere.example/token"), 401),
        "expired": (sp.assertion(token_url, exp=int(time.time()) - 1), 401),
        "iss is not sub": (sp.assertion(token_url, sub="someone-else"), 401),
        "no jti": (sp.assertion(token_url, jti=None), 401),
        "unregistered key": (stranger.assertion(token_url), 401),
        "unsigned": (jwt.encode({"iss": sp.client_id}, "", algorithm="none"), 401),
    }
    for name, (assertion, status) in assertions.items():
        code = browser.sign_in(sp, "nicois", prompt="login")["code"]
        response = browser.token(sp, code, client_assertion=assertion)
        assert response.status_code == status, name
        if status == 401:
            assert response.json()["error"] == "invalid_client", name
    # expiry is judged by the simulator's clock: an assertion fresh in real time is stale there
    assertion = sp.assertion(token_url)
    env.clock.advance(61)
    code = browser.sign_in(sp, "nicois", prompt="login")["code"]
    response = browser.token(sp, code, client_assertion=assertion)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")


# -- authorization errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": "unknown-client"},
        {"client_id": None},
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": "https://a.example/callback/"},
        {"redirect_uri": None},
    ],
    ids=["unknown-client", "no-client", "foreign-uri", "trailing-slash", "no-uri"],
)
def test_unknown_client_or_redirect_uri_gets_an_error_page(
    env: Env, browser: Browser, params: dict[str, str | None]
) -> None:
    response = browser.authorize(env.sp("sp-secret-es256"), **params)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "pas le vrai FranceConnect" in response.text


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"state": "s" * 31}, "invalid_request"),
        ({"nonce": "n" * 31}, "invalid_request"),
        ({"nonce": None}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "invalid_request"),
        ({"scope": "identite_pivot email"}, "invalid_scope"),
        ({"prompt": "none"}, "invalid_request"),
        ({"claims": "{not json"}, "invalid_request"),
        ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_invalid_requests_are_redirected_with_state_and_iss(
    env: Env, browser: Browser, params: dict[str, str | None], error: str
) -> None:
    sp = env.sp("sp-secret-es256")
    response = browser.authorize(sp, **params)
    assert response.status_code == 303
    assert response.headers["location"].startswith(sp.redirect_uri + "?")
    answer = query(response.headers["location"])
    assert answer["error"] == error
    assert answer["error_description"]
    assert answer["state"] == params.get("state", browser.state)
    assert answer["iss"] == env.issuer
    assert "code" not in answer


def test_prompt_consent_is_accepted(env: Env, browser: Browser) -> None:
    assert browser.sign_in(env.sp("sp-secret-es256"), "nicois", prompt="login consent")["code"]


# -- login page, cancel, session -----------------------------------------------------------------


def test_login_page_is_bilingual_lists_the_identities_and_is_locked_down(
    env: Env, browser: Browser
) -> None:
    location = browser.authorize(env.sp("sp-secret-es256")).headers["location"]
    page = browser.http.get(location)
    assert page.status_code == 200
    assert "Simulateur FranceConnect — pas le vrai FranceConnect" in page.text
    assert "not the real FranceConnect" in page.text
    for login in IDENTITIES:
        assert f"<code>{login}</code>" in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert "<script" not in page.text


def test_wrong_password_shows_the_login_page_again(env: Env, browser: Browser) -> None:
    sp = env.sp("sp-secret-es256")
    location = browser.authorize(sp).headers["location"]
    for login, password in (("nicois", "1234"), ("nobody", "123")):
        again = browser.submit_login(location, login, password)
        assert again.status_code == 200
        assert "Identifiant ou mot de passe incorrect" in again.text
    success = browser.submit_login(location, "nicois")
    assert query(success.headers["location"])["code"]


@pytest.mark.parametrize(("login", "action"), [("nicois", "cancel"), ("cancel", "login")])
def test_cancelling_answers_access_denied(
    env: Env, browser: Browser, login: str, action: str
) -> None:
    sp = env.sp("sp-jwt-es256")
    location = browser.authorize(sp).headers["location"]
    response = browser.submit_login(location, login, action=action)
    assert response.status_code == 303
    answer = query(response.headers["location"])
    assert answer["error"] == "access_denied"
    assert answer["state"] == browser.state
    assert answer["iss"] == env.issuer
    assert browser.http.get(location).status_code == 400  # the interaction is over


def test_an_interaction_belongs_to_its_browser(env: Env, browser: Browser) -> None:
    location = browser.authorize(env.sp("sp-secret-es256")).headers["location"]
    with Browser(env.issuer) as other:
        assert other.http.get(location).status_code == 400
        stolen = other.http.post(location, data={"login": "nicois", "password": "123"})
        assert stolen.status_code == 400
        assert "location" not in stolen.headers


def test_single_sign_on_until_prompt_login(env: Env, browser: Browser) -> None:
    sp, other = env.sp("sp-secret-es256"), env.sp("sp-jwt-rs256")
    browser.sign_in(sp, "nicois")
    silent = browser.authorize(other)
    assert silent.status_code == 303
    assert silent.headers["location"].startswith(other.redirect_uri + "?code=")
    forced = browser.authorize(other, prompt="login")
    assert forced.headers["location"].startswith(f"{env.issuer}/interaction/")


def test_session_end_accepts_an_expired_hint_and_ends_the_session(
    env: Env, browser: Browser
) -> None:
    sp = env.sp("sp-jwt-es256")
    id_token = browser.tokens(sp, "nicois")["id_token"]
    env.clock.advance(120)  # the hint has expired by the simulator's clock
    target = sp.client.post_logout_redirect_uris[0]
    response = browser.http.get(
        browser.endpoint("session/end"),
        params={
            "id_token_hint": id_token,
            "state": "logout-state",
            "post_logout_redirect_uri": target,
        },
    )
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith("https://c.example/logged-out?")
    assert query(location) == {"from": "fc", "state": "logout-state"}
    after = browser.authorize(sp)
    assert after.headers["location"].startswith(f"{env.issuer}/interaction/")  # signed out


def test_session_end_refuses_what_it_cannot_trust(env: Env, browser: Browser) -> None:
    sp, other = env.sp("sp-secret-es256"), env.sp("sp-secret-rs256")
    body = browser.tokens(sp, "nicois")
    id_token = body["id_token"]
    userinfo_jwt = browser.userinfo(body["access_token"]).text
    forged = jwt.encode(
        jwt.decode(id_token, options={"verify_signature": False}),
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": jwt.get_unverified_header(id_token)["kid"]},
    )
    good = {
        "id_token_hint": id_token,
        "state": "logout-state",
        "post_logout_redirect_uri": sp.client.post_logout_redirect_uris[0],
    }
    cases: dict[str, dict[str, str | None]] = {
        "other client's uri": {
            "post_logout_redirect_uri": other.client.post_logout_redirect_uris[0]
        },
        "unregistered uri": {"post_logout_redirect_uri": "https://evil.example/"},
        "no state": {"state": None},
        "no hint": {"id_token_hint": None},
        "forged hint": {"id_token_hint": forged},
        "garbage hint": {"id_token_hint": "not-a-jwt"},
        "userinfo jwt as hint": {"id_token_hint": userinfo_jwt},
        "client mismatch": {"client_id": other.client_id},
    }
    for name, change in cases.items():
        params = {k: v for k, v in {**good, **change}.items() if v is not None}
        response = browser.http.get(browser.endpoint("session/end"), params=params)
        assert response.status_code == 400, name
        assert "location" not in response.headers, name
    assert browser.http.get(browser.endpoint("session/end"), params=good).status_code == 303


def test_logs_hold_no_claims_codes_or_tokens(
    env: Env, browser: Browser, caplog: pytest.LogCaptureFixture
) -> None:
    sp = env.sp("sp-secret-es256")
    with caplog.at_level(logging.DEBUG):
        callback = browser.sign_in(sp, "prenoms-composes")
        body = browser.token(sp, callback["code"]).json()
        browser.userinfo(body["access_token"])
    # the test's own HTTP client logs the URLs it calls: only the server's lines matter
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert any(r.name == "nicecard.fcsim" for r in records)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records)
    for secret in (callback["code"], body["access_token"], "Marie-Thérèse", "D'ESSAI"):
        assert secret not in text


# -- error scenarios ---------------------------------------------------------------------------


def test_userinfo_500_scenario(env: Env, browser: Browser) -> None:
    token = browser.tokens(env.sp("sp-secret-es256"), "userinfo-500")["access_token"]
    assert browser.userinfo(token).status_code == 500


def test_userinfo_malformed_scenario(env: Env, browser: Browser) -> None:
    sp = env.sp("sp-secret-es256")
    token = browser.tokens(sp, "userinfo-malformed")["access_token"]
    response = browser.userinfo(token)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jwt")
    with pytest.raises(jwt.PyJWTError):
        browser.verify(response.text, "ES256", sp.client_id)


def test_slow_userinfo_times_out_while_the_simulator_stays_responsive(
    env: Env, browser: Browser
) -> None:
    token = browser.tokens(env.sp("sp-secret-es256"), "slow")["access_token"]
    with Browser(env.issuer, timeout=0.5) as impatient:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout):
            impatient.userinfo(token)
        assert time.monotonic() - started < 1.5
        # the sleep is asynchronous: the simulator answers others meanwhile
        assert impatient.http.get(f"{env.issuer}/jwks").status_code == 200


# -- configuration and mounting ------------------------------------------------------------------


def test_configuration_mistakes_are_refused(providers: tuple[ServiceProvider, ...]) -> None:
    client = providers[0].client
    with pytest.raises(SimulatorConfigError, match="/api/v2"):
        SimulatorConfig("http://127.0.0.1:8000/fc-sim", (client,), SUB_SECRET)
    with pytest.raises(SimulatorConfigError, match="sub_secret"):
        SimulatorConfig("http://127.0.0.1:8000/api/v2", (client,), b"short")
    with pytest.raises(SimulatorConfigError, match="unique"):
        SimulatorConfig("http://127.0.0.1:8000/api/v2", (client, client), SUB_SECRET)
    with pytest.raises(SimulatorConfigError, match="ES256, RS256"):
        SimulatorClient("x", ("https://x.example/cb",), (), client_secret="s" * 32,
                        id_token_signed_response_alg="HS256")  # fmt: skip
    with pytest.raises(SimulatorConfigError, match="client_secret or jwks"):
        SimulatorClient("x", ("https://x.example/cb",), ())


def test_mounted_under_a_prefix_every_url_carries_it(
    providers: tuple[ServiceProvider, ...], key_file: Path, free_port: int
) -> None:
    issuer = f"http://127.0.0.1:{free_port}/fc-sim/api/v2"
    parent = FastAPI()
    parent.mount("/fc-sim", create_simulator(config_for(issuer, providers, key_file)))
    with serve(parent, port=free_port), Browser(issuer) as mounted:
        doc = mounted.http.get(f"{issuer}/.well-known/openid-configuration").json()
        assert doc["token_endpoint"] == f"{issuer}/token"
        sp = providers[3]
        response = mounted.authorize(sp)
        assert response.headers["location"].startswith(f"{issuer}/interaction/")
        assert "Path=/fc-sim/api/v2" in response.headers["set-cookie"]
        body = mounted.tokens(sp, "corse-du-sud")
        claims = mounted.verify(mounted.userinfo(body["access_token"]).text, "ES256", sp.client_id)
        assert claims["birthplace"] == "2A004"
