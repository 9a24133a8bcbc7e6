"""The store's two threads: the worker that runs every store call, alarms first, and the
checkpointer that copies the WAL into the database file beside it."""

from __future__ import annotations

import itertools
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.core.errors import StoreError

log = structlog.get_logger("gateway.store.worker")

CHECKPOINT_INTERVAL_S = 1.0
CHECKPOINT_SPACING_S = 0.25  # between checkpoints the store asks for
_T = TypeVar("_T")


class Checkpointer:
    """Copies the WAL into the database file from a connection and thread of its own.

    A PASSIVE checkpoint never blocks the writer, so an alarm's commit does not wait for it. It
    runs every ``interval_s``, and at once when the store says the WAL or the database's
    pending growth is getting large.
    """

    def __init__(
        self,
        path: Path,
        lock: threading.Lock,
        interval_s: float = CHECKPOINT_INTERVAL_S,
        spacing_s: float = CHECKPOINT_SPACING_S,
    ) -> None:
        self._path = path
        self._lock = lock
        self._interval_s = interval_s
        self._spacing_s = spacing_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox.checkpoint", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            log.error("checkpointer_failed", error=str(exc))  # noqa: TRY400
            return
        failing = False
        try:
            while True:
                self._wake.wait(self._interval_s)
                if self._stop.wait(self._spacing_s):  # woken often: at most this often
                    return
                self._wake.clear()
                try:
                    with self._lock:
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    if not failing:  # once, not every second while the disk is full
                        log.warning("checkpoint_failed", error=str(exc))
                    failing = True
                    continue
                if failing:
                    log.info("checkpoint_recovered")
                failing = False
        finally:
            db.close()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()


class StoreWorker:
    """The one thread that runs every store call, urgent calls (alarms) before the others.

    A FIFO executor would make an alarm wait behind every telemetry commit, claim and ack
    already queued while a backlog drains; here it waits at most for the call in progress.
    """

    _URGENT, _NORMAL, _STOP = 0, 1, 2

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., _T], args: tuple[Any, ...], *, urgent: bool) -> Future[_T]:
        future: Future[_T] = Future()
        if self._stopped:
            future.set_exception(StoreError("the outbox is closed"))
            return future
        rank = self._URGENT if urgent else self._NORMAL
        self._queue.put((rank, next(self._order), (future, fn, args)))
        return future

    def _run(self) -> None:
        while True:
            rank, _, item = self._queue.get()
            if rank == self._STOP:
                return
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller via the future
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Run what is queued, then stop."""
        self._stopped = True
        self._queue.put((self._STOP, next(self._order), None))
        self._thread.join()
