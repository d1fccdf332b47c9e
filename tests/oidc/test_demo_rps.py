"""The two demonstration relying parties: one citizen, two sectors, two pseudonyms, and only
the claims each app is entitled to."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ledger.checkpoints import verifier_keys
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


def test_transit_demo_records_a_ride_and_the_receipt_verifies(
    provider: Provider, tmp_path: Path
) -> None:
    port = provider.url.rsplit(":", 1)[1]
    base = f"http://127.0.0.1:{port}/demo/transit"
    person = Citizen(provider.url)
    try:
        page = person.go(base + "/login", stop_at="http://never.example/")
        assert SUB.search(page.text)
        ride = person.client.post(base + "/ride")
        assert ride.status_code == 303
        shown = person.client.get(base + "/").text
        match = re.search(r'id="demo-ride-result">\+(\d+) points — entrée n° (\d+)', shown)
        assert match, shown
        points, index = int(match.group(1)), int(match.group(2))
        assert points > 0  # the catalogue says how many
        mine = person.client.get(provider.url + "/account/points")
        assert f'<strong id="balance">{points}</strong>' in mine.text
        receipt = person.client.get(f"{provider.url}/account/receipts/{index}")
        assert receipt.status_code == 200, receipt.text
        (tmp_path / "ride.tlog-proof").write_bytes(receipt.content)
        settings = provider.app.state.settings
        keys = verifier_keys(provider.app.state.runtime.keyring, settings.effective_ledger_origin)
        checked = subprocess.run(
            [
                str(Path(sys.executable).parent / "ledger-audit"),
                "receipt",
                "ride.tlog-proof",
                "--key",
                keys[0],
                "--origin",
                settings.effective_ledger_origin,
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        # Someone else's entry is nobody's business.
        stranger = Citizen(provider.url, login="corse-du-sud")
        try:
            stranger.go(base + "/login", stop_at="http://never.example/")
            assert (
                stranger.client.get(f"{provider.url}/account/receipts/{index}").status_code == 404
            )
        finally:
            stranger.close()
    finally:
        person.close()
