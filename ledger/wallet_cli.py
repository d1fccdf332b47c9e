"""``nicecard-wallet``: the reference citizen wallet on the command line.

Commands::

    nicecard-wallet denominations --url URL --key KEY [--json]
    nicecard-wallet withdraw AMOUNT --url URL --key KEY [--coins FILE] [--token TOKEN]
    nicecard-wallet resume --url URL --key KEY [--coins FILE] [--token TOKEN]
    nicecard-wallet balance [--coins FILE] [--json]
    nicecard-wallet pay --partner ID --order REF --amount N [--coins FILE] [--out FILE]

``KEY`` is the ledger's note verifier key, ``<origin>+<key id>+<base64>``, as
``nicecard ledger keys`` prints it: denominations are trusted only if their list is signed by it
and each key's announcement is in the log. Coins are kept in ``FILE`` (``wallet-coins.json`` by
default, created ``0600``: it holds the coins' private keys). ``withdraw`` needs the citizen's
access token (scope ``points:redeem``), best given in ``NICECARD_WALLET_TOKEN`` rather than on
the command line; ``NICECARD_WALLET_URL``, ``NICECARD_WALLET_KEY`` and ``NICECARD_WALLET_COINS``
stand for the other options. ``withdraw`` writes the pending request (with the blinding
secrets) to the coin file before sending it; if the answer is lost, ``resume`` sends the same
request again and the mint answers it without a second debit. ``pay`` works offline: it
writes the deposit body for the partner (to ``--out`` or standard output) and only then
removes the coins from the file. Each command holds an exclusive lock on ``FILE.lock`` while it
uses the coin file (``withdraw`` and ``resume`` until the service has answered); another
command on the same file waits up to 10 seconds for it, then fails.

Exit codes: 0 done; 1 refused or failed (the service said no, the network, a file); 2 a usage
error. Errors are printed as one line, without a stack trace.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from keys.errors import NoteError
from keys.note import NoteVerifier, parse_verifier_key
from ledger.coins import CoinError, Denomination
from ledger.errors import LedgerError
from ledger.wallet import (
    CoinPurse,
    OwnedCoin,
    PaymentRequest,
    WalletClient,
    fetch_denominations,
    pay,
    write_private,
)

EXIT_FAILED = 1
EXIT_USAGE = 2

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="The Nice Identity Card citizen wallet: withdraw coins, see them, pay with them.",
)
out = Console()
err = Console(stderr=True)

UrlOption = Annotated[
    str, typer.Option("--url", envvar="NICECARD_WALLET_URL", help="The service's base URL.")
]
KeyOption = Annotated[
    str,
    typer.Option(
        "--key",
        envvar="NICECARD_WALLET_KEY",
        help="The ledger note key <origin>+<key id>+<base64> (nicecard ledger keys).",
    ),
]
CoinsOption = Annotated[
    Path,
    typer.Option(
        "--coins", envvar="NICECARD_WALLET_COINS", help="The coin file (holds private keys)."
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="NICECARD_WALLET_TOKEN",
        help="The citizen's access token (scope points:redeem); prefer the environment.",
        show_envvar=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
DEFAULT_COINS = Path("wallet-coins.json")


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(EXIT_FAILED)


@contextmanager
def _failures() -> Iterator[None]:
    """Refusals and failures as one line and exit code 1."""
    try:
        yield
    except LedgerError as exc:
        _fail(str(exc))
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the service: {exc}")
    except OSError as exc:
        _fail(f"{exc.filename or 'file'}: {exc.strerror or exc}")


def _verifier(text: str) -> NoteVerifier:
    try:
        return parse_verifier_key(text.strip())
    except NoteError as exc:
        raise typer.BadParameter(f"malformed ledger key: {exc}", param_hint="--key") from None


@contextmanager
def _http(url: str) -> Iterator[httpx.Client]:
    if not url.startswith(("https://", "http://")):
        raise typer.BadParameter("must be an http(s) URL", param_hint="--url")
    with httpx.Client(base_url=url.rstrip("/"), timeout=30.0) as http:
        yield http


@contextmanager
def _wallet(url: str, key: str, token: str | None) -> Iterator[WalletClient]:
    """A wallet client for the citizen's token (usage errors checked before any request)."""
    verifier = _verifier(key)
    if not token:
        raise typer.BadParameter("set NICECARD_WALLET_TOKEN or pass --token", param_hint="--token")
    with _http(url) as http:
        yield WalletClient(http, origin=verifier.name, ledger_key=verifier, access_token=token)


def _day(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")


def _total(coins: list[OwnedCoin]) -> int:
    return sum(c.value for c in coins)


@app.command("denominations")
def denominations_command(url: UrlOption, key: KeyOption, as_json: JsonOption = False) -> None:
    """Fetch the denominations, check them against the log, and list them."""
    verifier = _verifier(key)
    with _failures(), _http(url) as http:
        items = fetch_denominations(http, origin=verifier.name, ledger_key=verifier)
    if as_json:
        rows = [
            {k: v for k, v in d.to_json().items() if k not in ("public_key", "entry")}
            for d in items
        ]
        print(json.dumps(rows, indent=1))
        return
    _denominations_table(items, verifier.name)


def _denominations_table(items: list[Denomination], origin: str) -> None:
    table = Table(title=f"Denominations of {escape(origin)} (verified against the log)")
    table.add_column("value", justify="right")
    table.add_column("id")
    table.add_column("withdraw from (UTC)")
    table.add_column("withdraw until")
    table.add_column("deposit until")
    table.add_column("log entry", justify="right")
    for d in items:
        table.add_row(
            str(d.value),
            d.id.hex()[:16],
            _day(d.withdraw_from),
            _day(d.withdraw_until),
            _day(d.deposit_until),
            str(d.entry_index),
        )
    out.print(table)


@app.command("withdraw")
def withdraw_command(
    amount: Annotated[int, typer.Argument(min=1, help="Points to withdraw as coins.")],
    url: UrlOption,
    key: KeyOption,
    coins: CoinsOption = DEFAULT_COINS,
    token: TokenOption = None,
) -> None:
    """Withdraw AMOUNT points as blind-signed coins into the coin file."""
    purse = CoinPurse(coins)
    with _failures(), _wallet(url, key, token) as wallet, purse.locked():
        purse.load()  # a broken coin file stops us before any point is debited
        new = wallet.withdraw(amount, purse=purse)
        held = purse.load()
    values = " + ".join(str(c.value) for c in sorted(new, key=lambda c: -c.value))
    out.print(
        f"withdrew {_total(new)} points as {len(new)} coins ({values}); "
        f"{escape(str(coins))} holds {_total(held)} points",
        highlight=False,
    )


@app.command("resume")
def resume_command(
    url: UrlOption,
    key: KeyOption,
    coins: CoinsOption = DEFAULT_COINS,
    token: TokenOption = None,
) -> None:
    """Send a withdrawal whose answer was lost again and keep its coins (debited once)."""
    purse = CoinPurse(coins)
    with _failures(), _wallet(url, key, token) as wallet, purse.locked():
        if purse.pending() is None:
            out.print("no withdrawal is pending")
            return
        new = wallet.resume(purse)
    out.print(f"recovered {_total(new)} points as {len(new)} coins", highlight=False)


@app.command("balance")
def balance_command(coins: CoinsOption = DEFAULT_COINS, as_json: JsonOption = False) -> None:
    """The coins in the coin file and their total (offline)."""
    now = int(datetime.now(UTC).timestamp())
    with _failures():
        held = CoinPurse(coins).load()
    spendable = [c for c in held if now < c.deposit_until]
    if as_json:
        counts = Counter(c.value for c in spendable)
        print(
            json.dumps(
                {
                    "total": _total(spendable),
                    "coins": len(spendable),
                    "by_value": {str(v): counts[v] for v in sorted(counts, reverse=True)},
                    "expired_coins": len(held) - len(spendable),
                }
            )
        )
        return
    table = Table(title=f"Coins in {escape(str(coins))}")
    table.add_column("value", justify="right")
    table.add_column("coins", justify="right")
    table.add_column("points", justify="right")
    table.add_column("spend before (UTC)")
    groups: dict[tuple[int, int], int] = Counter((c.value, c.deposit_until) for c in spendable)
    for (value, until), count in sorted(groups.items(), key=lambda g: (-g[0][0], g[0][1])):
        table.add_row(str(value), str(count), str(value * count), _day(until))
    out.print(table)
    out.print(f"total: {_total(spendable)} points in {len(spendable)} coins", highlight=False)
    if len(held) > len(spendable):
        out.print(f"{len(held) - len(spendable)} expired coins are no longer accepted")


@app.command("pay")
def pay_command(
    partner: Annotated[str, typer.Option("--partner", help="The partner's client id.")],
    order: Annotated[str, typer.Option("--order", help="The partner's order reference.")],
    amount: Annotated[int, typer.Option("--amount", min=1, help="Points to pay.")],
    coins: CoinsOption = DEFAULT_COINS,
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="Write the deposit body here (default: standard output)."),
    ] = None,
) -> None:
    """Pay a payment request (offline): write the deposit body, then drop the coins paid."""
    purse = CoinPurse(coins)
    with _failures(), purse.locked():  # from choosing the coins to dropping them
        chosen = purse.take(amount)
        try:
            body = pay(chosen, PaymentRequest(partner, order, amount))
        except CoinError as exc:
            raise typer.BadParameter(str(exc), param_hint="--partner/--order") from None
        text = json.dumps(body, indent=1) + "\n"
        if out_file is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            write_private(out_file, text)  # 0600: until deposited, the coins can be
        purse.remove(chosen)
        left = _total(purse.load())
    where = f" (written to {out_file})" if out_file else ""
    err.print(
        escape(
            f"paid {amount} points with {len(chosen)} coins to {partner} for {order}{where}; "
            f"{left} points left"
        ),
        highlight=False,
    )


def main() -> None:
    """Entry point of the ``nicecard-wallet`` script (exits with the codes above)."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
