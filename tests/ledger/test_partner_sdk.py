"""The partner SDK over real HTTP: it checks payments offline and refuses tampered ones, gets a
token by discovery and client credentials, deposits, and fetches statements that add up and
match what the operator's ``nicecard statements`` prints."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from keys.note import generate_signer
from ledger.coins import b64encode, open_statement
from ledger.partner import (
    ClientCredentials,
    InvalidLedgerAnswer,
    LedgerRefused,
    PartnerClient,
    PaymentRefused,
)
from ledger.wallet import PaymentRequest, pay
from tests.ledger.test_coins_http import Shop, Town, signed, town  # noqa: F401 - fixture
from tests.oidc.conftest import clock, provider_factory  # noqa: F401 - fixtures

BIN = Path(sys.executable).parent
BAKERY = "bakery"


@pytest.fixture
def http(town: Town) -> Iterator[httpx.Client]:  # noqa: F811
    with httpx.Client(base_url=town.url) as client:
        yield client


def bakery(place: Town, http: httpx.Client) -> tuple[PartnerClient, ClientCredentials]:
    """A partner registered with a secret, whose SDK gets its own tokens (by discovery)."""
    secret = place.provider.register(BAKERY, scope="deposits:write")
    assert secret is not None
    token = ClientCredentials(http, place.url, BAKERY, secret)
    partner = PartnerClient(http, origin=place.origin, ledger_key=place.verifier(), token=token)
    assert partner.client_id == BAKERY
    return partner, token


def tampered(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(body))
    for key, value in changes.items():
        if key.startswith("coin0."):
            copy["coins"][0][key[6:]] = value
        else:
            copy[key] = value
    return copy


def test_payments_are_checked_offline(town: Town, http: httpx.Client) -> None:  # noqa: F811
    town.earn(2)  # 40 points
    coins = town.wallet.withdraw(27)  # 20 + 5 + 2
    partner, _ = bakery(town, http)
    request = PaymentRequest(BAKERY, "bread-1", 27)
    good = pay(coins, request)
    partner.verify_payment(good, request)

    forged = bytearray(base64.urlsafe_b64decode(good["coins"][0]["signature"] + "=="))
    forged[-1] ^= 1
    duplicated = tampered(good)
    duplicated["coins"].append(duplicated["coins"][0])
    elsewhere = pay(coins, PaymentRequest(town.shops[0].client_id, "bread-1", 27))
    cases: list[tuple[str, dict[str, Any], PaymentRequest, str]] = [
        ("forged", tampered(good, **{"coin0.signature": b64encode(bytes(forged))}), request, ""),
        ("other partner", elsewhere, request, "invalid-permission"),
        ("more asked", tampered(good, amount=28), PaymentRequest(BAKERY, "bread-1", 28), ""),
        ("not requested", tampered(good, amount=26), request, "not-this-payment"),
        ("other order", tampered(good, order="bread-2"), request, "not-this-payment"),
        ("float amount", tampered(good, amount=27.0), request, "not-this-payment"),
        ("not mine", good, PaymentRequest("cinema-rex", "bread-1", 27), "not-this-payment"),
        ("unknown key", tampered(good, **{"coin0.denomination": "00" * 32}), request, ""),
        ("twice", duplicated, request, "duplicate-coin"),
        ("bad base64", tampered(good, **{"coin0.coin_pub": "!!"}), request, "malformed-payment"),
        ("extra field", tampered(good, **{"coin0.note": "x"}), request, "malformed-payment"),
        ("no coins", tampered(good, coins=[]), request, "malformed-payment"),
        (
            "worth more",
            {
                "order": "bread-9",
                "amount": 25,
                "coins": [signed(c, Shop(BAKERY, ""), "bread-9", 25) for c in coins],
            },
            PaymentRequest(BAKERY, "bread-9", 25),
            "amount-mismatch",
        ),
    ]
    expected = {
        "forged": "invalid-coin",
        "more asked": "invalid-permission",
        "unknown key": "unknown-denomination",
    }
    for name, body, asked, code in cases:
        with pytest.raises(PaymentRefused) as refused:
            partner.verify_payment(body, asked)
        assert refused.value.code == (code or expected[name]), (name, str(refused.value))
    assert "coin 0" in str(PaymentRefused("invalid-coin", "x", 0))

    # Long after its denomination stopped taking deposits, the same payment is refused.
    later = bakery_client_at(town, http, time.time() + 400 * 86400)
    with pytest.raises(PaymentRefused) as expired:
        later.verify_payment(good, request)
    assert expired.value.code == "denomination-expired"

    # Denominations are trusted only under the pinned key.
    stranger = PartnerClient(
        http,
        origin=town.origin,
        ledger_key=generate_signer(town.origin).verifier,
        token=town.shops[0].token,
    )
    with pytest.raises(InvalidLedgerAnswer, match="denominations"):
        stranger.denominations()

    # Nothing above reached the ledger: the honest payment still deposits.
    assert partner.deposit(good).receipt.amount == 27


def bakery_client_at(place: Town, http: httpx.Client, when: float) -> PartnerClient:
    return PartnerClient(
        http,
        origin=place.origin,
        ledger_key=place.verifier(),
        token=place.shops[0].token,
        clock=lambda: when,
    )


def test_deposit_receipt_and_statements_match_the_cli(
    town: Town,  # noqa: F811
    http: httpx.Client,
    tmp_path: Path,
) -> None:
    town.earn(3)  # 60 points
    two, ten, twenty, other_twenty = sorted(town.wallet.withdraw(52), key=lambda c: c.value)
    partner, token = bakery(town, http)
    first = PaymentRequest(BAKERY, "bread-1", 22)
    second = PaymentRequest(BAKERY, "cake-7", 30)
    body = pay([twenty, two], first)
    partner.verify_payment(body, first)
    done = partner.deposit(body)
    assert (done.receipt.partner, done.receipt.order, done.receipt.amount) == (
        BAKERY,
        "bread-1",
        22,
    )
    assert done.receipt.coins == 2
    assert not done.replayed
    assert done.note.startswith(town.origin + "\nnicecard deposit receipt v1\n")
    again = partner.deposit(body)
    assert again.replayed
    assert again.note == done.note

    body2 = pay([other_twenty, ten], second)
    partner.verify_payment(body2, second)
    partner.deposit(body2)
    # Offline checks cannot see a coin spent before; the deposit is refused, nothing recorded.
    reuse = pay([twenty, two], PaymentRequest(BAKERY, "bread-2", 22))
    partner.verify_payment(reuse, PaymentRequest(BAKERY, "bread-2", 22))
    with pytest.raises(LedgerRefused) as spent:
        partner.deposit(reuse)
    assert (spent.value.status, spent.value.code) == (409, "coin-already-spent")

    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    end = start + timedelta(hours=2)
    verified = partner.statement(start, end)
    statement = verified.statement
    assert statement.partner == BAKERY
    assert statement.total == 52
    assert [(d.order, d.amount, d.coins) for d in statement.deposits] == [
        ("bread-1", 22, 2),
        ("cake-7", 30, 2),
    ]
    assert statement.deposits[0].entry_index == done.receipt.entry_index
    assert partner.statement(end, end + timedelta(hours=1)).statement.deposits == ()

    # The operator's CLI prints the same statement, signed by the same key.
    env = {
        "PATH": os.environ["PATH"],
        "NICECARD_DATA_DIR": str(tmp_path / "var"),
        "NICECARD_ISSUER": town.url,
    }
    window = ["--partner", BAKERY, "--from", start.isoformat(), "--to", end.isoformat()]
    as_json = nicecard(tmp_path, env, "statements", *window, "--json")
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    over_http = http.get(
        "/v1/partners/me/statements",
        params={"from": start.isoformat(), "to": end.isoformat()},
        headers={"Authorization": f"Bearer {token()}"},
    ).json()
    assert {k: v for k, v in answer.items() if k != "statement"} == {
        k: v for k, v in over_http.items() if k != "statement"
    }
    printed = nicecard(tmp_path, env, "statements", *window)
    assert printed.returncode == 0, printed.stderr
    assert "52" in printed.stderr  # the table's total
    for note in (answer["statement"], printed.stdout):
        from_cli = open_statement(note, [town.verifier()], town.origin)
        assert (from_cli.partner, from_cli.start, from_cli.end, from_cli.deposits) == (
            statement.partner,
            statement.start,
            statement.end,
            statement.deposits,
        )
    naive = nicecard(
        tmp_path, env, "statements", "--partner", BAKERY, "--from", "2026-01-01T00:00:00",
        "--to", "2026-02-01T00:00:00Z",
    )  # fmt: skip
    assert naive.returncode == 2
    assert "time zone" in naive.stderr


def nicecard(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nicecard"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
