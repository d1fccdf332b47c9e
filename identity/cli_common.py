"""What every ``nicecard`` subcommand shares: loading settings or exiting with a usage error."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from identity.settings import Settings, load_settings

_err = Console(stderr=True)


def cli_settings(**overrides: object) -> Settings:
    """The settings, or exit 2 naming each bad ``NICECARD_*`` variable (never its value)."""
    try:
        return load_settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"])
            prefix = f"NICECARD_{where.upper()}: " if where else ""
            _err.print(f"[red]configuration error[/red] {escape(prefix + error['msg'])}")
        raise typer.Exit(2) from None
