"""The asyncio face of the store: every store call runs on the store's thread, alarms first;
telemetry is group-committed (alarms are committed with a full fsync before ``put`` returns)."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.core.errors import StoreError
from gateway.core.events import NewEvent, StoredEvent
from gateway.store.alarms import HeldAlarm
from gateway.store.database import OpenReport
from gateway.store.sqlite import EVICTION_ORDER, SqliteStore, StoreStats
from gateway.store.worker import Checkpointer, StoreWorker

log = structlog.get_logger("gateway.store.outbox")

_T = TypeVar("_T")


def _log_failure(future: Future[object]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("store_call_failed", error=repr(exc))


class Outbox:
    """The asyncio face of the store: one worker thread, group commit for all but alarms.

    Events waiting for their group commit, or for a store that cannot write (a full disk), are
    held in memory up to ``buffer_limit``; beyond it the oldest are dropped (telemetry first),
    counted, and reported with one ``gateway.dropped`` (no seq ranges: they never had a seq,
    reason ``buffer_full``) stored with the next events that can be stored.
    """

    def __init__(
        self,
        store: SqliteStore,
        *,
        group_commit_s: float = 0.2,
        max_buffered: int = 5000,
        buffer_limit: int = 20_000,
    ) -> None:
        self.store = store
        self.group_commit_s = group_commit_s
        self.max_buffered = max_buffered
        self.buffer_limit = max(buffer_limit, max_buffered)
        self.changed = asyncio.Event()
        self.alarm_stored = asyncio.Event()  # the uplink's fast path for alarms
        self.alarms_arriving = 0  # alarms being committed right now: the drain holds back
        self.dropped_unstored = 0  # dropped from the buffer, not yet reported (stored)
        self._reporting = False  # a report of them is being stored now
        self._worker = StoreWorker()
        self._checkpointer: Checkpointer | None = None
        self._buffer: list[NewEvent] = []
        self._timer: asyncio.TimerHandle | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failing = False  # the last commit failed: wait for the retry timer

    async def _call(self, fn: Callable[..., _T], *args: Any, urgent: bool = False) -> _T:
        """Run a store method on the store's thread; ``urgent`` ones (alarms) go first."""
        return await asyncio.wrap_future(self._worker.submit(fn, args, urgent=urgent))

    def _call_nowait(self, fn: Callable[..., object], *args: Any) -> None:
        """Queue a store call behind the others without waiting for it."""
        future = self._worker.submit(fn, args, urgent=False)
        future.add_done_callback(_log_failure)

    # The store's work for the uplink and the application. Each method chooses its priority:
    # what an alarm waits for (claims, the alarm schedule, acknowledgements) goes first.

    @property
    def path(self) -> Path:
        """The database file (its directory is the state directory)."""
        return self.store.path

    def mono(self) -> float:
        """Seconds on the store's monotonic clock (deadlines for ``release``)."""
        return self.store.mono()

    async def claim(self, max_events: int) -> tuple[list[StoredEvent], list[HeldAlarm]]:
        """Events to publish (alarms first), and the alarms the claim found damaged."""
        return await self._call(_claim, self.store, max_events, urgent=True)

    async def ack(self, seqs: Sequence[int]) -> list[HeldAlarm]:
        """The broker has these (PUBACK): delete them; the alarms among them now wait for
        the platform's acknowledgement and are returned."""
        return await self._call(self.store.ack, seqs)

    def release(self, seqs: Sequence[int], retry_at: float | None = None) -> None:
        """Put claimed events back, to be claimed again from ``retry_at`` (now by default)."""
        self._call_nowait(self.store.release, seqs, self.mono() if retry_at is None else retry_at)

    async def release_all(self) -> None:
        """The link is lost: every event in flight is put back."""
        await self._call(self.store.release_all, urgent=True)

    async def held_alarms(self) -> list[HeldAlarm]:
        """The alarms stored and not yet acknowledged by the platform."""
        return await self._call(self.store.held_alarms, urgent=True)

    async def count_held_alarms(self) -> int:
        """How many alarms wait for the platform's acknowledgement (for reports: not urgent)."""
        return len(await self._call(self.store.held_alarms))

    async def promote_due_alarms(self) -> tuple[list[HeldAlarm], list[HeldAlarm]]:
        """Alarms due for a resend, and those given up after ``give_up_after_s``."""
        return await self._call(self.store.promote_due_alarms, urgent=True)

    async def acknowledge_alarms(
        self, ids: Sequence[str], make_audit: Callable[[HeldAlarm], NewEvent] | None = None
    ) -> list[HeldAlarm]:
        """The platform acknowledged: forget these alarms, storing each one's audit event in
        the same transaction. Returns those the store held."""
        return await self._call(self.store.acknowledge_alarms, ids, make_audit, urgent=True)

    async def stats(self) -> StoreStats:
        return await self._call(self.store.stats)

    async def correct_timestamps(self, boot_id: str, wall_now: float, mono_now_ns: int) -> int:
        """The clock is synchronised: recompute ``ts`` of this boot's waiting events."""
        return await self._call(self.store.correct_timestamps, boot_id, wall_now, mono_now_ns)

    async def command_result(self, cmd_id: str) -> str | None:
        """The result already sent for a command id, if it ran before."""
        return await self._call(self.store.command_result, cmd_id)

    async def remember_command(self, cmd_id: str, result_json: str) -> None:
        await self._call(self.store.remember_command, cmd_id, result_json)

    async def open(self) -> OpenReport:
        report = await self._call(self.store.open)
        await self._call(self.store.make_reserve)
        self._checkpointer = Checkpointer(self.store.path, self.store.checkpoint_lock)
        self.store.set_checkpoint_waker(self._checkpointer.wake)
        return report

    async def put(self, event: NewEvent, *, key: str | None = None) -> str:
        """Store an event; return the id stored. An alarm is on disk (fsync) on return; others
        within the window.

        ``key`` (alarms only): an alarm already stored under it is not stored again, and its
        id is returned instead of the event's. Only an alarm that cannot be stored raises;
        other events wait in the buffer.
        """
        if self._closed:
            raise StoreError("the outbox is closed")
        if event.is_alarm:
            return await self._commit_alarm(event, key)
        if key is not None:
            raise ValueError("only alarms are stored under a key")
        self._buffer.append(event)
        if len(self._buffer) > self.buffer_limit:
            self._drop_oldest()
        if self._failing:
            return event.id  # the retry timer commits the buffer
        if self.group_commit_s == 0 or len(self._buffer) >= self.max_buffered:
            await self._commit_logged()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.group_commit_s, self._on_timer)
        return event.id

    def _drop_oldest(self) -> None:
        """Bring the buffer down to 90 % of its limit: oldest first, by the eviction order."""
        excess = len(self._buffer) - self.buffer_limit * 9 // 10
        doomed: set[int] = set()
        for klass in EVICTION_ORDER:
            for index, event in enumerate(self._buffer):
                if len(doomed) >= excess:
                    break
                if event.event_class == klass:  # (alarms are never buffered)
                    doomed.add(index)
        self._buffer = [event for i, event in enumerate(self._buffer) if i not in doomed]
        self.dropped_unstored += len(doomed)
        log.error(
            "events_dropped",
            count=len(doomed),
            reason="buffer_full",
            buffered=len(self._buffer),
            unreported=self.dropped_unstored,
        )

    def _on_timer(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self._commit_logged(), name="outbox.commit")
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    async def _commit_logged(self) -> None:
        try:
            await self._commit()
        except (StoreError, sqlite3.Error, OSError) as exc:
            log.error("store_write_failed", error=str(exc), waiting=len(self._buffer))  # noqa: TRY400

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _commit(self) -> None:
        """Commit what is buffered now, in transactions of the store's size; first, in one of
        its own, the report of what the buffer dropped (it fits where the batch may not)."""
        self._cancel_timer()
        if self.dropped_unstored and not self._reporting:
            await self._insert([], report=self.dropped_unstored)
        left = len(self._buffer)
        while left > 0 and self._buffer:
            step = min(left, self.store.rows_per_transaction)
            batch, self._buffer = self._buffer[:step], self._buffer[step:]
            left -= step
            await self._insert(batch)

    async def _commit_alarm(self, alarm: NewEvent, key: str | None) -> str:
        """Commit the alarm alone, ahead of queued telemetry work (alarms are their own class, so
        this reorders nothing within a class; the buffer keeps its normal path and order).
        The id stored: the alarm's, or that of the alarm stored under ``key`` before."""
        self.alarms_arriving += 1
        try:
            seqs = await self._insert([alarm], key=key)
        finally:
            self.alarms_arriving -= 1
        if seqs or key is None:
            return alarm.id
        earlier = await self._call(self.store.alarm_under_key, key, urgent=True)
        if earlier is None:  # only if the key was pruned in between, a day after it was stored
            raise StoreError(f"the alarm stored under {key!r} is forgotten")
        return earlier

    async def _insert(
        self, batch: list[NewEvent], report: int = 0, *, key: str | None = None
    ) -> list[int]:
        """Run one insert to its end even when the caller is cancelled meanwhile: the store
        thread commits or rolls back regardless, and only its real outcome decides what happens
        to the batch (a cancelled caller must not make committed events be stored twice).
        ``report``: a count of dropped events, reported with the batch. ``key``: the batch is
        one alarm, stored under it (``SqliteStore.insert``). Returns the seqs stored."""
        urgent = bool(batch) and all(event.is_alarm for event in batch)
        rows = batch
        if report:
            self._reporting = True
            rows = [self.store.dropped_event(report, [], "buffer_full"), *batch]
        insert = self.store.insert if key is None else functools.partial(self.store.insert, key=key)
        future = asyncio.wrap_future(self._worker.submit(insert, (rows,), urgent=urgent))
        future.add_done_callback(functools.partial(self._inserted, batch, report))
        return await asyncio.shield(future)

    def _inserted(
        self, batch: list[NewEvent], reported: int, future: asyncio.Future[list[int]]
    ) -> None:
        exc = future.exception()
        if reported:
            self._reporting = False
        if exc is None:
            self.dropped_unstored -= reported
            if self._failing and not all(event.is_alarm for event in batch):
                self._failing = False
                log.info("store_write_recovered", waiting=len(self._buffer))
            self.changed.set()
            if any(event.is_alarm for event in batch):
                # At the loop's next turn, so that the uplink's task wakes after the task that
                # put the alarm: what that one does on "stored" (a watch's 0x01, a button's ACK)
                # goes before the uplink's claim, which would hold the store thread and the GIL.
                asyncio.get_running_loop().call_soon(self.alarm_stored.set)
            return
        waiting = [event for event in batch if not event.is_alarm]
        self._buffer[:0] = waiting  # kept for the next attempt, in order
        if len(self._buffer) > self.buffer_limit:
            self._drop_oldest()
        lost_alarms = [event.id for event in batch if event.is_alarm]
        log.error("store_insert_failed", error=repr(exc), requeued=len(waiting), alarms=lost_alarms)
        if waiting:
            self._failing = True
        if self._buffer and self._timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(self.group_commit_s, 1.0), self._on_timer)

    async def flush(self) -> None:
        """Commit whatever is buffered now (``StoreError`` if the store cannot write)."""
        try:
            await self._commit()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot store the buffered events: {exc}") from exc
        if self._commits:
            await asyncio.gather(*list(self._commits), return_exceptions=True)

    async def close(self) -> None:
        """Commit the buffer and close; what cannot be stored then is logged as lost."""
        try:
            await self.flush()
        except (StoreError, sqlite3.Error, OSError) as exc:
            log.error(  # noqa: TRY400 - the reason is in the message
                "events_lost_at_close",
                count=len(self._buffer) + self.dropped_unstored,
                error=str(exc),
            )
        finally:
            self._closed = True
            self._cancel_timer()
            if self._checkpointer is not None:
                await asyncio.to_thread(self._checkpointer.stop)
            await self._call(self.store.close)
            await asyncio.to_thread(self._worker.shutdown)

    @property
    def buffered(self) -> int:
        return len(self._buffer)


def _claim(store: SqliteStore, max_events: int) -> tuple[list[StoredEvent], list[HeldAlarm]]:
    """On the store's thread: a claim, and the alarms it quarantined as damaged."""
    return store.claim(max_events), store.take_quarantined_alarms()
