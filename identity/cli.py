"""The ``nicecard`` command line: serve, dev, db, keys.

Every command builds its settings from the environment (``NICECARD_*``, ``.env``, the secrets
directory) and exits non-zero with one clear line on a configuration or key error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.table import Table

from identity import migrate, serving
from identity.cli_catalogue import catalogue_app
from identity.cli_clients import clients_app
from identity.cli_coins import statements_command
from identity.cli_common import cli_settings
from identity.cli_ledger import ledger_app
from identity.db import create_engine
from identity.errors import IdentityError
from identity.fcsim import create_simulator
from identity.franceconnect.wiring import simulator_config
from identity.observability import configure_logging, uvicorn_log_config
from identity.runtime import REQUIRED_PURPOSES, Runtime, open_runtime
from identity.settings import Settings
from keys.errors import KeysError
from keys.model import Purpose

app = typer.Typer(help="Nice Identity Card service.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="Key management.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(clients_app, name="clients")
app.add_typer(ledger_app, name="ledger")
app.add_typer(catalogue_app, name="catalogue")
app.command("statements")(statements_command)

err = Console(stderr=True)
out = Console()


@contextmanager
def _runtime(settings: Settings) -> Iterator[Runtime]:
    try:
        with open_runtime(settings, migrate_dev=False) as runtime:
            yield runtime
    except (IdentityError, KeysError) as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(1) from None


def _serve(settings: Settings, reload: bool = False) -> None:
    """uvicorn with ``settings.workers`` processes, each on its own listening socket
    (:mod:`identity.serving`); ``reload`` (development) goes through uvicorn's reloader."""
    configure_logging(settings.log_level)
    target = "identity.app:app_from_environment"
    options: dict[str, Any] = {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "workers": settings.workers,
        "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "log_config": uvicorn_log_config(settings.log_level),
        "access_log": False,
        "server_header": False,
    }
    if reload:
        uvicorn.run(target, reload=True, **options)
        return
    code = serving.run(uvicorn.Config(target, **options))
    if code:
        raise typer.Exit(code)


@app.command()
def serve() -> None:
    """Run the service with the settings from the environment (uvicorn, NICECARD_WORKERS
    processes, each with its own listening socket)."""
    _serve(cli_settings())


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8000,
) -> None:
    """Development mode: SQLite under var/, generated keys, the FranceConnect simulator."""
    os.environ["NICECARD_MODE"] = "development"
    os.environ.setdefault("NICECARD_ISSUER", f"http://127.0.0.1:{port}")
    os.environ["NICECARD_PORT"] = str(port)
    settings = cli_settings()
    out.print(f"Nice Identity Card (development) on [bold]{settings.issuer}[/bold]")
    _serve(settings)


@app.command("fc-sim")
def fc_sim(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 9000,
) -> None:
    """Run the FranceConnect simulator on its own (development and demonstrations only).

    It registers this service (NICECARD_ISSUER's callback) and the clients of
    NICECARD_FC_SIMULATOR_CLIENTS_FILE; its issuer is http://127.0.0.1:PORT/api/v2.
    """
    settings = cli_settings()
    if not settings.is_development:
        err.print("[red]error[/red] the FranceConnect simulator runs in development mode only")
        raise typer.Exit(2)
    try:
        config = simulator_config(settings, issuer=f"http://127.0.0.1:{port}/api/v2")
    except IdentityError as exc:
        err.print(f"[red]error[/red] {exc}")
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    out.print(f"FranceConnect simulator (not FranceConnect) on {config.issuer}")
    uvicorn.run(create_simulator(config), host="127.0.0.1", port=port, log_config=None)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply every migration to both stores (identity and ledger)."""
    settings = cli_settings()
    for store, url in (
        (migrate.Store.IDENTITY, settings.identity_url),
        (migrate.Store.LEDGER, settings.ledger_url),
    ):
        engine = create_engine(url, settings)
        try:
            migrate.upgrade(store, engine)
            out.print(f"{store}: at revision {migrate.current(store, engine)}")
        finally:
            engine.dispose()


@keys_app.command("init")
def keys_init() -> None:
    """Create an active and a next key for every purpose that lacks one."""
    with _runtime(cli_settings()) as runtime:
        created = runtime.keyring.ensure(REQUIRED_PURPOSES)
        for record in created:
            out.print(f"created {record.purpose} {record.state} {record.kid}")
        if not created:
            out.print("every purpose already has an active and a next key")


@keys_app.command("list")
def keys_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every key: purpose, state, kid and dates (never private material)."""
    with _runtime(cli_settings()) as runtime:
        records = runtime.keyring.records()
    rows = [
        {
            "kid": r.kid,
            "purpose": r.purpose.value,
            "algorithm": r.algorithm.value,
            "state": r.state.value,
            "created_at": r.created_at.isoformat(),
            "activated_at": r.activated_at.isoformat() if r.activated_at else None,
            "retired_at": r.retired_at.isoformat() if r.retired_at else None,
            "destroyed_at": r.destroyed_at.isoformat() if r.destroyed_at else None,
        }
        for r in records
    ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("purpose", "state", "kid", "created", "activated", "retired")
    for row in rows:
        table.add_row(
            row["purpose"],
            row["state"],
            row["kid"],
            (row["created_at"] or "")[:19],
            (row["activated_at"] or "")[:19],
            (row["retired_at"] or "")[:19],
        )
    out.print(table)


@keys_app.command("rotate")
def keys_rotate(
    purpose: Purpose,
    force: Annotated[bool, typer.Option(help="Also rotate purposes with stable outputs.")] = False,
) -> None:
    """Promote the published next key, retire the active one, publish a new next key."""
    with _runtime(cli_settings()) as runtime:
        try:
            record = runtime.keyring.rotate(purpose, force=force)
        except KeysError as exc:
            err.print(f"[red]error[/red] {exc}")
            raise typer.Exit(1) from None
    out.print(f"{purpose}: {record.kid} is now active")


@keys_app.command("retire")
def keys_retire(kid: str, force: Annotated[bool, typer.Option()] = False) -> None:
    """Stop signing with an active key now; it still verifies for the overlap."""
    with _runtime(cli_settings()) as runtime:
        try:
            record = runtime.keyring.retire(kid, force=force)
        except KeysError as exc:
            err.print(f"[red]error[/red] {exc}")
            raise typer.Exit(1) from None
    out.print(f"{record.kid} is {record.state}")


@keys_app.command("destroy")
def keys_destroy(kid: str) -> None:
    """Erase a retired key's private half now."""
    with _runtime(cli_settings()) as runtime:
        try:
            record = runtime.keyring.destroy(kid)
        except KeysError as exc:
            err.print(f"[red]error[/red] {exc}")
            raise typer.Exit(1) from None
    out.print(f"{record.kid} is {record.state}")


@keys_app.command("jwks")
def keys_jwks() -> None:
    """Print the public JWK Set."""
    with _runtime(cli_settings()) as runtime:
        sys.stdout.write(json.dumps(runtime.keyring.jwks(), indent=2) + "\n")


def main() -> None:
    app()
