"""Coins over real HTTP: a citizen earns points, withdraws blind-signed coins with the reference
wallet, pays two partners, who deposit; statements add up and the ledger still audits clean."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keys.blind_rsa import blind, prepare
from keys.note import NoteVerifier, parse_verifier_key
from ledger.checkpoints import issue_checkpoint, verifier_keys
from ledger.coins import VARIANT, Coin, b64encode, open_receipt, open_statement, permission_message
from ledger.export import export
from ledger.wallet import CoinPurse, OwnedCoin, PaymentRequest, WalletClient, WalletError, pay
from oidc.clients import AuthMethod, GrantType
from tests.ledger.test_api import act, client_token, problem_type
from tests.ledger.test_mint import fail_signing_once
from tests.oidc.browser import Citizen
from tests.oidc.conftest import (  # noqa: F401 - fixtures
    OAuth2Client,
    Provider,
    clock,
    provider_factory,
)
from tests.oidc.test_code_flow import TRANSIT_CB, sign_in

CATALOGUE = """
[acts.tram_ride]
points = 20
max_per_day = 10
max_per_month = 100
partners = ["transit"]
"""

AUDIT = Path(sys.executable).parent / "ledger-audit"


@dataclass
class Shop:
    client_id: str
    token: str


@dataclass
class Town:
    provider: Provider
    wallet: WalletClient
    citizen_token: str
    transit_token: str
    sub: str
    shops: tuple[Shop, Shop]
    origin: str
    key_text: str

    @property
    def url(self) -> str:
        return self.provider.url

    def earn(self, rides: int, tag: str = "") -> None:
        body = {"acts": [act(self.sub, f"ride-{tag}{i}") for i in range(rides)]}
        answer = httpx.post(
            self.url + "/v1/acts",
            json=body,
            headers={"Authorization": f"Bearer {self.transit_token}"},
        )
        assert answer.status_code in (201, 207), answer.text

    def balance(self) -> int:
        answer = httpx.get(
            self.url + "/v1/me/balance",
            headers={"Authorization": f"Bearer {self.citizen_token}"},
        )
        return int(answer.json()["points"])

    def deposit(self, shop: Shop, body: Any) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/deposits",
            json=body,
            headers={"Authorization": f"Bearer {shop.token}"},
        )

    def verifier(self) -> NoteVerifier:
        return parse_verifier_key(self.key_text)


@pytest.fixture
def town(provider_factory: Callable[..., Provider], tmp_path: Path) -> Iterator[Town]:  # noqa: F811
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(CATALOGUE)
    provider = provider_factory(
        catalogue_file=catalogue, coin_values=[1, 2, 5, 10, 20], withdraw_max_points_per_day=500
    )
    secret = provider.register(
        "transit",
        AuthMethod.CLIENT_SECRET_BASIC,
        scope="openid points points:redeem acts:write",
        grants=(GrantType.AUTHORIZATION_CODE, GrantType.CLIENT_CREDENTIALS),
        redirect_uris=(TRANSIT_CB,),
        client_name="Transit",
    )
    assert secret is not None
    shops = []
    for name in ("shop-massena", "cinema-rex"):
        shop_secret = provider.register(name, scope="deposits:write")
        assert shop_secret is not None
        shops.append(Shop(name, client_token(provider, name, shop_secret, "deposits:write")))
    rp = OAuth2Client(
        "transit",
        secret,
        scope="openid points points:redeem",
        redirect_uri=TRANSIT_CB,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    )
    person = Citizen(provider.url)
    http = httpx.Client(base_url=provider.url)
    try:
        token, _ = sign_in(provider, person, rp, TRANSIT_CB)
        access = str(token["access_token"])
        sub = httpx.get(
            provider.url + "/userinfo", headers={"Authorization": f"Bearer {access}"}
        ).json()["sub"]
        origin = provider.app.state.settings.effective_ledger_origin
        key_text = verifier_keys(provider.app.state.runtime.keyring, origin)[0]
        wallet = WalletClient(
            http, origin=origin, ledger_key=parse_verifier_key(key_text), access_token=access
        )
        yield Town(
            provider,
            wallet,
            access,
            client_token(provider, "transit", secret, "acts:write"),
            sub,
            (shops[0], shops[1]),
            origin,
            key_text,
        )
    finally:
        http.close()
        rp.close()
        person.close()


def test_earn_withdraw_pay_two_partners_statements_and_audit(town: Town, tmp_path: Path) -> None:
    town.earn(5)  # 100 points
    assert town.balance() == 100
    coins = town.wallet.withdraw(67)  # 20 + 20 + 20 + 5 + 2
    assert sorted(c.value for c in coins) == [2, 5, 20, 20, 20]
    assert town.balance() == 33

    shop, cinema = town.shops
    first = pay([c for c in coins if c.value == 20][:2], PaymentRequest(shop.client_id, "o-1", 40))
    paid = town.deposit(shop, first)
    assert paid.status_code == 201, paid.text
    receipt = open_receipt(paid.json()["receipt"], [town.verifier()], town.origin)
    assert (receipt.partner, receipt.order, receipt.amount, receipt.coins) == (
        shop.client_id,
        "o-1",
        40,
        2,
    )
    rest = [c for c in coins if c.value != 20] + [c for c in coins if c.value == 20][2:]
    second = pay(rest, PaymentRequest(cinema.client_id, "ticket-9", 27))
    assert town.deposit(cinema, second).status_code == 201

    # A replay returns the first receipt, without a second entry.
    again = town.deposit(shop, first)
    assert again.status_code == 200
    assert again.json()["receipt"] == paid.json()["receipt"]

    start = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    end = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    totals = 0
    for who in (shop, cinema):
        answer = httpx.get(
            town.url + "/v1/partners/me/statements",
            params={"from": start, "to": end},
            headers={"Authorization": f"Bearer {who.token}"},
        )
        assert answer.status_code == 200, answer.text
        statement = open_statement(answer.json()["statement"], [town.verifier()], town.origin)
        assert statement.partner == who.client_id
        totals += statement.total
    assert totals == 67

    path = tmp_path / "ledger.export"
    service = town.provider.app.state.ledger
    issue_checkpoint(service.store, service.keyring, origin=town.origin)
    export(service.store, path, origin=town.origin)
    audit = subprocess.run(
        [str(AUDIT), "verify", "--export", str(path), "--key", town.key_text, "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr
    summary = json.loads(audit.stdout)
    assert summary["points_debited"] == 67
    assert summary["points_deposited"] == 67


def test_withdrawal_replay_returns_the_same_signatures_and_debits_once(town: Town) -> None:
    town.earn(2)
    denominations = town.wallet.denominations()
    ten = next(d for d in denominations if d.value == 10)
    blinded = blind(VARIANT, ten.key, prepare(VARIANT, os.urandom(32))).blinded_msg
    coin = {"denomination": ten.id.hex(), "blinded_message": b64encode(blinded)}
    body: dict[str, Any] = {"request_id": "replay-me-0123456789", "coins": [coin]}
    headers = {"Authorization": f"Bearer {town.citizen_token}"}
    first = httpx.post(town.url + "/v1/wallet/withdrawals", json=body, headers=headers)
    assert first.status_code == 201, first.text
    second = httpx.post(town.url + "/v1/wallet/withdrawals", json=body, headers=headers)
    assert second.status_code == 200
    assert second.json()["blind_signatures"] == first.json()["blind_signatures"]
    assert second.json()["replayed"] is True
    assert town.balance() == 30
    other = {**body, "coins": [coin, coin]}
    conflict = httpx.post(town.url + "/v1/wallet/withdrawals", json=other, headers=headers)
    assert conflict.status_code == 409
    assert problem_type(conflict) == "request-conflict"
    assert town.balance() == 30


def test_a_withdrawal_that_fails_to_sign_debits_nothing(
    town: Town, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signing fault answers 503 before the debit; the same request then succeeds, once."""
    town.earn(2)  # 40 points
    ten = next(d for d in town.wallet.denominations() if d.value == 10)
    blinded = blind(VARIANT, ten.key, prepare(VARIANT, os.urandom(32))).blinded_msg
    coin = {"denomination": ten.id.hex(), "blinded_message": b64encode(blinded)}
    body: dict[str, Any] = {"request_id": "sign-fails-0123456789", "coins": [coin]}
    headers = {"Authorization": f"Bearer {town.citizen_token}"}
    fail_signing_once(monkeypatch)
    failed = httpx.post(town.url + "/v1/wallet/withdrawals", json=body, headers=headers)
    assert failed.status_code == 503, failed.text
    assert problem_type(failed) == "ledger-unavailable"
    assert town.balance() == 40
    retried = httpx.post(town.url + "/v1/wallet/withdrawals", json=body, headers=headers)
    assert retried.status_code == 201, retried.text
    assert town.balance() == 30


def test_refusals_record_nothing(town: Town) -> None:
    town.earn(3)  # 60
    coins = town.wallet.withdraw(30)  # 20 + 10
    shop, cinema = town.shops
    request = PaymentRequest(shop.client_id, "o-77", 30)
    good = pay(coins, request)

    def variant(**changes: Any) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(json.dumps(good))
        for key, value in changes.items():
            if key.startswith("coin0."):
                body["coins"][0][key[6:]] = value
            else:
                body[key] = value
        return body

    forged = bytearray(base64.urlsafe_b64decode(good["coins"][0]["signature"] + "=="))
    forged[-1] ^= 1
    cases: list[tuple[Shop, dict[str, Any], int, str]] = [
        (shop, variant(**{"coin0.signature": b64encode(bytes(forged))}), 422, "invalid-coin"),
        (cinema, good, 422, "invalid-permission"),  # permission names another partner
        (shop, variant(amount=31), 422, "invalid-permission"),
        (shop, variant(order="o-78"), 422, "invalid-permission"),
        (shop, variant(**{"coin0.coin_pub": "!!"}), 400, "malformed-request"),
        (shop, variant(**{"coin0.randomizer": b64encode(b"short")}), 400, "malformed-request"),
        (shop, variant(**{"coin0.denomination": "00" * 32}), 422, "unknown-denomination"),
        (shop, variant(coins=[]), 400, "malformed-request"),
        (shop, variant(amount="30"), 400, "malformed-request"),
    ]
    for who, body, status, slug in cases:
        answer = town.deposit(who, body)
        assert answer.status_code == status, (slug, answer.text)
        assert problem_type(answer) == slug
        assert answer.headers["content-type"] == "application/problem+json"
    # Amount mismatch: every permission honestly signed for 20 points, coins worth 30.
    mismatch = {
        "order": "o-80",
        "amount": 20,
        "coins": [signed(c, shop, "o-80", 20) for c in coins],
    }
    answer = town.deposit(shop, mismatch)
    assert answer.status_code == 422
    assert problem_type(answer) == "amount-mismatch"
    # Nothing was spent: the honest deposit still goes through, once.
    assert town.deposit(shop, good).status_code == 201
    spent = town.deposit(cinema, pay(coins, PaymentRequest(cinema.client_id, "c-1", 30)))
    assert spent.status_code == 409
    assert problem_type(spent) == "coin-already-spent"
    assert len(spent.json()["coins"]) == 2


def signed(owned: OwnedCoin, shop: Shop, order: str, amount: int) -> dict[str, Any]:
    """A coin with a permission for any amount (the wallet itself refuses wrong totals)."""
    when = int(datetime.now(UTC).timestamp())
    message = permission_message(
        shop.client_id,
        order,
        amount,
        coin=owned.coin.coin,
        denomination=owned.coin.denomination,
        signed_at=when,
    )
    permission = Ed25519PrivateKey.from_private_bytes(owned.private_key).sign(message)
    return {**owned.coin.to_json(), "signed_at": when, "permission": b64encode(permission)}


def test_withdrawal_refusals(town: Town) -> None:
    town.earn(1)  # 20 points
    with pytest.raises(WalletError, match="409"):
        town.wallet.withdraw(25)
    assert town.balance() == 20
    headers = {"Authorization": f"Bearer {town.citizen_token}"}
    partner = {"Authorization": f"Bearer {town.shops[0].token}"}
    one = next(d for d in town.wallet.denominations() if d.value == 1)
    above_n = b64encode(b"\xff" * one.key.modulus_len)
    for body, who, status, slug in [
        ({"request_id": "short", "coins": []}, headers, 400, "malformed-request"),
        (
            {"request_id": "x" * 20, "coins": [{"denomination": "zz"}]},
            headers,
            400,
            "malformed-request",
        ),
        (
            {
                "request_id": "x" * 20,
                "coins": [{"denomination": "ab" * 32, "blinded_message": "AAAA"}],
            },
            headers,
            422,
            "unknown-denomination",
        ),
        ({"request_id": "x" * 20, "coins": []}, partner, 403, "insufficient-scope"),
        (  # the right size, but not below the modulus: refused before anything is debited
            {
                "request_id": "y" * 20,
                "coins": [{"denomination": one.id.hex(), "blinded_message": above_n}],
            },
            headers,
            400,
            "malformed-request",
        ),
    ]:
        answer = httpx.post(town.url + "/v1/wallet/withdrawals", json=body, headers=who)
        assert answer.status_code == status, answer.text
        assert problem_type(answer) == slug
    bad_json = httpx.post(town.url + "/v1/wallet/withdrawals", content=b"{", headers=headers)
    assert bad_json.status_code == 400
    assert problem_type(bad_json) == "malformed-request"
    assert town.balance() == 20


def test_coins_file_round_trip(tmp_path: Path) -> None:

    coin = OwnedCoin(
        Coin(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 256), 5, b"\x05" * 32, 9
    )
    purse = CoinPurse(tmp_path / "coins.json")
    purse.save([coin, coin])
    assert purse.load() == [coin, coin]
    assert (tmp_path / "coins.json").stat().st_mode & 0o777 == 0o600


class LoseAnswers(httpx.BaseTransport):
    """Delivers withdrawal requests but loses the first ``lost`` answers (a network cut)."""

    def __init__(self, lost: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.lost = lost

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path == "/v1/wallet/withdrawals" and self.lost:
            self.lost -= 1
            response.read()
            raise httpx.ReadError("connection reset", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def test_lost_withdrawal_answers_are_recovered_without_a_second_debit(
    town: Town, tmp_path: Path
) -> None:
    town.earn(2)  # 40 points
    purse = CoinPurse(tmp_path / "coins.json")
    with httpx.Client(base_url=town.url, transport=LoseAnswers(2)) as http:
        wallet = WalletClient(
            http, origin=town.origin, ledger_key=town.verifier(), access_token=town.citizen_token
        )
        with pytest.raises(httpx.ReadError):
            wallet.withdraw(27, purse=purse)
        assert town.balance() == 13  # debited once, answers lost
        assert purse.pending() is not None
        with pytest.raises(WalletError, match="pending"):
            wallet.withdraw(1, purse=purse)
        coins = wallet.resume(purse)
    assert sum(c.value for c in coins) == 27
    assert purse.pending() is None
    assert sorted(c.value for c in purse.load()) == [2, 5, 20]
    assert town.balance() == 13
    assert wallet.resume(purse) == []


def test_purse_finds_an_exact_combination(tmp_path: Path) -> None:
    def coin(value: int, n: int) -> OwnedCoin:
        return OwnedCoin(
            Coin(b"\x01" * 32, bytes([n]) * 32, b"\x03" * 32, b"\x04" * 256),
            value,
            b"\x05" * 32,
            2**40,
        )

    purse = CoinPurse(tmp_path / "coins.json")
    purse.save([coin(5, 1), coin(2, 2), coin(2, 3), coin(2, 4)])
    assert sorted(c.value for c in purse.take(6)) == [2, 2, 2]
    assert sorted(c.value for c in purse.take(9)) == [2, 2, 5]
    with pytest.raises(WalletError):
        purse.take(8)
