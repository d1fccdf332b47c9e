"""The sign-in as a citizen clicks through it, in Debian's chromium driven by Playwright."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from identity.app import create_app
from tests.conftest import _free_port, make_settings, serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="Debian's chromium is not installed (apt-get install chromium)",
    ),
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    settings = make_settings(tmp_path_factory.mktemp("var"), issuer=f"http://127.0.0.1:{port}")
    with serve(create_app(settings), port=port) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


def test_citizen_signs_in_and_out(base_url: str, browser: object, tmp_path: Path) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    page = browser.new_page(locale="fr-FR")
    page.goto(base_url + "/")
    expect(page.locator("#franceconnect-button")).to_contain_text("FranceConnect")
    expect(page.get_by_role("link", name="Qu’est-ce que FranceConnect ?")).to_have_attribute(
        "target", "_blank"
    )
    page.screenshot(path=str(tmp_path / "home.png"))
    page.click("#franceconnect-button")
    expect(page.locator("body")).to_contain_text("Simulateur")
    page.fill("#login", "prenoms-composes")
    page.fill("#password", "123")
    page.click("button[value=login]")
    expect(page.locator("#claims")).to_contain_text("Marie-Thérèse")
    expect(page.locator("#claims")).to_contain_text("D'ESSAI-LÉGER")
    page.screenshot(path=str(tmp_path / "signed-in.png"), full_page=True)
    page.click("#logout")
    expect(page.locator("#message")).to_contain_text("déconnecté")
    page.goto(base_url + "/?lang=en")
    expect(page.locator("#franceconnect-button")).to_contain_text("Sign in with")
    page.close()


def test_cancel_in_the_simulator_shows_a_clear_page(base_url: str, browser: object) -> None:
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    page = browser.new_page(locale="fr-FR")
    page.goto(base_url + "/")
    page.click("#franceconnect-button")
    page.click("button[value=cancel]")
    expect(page.locator("h1")).to_contain_text("La connexion n’a pas abouti")
    page.close()
