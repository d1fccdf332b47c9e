"""Running the application under uvicorn for ``nicecard serve``: one listening socket per
worker process (``SO_REUSEPORT``), and the start-up heap kept out of the garbage collector.

**Sockets.** uvicorn's own supervisor binds one socket and shares it between its workers. The
kernel then wakes whichever worker is idle when connections arrive, and that worker accepts
the whole burst: with a few long-lived keep-alive connections (a reverse proxy's pool, a load
generator) one worker often holds nearly all of them while the others idle
(``bench/README.md``). Here the supervisor binds one socket per worker, all with
``SO_REUSEPORT`` on the same address, and listens on all of them before any worker starts.
Linux then hashes each new connection (addresses and ports) onto one socket of the group, so
connections spread across workers whatever each one is doing. Only sockets of the same user
can join a group. Elsewhere (macOS and the BSDs give every connection to one socket of such a
group) uvicorn's shared socket is kept.

The supervisor holds every socket for its whole life, so a worker that dies or restarts leaves
its socket listening: connections hashed to it wait in its backlog for the replacement instead
of being refused. Signals:

- ``SIGINT``, ``SIGTERM``: graceful stop. Each worker stops accepting, finishes its requests
  and runs the application's shutdown (uvicorn's own handling); then the sockets close.
- ``SIGHUP``: graceful restart, one worker at a time; the next waits until the replacement
  serves (or has failed to start).

A worker that dies is started again on its socket, unless it failed to start (uvicorn's
``STARTUP_FAILURE`` exit code): then the configuration or the application is broken, and the
supervisor stops the others and exits with that code.

**Garbage collection.** Once a worker has started, the objects made so far (modules, the
application, its caches: some 165,000) are moved to the collector's permanent generation
(``gc.freeze``). A full collection walked them all, about 90 ms every few thousand requests
(``bench/README.md``); requests' own garbage is collected as before.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("uvicorn.error")

#: How long a restarted worker may take to start serving before the next one is restarted.
RESTART_READY_TIMEOUT = 30.0

_spawn = multiprocessing.get_context("spawn")


def run(config: uvicorn.Config) -> int:
    """Serve ``config``'s application with ``config.workers`` processes (this one if 1);
    returns the process exit code."""
    if config.workers == 1:
        server = _Server(config)
        with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the stopping SIGINT
            server.run()
        return 0 if server.started else STARTUP_FAILURE
    if not sys.platform.startswith("linux"):
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return 0
    try:
        sockets = bind_reuse_port(config.host, config.port, config.workers, config.backlog)
    except OSError as exc:
        log.error("Cannot listen on %s:%s: %s", config.host, config.port, exc)
        return STARTUP_FAILURE
    port = sockets[0].getsockname()[1]
    log.info("Listening on http://%s:%s, one socket per worker", config.host, port)
    return Supervisor(config, sockets).run()


def bind_reuse_port(host: str, port: int, count: int, backlog: int) -> list[socket.socket]:
    """``count`` listening sockets on ``(host, port)`` in one ``SO_REUSEPORT`` group (port 0:
    the port the first one got)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            port = sock.getsockname()[1]
            sock.listen(backlog)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Server(uvicorn.Server):
    """uvicorn's server; once started, it freezes the start-up heap and tells the supervisor
    (if any) that it serves."""

    def __init__(self, config: uvicorn.Config, ready: Connection | None = None) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        gc.collect()
        gc.freeze()
        if self._ready is not None:
            with contextlib.suppress(OSError):  # the supervisor is gone
                self._ready.send(True)
            self._ready.close()


def _worker(config: uvicorn.Config, sock: socket.socket, ready: Connection) -> None:
    """A worker process (spawned): the application on its own socket."""
    config.configure_logging()  # as uvicorn's workers do: the config arrived pickled
    with contextlib.suppress(KeyboardInterrupt):
        _Server(config, ready).run(sockets=[sock])


class _Slot:
    """One socket and the worker process serving it."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.process: SpawnProcess | None = None
        self._ready: Connection | None = None

    def start(self) -> None:
        self._ready, child_end = _spawn.Pipe(duplex=False)
        self.process = _spawn.Process(target=_worker, args=(self.config, self.sock, child_end))
        self.process.start()
        child_end.close()

    def wait_ready(self, timeout: float) -> bool:
        """Whether the worker started serving within ``timeout`` seconds."""
        if self._ready is None:
            return False
        try:
            return self._ready.poll(timeout) and bool(self._ready.recv())
        except (EOFError, OSError):  # it exited before serving
            return False

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def stop(self) -> None:
        """Ask the worker to stop gracefully (SIGTERM); :meth:`join` waits for it."""
        if self.process is not None and self.process.is_alive() and self.process.pid:
            os.kill(self.process.pid, signal.SIGTERM)

    def join(self) -> int | None:
        if self._ready is not None:
            self._ready.close()
            self._ready = None
        if self.process is None:
            return None
        self.process.join()
        return self.process.exitcode


class Supervisor:
    """Runs one worker per socket until ``SIGINT`` or ``SIGTERM``; see the module docstring."""

    def __init__(self, config: uvicorn.Config, sockets: Sequence[socket.socket]) -> None:
        self._slots = [_Slot(config, sock) for sock in sockets]
        self._stop = threading.Event()
        self._restart = threading.Event()
        self._wake = threading.Event()
        self._exit_code = 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._restart.set()
        else:
            self._stop.set()
        self._wake.set()

    def run(self) -> int:
        """Serve until stopped; the exit code (``STARTUP_FAILURE`` if a worker could not
        start)."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        log.info("Started parent process [%s]", os.getpid())
        try:
            for slot in self._slots:
                slot.start()
            while not self._stop.is_set():
                self._wake.wait(0.5)
                self._wake.clear()
                if self._restart.is_set() and not self._stop.is_set():
                    self._restart.clear()
                    self._restart_all()
                self._replace_dead()
        finally:
            for slot in self._slots:
                slot.stop()
            for slot in self._slots:
                slot.join()
            for slot in self._slots:
                slot.sock.close()
            log.info("Stopped parent process [%s]", os.getpid())
        return self._exit_code

    def _replace_dead(self) -> None:
        for slot in self._slots:
            if self._stop.is_set():
                return
            if slot.alive():
                continue
            code = slot.join()
            if code == STARTUP_FAILURE:
                log.error("A worker failed to start: stopping")
                self._exit_code = STARTUP_FAILURE
                self._stop.set()
                return
            log.warning("Worker process exited (code %s): starting another", code)
            slot.start()

    def _restart_all(self) -> None:
        log.info("Received SIGHUP: restarting the workers one at a time")
        for slot in self._slots:
            if self._stop.is_set():
                return
            slot.stop()
            slot.join()  # its requests are done; its socket keeps new connections queued
            slot.start()
            deadline = time.monotonic() + RESTART_READY_TIMEOUT
            while not slot.wait_ready(0.1):
                if self._stop.is_set() or not slot.alive() or time.monotonic() > deadline:
                    log.warning("A restarted worker is not serving; going on")
                    break
