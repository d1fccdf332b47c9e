"""``nicecard statements``: a partner's deposits over a period, signed by the ledger.

The same document a partner fetches at ``GET /v1/partners/me/statements`` (the
:meth:`~ledger.mint.Mint.statement` of the running service's store and keys), for the operator
who reimburses partners. The signed note goes to standard output, a summary table to standard
error; ``--json`` prints the HTTP answer's JSON instead.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from identity.cli_common import cli_settings
from identity.coins_wiring import mint_policy
from identity.errors import IdentityError
from identity.runtime import open_runtime
from keys.errors import KeysError
from keys.keyring import utc_now
from ledger.errors import LedgerError
from ledger.mint import Mint
from ledger.store import LedgerStore
from oidc.tables import SqlClientRegistry

out = Console()
err = Console(stderr=True)


def _time(value: str, option: str) -> datetime:
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter("must be an RFC 3339 time", param_hint=option) from None
    if when.tzinfo is None:
        raise typer.BadParameter("must carry a time zone (Z or +hh:mm)", param_hint=option)
    return when


def statements_command(
    partner: Annotated[str, typer.Option("--partner", help="The partner's client id.")],
    start: Annotated[str, typer.Option("--from", help="Start, RFC 3339 (included).")],
    end: Annotated[str, typer.Option("--to", help="End, RFC 3339 (excluded).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the HTTP answer's JSON.")] = False,
) -> None:
    """A partner's deposits in [--from, --to), signed by the ledger key (as partners get it)."""
    first, last = _time(start, "--from"), _time(end, "--to")
    if last <= first:
        raise typer.BadParameter("must come after --from", param_hint="--to")
    settings = cli_settings()
    try:
        with open_runtime(settings, migrate_dev=False) as runtime:
            if SqlClientRegistry(runtime.identity_engine, utc_now).get(partner) is None:
                err.print(f"[yellow]warning[/yellow] no client {escape(partner)!r} is registered")
            mint = Mint(
                LedgerStore(runtime.ledger_engine),
                runtime.keyring,
                settings.effective_ledger_origin,
                mint_policy(settings),
            )
            statement, note = mint.statement(partner, first, last)
    except (IdentityError, KeysError, LedgerError) as exc:
        err.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:
        err.print(f"[red]error[/red] the databases cannot be read ({type(exc).__name__})")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(statement.to_json(note), indent=1))
        return
    table = Table(title=f"Deposits of {escape(partner)}", title_justify="left")
    table.add_column("entry", justify="right")
    table.add_column("deposited (UTC)")
    table.add_column("order")
    table.add_column("coins", justify="right")
    table.add_column("points", justify="right")
    for line in statement.deposits:
        when = datetime.fromtimestamp(line.deposited_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            str(line.entry_index), when, escape(line.order), str(line.coins), str(line.amount)
        )
    table.add_section()
    table.add_row("", "", "total", str(len(statement.deposits)), str(statement.total))
    err.print(table)
    typer.echo(note, nl=False)
