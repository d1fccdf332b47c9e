"""``nicecard-wallet`` as a citizen runs it, against the real service: list the denominations,
withdraw, see the balance, pay a partner to a file that the partner SDK deposits; refusals exit
1 and usage errors 2, each with one line and no stack trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from keys.note import generate_signer
from ledger.partner import PartnerClient
from ledger.wallet import CoinPurse, PaymentRequest
from tests.ledger.test_coins_http import Town, town  # noqa: F401 - fixture
from tests.oidc.conftest import clock, provider_factory  # noqa: F401 - fixtures

WALLET = Path(sys.executable).parent / "nicecard-wallet"


def wallet(cwd: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "COLUMNS": "200"}
    if token is not None:
        env["NICECARD_WALLET_TOKEN"] = token
    return subprocess.run(
        [str(WALLET), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def refused(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_withdraw_balance_pay_and_the_partner_deposits(town: Town, tmp_path: Path) -> None:  # noqa: F811
    town.earn(3)  # 60 points
    service = ["--url", town.url, "--key", town.key_text]

    listed = wallet(tmp_path, "denominations", *service, "--json")
    assert listed.returncode == 0, listed.stderr
    assert {d["value"] for d in json.loads(listed.stdout)} == {1, 2, 5, 10, 20}
    table = wallet(tmp_path, "denominations", *service)
    assert table.returncode == 0, table.stderr
    assert "verified against the log" in table.stdout

    withdrew = wallet(tmp_path, "withdraw", "47", *service, token=town.citizen_token)
    assert withdrew.returncode == 0, withdrew.stderr
    assert "withdrew 47 points as 4 coins (20 + 20 + 5 + 2)" in withdrew.stdout
    assert town.balance() == 13
    assert (tmp_path / "wallet-coins.json").stat().st_mode & 0o777 == 0o600

    balance = wallet(tmp_path, "balance", "--json")
    assert json.loads(balance.stdout) == {
        "total": 47,
        "coins": 4,
        "by_value": {"20": 2, "5": 1, "2": 1},
        "expired_coins": 0,
    }
    assert "total: 47 points in 4 coins" in wallet(tmp_path, "balance").stdout

    shop = town.shops[0]
    request = PaymentRequest(shop.client_id, "cli-order-1", 25)
    paid = wallet(
        tmp_path,
        "pay",
        "--partner",
        shop.client_id,
        "--order",
        "cli-order-1",
        "--amount",
        "25",
        "--out",
        "payment.json",
    )
    assert paid.returncode == 0, paid.stderr
    assert "22 points left" in paid.stderr
    body = json.loads((tmp_path / "payment.json").read_text())
    assert len(CoinPurse(tmp_path / "wallet-coins.json").load()) == 2

    with httpx.Client(base_url=town.url) as http:
        partner = PartnerClient(
            http,
            origin=town.origin,
            ledger_key=town.verifier(),
            token=shop.token,
            client_id=shop.client_id,
        )
        partner.verify_payment(body, request)
        receipt = partner.deposit(body).receipt
    assert (receipt.order, receipt.amount, receipt.coins) == ("cli-order-1", 25, 2)

    # To standard output, the rest of the purse.
    rest = wallet(
        tmp_path, "pay", "--partner", shop.client_id, "--order", "cli-order-2", "--amount", "22"
    )
    assert rest.returncode == 0, rest.stderr
    assert json.loads(rest.stdout)["amount"] == 22
    assert json.loads(wallet(tmp_path, "balance", "--json").stdout)["total"] == 0


def test_refusals_and_usage_errors(town: Town, tmp_path: Path) -> None:  # noqa: F811
    town.earn(1)  # 20 points
    service = ["--url", town.url, "--key", town.key_text]
    token = town.citizen_token

    assert "409" in refused(wallet(tmp_path, "withdraw", "25", *service, token=token), 1)
    assert "NICECARD_WALLET_TOKEN" in refused(wallet(tmp_path, "withdraw", "5", *service), 2)
    refused(wallet(tmp_path, "withdraw", "0", *service, token=token), 2)
    bad_key = ["--url", town.url, "--key", "not-a-key"]
    assert "malformed ledger key" in refused(wallet(tmp_path, "denominations", *bad_key), 2)
    other_key = ["--url", town.url, "--key", generate_signer(town.origin).verifier.to_text()]
    assert "does not verify" in refused(wallet(tmp_path, "denominations", *other_key), 1)
    closed = ["--url", "http://127.0.0.1:9", "--key", town.key_text]
    assert "cannot reach" in refused(wallet(tmp_path, "denominations", *closed), 1)
    (tmp_path / "broken.json").write_text("{")
    broken = ["--coins", "broken.json"]
    assert "not a coin file" in refused(wallet(tmp_path, "balance", *broken), 1)
    refused(wallet(tmp_path, "withdraw", "1", *service, *broken, token=token), 1)
    assert town.balance() == 20  # nothing debited: the broken file stopped the withdrawal first

    done = wallet(tmp_path, "withdraw", "20", *service, token=token)
    assert done.returncode == 0, done.stderr
    too_much = ["--partner", "shop-massena", "--order", "o-1", "--amount", "21"]
    assert "cannot pay exactly 21" in refused(wallet(tmp_path, "pay", *too_much), 1)
    bad_order = ["--partner", "shop-massena", "--order", "has space", "--amount", "20"]
    refused(wallet(tmp_path, "pay", *bad_order), 2)
    assert json.loads(wallet(tmp_path, "balance", "--json").stdout)["total"] == 20
