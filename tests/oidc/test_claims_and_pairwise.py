"""Pairwise subjects and claim release, as pure functions (the HTTP flows test them again)."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from oidc.claims import (
    age_on,
    derived_claims,
    parse_claims_request,
    release,
    requested_claims,
)
from oidc.clients import AuthMethod, Client
from oidc.errors import InvalidRequest
from oidc.pairwise import pairwise_subject, sector_of

SECRET = b"k" * 32


def _client(redirects: tuple[str, ...], sector: str | None = None) -> Client:
    return Client(
        client_id="c",
        token_endpoint_auth_method=AuthMethod.NONE,
        redirect_uris=redirects,
        sector_identifier_uri=sector,
    )


def test_sector_from_redirect_host_or_sector_identifier() -> None:
    assert sector_of(_client(("https://transit.example/cb",))) == "transit.example"
    assert (
        sector_of(
            _client(("https://a.example/cb", "https://b.example/cb"), "https://city.example/s.json")
        )
        == "city.example"
    )


@given(account=st.text(min_size=1, max_size=40), sector=st.text(min_size=1, max_size=40))
def test_pairwise_is_stable_and_per_sector(account: str, sector: str) -> None:
    sub = pairwise_subject(SECRET, sector, account)
    assert sub == pairwise_subject(SECRET, sector, account)
    assert len(sub) == 43
    assert sub != pairwise_subject(SECRET, sector + "x", account)
    assert sub != pairwise_subject(SECRET, sector, account + "x")
    assert sub != pairwise_subject(b"j" * 32, sector, account)
    assert account not in sub or len(account) < 4


def test_no_collision_by_concatenation() -> None:
    assert pairwise_subject(SECRET, "ab", "c") != pairwise_subject(SECRET, "a", "bc")


@pytest.mark.parametrize(
    ("born", "today", "age"),
    [
        ("2008-11-25", "2026-11-25", 18),
        ("2008-11-26", "2026-11-25", 17),
        ("2008-02-29", "2026-02-28", 17),
        ("2008-02-29", "2026-03-01", 18),
    ],
)
def test_age_on_birthdays(born: str, today: str, age: int) -> None:
    assert age_on(date.fromisoformat(born), date.fromisoformat(today)) == age


def test_derived_claims_and_brackets() -> None:
    today = date(2026, 11, 25)
    assert derived_claims({"birthdate": "2012-09-03"}, today) == {
        "age_over_18": False,
        "age_bracket": "0-14",
    }
    assert derived_claims({"birthdate": "2006-01-01"}, today)["age_bracket"] == "15-25"
    assert derived_claims({"birthdate": "1958-01-01"}, today) == {
        "age_over_18": True,
        "age_bracket": "65+",
    }
    assert derived_claims({}, today) == {}
    assert derived_claims({"birthdate": "not a date"}, today) == {}


def test_release_only_what_is_asked_and_present() -> None:
    source = {"given_name": "Jean", "birthdate": "1980-05-01", "email": ""}
    released = release(source, {"age_over_18", "email", "given_name"}, date(2026, 1, 1))
    assert released == {"age_over_18": True, "given_name": "Jean"}


def test_claims_request_parameter() -> None:
    request = parse_claims_request(
        '{"userinfo": {"email": {"essential": true}, "given_name": null},'
        ' "id_token": {"age_over_18": {"essential": true}, "unknown_claim": null}}'
    )
    assert request.essential == {"email", "age_over_18"}
    assert requested_claims({"openid"}, request) == {"email", "given_name", "age_over_18"}
    assert requested_claims({"openid", "age"}, parse_claims_request(None)) == {
        "age_over_18",
        "age_bracket",
    }
    for bad in ("[1]", "{", '{"userinfo": 3}', '{"id_token": {"email": 1}}'):
        with pytest.raises(InvalidRequest):
            parse_claims_request(bad)
