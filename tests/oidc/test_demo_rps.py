"""The two demonstration relying parties: one citizen, two sectors, two pseudonyms, and only
the claims each app is entitled to."""

from __future__ import annotations

import re

from tests.oidc.browser import Citizen
from tests.oidc.conftest import Provider

SUB = re.compile(r'<code id="demo-sub">([^<]+)</code>')


def test_same_citizen_two_pseudonyms(provider: Provider) -> None:
    port = provider.url.rsplit(":", 1)[1]
    person = Citizen(provider.url)
    try:
        subs = {}
        pages = {}
        for name, host in (("transit", "127.0.0.1"), ("city", "localhost")):
            base = f"http://{host}:{port}/demo/{name}"
            page = person.go(base + "/login", stop_at="http://never.example/")
            assert page.status_code == 200, page.text
            match = SUB.search(page.text)
            assert match, page.text
            subs[name] = match.group(1)
            pages[name] = page.text
        assert subs["transit"] != subs["city"]
        assert "age_over_18" in pages["transit"]
        assert "family_name" not in pages["transit"]
        assert "family_name" in pages["city"]
        assert "birthdate" not in pages["city"]
    finally:
        person.close()
