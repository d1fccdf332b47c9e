"""``ledger-audit``: verify the points ledger offline, from an export file or a receipt.

Commands::

    ledger-audit verify --export FILE --key KEY [--key KEY ...] [--state STATE] [--json]
                        [--evidence FILE] [--jobs N]
    ledger-audit receipt FILE --key KEY [--origin ORIGIN] [--json]

``KEY`` is a pinned note verifier key, ``<name>+<key id>+<base64>`` (C2SP signed-note key text,
as the service publishes it); repeat ``--key`` to accept a rotated key. ``verify`` recomputes
every leaf and the RFC 9162 tree, checks every checkpoint's signature and root, checks that the
checkpoints kept in ``STATE`` from earlier runs are consistent with the newest, replays the
economy, and prints a summary. ``STATE`` is created on the first run and updated after each
successful one.

Exit codes: 0 the log verifies; 1 tampering, an inconsistency or an economy violation (an
evidence file is written, ``--evidence`` or ``ledger-audit-evidence-<time>.json`` by default);
2 a usage or input error (unreadable or malformed file, malformed key, a state file from
another log). ``verify --url URL --client-id ID`` fetches the export from a running service with
auditor client credentials (scope ``audit``; the secret in ``LEDGER_AUDIT_CLIENT_SECRET``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from keys.errors import NoteError
from keys.note import NoteVerifier, parse_verifier_key
from ledger.audit import AuditReport, AuditState, verify_log, verify_receipt
from ledger.entries import describe_entry
from ledger.errors import AuditError, CheckpointError, ExportError, ProofError
from ledger.export import ExportReader

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EVIDENCE_FORMAT = "nicecard-ledger-evidence v1"
_PARALLEL_FROM = 200_000  # entries from which a second process pays for its start-up

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Verify the Nice Identity Card points ledger offline.",
)
KeyOption = Annotated[
    list[str],
    typer.Option(
        "--key",
        help="Pinned checkpoint verifier key <name>+<id>+<base64>; repeat for rotated keys.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object, no progress.")]


def _usage(console: Console, message: str, as_json: bool) -> NoReturn:
    if as_json:
        print(json.dumps({"status": "error", "message": message}))
    else:
        console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(EXIT_USAGE)


def _verifiers(texts: list[str], console: Console, as_json: bool) -> list[NoteVerifier]:
    if not texts:
        _usage(console, "at least one --key is needed", as_json)
    try:
        return [parse_verifier_key(text) for text in texts]
    except NoteError as exc:
        _usage(console, f"malformed --key: {exc}", as_json)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_evidence(error: AuditError, path: Path | None, extra: dict[str, Any]) -> Path:
    now = datetime.now(UTC)
    if path is None:
        path = Path(f"ledger-audit-evidence-{now.strftime('%Y%m%dT%H%M%SZ')}.json")
    document = {
        "format": EVIDENCE_FORMAT,
        "created_at": now.isoformat(),
        **error.to_json(),
        **extra,
    }
    _write_atomic(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
    return path


def _failed(console: Console, error: AuditError, evidence: Path, as_json: bool) -> NoReturn:
    if as_json:
        print(
            json.dumps(
                {
                    "status": error.kind,
                    "rule": error.rule,
                    "message": error.message,
                    "evidence": str(evidence),
                }
            )
        )
    else:
        console.print(
            f"[bold red]{error.kind.upper()}[/bold red] ({error.rule}): {error.message}",
            highlight=False,
        )
        console.print(f"evidence written to {evidence}", highlight=False)
    raise typer.Exit(EXIT_FAILED)


def _summary(console: Console, report: AuditReport) -> None:
    table = Table(title="Ledger verified", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", overflow="fold")
    summary = report.to_json()
    rows = [
        ("origin", report.origin),
        ("entries (tree size)", str(report.entries)),
        ("root", summary["root"]),
        ("checkpoints verified", str(report.checkpoints)),
        ("newest checkpoint size", str(report.newest_checkpoint_size)),
        ("entries not yet checkpointed", str(report.uncovered)),
        ("points credited", str(report.credited)),
        ("points debited", str(report.debited)),
        ("points deposited", str(report.deposited)),
        ("balances total", str(report.balances_total)),
        ("pseudonyms", str(report.pseudonyms)),
    ]
    rows += [(f"entries: {kind}", str(count)) for kind, count in report.kinds.items()]
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)


def _download(url: str, client_id: str, secret: str, console: Console, as_json: bool) -> Path:
    """Fetch the export from a running service as an auditor: a client_credentials token with
    scope ``audit`` (client_secret_basic), then ``GET /ledger/export``."""
    base = url.rstrip("/")
    try:
        with httpx.Client(timeout=60) as http:
            metadata = http.get(base + "/.well-known/openid-configuration")
            metadata.raise_for_status()
            token = http.post(
                metadata.json()["token_endpoint"],
                auth=(client_id, secret),
                data={"grant_type": "client_credentials", "scope": "audit"},
            )
            if token.status_code != 200:
                _usage(
                    console, f"the service refused the auditor's credentials: {token.text}", as_json
                )
            handle, name = tempfile.mkstemp(prefix="ledger-audit-", suffix=".export")
            with (
                os.fdopen(handle, "wb") as out,
                http.stream(
                    "GET",
                    base + "/ledger/export",
                    headers={"Authorization": f"Bearer {token.json()['access_token']}"},
                ) as response,
            ):
                if response.status_code != 200:
                    _usage(
                        console, f"cannot download the export: HTTP {response.status_code}", as_json
                    )
                for chunk in response.iter_bytes():
                    out.write(chunk)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        _usage(console, f"cannot reach {url}: {type(exc).__name__}", as_json)
    return Path(name)


@app.command()
def verify(
    export: Annotated[Path | None, typer.Option("--export", help="Export file to verify.")] = None,
    *,
    url: Annotated[
        str | None,
        typer.Option("--url", help="Fetch the export from this service (auditor credentials)."),
    ] = None,
    client_id: Annotated[
        str | None, typer.Option("--client-id", help="Auditor client id (with --url).")
    ] = None,
    key: KeyOption,
    state: Annotated[
        Path | None, typer.Option("--state", help="State kept between runs (created if absent).")
    ] = None,
    as_json: JsonOption = False,
    evidence: Annotated[
        Path | None, typer.Option("--evidence", help="Where to write evidence on failure.")
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", min=1, max=2, help="Processes (default: 2 for large logs)."),
    ] = None,
) -> None:
    """Recompute the tree, check checkpoints and consistency, and replay the economy.

    With ``--url``, the export is fetched from the service with the auditor's client
    credentials (``--client-id`` and the secret in ``LEDGER_AUDIT_CLIENT_SECRET``).
    """
    console = Console(stderr=as_json)
    verifiers = _verifiers(key, console, as_json)
    if (export is None) == (url is None):
        _usage(console, "give exactly one of --export FILE or --url URL", as_json)
    if url is not None:
        secret = os.environ.get("LEDGER_AUDIT_CLIENT_SECRET")
        if client_id is None or not secret:
            _usage(console, "--url needs --client-id and LEDGER_AUDIT_CLIENT_SECRET", as_json)
        export = _download(url, client_id, secret, console, as_json)
    assert export is not None
    try:
        reader = ExportReader(export)
    except ExportError as exc:
        _usage(console, str(exc), as_json)
    previous: AuditState | None = None
    if state is not None and state.exists():
        try:
            previous = AuditState.loads(state.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            _usage(console, f"cannot read the state file: {exc}", as_json)
    if jobs is None:
        jobs = 2 if reader.tree_size >= _PARALLEL_FROM and (os.cpu_count() or 1) > 1 else 1

    show_progress = not as_json and console.is_terminal
    progress = Progress(
        TextColumn("verifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not show_progress,
    )
    try:
        with progress:
            task = progress.add_task("entries", total=reader.tree_size)
            report = verify_log(
                reader,
                reader.checkpoints,
                verifiers,
                origin=reader.origin,
                tree_size=reader.tree_size,
                balances=reader.balances,
                state=previous,
                progress=lambda done: progress.update(task, completed=done),
                jobs=jobs,
            )
    except AuditError as error:
        written = _write_evidence(
            error,
            evidence,
            {"export": {"path": str(export), "sha256": _sha256_file(export)}},
        )
        _failed(console, error, written, as_json)
    except (ExportError, CheckpointError, OSError) as exc:
        _usage(console, str(exc), as_json)

    if state is not None:
        _write_atomic(state, json.dumps(report.state.to_json(), indent=1) + "\n")
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        _summary(console, report)


@app.command()
def receipt(
    file: Annotated[Path, typer.Argument(help="A receipt: a C2SP tlog-proof with the entry.")],
    *,
    key: KeyOption,
    origin: Annotated[
        str | None, typer.Option("--origin", help="The log's origin (default: the key's name).")
    ] = None,
    as_json: JsonOption = False,
    evidence: Annotated[
        Path | None, typer.Option("--evidence", help="Where to write evidence on failure.")
    ] = None,
) -> None:
    """Check a citizen's receipt offline: signature, inclusion proof, and the entry."""
    console = Console(stderr=as_json)
    verifiers = _verifiers(key, console, as_json)
    try:
        data = file.read_bytes()
    except OSError as exc:
        _usage(console, f"cannot read {file}: {exc.strerror}", as_json)
    try:
        verified = verify_receipt(data, verifiers, origin=origin or verifiers[0].name)
    except AuditError as error:
        written = _write_evidence(error, evidence, {})
        _failed(console, error, written, as_json)
    except ProofError as exc:
        _usage(console, f"malformed receipt: {exc}", as_json)
    result = {
        "status": "ok",
        "index": verified.index,
        "leaf_hash": verified.leaf_hash.hex(),
        "checkpoint": {
            "origin": verified.checkpoint.origin,
            "size": verified.checkpoint.size,
            "root": verified.checkpoint.root_hash.hex(),
        },
        "entry": describe_entry(verified.entry),
    }
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"[bold green]receipt verified[/bold green]: entry {verified.index} is in the log "
        f"{verified.checkpoint.origin} of size {verified.checkpoint.size}",
        highlight=False,
    )
    console.print_json(json.dumps(result["entry"]))


def main() -> None:
    """Entry point of the ``ledger-audit`` script (exits with the codes above)."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
