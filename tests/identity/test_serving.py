"""``nicecard serve``'s process model (``identity.serving``), run for real: a supervisor process
with worker processes on their own ``SO_REUSEPORT`` sockets, driven over HTTP and by signals.

The application here is a tiny ASGI callable answering with its worker's PID (and sleeping when
asked), so the tests see which process served each connection.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from uvicorn.config import STARTUP_FAILURE

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SO_REUSEPORT spreads connections on Linux only"
)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the worker's PID; ``/sleep`` first sleeps one second."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["path"] == "/sleep":
        await asyncio.sleep(1)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


def _supervisor(port: int, workers: int, app_path: str, log: Path) -> subprocess.Popen[bytes]:
    """``serving.run`` in a process of its own, its log in ``log``."""
    script = (
        "import sys, uvicorn\n"
        "from identity import serving\n"
        f"config = uvicorn.Config({app_path!r}, host='127.0.0.1', port={port}, "
        f"workers={workers}, log_level='warning')\n"
        "sys.exit(serving.run(config))\n"
    )
    with log.open("ab") as stderr:
        return subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=stderr)


def _wait_up(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            httpx.get(base, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not come up")


@contextmanager
def _serving(port: int, workers: int, log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    process = _supervisor(port, workers, "tests.identity.test_serving:app", log)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_up(base, process, log)
        yield base, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)


def _pids(base: str, connections: int) -> list[int]:
    """The PID behind each of ``connections`` fresh keep-alive connections."""
    clients = [httpx.Client(base_url=base, timeout=5) for _ in range(connections)]
    try:
        return [int(client.get("/").text) for client in clients]
    finally:
        for client in clients:
            client.close()


def test_connections_spread_over_the_workers(free_port: int, tmp_path: Path) -> None:
    with _serving(free_port, 2, tmp_path / "serve.log") as (base, _):
        pids = _pids(base, 32)
    # The kernel hashes each connection onto one of two sockets: 32 never all land on one
    # (probability 2**-31), which is what a shared socket did to a burst of connections.
    assert len(set(pids)) == 2


def test_sigterm_lets_requests_finish(free_port: int, tmp_path: Path) -> None:
    with _serving(free_port, 2, tmp_path / "serve.log") as (base, process):
        pending = asyncio.run(_sleep_then_terminate(base, process))
        assert pending.status_code == 200
        assert process.wait(timeout=30) == 0


async def _sleep_then_terminate(base: str, process: subprocess.Popen[bytes]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        request = asyncio.ensure_future(client.get("/sleep"))
        await asyncio.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        return await request


def test_a_dead_worker_is_replaced_on_its_socket(free_port: int, tmp_path: Path) -> None:
    with _serving(free_port, 2, tmp_path / "serve.log") as (base, _):
        victim = _pids(base, 1)[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = set(_pids(base, 32))  # connections to the dead worker's socket wait
            if victim not in pids and len(pids) == 2:
                break
            time.sleep(0.2)
        assert victim not in pids
        assert len(pids) == 2


def test_sighup_restarts_every_worker(free_port: int, tmp_path: Path) -> None:
    with _serving(free_port, 2, tmp_path / "serve.log") as (base, process):
        before = set(_pids(base, 32))
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = set(_pids(base, 32))
            if len(after) == 2 and not after & before:
                break
            time.sleep(0.2)
        assert len(after) == 2
        assert not after & before


def test_a_worker_that_cannot_start_stops_the_server(free_port: int, tmp_path: Path) -> None:
    process = _supervisor(free_port, 2, "tests.identity.no_such_module:app", tmp_path / "log")
    assert process.wait(timeout=60) == STARTUP_FAILURE


def test_one_worker_serves_in_the_process_itself(free_port: int, tmp_path: Path) -> None:
    with _serving(free_port, 1, tmp_path / "serve.log") as (base, process):
        assert set(_pids(base, 8)) == {process.pid}
