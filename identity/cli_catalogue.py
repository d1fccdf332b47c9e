"""``nicecard catalogue``: show the acts catalogue in force, or load a new one from a file.

Loading appends a ``CatalogueChanged`` ledger entry with the next version (nothing if the file's
rules equal the ones in force); running servers pick it up on their next act.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from identity.runtime import open_runtime
from identity.settings import load_settings
from ledger.catalogue import current_catalogue, load_catalogue, publish_catalogue
from ledger.errors import LedgerError
from ledger.store import LedgerStore

catalogue_app = typer.Typer(help="The acts catalogue: show, load.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@catalogue_app.command("show")
def show_command() -> None:
    """Print the catalogue in force (its version, digest and rules) as JSON."""
    settings = load_settings()
    with open_runtime(settings, migrate_dev=False) as runtime:
        try:
            catalogue = current_catalogue(LedgerStore(runtime.ledger_engine))
        except LedgerError as exc:
            err.print(f"[red]error[/red] {exc}")
            raise typer.Exit(1) from None
    if catalogue is None:
        err.print("no catalogue was published yet")
        raise typer.Exit(1)
    body = {
        "version": catalogue.version,
        "digest": catalogue.digest,
        **json.loads(catalogue.document()),
    }
    typer.echo(json.dumps(body, indent=2, sort_keys=True))


@catalogue_app.command("load")
def load_command(
    path: Annotated[Path, typer.Argument(help="A TOML catalogue file.")],
) -> None:
    """Publish the catalogue in FILE: a new ledger entry, unless it equals the one in force."""
    settings = load_settings()
    with open_runtime(settings, migrate_dev=False) as runtime:
        try:
            published = publish_catalogue(LedgerStore(runtime.ledger_engine), load_catalogue(path))
        except LedgerError as exc:
            err.print(f"[red]error[/red] {exc}")
            raise typer.Exit(1) from None
    out.print(f"catalogue version {published.version} in force ({published.digest})")
