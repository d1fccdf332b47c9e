"""Group commit: concurrent appends sharing one transaction (one writer thread per process).

The appends themselves, and every rule they are judged by, are :mod:`ledger.store`'s; this
module only queues callers' requests and hands them to :meth:`LedgerStore.append_many` in
batches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ledger.entries import Event
from ledger.errors import AppendRejected, LedgerError, LedgerStoreError
from ledger.store import (
    ActCaps,
    Appended,
    AppendRequest,
    IdempotencyKey,
    LedgerStore,
    check_request,
)

__all__ = ["GroupCommitAppender"]


@dataclass
class _Pending:
    """Requests submitted together: appended in one transaction, answered by one future."""

    requests: list[AppendRequest]
    future: Future[Any]
    one: bool
    """From :meth:`GroupCommitAppender.submit`: the future holds the one :class:`Appended` or
    raises its :class:`AppendRejected`; otherwise it holds the list of outcomes."""

    def resolve(self, outcomes: list[Appended | AppendRejected]) -> None:
        if not self.one:
            self.future.set_result(outcomes)
        elif isinstance(outcomes[0], AppendRejected):
            self.future.set_exception(outcomes[0])
        else:
            self.future.set_result(outcomes[0])


class GroupCommitAppender:
    """Concurrent appends sharing transactions: one writer thread, many callers.

    Callers :meth:`submit` one request or :meth:`submit_many` several, and get a
    :class:`~concurrent.futures.Future`; the writer takes whatever is queued (about ``max_batch``
    requests; with ``linger`` > 0 it also waits for requests that keep arriving with gaps under
    ``linger`` seconds, ``max_wait`` in all), appends them with :meth:`LedgerStore.append_many`
    in one transaction and resolves each future with its outcomes (or :class:`LedgerStoreError`
    for the whole transaction). The requests of one :meth:`submit_many` always share one
    transaction (more than ``max_batch`` of them get one to themselves). Requests queue up while
    a commit is in flight, so under load each commit carries many of them, and at low load
    nothing waits (measured: no linger beats any linger for callers that each wait for their own
    append). ``asyncio.wrap_future`` turns a future into an awaitable. One appender per store
    per process; several processes each run their own and share the head lock, under which
    every rule of :class:`AppendRequest` is judged.
    """

    def __init__(
        self,
        store: LedgerStore,
        *,
        max_batch: int = 512,
        linger: float = 0.0,
        max_wait: float = 0.002,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._store = store
        self._max_batch = max_batch
        self._linger = linger
        self._max_wait = max_wait
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="ledger-group-commit", daemon=True)
        self._thread.start()

    def submit(
        self,
        event: Event,
        *,
        idempotency: IdempotencyKey | None = None,
        caps: ActCaps | None = None,
    ) -> Future[Appended]:
        """Queue one append; the future resolves once its transaction committed, to the
        :class:`Appended` or with the :class:`AppendRejected` that refused it."""
        request = AppendRequest(event, idempotency, caps)
        check_request(request)  # refused here, not in the writer thread
        future: Future[Appended] = Future()
        self._put(_Pending([request], future, one=True))
        return future

    def submit_many(
        self, requests: Sequence[AppendRequest]
    ) -> Future[list[Appended | AppendRejected]]:
        """Queue appends that share one transaction; the future resolves once it committed, to
        one outcome per request, in order, as :meth:`LedgerStore.append_many` returns them."""
        requests = list(requests)
        for request in requests:
            check_request(request)
        future: Future[list[Appended | AppendRejected]] = Future()
        if not requests:
            future.set_result([])
            return future
        self._put(_Pending(requests, future, one=False))
        return future

    def append(
        self,
        event: Event,
        *,
        idempotency: IdempotencyKey | None = None,
        caps: ActCaps | None = None,
        timeout: float | None = None,
    ) -> Appended:
        """:meth:`submit` and wait: returns the :class:`Appended` or raises its error."""
        return self.submit(event, idempotency=idempotency, caps=caps).result(timeout)

    def close(self) -> None:
        """Finish what is queued, then stop the writer thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> GroupCommitAppender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _put(self, pending: _Pending) -> None:
        with self._lock:
            if self._closed:
                raise LedgerStoreError("the appender is closed")
            self._queue.put(pending)

    def _run(self) -> None:
        carried: _Pending | None = None
        while True:
            first = carried if carried is not None else self._queue.get()
            if first is None:
                return
            batch = [first]
            stopping, carried = self._gather(batch)
            self._commit(batch)
            if stopping:
                return

    def _gather(self, batch: list[_Pending]) -> tuple[bool, _Pending | None]:
        """Add what is queued and what follows closely. Returns whether ``close`` was called,
        and the submission that did not fit (the first of the next transaction)."""
        size = sum(len(item.requests) for item in batch)
        deadline = time.monotonic() + self._max_wait
        while size < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if self._linger <= 0 or remaining <= 0:
                    return False, None
                try:
                    item = self._queue.get(timeout=min(self._linger, remaining))
                except queue.Empty:
                    return False, None
            if item is None:
                return True, None
            if size + len(item.requests) > self._max_batch:
                return False, item
            batch.append(item)
            size += len(item.requests)
        return False, None

    def _commit(self, batch: list[_Pending]) -> None:
        live = [item for item in batch if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            outcomes = self._store.append_many([r for item in live for r in item.requests])
        except LedgerError as exc:
            for item in live:
                item.future.set_exception(exc)
            return
        except Exception as exc:  # a caller must never wait forever
            error = LedgerStoreError(f"append failed: {type(exc).__name__}")
            for item in live:
                item.future.set_exception(error)
            return
        start = 0
        for item in live:
            item.resolve(outcomes[start : start + len(item.requests)])
            start += len(item.requests)
