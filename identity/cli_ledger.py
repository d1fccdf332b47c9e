"""``nicecard ledger``: export the log for auditors, issue a checkpoint, print the note keys
auditors pin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from identity.runtime import open_runtime
from identity.settings import load_settings
from ledger.checkpoints import issue_checkpoint, verifier_keys
from ledger.errors import LedgerError
from ledger.export import export
from ledger.store import LedgerStore

ledger_app = typer.Typer(help="The points ledger: export, checkpoints, keys.", no_args_is_help=True)
out = Console()
err = Console(stderr=True)


@ledger_app.command("export")
def export_command(
    path: Annotated[Path, typer.Argument(help="Where to write the export file.")],
) -> None:
    """Write every entry, checkpoint and balance to an export file for `ledger-audit verify`."""
    settings = load_settings()
    with open_runtime(settings, migrate_dev=False) as runtime:
        store = LedgerStore(runtime.ledger_engine)
        try:
            issue_checkpoint(store, runtime.keyring, origin=settings.effective_ledger_origin)
            summary = export(store, path, origin=settings.effective_ledger_origin)
        except LedgerError as exc:
            err.print(f"[red]error[/red] {exc}")
            raise typer.Exit(1) from None
    out.print(f"exported to {path}: {summary}")


@ledger_app.command("checkpoint")
def checkpoint_command() -> None:
    """Sign a checkpoint of the current head (if it moved) and print it."""
    settings = load_settings()
    with open_runtime(settings, migrate_dev=False) as runtime:
        stored = issue_checkpoint(
            LedgerStore(runtime.ledger_engine),
            runtime.keyring,
            origin=settings.effective_ledger_origin,
        )
    typer.echo(stored.note.decode("utf-8"), nl=False)


@ledger_app.command("keys")
def keys_command() -> None:
    """The note verifier keys (name+keyid+base64) that auditors pin."""
    settings = load_settings()
    with open_runtime(settings, migrate_dev=False) as runtime:
        for key in verifier_keys(runtime.keyring, settings.effective_ledger_origin):
            typer.echo(key)
