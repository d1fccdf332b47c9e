"""Driving a sign-in through the built-in FranceConnect simulator, as a browser would."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import jwt

FORM_ACTION = re.compile(r'<form method="post" action="([^"]+)"')
CALLBACK = "/auth/franceconnect/callback"


def to_simulator_login(client: httpx.Client, return_to: str = "/") -> str:
    """From our start route to the simulator's login page; returns the form's action URL."""
    response = client.get("/auth/franceconnect/start", params={"return_to": return_to})
    assert response.status_code == 303, response.text
    url = response.headers["location"]
    for _ in range(5):
        response = client.get(url)
        if response.status_code in (302, 303):
            url = urljoin(url, response.headers["location"])
            continue
        break
    assert response.status_code == 200, response.text
    match = FORM_ACTION.search(response.text)
    assert match, response.text
    return urljoin(url, match.group(1).replace("&amp;", "&"))


def submit_login(
    client: httpx.Client, action_url: str, login: str, password: str = "123", action: str = "login"
) -> str:
    """Posts the simulator's form; returns where the simulator sends the browser back."""
    response = client.post(
        action_url, data={"login": login, "password": password, "action": action}
    )
    assert response.status_code in (302, 303), response.text
    return str(response.headers["location"])


def sign_in(client: httpx.Client, login: str, *, timeout: float | None = None) -> httpx.Response:
    """The whole sign-in; returns our callback's response (303 home on success)."""
    back = submit_login(client, to_simulator_login(client), login)
    assert urlsplit(back).path == CALLBACK, back
    return client.get(back, timeout=timeout) if timeout else client.get(back)


def fc_sub_of(base: str, data_dir: Path, login: str) -> str:
    """FranceConnect's sub for ``login``, obtained as our registered client would, but outside
    the service: the test needs it to prove the service never stores it."""
    secrets = json.loads((data_dir / "fc-sim-secrets.json").read_text())
    with httpx.Client(base_url=base, follow_redirects=False) as client:
        back = submit_login(client, to_simulator_login(client), login)
        code = parse_qs(urlsplit(back).query)["code"][0]
        tokens = client.post(
            "/fc-sim/api/v2/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": base + CALLBACK,
                "client_id": "nicecard-dev",
                "client_secret": secrets["client_secret"],
            },
        ).json()
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    return str(claims["sub"])
