"""Client authentication at the token endpoint over real HTTP (RFC 6749 §2.3, RFC 7523 §3).

Happy paths are driven by Authlib's OAuth client (the server verifies with pyjwt); negative
cases send hand-made requests so each one breaks exactly one rule.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import jwt
import pytest
import sqlalchemy as sa
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from cryptography.hazmat.primitives import serialization
from fastapi import FastAPI
from joserfc.jwk import ECKey, RSAKey

from identity import migrate
from identity.app import create_app
from identity.db import create_engine
from keys.keyring import utc_now
from oidc import client_auth
from oidc.clients import AuthMethod, Client, GrantType
from oidc.secrets import hash_client_secret
from oidc.tables import (
    AsyncPgReplayCache,
    ReplayedAssertion,
    ReplayStoreError,
    SqlClientRegistry,
    oauth_client,
)
from tests.conftest import make_settings, serve
from tests.oidc.conftest import (
    ASSERTION_TYPE,
    ClientKey,
    OAuth2Client,
    Provider,
    decode_unverified,
    es256_key,
    pretty,
    rsa_key,
)


def _token(provider: Provider, **data: str) -> httpx.Response:
    return httpx.post(
        provider.token_url, data={"grant_type": "client_credentials", **data}, timeout=10
    )


def _with_assertion(provider: Provider, assertion: str, **data: str) -> httpx.Response:
    return _token(
        provider, client_assertion_type=ASSERTION_TYPE, client_assertion=assertion, **data
    )


def _assert_invalid_client(response: httpx.Response, fragment: str = "") -> None:
    assert response.status_code == 401, pretty(response)
    assert response.json()["error"] == "invalid_client"
    assert fragment in response.json().get("error_description", "")
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["www-authenticate"].startswith("Basic")


# -- client_secret_basic and client_secret_post ----------------------------------------------


@pytest.mark.parametrize("method", [AuthMethod.CLIENT_SECRET_BASIC, AuthMethod.CLIENT_SECRET_POST])
def test_secret_methods_with_authlib_client(provider: Provider, method: AuthMethod) -> None:
    secret = provider.register("partner", method)
    with OAuth2Client(
        "partner", secret, token_endpoint_auth_method=method.value, scope="acts:write"
    ) as client:
        token = client.fetch_token(provider.token_url, grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    assert token["scope"] == "acts:write"
    _, claims = decode_unverified(token["access_token"])
    assert claims["client_id"] == "partner"


def test_basic_credentials_are_form_urlencoded(provider: Provider) -> None:
    """RFC 6749 §2.3.1: id and secret are application/x-www-form-urlencoded before base64."""
    client_id = "transit:ligne+1 nice"  # a colon, a plus and a space, all legal in client_id
    secret = provider.register(client_id)
    assert secret is not None
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    response = httpx.post(
        provider.token_url,
        data={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic " + base64.b64encode(raw).decode()},
    )
    assert response.status_code == 200, pretty(response)
    assert decode_unverified(response.json()["access_token"])[1]["client_id"] == client_id


def test_wrong_secret_and_unknown_client_look_the_same(provider: Provider) -> None:
    provider.register("partner")
    wrong = httpx.post(
        provider.token_url, data={"grant_type": "client_credentials"}, auth=("partner", "nope")
    )
    unknown = httpx.post(
        provider.token_url, data={"grant_type": "client_credentials"}, auth=("ghost", "nope")
    )
    _assert_invalid_client(wrong)
    _assert_invalid_client(unknown)
    assert wrong.json() == unknown.json()


def test_a_client_must_use_the_method_it_registered(provider: Provider) -> None:
    secret = provider.register("partner", AuthMethod.CLIENT_SECRET_BASIC)
    assert secret is not None
    response = _token(provider, client_id="partner", client_secret=secret)
    _assert_invalid_client(response)


def test_two_methods_in_one_request_are_refused(provider: Provider) -> None:
    secret = provider.register("partner", AuthMethod.CLIENT_SECRET_POST)
    assert secret is not None
    response = httpx.post(
        provider.token_url,
        data={"grant_type": "client_credentials", "client_id": "partner", "client_secret": secret},
        auth=("partner", secret),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_secret_in_the_query_string_is_refused(provider: Provider) -> None:
    secret = provider.register("partner", AuthMethod.CLIENT_SECRET_POST)
    response = httpx.post(
        provider.token_url,
        params={"client_secret": secret},
        data={"grant_type": "client_credentials", "client_id": "partner"},
    )
    assert response.status_code == 400
    assert "request body" in response.json()["error_description"]


def test_no_authentication_at_all(provider: Provider) -> None:
    _assert_invalid_client(_token(provider), "required")


def test_malformed_basic_header(provider: Provider) -> None:
    for value in ("Basic %%%", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic Og=="):
        response = httpx.post(
            provider.token_url,
            data={"grant_type": "client_credentials"},
            headers={"Authorization": value},
        )
        _assert_invalid_client(response)


def test_secret_is_stored_only_as_its_hash(provider: Provider) -> None:
    secret = provider.register("partner")
    assert secret is not None
    engine = provider.app.state.runtime.identity_engine
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(oauth_client).where(oauth_client.c.client_id == "partner")
        ).all()
    dump = repr(rows).encode() + b"".join(
        bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
        for row in rows
        for v in row
    )
    assert secret.encode() not in dump
    assert base64.b64encode(secret.encode()) not in dump
    assert rows[0]._mapping["secret_hash"] == hash_client_secret(secret)
    assert len(rows[0]._mapping["secret_hash"]) == hashlib.sha256().digest_size
    # And the database file itself never saw it.
    data_dir = provider.app.state.settings.data_dir
    for path in data_dir.glob("identity.db*"):
        assert secret.encode() not in path.read_bytes()


def test_public_client_cannot_use_client_credentials(provider: Provider) -> None:
    provider.register(
        "spa",
        AuthMethod.NONE,
        grants=(GrantType.AUTHORIZATION_CODE,),
        redirect_uris=("https://app.example/cb",),
    )
    response = _token(provider, client_id="spa")
    assert response.status_code == 400, pretty(response)
    assert response.json()["error"] == "unauthorized_client"


# -- private_key_jwt --------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "PS256", "RS256"])
def test_private_key_jwt_with_authlib_client(provider: Provider, alg: str) -> None:
    key = es256_key() if alg == "ES256" else rsa_key()
    provider.register_key("partner", key)
    signing_key = (ECKey if alg == "ES256" else RSAKey).import_key(key.pem(), {"kid": key.kid})
    auth = PrivateKeyJWT(provider.token_url, alg=alg, headers={"kid": key.kid})
    with OAuth2Client(
        "partner", signing_key, token_endpoint_auth_method=auth, scope="deposits:write"
    ) as client:
        token = client.fetch_token(provider.token_url, grant_type="client_credentials")
    assert token["scope"] == "deposits:write"
    assert decode_unverified(token["access_token"])[1]["sub"] == "partner"


@pytest.mark.parametrize("audience", ["issuer", "token_endpoint", "list"])
def test_audience_is_the_issuer_or_the_token_endpoint(provider: Provider, audience: str) -> None:
    key = es256_key()
    provider.register_key("partner", key)
    auds: dict[str, str | list[str]] = {
        "issuer": provider.url,
        "token_endpoint": provider.token_url,
        "list": ["https://elsewhere.example", provider.url],
    }
    aud = auds[audience]
    response = _with_assertion(provider, key.assertion("partner", aud))
    assert response.status_code == 200, pretty(response)


def test_replayed_assertion_is_refused(provider: Provider) -> None:
    key = es256_key()
    provider.register_key("partner", key)
    assertion = key.assertion("partner", provider.url)
    assert _with_assertion(provider, assertion).status_code == 200
    _assert_invalid_client(_with_assertion(provider, assertion), "replay")


def test_the_same_jti_from_two_clients_is_not_a_replay(provider: Provider) -> None:
    one, two = es256_key(), es256_key()
    provider.register_key("one", one)
    provider.register_key("two", two)
    assert _with_assertion(provider, one.assertion("one", provider.url, jti="x")).is_success
    assert _with_assertion(provider, two.assertion("two", provider.url, jti="x")).is_success


def _hs256_forgery(key: ClientKey, claims: dict[str, Any]) -> str:
    """The classic confusion: an HMAC keyed with the client's (public) key."""
    public_pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(json.dumps(claims).encode())
    mac = hmac.new(public_pem, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(mac)).decode()


def test_hs256_and_none_assertions_are_refused(provider: Provider) -> None:
    key = es256_key()
    provider.register_key("partner", key)
    _, claims = decode_unverified(key.assertion("partner", provider.url))
    forged = _hs256_forgery(key, claims)
    _assert_invalid_client(_with_assertion(provider, forged), "alg")
    unsigned = jwt.encode(claims, key="", algorithm="none")
    _assert_invalid_client(_with_assertion(provider, unsigned), "alg")


def test_wrong_audience_is_refused(provider: Provider) -> None:
    key = es256_key()
    provider.register_key("partner", key)
    for aud in ("https://other-op.example", provider.url + "/introspect-nope"):
        response = _with_assertion(provider, key.assertion("partner", aud))
        _assert_invalid_client(response, "aud")


def test_expiry_rules(provider: Provider, clock: Any) -> None:
    key = es256_key()
    provider.register_key("partner", key)
    now = int(clock().timestamp())
    expired = key.assertion("partner", provider.url, iat=now - 600, exp=now - 120)
    _assert_invalid_client(_with_assertion(provider, expired), "expired")
    no_exp = key.assertion("partner", provider.url, exp=None)
    _assert_invalid_client(_with_assertion(provider, no_exp), "exp")
    too_long = key.assertion("partner", provider.url, exp=now + 7200)
    _assert_invalid_client(_with_assertion(provider, too_long), "ahead")
    not_yet = key.assertion("partner", provider.url, nbf=now + 300)
    _assert_invalid_client(_with_assertion(provider, not_yet), "nbf")
    fine = key.assertion("partner", provider.url, exp=now + 60)
    assert _with_assertion(provider, fine).status_code == 200
    # The provider's clock decides: an hour later the same kind of assertion has expired.
    clock.advance(3600)
    late = key.assertion("partner", provider.url, exp=now + 60)
    _assert_invalid_client(_with_assertion(provider, late), "expired")


def test_claims_that_must_be_right(provider: Provider) -> None:
    key = es256_key()
    provider.register_key("partner", key)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"jti": None}, "jti"),
        ({"iss": "someone-else"}, "iss"),
        ({"sub": "ghost", "iss": "ghost"}, "failed"),
    ]
    for claims, fragment in cases:
        response = _with_assertion(provider, key.assertion("partner", provider.url, **claims))
        _assert_invalid_client(response, fragment)
    mismatch = _with_assertion(provider, key.assertion("partner", provider.url), client_id="x")
    _assert_invalid_client(mismatch, "client_id")
    bad_type = _token(
        provider,
        client_assertion_type="urn:example:saml",
        client_assertion=key.assertion("partner", provider.url),
    )
    _assert_invalid_client(bad_type, "client_assertion_type")
    garbage = _with_assertion(provider, "not.a.jwt")
    _assert_invalid_client(garbage, "JWT")


def test_key_of_another_client_or_unknown_kid(provider: Provider) -> None:
    mine, theirs = es256_key(), es256_key()
    provider.register_key("partner", mine)
    forged = ClientKey(theirs.private, kid=mine.kid)
    _assert_invalid_client(
        _with_assertion(provider, forged.assertion("partner", provider.url)), "signature"
    )
    unknown = ClientKey(theirs.private, kid="unknown")
    _assert_invalid_client(
        _with_assertion(provider, unknown.assertion("partner", provider.url)), "kid"
    )


def test_registered_signing_alg_is_enforced(provider: Provider) -> None:
    key = rsa_key()
    provider.register_key("partner", key, token_endpoint_auth_signing_alg="PS256")
    assert _with_assertion(provider, key.assertion("partner", provider.url, alg="PS256")).is_success
    _assert_invalid_client(
        _with_assertion(provider, key.assertion("partner", provider.url, alg="RS256")), "PS256"
    )


# -- jwks_uri ---------------------------------------------------------------------------------


@pytest.fixture
def client_jwks() -> Iterator[tuple[str, dict[str, Any]]]:
    """A tiny JWKS server for a client; the test edits the served set."""
    served: dict[str, Any] = {"keys": [], "hits": 0}
    app = FastAPI()

    @app.get("/jwks.json")
    def jwks() -> dict[str, Any]:
        served["hits"] += 1
        return {"keys": served["keys"]}

    with serve(app) as url:
        yield url + "/jwks.json", served


def test_jwks_uri_client_and_key_rotation(
    provider: Provider, client_jwks: tuple[str, dict[str, Any]]
) -> None:
    uri, served = client_jwks
    first, second = es256_key(), es256_key()
    served["keys"] = [first.public_jwk()]
    provider.register("partner", AuthMethod.PRIVATE_KEY_JWT, jwks_uri=uri)
    for _ in range(3):
        assert _with_assertion(provider, first.assertion("partner", provider.url)).is_success
    assert served["hits"] == 1  # fetched once, then cached
    # The client rotates: its new kid is unknown, so the set is fetched again, once.
    served["keys"] = [first.public_jwk(), second.public_jwk()]
    cache = provider.app.state.oidc.authenticator._keys._remote
    cache[uri] = (cache[uri][0] - client_auth.JWKS_URI_REFETCH_INTERVAL, cache[uri][1])
    assert _with_assertion(provider, second.assertion("partner", provider.url)).is_success
    assert served["hits"] == 2
    # An unknown kid right after a fetch does not fetch again (no hammering the client).
    stranger = ClientKey(es256_key().private, kid="stranger")
    _assert_invalid_client(_with_assertion(provider, stranger.assertion("partner", provider.url)))
    assert served["hits"] == 2


def test_unreachable_jwks_uri(provider: Provider) -> None:
    key = es256_key()
    provider.register(
        "partner", AuthMethod.PRIVATE_KEY_JWT, jwks_uri="http://127.0.0.1:9/jwks.json"
    )
    _assert_invalid_client(
        _with_assertion(provider, key.assertion("partner", provider.url)), "jwks_uri"
    )


# -- replay across processes sharing PostgreSQL -----------------------------------------------


@pytest.mark.postgres
def test_replay_refused_across_two_servers_sharing_postgresql(
    postgres_url: str, tmp_path: Path
) -> None:
    """Two application instances (as two server processes would be) on one database: an
    assertion accepted by one is refused by the other, and of concurrent replays sent to both,
    exactly one wins."""
    issuer = "http://127.0.0.1:8000"
    kek = base64.b64encode(os.urandom(32)).decode()
    settings = [
        make_settings(tmp_path / name, identity_database_url=postgres_url, issuer=issuer, kek=kek)
        for name in ("a", "b")
    ]
    engine = create_engine(postgres_url, settings[0])
    migrate.upgrade(migrate.Store.IDENTITY, engine)
    key = es256_key()
    SqlClientRegistry(engine, utc_now).add(
        Client(
            "partner",
            AuthMethod.PRIVATE_KEY_JWT,
            grant_types=frozenset({GrantType.CLIENT_CREDENTIALS}),
            response_types=frozenset(),
            scope=frozenset({"acts:write"}),
            jwks={"keys": [key.public_jwk()]},
        )
    )
    engine.dispose()
    form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE}
    with serve(create_app(settings[0])) as url_a, serve(create_app(settings[1])) as url_b:
        assertion = key.assertion("partner", issuer)
        accepted = httpx.post(url_a + "/token", data={**form, "client_assertion": assertion})
        assert accepted.status_code == 200, pretty(accepted)
        replay = httpx.post(url_b + "/token", data={**form, "client_assertion": assertion})
        _assert_invalid_client(replay, "replay")

        async def race() -> list[int]:
            contested = key.assertion("partner", issuer)
            async with httpx.AsyncClient(timeout=10) as http:
                responses = await asyncio.gather(
                    *(
                        http.post(url + "/token", data={**form, "client_assertion": contested})
                        for url in [url_a, url_b] * 8
                    )
                )
            return sorted(r.status_code for r in responses)

        assert asyncio.run(race()) == [200] + [401] * 15


@pytest.mark.postgres
def test_sequential_assertions_never_wait_for_a_finished_writer(
    postgres_url: str, tmp_path: Path
) -> None:
    """One request at a time with one writer: each use() must start a writer even when the
    previous writer has finished but its done-callback has not run yet (it used to hang)."""
    engine = create_engine(
        postgres_url, make_settings(tmp_path, identity_database_url=postgres_url)
    )
    migrate.upgrade(migrate.Store.IDENTITY, engine)
    cache = AsyncPgReplayCache(engine, writers=1)

    async def one_at_a_time() -> None:
        try:
            for n in range(20):
                when = utc_now()
                async with asyncio.timeout(5):  # not wait_for: its extra task hides the race
                    await cache.use("partner", f"sequential-{os.urandom(8).hex()}-{n}", when, when)
        finally:
            await cache.aclose()

    asyncio.run(one_at_a_time())
    engine.dispose()


def test_replay_store_outage_is_a_clear_error() -> None:
    """A database that cannot be reached gives ReplayStoreError (503 temporarily_unavailable
    at the endpoint), never a silent acceptance."""
    engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:9/nothing")
    cache = AsyncPgReplayCache(engine)

    async def use() -> None:
        try:
            await cache.use("partner", "jti-1", utc_now(), utc_now())
        finally:
            await cache.aclose()

    with pytest.raises(ReplayStoreError):
        asyncio.run(use())
    engine.dispose()


def test_sqlite_replay_cache_forgets_expired_jtis(provider: Provider, clock: Any) -> None:
    replay = provider.app.state.oidc.replay
    now = clock()
    replay.use("partner", "once", now + timedelta(seconds=60), now)
    with pytest.raises(ReplayedAssertion):
        replay.use("partner", "once", now + timedelta(seconds=60), now)
    replay.use("other", "once", now + timedelta(seconds=60), now)  # per client
    assert replay.purge(now) == 0
    assert replay.purge(now + timedelta(seconds=61)) == 2
    replay.use("partner", "once", now + timedelta(seconds=120), now)  # gone, so accepted
