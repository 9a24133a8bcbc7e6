"""The store's two threads: the worker that runs every store call, alarms first, and the
checkpointer that copies the WAL into the database file beside it."""

from __future__ import annotations

import contextlib
import itertools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.core.errors import StoreError

log = structlog.get_logger("gateway.store.worker")

# A checkpoint lets the next commit restart the WAL, which rewrites the WAL's header (and fsyncs
# it) and clears the whole 32 KiB wal-index in the -shm file: 9 pages written before the commit's
# own frames. Checkpointed after every commit, an idle gateway with its uplink down (a heartbeat
# committed a minute) wrote 23 pages a minute; appending to the WAL until it has grown (the store
# wakes the checkpointer then) or for this long, ≈7.
CHECKPOINT_INTERVAL_S = 600.0
CHECKPOINT_SPACING_S = 0.25  # between checkpoints the store asks for
CHECKPOINT_QUIET_S = 0.02  # no alarm committed for this long before a checkpoint starts
CHECKPOINT_HOLD_MAX_S = 0.5  # but it waits no longer than this (the store's cap bounds the WAL)
CHECKPOINT_HOLD_POLL_S = 0.002
_T = TypeVar("_T")
_I = TypeVar("_I")

# The store thread's order of work: what an alarm waits for, then the claims and acks that feed
# the backlog's drain (neither delays an alarm queued beside it), then everything else.
ALARM_RANK, BACKLOG_RANK, OTHER_RANK = 0, 1, 2
_STOP_RANK = 3


class Checkpointer:
    """Copies the WAL into the database file from a connection and thread of its own.

    A PASSIVE checkpoint never blocks the writer, so an alarm's commit does not wait for it. It
    runs as soon as the store says the WAL or the database's pending growth is getting large (at
    most every ``spacing_s``), and otherwise every ``interval_s``: a small WAL is left to grow,
    since each checkpoint costs the next commit the WAL's restart (``CHECKPOINT_INTERVAL_S``).
    It starts only once ``hold()`` (an alarm is being committed) has been false for
    ``CHECKPOINT_QUIET_S``, waiting at most ``CHECKPOINT_HOLD_MAX_S``: its writes and fsyncs,
    tens of milliseconds for a few MiB, would share the disk with the fsyncs of alarms that come
    in a burst.
    """

    def __init__(
        self,
        path: Path,
        lock: threading.Lock,
        interval_s: float = CHECKPOINT_INTERVAL_S,
        spacing_s: float = CHECKPOINT_SPACING_S,
        hold: Callable[[], bool] = lambda: False,
    ) -> None:
        self._path = path
        self._lock = lock
        self._hold = hold
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
        last = -self._spacing_s
        try:
            while True:
                self._wake.wait(self._interval_s)
                # Woken often: at most every spacing_s, counted from the last checkpoint's end.
                if self._stop.wait(max(0.0, last + self._spacing_s - time.monotonic())):
                    return
                self._wake.clear()
                if self._held_back():
                    return
                try:
                    with self._lock:
                        db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except sqlite3.Error as exc:
                    if not failing:  # once, not every second while the disk is full
                        log.warning("checkpoint_failed", error=str(exc))
                    failing = True
                    continue
                finally:
                    last = time.monotonic()
                if failing:
                    log.info("checkpoint_recovered")
                failing = False
        finally:
            db.close()

    def _held_back(self) -> bool:
        """Wait for a quiet moment without alarms (bounded); True if asked to stop meanwhile."""
        start = time.monotonic()
        quiet_since = start
        while (now := time.monotonic()) - start < CHECKPOINT_HOLD_MAX_S:
            # Asked each time, the last time too: a thread that was not scheduled for a while
            # saw no alarm then, which is not a quiet moment.
            if self._hold():
                quiet_since = now
            elif now - quiet_since >= CHECKPOINT_QUIET_S:
                break
            if self._stop.wait(CHECKPOINT_HOLD_POLL_S):
                return True
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()


class _Joined:
    """Urgent calls of one function that run as one call: those submitted while it waits."""

    def __init__(self, fn: Callable[[list[Any]], Any]) -> None:
        self.fn = fn
        self.items: list[Any] = []
        self.futures: list[Future[Any]] = []


class StoreWorker:
    """The one thread that runs every store call, urgent calls (alarms) before the others.

    A FIFO executor would make an alarm wait behind every telemetry commit, claim and ack
    already queued while a backlog drains; here it waits at most for the call in progress
    (the backlog's store work comes in small calls for that reason). Calls of one rank run in
    the order submitted: alarms (``ALARM_RANK``), claims and acks of the backlog, the rest.
    Alarms that arrive while one waits are committed with it (``submit_joined``): one fsync
    for all of them, instead of a queue of alarms each waiting for the fsyncs before its own.
    """

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._stopped = False
        self._joining: _Joined | None = None  # queued, not started: more may join it
        self._join_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., _T], args: tuple[Any, ...], *, urgent: bool) -> Future[_T]:
        return self.submit_ranked(fn, args, ALARM_RANK if urgent else OTHER_RANK)

    def submit_ranked(self, fn: Callable[..., _T], args: tuple[Any, ...], rank: int) -> Future[_T]:
        """``fn(*args)`` after the calls of a lower rank and those of its rank already queued."""
        future: Future[_T] = Future()
        if self._stopped:
            future.set_exception(StoreError("the outbox is closed"))
            return future
        self._queue.put((rank, next(self._order), (future, fn, args)))
        return future

    def submit_joined(self, fn: Callable[[list[_I]], _T], item: _I) -> Future[_T]:
        """Urgent: ``fn([item, ...])`` with every item submitted for ``fn`` until it starts;
        each future gets its result. If that call raises, each item is run alone, so that one
        item that cannot be stored (a duplicate id) does not fail the others with it."""
        future: Future[_T] = Future()
        if self._stopped:
            future.set_exception(StoreError("the outbox is closed"))
            return future
        with self._join_lock:
            joined = self._joining
            if joined is None or joined.fn != fn:  # (bound methods are made anew)
                joined = self._joining = _Joined(fn)
                self._queue.put((ALARM_RANK, next(self._order), joined))
            joined.items.append(item)
            joined.futures.append(future)
        return future

    def alarm_waiting(self) -> bool:
        """An alarm's call is queued (for the call in progress, to end early)."""
        with self._queue.mutex:
            heap = self._queue.queue
            return bool(heap) and heap[0][0] == ALARM_RANK

    def _run(self) -> None:
        while True:
            rank, _, item = self._queue.get()
            if rank == _STOP_RANK:
                return
            if isinstance(item, _Joined):
                self._run_joined(item)
                continue
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller via the future
                future.set_exception(exc)

    def _run_joined(self, joined: _Joined) -> None:
        with self._join_lock:
            if self._joining is joined:
                self._joining = None  # closed: what comes now waits for the next one
        running = [
            (item, future)
            for item, future in zip(joined.items, joined.futures, strict=True)
            if future.set_running_or_notify_cancel()
        ]
        if len(running) > 1:
            with contextlib.suppress(Exception):  # then each item is run alone: its own outcome
                result = joined.fn([item for item, _ in running])
                for _, future in running:
                    future.set_result(result)
                return
        for item, future in running:
            try:
                future.set_result(joined.fn([item]))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller via the future
                future.set_exception(exc)

    def shutdown(self) -> None:
        """Run what is queued, then stop."""
        self._stopped = True
        self._queue.put((_STOP_RANK, next(self._order), None))
        self._thread.join()
