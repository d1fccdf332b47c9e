"""The token endpoint over real HTTP: the client credentials grant (RFC 6749 §4.4), its
JWT access tokens (RFC 9068), and an OAuth error for every kind of bad request (§5.2)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity.app import create_app
from keys.model import Purpose
from oidc.clients import USER_SCOPES, AuthMethod, GrantType
from tests.conftest import _free_port, make_settings, serve
from tests.oidc.conftest import Clock, OAuth2Client, Provider, decode_unverified, pretty

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _basic(provider: Provider, secret: str | None, client_id: str = "partner") -> httpx.BasicAuth:
    assert secret is not None
    return httpx.BasicAuth(client_id, secret)


def _post(provider: Provider, auth: httpx.Auth | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(provider.token_url, auth=auth, timeout=10, **kwargs)


def _error(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, pretty(response)
    body: dict[str, Any] = response.json()
    assert body["error"] == error
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "application/json"
    return body


# -- the happy path ---------------------------------------------------------------------------


def test_token_response(provider: Provider) -> None:
    secret = provider.register("partner", scope="acts:write")
    response = _post(
        provider,
        _basic(provider, secret),
        data={"grant_type": "client_credentials", "scope": "acts:write"},
    )
    assert response.status_code == 200, pretty(response)
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}  # no refresh token
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert body["scope"] == "acts:write"


def test_access_token_is_an_rfc9068_jwt_signed_by_a_published_key(provider: Provider) -> None:
    secret = provider.register("partner", scope="acts:write")
    token = _post(
        provider, _basic(provider, secret), data={"grant_type": "client_credentials"}
    ).json()["access_token"]
    header, _ = decode_unverified(token)
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"
    jwks = httpx.get(provider.url + "/jwks").json()
    jwk = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    keyring = provider.app.state.runtime.keyring
    assert keyring.active(Purpose.OIDC_ES256).kid == header["kid"]
    claims = jwt.decode(
        token,
        jwt.PyJWK(jwk).key,
        algorithms=["ES256"],
        audience=provider.url,
        issuer=provider.url,
        options={"require": ["exp", "iat", "jti", "sub", "client_id", "aud", "iss"]},
    )
    assert claims["sub"] == claims["client_id"] == "partner"  # RFC 9068 §2.2: the client
    assert claims["scope"] == "acts:write"
    assert claims["exp"] - claims["iat"] == 300
    second = _post(
        provider, _basic(provider, secret), data={"grant_type": "client_credentials"}
    ).json()["access_token"]
    assert decode_unverified(second)[1]["jti"] != claims["jti"]


def test_access_token_lifetime_and_clock_come_from_the_provider(
    provider_factory: Callable[..., Provider], clock: Clock
) -> None:
    provider = provider_factory(access_token_ttl=60)
    secret = provider.register("partner")
    clock.advance(86400)
    body = _post(provider, _basic(provider, secret), data={"grant_type": "client_credentials"})
    assert body.json()["expires_in"] == 60
    _, claims = decode_unverified(body.json()["access_token"])
    assert claims["exp"] - claims["iat"] == 60
    assert claims["iat"] == pytest.approx(clock().timestamp(), abs=5)


def test_authlib_client_credentials_flow(provider: Provider) -> None:
    secret = provider.register("partner")
    with OAuth2Client("partner", secret, scope="deposits:write") as client:
        token = client.fetch_token(provider.token_url, grant_type="client_credentials")
    assert token["scope"] == "deposits:write"
    assert token["expires_at"] > token["expires_in"]


# -- bad requests: each gets its OAuth error, never a 500 -------------------------------------


def test_grant_type_errors(provider: Provider) -> None:
    secret = provider.register("partner")
    auth = _basic(provider, secret)
    _error(_post(provider, auth, data={}), 400, "invalid_request")
    _error(_post(provider, auth, data={"grant_type": ""}), 400, "invalid_request")
    body = _error(
        _post(provider, auth, data={"grant_type": "password"}), 400, "unsupported_grant_type"
    )
    assert "password" in body["error_description"]
    weird = _post(provider, auth, data={"grant_type": 'x"\\\u00e9' * 30})
    description = _error(weird, 400, "unsupported_grant_type")["error_description"]
    assert all(0x20 <= ord(c) <= 0x7E and c not in '"\\' for c in description)  # RFC 6749 §5.2


def test_grant_not_registered_for_the_client(provider: Provider) -> None:
    secret = provider.register(
        "webapp",
        grants=(GrantType.AUTHORIZATION_CODE,),
        redirect_uris=("https://app.example/cb",),
    )
    response = _post(
        provider, _basic(provider, secret, "webapp"), data={"grant_type": "client_credentials"}
    )
    _error(response, 400, "unauthorized_client")


def test_repeated_parameters_are_refused(provider: Provider) -> None:
    secret = provider.register("partner")
    auth = _basic(provider, secret)
    for body in (
        b"grant_type=client_credentials&scope=acts%3Awrite&scope=acts%3Awrite",
        b"grant_type=client_credentials&grant_type=client_credentials",
    ):
        _error(_post(provider, auth, content=body, headers=FORM), 400, "invalid_request")
    repeated_across = _post(
        provider,
        auth,
        params={"scope": "acts:write"},
        data={"grant_type": "client_credentials", "scope": "acts:write"},
    )
    _error(repeated_across, 400, "invalid_request")


def test_empty_parameters_count_as_omitted(provider: Provider) -> None:
    """RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they were
    omitted from the request" (so ``scope=`` asks for the default scope)."""
    secret = provider.register("partner", scope="acts:write")
    response = _post(
        provider,
        _basic(provider, secret),
        content=b"grant_type=client_credentials&scope=&scope=&unknown=ignored",
        headers=FORM,
    )
    assert response.status_code == 200, pretty(response)
    assert response.json()["scope"] == "acts:write"


def test_query_parameters_are_merged(provider: Provider) -> None:
    secret = provider.register("partner")
    response = _post(
        provider,
        _basic(provider, secret),
        params={"scope": "acts:write"},
        data={"grant_type": "client_credentials"},
    )
    assert response.status_code == 200, pretty(response)
    assert response.json()["scope"] == "acts:write"


def test_content_type_and_body_errors(provider: Provider) -> None:
    secret = provider.register("partner")
    auth = _basic(provider, secret)
    _error(_post(provider, auth, json={"grant_type": "client_credentials"}), 400, "invalid_request")
    _error(_post(provider, auth, content=b"grant_type=client_credentials"), 400, "invalid_request")
    _error(
        _post(provider, auth, content=b"grant_type=\xff\xfe", headers=FORM), 400, "invalid_request"
    )
    _error(
        _post(provider, auth, content=b"grant_type=%ff%fe", headers=FORM), 400, "invalid_request"
    )
    huge = b"grant_type=client_credentials&pad=" + b"a" * 70000
    _error(_post(provider, auth, content=huge, headers=FORM), 400, "invalid_request")
    many = b"&".join(b"p%d=1" % i for i in range(100))
    _error(_post(provider, auth, content=many, headers=FORM), 400, "invalid_request")
    charset = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}
    assert _post(
        provider, auth, content=b"grant_type=client_credentials", headers=charset
    ).is_success


def test_only_post(provider: Provider) -> None:
    assert httpx.get(provider.token_url).status_code == 405


def test_scope_errors(provider: Provider) -> None:
    secret = provider.register("partner", scope="acts:write openid")
    auth = _basic(provider, secret)

    def ask(scope: str) -> httpx.Response:
        return _post(provider, auth, data={"grant_type": "client_credentials", "scope": scope})

    _error(ask("deposits:write"), 400, "invalid_scope")
    _error(ask("openid"), 400, "invalid_scope")  # needs a citizen
    _error(ask('acts:write "quoted"'), 400, "invalid_scope")
    _error(ask(" "), 400, "invalid_scope")
    assert ask("acts:write acts:write").json()["scope"] == "acts:write"


def test_client_without_any_machine_scope(provider: Provider) -> None:
    secret = provider.register("partner", scope="")
    response = _post(provider, _basic(provider, secret), data={"grant_type": "client_credentials"})
    _error(response, 400, "invalid_scope")


def test_dpop_bound_client_gets_no_bearer_token(provider: Provider) -> None:
    secret = provider.register("partner", dpop_bound_access_tokens=True)
    response = _post(provider, _basic(provider, secret), data={"grant_type": "client_credentials"})
    _error(response, 400, "invalid_dpop_proof")


def test_secret_rotation_and_removal_take_effect(
    provider_factory: Callable[..., Provider],
) -> None:
    provider = provider_factory(client_cache_seconds=0)
    secret = provider.register("partner")
    auth = _basic(provider, secret)
    assert _post(provider, auth, data={"grant_type": "client_credentials"}).is_success
    provider.registry.remove("partner")
    _error(_post(provider, auth, data={"grant_type": "client_credentials"}), 401, "invalid_client")


# -- scope: requested ∩ allowed, or invalid_scope ---------------------------------------------

ALLOWED = frozenset({"acts:write", "deposits:write", "statements:read"})
UNIVERSE = sorted(ALLOWED | {"acts:read", "openid", "profile", "offline_access", "x:y"})


@pytest.fixture(scope="module")
def scope_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Provider, str]]:
    port = _free_port()
    settings = make_settings(
        Path(tmp_path_factory.mktemp("scope")) / "var", issuer=f"http://127.0.0.1:{port}"
    )
    app = create_app(settings)
    with serve(app, port=port) as url:
        provider = Provider(url, app, Clock())
        secret = provider.register("partner", scope=" ".join(sorted(ALLOWED | {"openid"})))
        assert secret is not None
        yield provider, secret


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requested=st.lists(st.sampled_from(UNIVERSE), max_size=5))
def test_granted_scope_is_the_request_or_an_error(
    scope_provider: tuple[Provider, str], requested: list[str]
) -> None:
    provider, secret = scope_provider
    data = {"grant_type": "client_credentials"}
    if requested:
        data["scope"] = " ".join(requested)
    response = httpx.post(provider.token_url, data=data, auth=("partner", secret))
    asked = frozenset(requested)
    machine = ALLOWED - USER_SCOPES
    if not asked:
        assert response.status_code == 200
        granted = machine
    elif asked <= machine:
        assert response.status_code == 200
        granted = asked
    else:
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_scope"
        return
    assert frozenset(response.json()["scope"].split(" ")) == granted
    _, claims = decode_unverified(response.json()["access_token"])
    assert frozenset(claims["scope"].split(" ")) == granted


def test_auth_method_enum_is_complete() -> None:
    assert {m.value for m in AuthMethod} == {
        "client_secret_basic",
        "client_secret_post",
        "private_key_jwt",
        "none",
    }
