"""The asyncio face of the store: every store call runs on the store's thread, alarms first;
other events are kept in memory for a window with their seqs (alarms are committed with a full
fsync before ``put`` returns)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.core.errors import StoreError
from gateway.core.events import NewEvent, StoredEvent, WireRun
from gateway.store.alarms import HeldAlarm
from gateway.store.database import OpenReport
from gateway.store.files import SEQ_RESERVE_BLOCK
from gateway.store.sqlite import EVICTION_ORDER, HotBatch, SqliteStore, StoreStats
from gateway.store.worker import ALARM_RANK, BACKLOG_RANK, OTHER_RANK, Checkpointer, StoreWorker

log = structlog.get_logger("gateway.store.outbox")

_T = TypeVar("_T")
WRITE_RETRY_S = 1.0  # after a write that failed (a full disk)
CLAIM_ROWS_PER_STEP = 100  # a claim of the backlog looks for a queued alarm this often
# After a keyed alarm's COMMIT the store thread waits (at most this long) until the loop has
# taken the step that tells the producer (a watch's Alert Confirm 0x01 goes out in it), before
# its own bookkeeping and the alarm's claim. Run at once, they competed with that step for the
# GIL: from the COMMIT to the loop's callback took 300 us instead of 80 (docs/PERFORMANCE.md).
LOOP_FIRST_MAX_S = 0.005


def _log_failure(future: Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("store_call_failed", error=repr(exc))


@dataclass(frozen=True, slots=True)
class _ClaimedAlarms:
    """Alarms claimed by their insert's store call, in the store's epoch at that time."""

    epoch: int
    events: list[StoredEvent]
    damaged: list[HeldAlarm]


@dataclass(slots=True)
class _Hot:
    """An event kept in memory with its seq, and its state in the uplink."""

    event: NewEvent
    born: float  # time.monotonic() at put: its window ends ``group_commit_s`` later
    inflight: bool = False
    retry_at: float = 0.0  # released: to be claimed again from then (``Outbox.mono``)


class Outbox:
    """The asyncio face of the store: one worker thread; events other than alarms kept in memory.

    An event other than an alarm gets its seq at ``put``, from a block reserved on disk
    (``SqliteStore.next_seq``), and waits in memory for at most ``group_commit_s`` (the window).
    The uplink claims it from there; if its PUBACK comes within the window it is never written.
    At the window's end, at close, when ``max_buffered`` are waiting, and for ``flush``, those
    not yet acknowledged are written in one transaction with their seqs (``HotBatch``). A crash
    loses at most the window's events, whose seqs the next start reports (``gateway.dropped``).

    Events that a store that cannot write (a full disk) leaves in memory are held up to
    ``buffer_limit``; beyond it the oldest are dropped (telemetry first), counted, and reported
    with one ``gateway.dropped`` (reason ``buffer_full``, with their seqs) written with the next
    events that can be.
    """

    def __init__(
        self,
        store: SqliteStore,
        *,
        group_commit_s: float = 60.0,
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
        # Set by the uplink while it can publish: an alarm is then claimed in its own insert's
        # store call (``take_claimed_alarms``), not by a second call that could wait behind
        # the backlog's store work.
        self.claim_at_insert = False
        self.alarms_unclaimed = True  # stored alarms may wait for a claim (``claim``)
        # Appended on the store's thread, taken on the loop's: a deque, whose append and
        # popleft are atomic (a list swapped on one thread could lose another's append).
        self._claimed: deque[_ClaimedAlarms] = deque()
        self._delivered_untold: list[HeldAlarm] = []  # delivered by an ack call that then failed
        self._store_epoch = 0  # the epoch of the last release_all run on the store's thread
        self._dropped_count = 0  # dropped from memory, not yet in a batch
        self._dropped_seqs: list[int] = []  # the seqs among them
        self._worker = StoreWorker()
        self._checkpointer: Checkpointer | None = None
        self._unsequenced: list[NewEvent] = []  # no seq yet: the bound could not be written
        self._hot: dict[int, _Hot] = {}  # by seq, in seq order
        self._flushing: dict[int, _Hot] = {}  # in a batch on its way to the store
        self._acked_flushing: set[int] = set()  # acknowledged while being written
        self._batches: dict[HotBatch, asyncio.Future[None]] = {}  # on their way to the store
        self._written_watermark = 0
        self._epoch = 0  # release_all calls
        self._reserving = False
        self._last_ack = -float("inf")  # time.monotonic() of the last ack of events in memory
        self._timer: asyncio.TimerHandle | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._closed = False
        self._failing = False  # the last write failed: wait for the retry timer

    async def _call(
        self, fn: Callable[..., _T], *args: Any, urgent: bool = False, rank: int | None = None
    ) -> _T:
        """Run a store method on the store's thread; ``urgent`` ones (alarms) go first, then
        those of a lower ``rank`` (``StoreWorker``)."""
        if rank is None:
            rank = ALARM_RANK if urgent else OTHER_RANK
        return await asyncio.wrap_future(self._worker.submit_ranked(fn, args, rank))

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
        """Events to publish (alarms first, then the stored ones in seq order, then those in
        memory in seq order), and the alarms the claim found damaged."""
        items, damaged = await self.claim_wire(max_events)
        events: list[StoredEvent] = []
        for item in items:
            if isinstance(item, WireRun):
                events += item.events()
            else:
                events.append(item)
        return events, damaged

    async def claim_wire(
        self, max_events: int
    ) -> tuple[list[StoredEvent | WireRun], list[HeldAlarm]]:
        """``claim``, with the spool's events as stretches of their wire JSON (``WireRun``):
        what the uplink publishes, without an object per event."""
        self.alarms_unclaimed = False  # every claim takes the alarms that wait
        events: list[StoredEvent | WireRun]
        try:
            if max_events == 0:
                alarms, damaged = await self._call(_claim, self.store, 0, urgent=True)
                events = list(alarms)
            else:
                events, damaged = await self._call(
                    self._claim_backlog, max_events, rank=BACKLOG_RANK
                )
        except BaseException:
            self.alarms_unclaimed = True  # (this claim took none)
            raise
        room = max_events - count_events(events)
        if room > 0 and self._hot:
            now = self.mono()
            for seq, hot in self._hot.items():
                if room <= 0:
                    break
                if hot.inflight or hot.retry_at > now:
                    continue
                hot.inflight = True
                events.append(hot.event.stored(seq))
                room -= 1
        return events, damaged

    def _claim_backlog(
        self, max_events: int
    ) -> tuple[list[StoredEvent | WireRun], list[HeldAlarm]]:
        """On the store's thread: claim in steps, and stop early for an alarm queued meanwhile
        (what is claimed so far goes out; the rest comes with the next claim)."""
        events: list[StoredEvent | WireRun] = []
        count = 0
        while count < max_events:
            step = min(CLAIM_ROWS_PER_STEP, max_events - count)
            try:
                claimed = self.store.claim_wire(step)
            except Exception as exc:
                if not events:
                    raise
                # What the earlier steps claimed is in flight: it goes out (an alarm among it
                # would wait for the next link loss otherwise); the next claim tries again.
                log.error("store_call_failed", call="claim", error=repr(exc))  # noqa: TRY400
                break
            events += claimed
            taken = count_events(claimed)
            count += taken
            if taken < step or self._worker.alarm_waiting():
                break
        return events, self.store.take_quarantined_alarms()

    async def ack(self, seqs: Sequence[int]) -> list[HeldAlarm]:
        """The broker has these (PUBACK): forget those in memory (never written), delete the
        stored ones; the alarms among them now wait for the platform's acknowledgement and are
        returned. An ack for an event being written goes to the store after the write."""
        stored = []
        if not (self._hot or self._flushing):  # (a backlog's drain: all of them stored)
            stored = list(seqs)
        for seq in seqs if not stored else ():
            if self._hot.pop(seq, None) is not None:
                self._last_ack = time.monotonic()
                continue
            if seq in self._flushing:
                self._acked_flushing.add(seq)
            stored.append(seq)
        # The store's call ends early for an alarm queued meanwhile (it goes next); the rest
        # follows in another call. A call that fails puts what it did not record back (to be
        # published again).
        delivered, self._delivered_untold = self._delivered_untold, []
        # Beside the backlog's claims, unless a write is on its way to the store, which the ack
        # must follow (else the loaded records of a drain wait behind its claims, in memory).
        rank = OTHER_RANK if self._batches else BACKLOG_RANK
        try:
            while stored:
                alarms, handled = await self._call(
                    self.store.ack_some, stored, self._worker.alarm_waiting, rank=rank
                )
                delivered += alarms
                stored = stored[handled:]
        except BaseException:
            # Those an earlier call delivered are returned by the next ack: the store holds them
            # as delivered already and will not return them again.
            self._delivered_untold = delivered
            raise
        return delivered

    def release(self, seqs: Sequence[int], retry_at: float | None = None) -> None:
        """Put claimed events back, to be claimed again from ``retry_at`` (now by default)."""
        at = self.mono() if retry_at is None else retry_at
        stored = []
        for seq in seqs:
            hot = self._hot.get(seq) or self._flushing.get(seq)
            if hot is not None:
                hot.inflight, hot.retry_at = False, at
            if seq not in self._hot:
                stored.append(seq)
        if stored:
            self._call_nowait(self.store.release, stored, at)

    async def release_all(self) -> None:
        """The link is lost: every event in flight is put back."""
        self._epoch += 1
        for hot in [*self._hot.values(), *self._flushing.values()]:
            hot.inflight, hot.retry_at = False, 0.0
        for batch in self._take_claimed():  # no longer in flight (any still coming is of an
            if batch.damaged:  # earlier epoch); the damaged alarms are still to be told
                self._claimed.append(dataclasses.replace(batch, events=[]))
        self.alarms_unclaimed = True
        await self._call(self._release_all, self._epoch, urgent=True)

    def _release_all(self, epoch: int) -> None:
        """On the store's thread."""
        self.store.release_all(epoch)
        self._store_epoch = epoch

    def take_claimed_alarms(self) -> tuple[list[StoredEvent], list[HeldAlarm]]:
        """The alarms claimed with their insert since the last call (``claim_at_insert``), and
        the alarms those claims found damaged (and quarantined); those claimed before the last
        ``release_all`` are not in flight any more and are left to the next claim."""
        events: list[StoredEvent] = []
        damaged: list[HeldAlarm] = []
        for batch in self._take_claimed():
            damaged += batch.damaged
            if batch.epoch == self._epoch:
                events += batch.events
            else:
                self.alarms_unclaimed = True
        return events, damaged

    def _take_claimed(self) -> list[_ClaimedAlarms]:
        taken = []
        while True:
            try:
                taken.append(self._claimed.popleft())
            except IndexError:
                return taken

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
        """The store's figures, the events in memory counted as queued (those on their way to
        the store are counted there: the figures are taken behind them)."""
        stats = await self._call(self.store.stats)
        waiting = [hot.event for hot in self._hot.values()] + self._unsequenced
        if not waiting:
            return stats
        queued = dict(stats.queued)
        for event in waiting:
            queued[event.event_class] = queued.get(event.event_class, 0) + 1
        oldest = stats.oldest_queued_ts or min(event.ts for event in waiting)
        return dataclasses.replace(stats, queued=queued, oldest_queued_ts=oldest)

    async def correct_timestamps(self, boot_id: str, wall_now: float, mono_now_ns: int) -> int:
        """The clock is synchronised: recompute ``ts`` of this boot's waiting events (the
        caller writes those in memory first: ``flush``)."""
        return await self._call(self.store.correct_timestamps, boot_id, wall_now, mono_now_ns)

    async def command_result(self, cmd_id: str) -> str | None:
        """The result already sent for a command id, if it ran before."""
        return await self._call(self.store.command_result, cmd_id)

    async def remember_command(self, cmd_id: str, result_json: str) -> None:
        await self._call(self.store.remember_command, cmd_id, result_json)

    async def open(self) -> OpenReport:
        report = await self._call(self.store.open)
        await self._call(self.store.make_reserve)
        await self._call(self.store.settle_wal)
        self._checkpointer = Checkpointer(
            self.store.path, self.store.checkpoint_lock, hold=lambda: self.alarms_arriving > 0
        )
        self.store.set_checkpoint_waker(self._checkpointer.wake)
        return report

    async def put(self, event: NewEvent, *, key: str | None = None) -> str:
        """Store an event; return the id stored. An alarm is on disk (fsync) on return; others
        within the window.

        ``key`` (alarms only): an alarm already stored under it is not stored again, and its
        id is returned instead of the event's. Only an alarm that cannot be stored raises;
        other events wait in memory (a report of dropped events is written at once).
        """
        if self._closed:
            raise StoreError("the outbox is closed")
        if event.is_alarm:
            return await self._commit_alarm(event, key)
        if key is not None:
            raise ValueError("only alarms are stored under a key")
        self._unsequenced.append(event)
        self._sequence()
        if self.buffered > self.buffer_limit:
            self._drop_oldest()
        self.changed.set()
        if self._failing:
            return event.id  # the retry timer writes them
        if (
            self.group_commit_s == 0
            or len(self._hot) >= self.max_buffered
            or event.kind == "gateway.dropped"  # it explains gaps: never only in memory
        ):
            await self._commit_logged()
        else:
            self._arm()
        return event.id

    def _sequence(self) -> None:
        """Give the events waiting for one a seq, in order; reserve the next block early."""
        while self._unsequenced:
            try:
                seq = self.store.next_seq()
            except OSError as exc:
                log.error("seq_not_reserved", error=str(exc), waiting=len(self._unsequenced))  # noqa: TRY400
                return
            self._hot[seq] = _Hot(self._unsequenced.pop(0), time.monotonic())
        if not self._reserving and self.store.seqs_left() < SEQ_RESERVE_BLOCK // 2:
            self._reserving = True
            future = self._worker.submit(self.store.reserve_seqs, (), urgent=False)
            future.add_done_callback(self._reserved)

    def _reserved(self, future: Future[Any]) -> None:
        self._reserving = False
        _log_failure(future)

    def _drop_oldest(self) -> None:
        """Bring memory down to 90 % of its limit: oldest first, by the eviction order; never
        events in flight or being written."""
        excess = self.buffered - self.buffer_limit * 9 // 10
        doomed: list[int] = []
        unsequenced: set[int] = set()
        for klass in EVICTION_ORDER:  # (alarms are never kept in memory)
            for seq, hot in self._hot.items():
                if len(doomed) + len(unsequenced) >= excess:
                    break
                if not hot.inflight and hot.event.event_class == klass:
                    doomed.append(seq)
            for index, event in enumerate(self._unsequenced):
                if len(doomed) + len(unsequenced) >= excess:
                    break
                if event.event_class == klass:
                    unsequenced.add(index)
        for seq in doomed:
            del self._hot[seq]
        self._unsequenced = [e for i, e in enumerate(self._unsequenced) if i not in unsequenced]
        self._dropped_seqs += doomed
        self._dropped_count += len(doomed) + len(unsequenced)
        log.error(
            "events_dropped",
            count=len(doomed) + len(unsequenced),
            reason="buffer_full",
            buffered=self.buffered,
            unreported=self.dropped_unstored,
        )

    def _arm(self) -> None:
        """Wake up when the window of the oldest event in memory ends."""
        if self._timer is not None or not self._hot or self._closed or self._failing:
            return
        oldest = next(iter(self._hot.values())).born
        delay = max(0.0, oldest + self.group_commit_s - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(
            self._commit_logged(due_only=True), name="outbox.commit"
        )
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)

    async def _commit_logged(self, *, due_only: bool = False) -> None:
        try:
            await self._commit(due_only=due_only)
        except (StoreError, sqlite3.Error, OSError) as exc:
            log.error("store_write_failed", error=str(exc), waiting=self.buffered)  # noqa: TRY400

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _commit(self, *, due_only: bool = False) -> None:
        """Write the events in memory not yet acknowledged, with the report of what memory
        dropped, in one batch; its watermark is the last seq handed out, below any batch still
        on its way and any event left in memory. With nothing to write, the watermark alone,
        once it lags a block behind.

        ``due_only`` (a window's end): while the uplink delivers (events in flight, or acked
        within the window), only the events whose own window has ended, so that one about to be
        acknowledged is not written for nothing; otherwise (the uplink down) all of them, in one
        transaction rather than one per window's end.
        """
        self._cancel_timer()
        self._sequence()
        now = time.monotonic()
        take, keep = self._hot, {}
        if due_only and self._delivering(now):
            horizon = now - self.group_commit_s
            take = {seq: hot for seq, hot in self._hot.items() if hot.born <= horizon}
            keep = {seq: hot for seq, hot in self._hot.items() if hot.born > horizon}
        watermark = self.store.last_handed_out
        for other in self._batches:  # below what may still fail to be written
            lows = other.dropped_seqs + [min(seq for seq, _ in other.rows)] * bool(other.rows)
            watermark = min([watermark, *(seq - 1 for seq in lows)])
        if keep:
            watermark = min(watermark, min(keep) - 1)
        if not (
            take or self._dropped_count or watermark - self._written_watermark >= SEQ_RESERVE_BLOCK
        ):
            self._arm()
            return
        batch = HotBatch(
            # Telemetry last: it goes to the spool, after the rest (``insert_hot``).
            rows=sorted(
                ((seq, hot.event) for seq, hot in take.items()),
                key=lambda row: (row[1].event_class == "telemetry", row[0]),
            ),
            watermark=watermark,
            epoch=self._epoch,
            inflight={seq for seq, hot in take.items() if hot.inflight},
            retry_at={
                seq: hot.retry_at
                for seq, hot in take.items()
                if not hot.inflight and hot.retry_at > 0
            },
            dropped_count=self._dropped_count,
            dropped_seqs=self._dropped_seqs,
        )
        self._flushing.update(take)
        self._hot = keep
        self._dropped_count, self._dropped_seqs = 0, []
        self._arm()
        future = asyncio.wrap_future(
            self._worker.submit(self.store.insert_hot, (batch,), urgent=False)
        )
        self._batches[batch] = future
        future.add_done_callback(functools.partial(self._written, batch))
        await asyncio.shield(future)

    def _delivering(self, now: float) -> bool:
        """The uplink takes events from memory: some are in flight, or were acked lately."""
        if now - self._last_ack < self.group_commit_s:
            return True
        return any(hot.inflight for hot in self._hot.values())

    def _written(self, batch: HotBatch, future: asyncio.Future[None]) -> None:
        """On the loop, whatever became of the caller: what is written is forgotten; what is
        not goes back to memory (less what was acknowledged meanwhile), for the retry timer."""
        self._batches.pop(batch, None)
        exc = future.exception()
        for seq, _ in batch.rows[: batch.written]:
            self._flushing.pop(seq, None)
            self._acked_flushing.discard(seq)
        if exc is None:
            self._written_watermark = max(self._written_watermark, batch.watermark)
            if self._failing:
                self._failing = False
                log.info("store_write_recovered", waiting=self.buffered)
                self._arm()
            self.changed.set()
            return
        if not batch.reported:  # the report was in the first transaction
            self._dropped_count += batch.dropped_count
            self._dropped_seqs[:0] = batch.dropped_seqs
        back = {}
        for seq, _ in batch.rows[batch.written :]:
            hot = self._flushing.pop(seq, None)
            if hot is not None and seq not in self._acked_flushing:
                back[seq] = hot
            self._acked_flushing.discard(seq)
        self._hot = dict(sorted({**self._hot, **back}.items()))
        if self.buffered > self.buffer_limit:
            self._drop_oldest()
        log.error("store_insert_failed", error=repr(exc), requeued=len(back))
        self._failing = True
        self._cancel_timer()
        if not self._closed:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(WRITE_RETRY_S, self._on_timer)

    async def _commit_alarm(self, alarm: NewEvent, key: str | None) -> str:
        """Commit the alarm alone, ahead of queued store work; it takes its seq in its own
        transaction from the same counter as the events in memory. The id stored: the alarm's,
        or that of the alarm stored under ``key`` before.

        A keyed alarm (a watch's alert, whose 0x01 waits for this) is told stored as soon as its
        COMMIT returned, by one callback from the store thread to the loop: not after the
        store's bookkeeping that follows a write, nor through a chain of wrapped futures that
        each take a turn of the loop."""
        self.alarms_arriving += 1
        try:
            if key is None:  # alarms arriving while this one waits join its transaction
                submitted = self._worker.submit_joined(self._insert_alarms, alarm)
                future = asyncio.wrap_future(submitted)
                future.add_done_callback(lambda done: self._alarm_inserted(alarm, done.exception()))
                # To its end even when the caller is cancelled: only the real outcome counts.
                seqs = await asyncio.shield(future)
            else:  # a keyed alarm is looked up and stored in a transaction of its own
                seqs = await self._commit_keyed(alarm, key)
        finally:
            self.alarms_arriving -= 1
        if seqs or key is None:
            return alarm.id
        earlier = await self._call(self.store.alarm_under_key, key, urgent=True)
        if earlier is None:  # only if the key was pruned in between, a day after it was stored
            raise StoreError(f"the alarm stored under {key!r} is forgotten")
        return earlier

    def _insert_alarms(
        self,
        alarms: list[NewEvent],
        key: str | None = None,
        committed: Callable[[list[int]], None] | None = None,
    ) -> list[int]:
        """On the store's thread: commit the alarms; if the uplink can publish, claim them in
        the same call, so that their claim never waits behind other store work."""
        claimed = False
        try:
            seqs = self.store.insert(alarms, key=key, committed=committed)
            if self.claim_at_insert:
                try:
                    events, damaged = _claim(self.store, 0)
                except Exception as exc:  # noqa: BLE001 - stored all the same: the uplink claims
                    log.error("store_call_failed", call="claim", error=repr(exc))  # noqa: TRY400
                else:
                    self._claimed.append(_ClaimedAlarms(self._store_epoch, events, damaged))
                    claimed = True
        finally:
            if not claimed:  # (also when the insert failed after its COMMIT)
                self.alarms_unclaimed = True
        return seqs

    def _commit_keyed(self, alarm: NewEvent, key: str) -> asyncio.Future[list[int]]:
        """The keyed alarm's insert; the future is resolved on the loop at its COMMIT (its
        seqs), or when the call ends without one (``[]``: stored under ``key`` before; or its
        error). The uplink is told (``_alarm_inserted``) once the call has ended, with the alarm
        claimed in it; a failure after the COMMIT is logged, the alarm is stored."""
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[list[int]] = loop.create_future()
        stepped = threading.Event()  # the waiter's step after the COMMIT has run

        def resolve(seqs: list[int], exc: BaseException | None) -> None:  # on the loop
            try:
                if outcome.done():  # (told at the COMMIT already, or the caller was cancelled)
                    return
                if exc is None:
                    outcome.set_result(seqs)
                else:
                    outcome.set_exception(exc)
            finally:
                # After the waiter's step, which setting the outcome has just scheduled.
                loop.call_soon(stepped.set)

        def finished(exc: BaseException | None, stored: bool) -> None:  # on the loop
            if exc is not None and stored:
                log.error("store_after_alarm_failed", error=repr(exc), alarm=alarm.id)
                exc = None
            self._alarm_inserted(alarm, exc)

        commits: list[list[int]] = []  # on the store thread

        def committed(seqs: list[int]) -> None:  # on the store thread, in the insert
            commits.append(seqs)
            try:
                loop.call_soon_threadsafe(resolve, seqs, None)
            except RuntimeError:  # the loop is closed: nobody is waiting
                return
            stepped.wait(LOOP_FIRST_MAX_S)  # the loop first (LOOP_FIRST_MAX_S)

        def ended(call: Future[list[int]]) -> None:  # (after ``committed``, if it was called)
            exc = call.exception()
            with contextlib.suppress(RuntimeError):
                if not commits:
                    loop.call_soon_threadsafe(resolve, [] if exc else call.result(), exc)
                loop.call_soon_threadsafe(finished, exc, bool(commits))

        insert = functools.partial(self._insert_alarms, key=key, committed=committed)
        self._worker.submit(insert, ([alarm],), urgent=True).add_done_callback(ended)
        return outcome

    def _alarm_inserted(self, alarm: NewEvent, exc: BaseException | None) -> None:
        if exc is not None:
            log.error("store_insert_failed", error=repr(exc), requeued=0, alarms=[alarm.id])
            return
        self.changed.set()
        # At the loop's next turn, so that the uplink's task wakes after the task that put the
        # alarm: what that one does on "stored" (a watch's 0x01, a button's ACK) goes before the
        # uplink's claim, which would hold the store thread and the GIL.
        asyncio.get_running_loop().call_soon(self.alarm_stored.set)

    async def flush(self) -> None:
        """Write whatever is in memory now (``StoreError`` if the store cannot write)."""
        try:
            await self._commit()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot store the buffered events: {exc}") from exc
        pending = [*self._commits, *self._batches.values()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def close(self) -> None:
        """Write what is in memory and close; what cannot be stored then is logged as lost
        (and its seqs reported at the next start)."""
        try:
            await self.flush()
        except (StoreError, sqlite3.Error, OSError) as exc:
            log.error(  # noqa: TRY400 - the reason is in the message
                "events_lost_at_close",
                count=self.buffered + self.dropped_unstored,
                error=str(exc),
            )
        finally:
            self._closed = True
            self._cancel_timer()
            if self._checkpointer is not None:
                await asyncio.to_thread(self._checkpointer.stop)
            await self._call(self.store.close, self._floor())
            await asyncio.to_thread(self._worker.shutdown)

    def _floor(self) -> int | None:
        """The last seq below every one kept in memory unwritten (None: there is none)."""
        outstanding = [*self._hot, *self._flushing, *self._dropped_seqs]
        return min(outstanding) - 1 if outstanding else None

    @property
    def dropped_unstored(self) -> int:
        """Events dropped from memory whose report is not yet written."""
        return self._dropped_count + sum(batch.dropped_count for batch in self._batches)

    @property
    def buffered(self) -> int:
        """Events in memory, not yet written (delivered ones are forgotten)."""
        return len(self._hot) + len(self._flushing) + len(self._unsequenced)


def count_events(items: Sequence[StoredEvent | WireRun]) -> int:
    """How many events a claim's items hold."""
    return sum(len(item) if isinstance(item, WireRun) else 1 for item in items)


def _claim(store: SqliteStore, max_events: int) -> tuple[list[StoredEvent], list[HeldAlarm]]:
    """On the store's thread: a claim, and the alarms it quarantined as damaged."""
    return store.claim(max_events), store.take_quarantined_alarms()
