"""A scripted citizen: follows redirects through the OP, the FranceConnect simulator's login
form and the consent page, until the browser is sent back to a relying party."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urljoin

import httpx

SIM_FORM = re.compile(r'<form method="post" action="([^"]+)"')
CONSENT = re.compile(r'name="sealed" value="([0-9a-f]+)".*?name="sealed_kid" value="([^"]+)"', re.S)


@dataclass
class Citizen:
    base: str
    login: str = "nicois"
    consent: str = "allow"
    client: httpx.Client = field(init=False)
    pages: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(follow_redirects=False, timeout=10)

    def close(self) -> None:
        self.client.close()

    def go(self, url: str, stop_at: str) -> httpx.Response:
        """Browse from ``url`` until a redirect leads to ``stop_at`` (returned, not followed)
        or a page that is neither the simulator's login nor a consent page (returned)."""
        response = self.client.get(url)
        for _ in range(20):
            location = response.headers.get("location")
            if response.status_code in (302, 303) and location:
                target = urljoin(str(response.url), location)
                if target.startswith(stop_at):
                    return response
                response = self.client.get(target)
                continue
            text = response.text
            self.pages.append(text)
            form = SIM_FORM.search(text)
            if response.status_code == 200 and form and 'name="password"' in text:
                action = urljoin(str(response.url), form.group(1).replace("&amp;", "&"))
                response = self.client.post(
                    action, data={"login": self.login, "password": "123", "action": "login"}
                )
                continue
            consent = CONSENT.search(text)
            if response.status_code == 200 and consent:
                response = self.client.post(
                    urljoin(str(response.url), "/authorize/consent"),
                    data={
                        "sealed": consent.group(1),
                        "sealed_kid": consent.group(2),
                        "decision": self.consent,
                    },
                    headers={"Origin": self.base},
                )
                continue
            return response
        raise AssertionError("too many redirects")
