"""The outbox database as a queue: insert, claim, ack, release, and eviction under the quota.

``SqliteStore`` is synchronous and owned by one thread (``worker.StoreWorker``); it composes the
store's other jobs, each in its own module: the database file (``database``), the seq mark
(``files``), the disk quota (``disk``), damaged rows (``integrity``), the alarm resend schedule
(``alarms``), clock correction (``timestamps``) and command ids (``commands``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.core.errors import StoreCorruptError, StoreError, StoreFullError
from gateway.core.events import NewEvent, StoredEvent, WireRun
from gateway.core.kinds import event_class
from gateway.store import commands, database, integrity, timestamps
from gateway.store.alarms import (
    AlarmTiming,
    HeldAlarm,
    ResendSchedule,
    acknowledged_rows,
    alarm_under_key,
    read_held_alarms,
    remember_alarm_key,
)
from gateway.store.database import OpenReport, transaction
from gateway.store.disk import (
    ACK_RETRY_ON_FULL_S,
    DB_BYTES_PER_ROW_BYTE,
    FULL_ATTEMPTS,
    DiskGuard,
    is_disk_full,
    row_bytes,
)
from gateway.store.files import SEQ_RESERVE_BLOCK, SeqMark
from gateway.store.integrity import (
    CLAIM_COLUMNS,
    DAMAGED_PER_CLAIM,
    lenient_text,
    row_crc,
    row_damage,
)
from gateway.store.spool import Spool, SpoolOpen, encode_records

log = structlog.get_logger("gateway.store.sqlite")

EVICTION_ORDER = ("telemetry", "device", "camera", "audit", "cmdres", "gateway")
EVICT_TO_FRACTION = 0.9
SQL_CHUNK = 500  # seqs per IN (...) list
ACK_STEP_ROWS = 100  # ``ack_some`` asks whether to stop this often
MAX_RANGES_PER_DROPPED = 2000  # keeps one gateway.dropped event far below 256 KiB
_T = TypeVar("_T")

DroppedFactory = Callable[[int, list[tuple[int, int]], str], NewEvent]


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Compress sequence numbers into inclusive ``[first, last]`` ranges."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def _complement(present: Iterable[int], first: int, last: int) -> list[tuple[int, int]]:
    """The ranges of ``[first, last]`` that ``present`` (sorted) leaves out."""
    gaps: list[tuple[int, int]] = []
    start = first
    for seq in present:
        if seq > last:
            break
        if seq > start:
            gaps.append((start, seq - 1))
        start = max(start, seq + 1)
    if start <= last:
        gaps.append((start, last))
    return gaps


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of inclusive ranges, sorted, adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _keyed(
    work: Callable[[sqlite3.Connection], _T],
    key: str,
    alarm_id: str,
    now: float,
    db: sqlite3.Connection,
) -> _T:
    """``work`` (an alarm's insert), with ``key`` naming the alarm in the same transaction."""
    result = work(db)
    remember_alarm_key(key, alarm_id, now, db)
    return result


@dataclass(slots=True)
class _Claim:
    """Rows a claim takes, checked; applied to the store's state only once all were read."""

    cursor: int
    rows: list[Any] = field(default_factory=list)
    damaged: list[tuple[int, str, bool]] = field(default_factory=list)  # seq, why, alarm
    taken_released: list[int] = field(default_factory=list)

    def add(self, rows: Iterable[Any], *, alarm: bool = False) -> None:
        for row in rows:
            why = row_damage(row)
            if why is None:
                self.rows.append(row)
            else:
                self.damaged.append((row[0], why, alarm))


@dataclass(slots=True, eq=False)
class HotBatch:
    """Events kept in memory (``Outbox``) with their seqs, written at the end of their window.

    ``watermark``: every seq up to it is written by this batch, on disk already, delivered, or
    reported; it is recorded with the batch, so that a restart after a crash reports only the
    seqs above it that are not on disk. ``inflight``/``retry_at``: their state in the uplink
    when the batch was taken (``inflight`` ignored if ``release_all`` came since ``epoch``).
    ``written``: how many of ``rows`` are committed (set by the store thread as it goes).
    """

    rows: list[tuple[int, NewEvent]]
    watermark: int
    epoch: int
    inflight: set[int] = field(default_factory=set)
    retry_at: dict[int, float] = field(default_factory=dict)
    dropped_count: int = 0  # dropped from memory (``buffer_full``), reported with the first rows
    dropped_seqs: list[int] = field(default_factory=list)
    written: int = 0
    reported: bool = False  # the first transaction (with the report of drops) is committed


@dataclass(frozen=True, slots=True)
class StoreStats:
    queued: dict[str, int]
    oldest_queued_ts: str | None
    stored_bytes: int
    last_seq: int
    alarms_held: int


class SqliteStore:
    """The outbox database. Not thread-safe: one thread calls every method."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        timing: AlarmTiming,
        make_dropped: DroppedFactory,
        now: Callable[[], float] = time.time,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        boot_id: str = "",
        clock_synced: Callable[[], bool] = lambda: True,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._make_dropped = make_dropped
        self._now = now
        self._monotonic_ns = monotonic_ns
        self._db: sqlite3.Connection | None = None
        self._seqmark = SeqMark(path.with_name(path.name + ".seqmark"))
        self._stored_bytes = 0
        self._seq_lock = threading.Lock()  # seqs are handed out on the loop and store threads
        self._last = 0  # the last seq handed out
        self._taken: list[int] = []  # seqs handed out to the transaction being attempted
        self._lost: list[int] = []  # seqs of transactions rolled back, not yet reported
        # ``meta.db_top`` as committed (each spool record carries it), the highest seq stored in
        # a committed transaction, and in the one being attempted (``_write``).
        self._db_top = 0
        self._stored_top = 0
        self._pending_top = 0
        # After the database lost commits: ``meta.db_top`` stays where it is (so the spool's
        # records keep naming a higher one, and a crash finds the loss again) until the
        # watermark reaches this seq, i.e. until the report of the loss is written.
        self._db_top_held: int | None = None
        self._rolled_back = False  # the database lost commits the spool's watermarks count on
        self._epoch = 0  # of the last ``release_all``
        # In memory only, on the monotonic clock (seconds): a restart starts them afresh.
        self._inflight: set[int] = set()
        self._released: dict[int, float] = {}  # seq -> when to try again
        self._resends = ResendSchedule(
            timing,
            now=now,
            monotonic_ns=monotonic_ns,
            boot_id=boot_id,
            clock_synced=clock_synced,
        )
        self._cursor = 0
        self._damage_reported: set[int] = set()  # damaged rows reported but not yet moved
        self._quarantined_alarms: list[HeldAlarm] = []  # until take_quarantined_alarms
        self._disk = DiskGuard(path, max_bytes)
        self._boot_id = boot_id
        self._clock_synced = clock_synced
        self._spool = Spool(path.with_name(path.name + ".spool"), clock=self._synced_clock)
        self._spool_top = 0  # the highest seq the spool held at open
        self._spool_cap: int | None = None  # on a full disk (``_spool_limit``)

    def mono(self) -> float:
        """Seconds on the store's monotonic clock (deadlines for ``release``)."""
        return self._monotonic_ns() / 1e9

    def in_flight(self) -> int:
        """How many events are claimed and awaiting their PUBACK."""
        return len(self._inflight)

    def resends_scheduled(self) -> int:
        """How many delivered alarms have a resend scheduled (awaiting the platform's ack)."""
        return len(self._resends)

    # ----------------------------------------------------------------------------- opening

    def open(self) -> OpenReport:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        database.make_files_private(self.path)
        report = OpenReport()
        closed_cleanly = self._seqmark.state == self._seqmark.CLOSED
        found = self._spool.open()
        self._spool_top = found.max_seq
        self._spool_db_top = found.db_top
        try:
            report.migrated_from = self._open_checked()
        except StoreCorruptError as exc:
            report.moved_aside, last_seq = database.move_aside(self.path, self._now(), str(exc))
            # Every seq up to the mark is reported lost: what the spool holds goes aside too.
            self._spool.move_aside(Path(f"{report.moved_aside}.spool"))
            last_seq = max(last_seq or 0, self._spool_top) or None
            self._spool_top = 0
            database.make_files_private(self.path)
            self._open_checked()
            report.lost_ranges = self._restart_sequence_after_loss(last_seq)
            report.loss_reason = "store_corrupt"
        else:
            if report.migrated_from == 0 and self._seqmark.reserved > 0:
                # A new, empty database where one existed before (deleted, or emptied by hand).
                log.error("store_missing", path=str(self.path), seq_mark=self._seqmark.reserved)
                report.lost_ranges = self._restart_sequence_after_loss(None)
                report.loss_reason = "store_missing"
            else:
                report.lost_ranges = self._continue_after_rollback()
                report.loss_reason = "store_rolled_back" if report.lost_ranges else None
            damage = self._spool.resolve_damage(found, self._last)
            self._report_spool_damage(damage + self._cut_damage(found, closed=closed_cleanly))
            self._spool.damage_reported()
            self._delete_finished()
        self._seqmark.opened(self._last)
        return report

    def _synced_clock(self) -> tuple[str, float, int] | None:
        """This boot's id and the clock now, if it is synchronised: the spool corrects this
        boot's unsynchronised timestamps with it as it reads them (after a restart within the
        boot too)."""
        if not self._clock_synced():
            return None
        return self._boot_id, self._now(), self._monotonic_ns()

    def _delete_finished(self) -> None:
        """Delete the spool's segments whose events were all acknowledged, once the watermark
        their records carried is kept in the database (else a crash would report delivered
        events as lost); if it cannot be written now, they stay for the next time."""
        segments, watermark = self._spool.finished()
        if not segments:
            return
        if watermark > self._last_seq():
            try:
                self._raise_watermark(watermark)
            except (StoreError, sqlite3.Error, OSError) as exc:
                log.warning("spool_segments_kept", count=len(segments), error=str(exc))
                return
        self._spool.delete(segments)

    def _cut_damage(self, found: SpoolOpen, *, closed: bool) -> list[tuple[int, int]]:
        """What a record cut off the end of the spool held that is damage, not a torn append:
        all of it after a clean close (every append had completed); else what lies at or below
        the watermark (a torn append is above every watermark on disk, and the seqs above it are
        reported as after any crash)."""
        watermark = self._open_watermark()
        ranges = []
        for named, before in found.cut:
            if named is not None:
                low, high = named
            else:
                low, high = (before.last + 1 if before is not None else 1), self._last
            if not closed:
                high = min(high, watermark)
            if high >= low:
                ranges.append((low, high))
        return ranges

    def _report_spool_damage(self, ranges: list[tuple[int, int]]) -> None:
        """Records of the spool that could not be read at open: their seqs are reported."""
        ranges = merge_ranges(ranges)
        if not ranges:
            return
        count = sum(last - first + 1 for first, last in ranges)
        log.error("spool_records_lost", ranges=ranges, count=count)
        self.insert([self._make_dropped(count, ranges, integrity.DAMAGED_ROW_REASON)])

    def _open_checked(self) -> int | None:
        """Open, check and migrate; return the schema version migrated from (0: a new file)."""
        db, migrated_from = database.open_checked(self.path)
        self._db = db
        self._stored_bytes = int(
            db.execute("SELECT COALESCE(SUM(size), 0) FROM events").fetchone()[0]
        )
        self._last = max(database.top_seq(db), self._spool_top)
        self._db_top = self._stored_top = database.db_top(db)
        if migrated_from != 0:
            self._seqmark.ensure(self._last)
        return migrated_from

    def _restart_sequence_after_loss(self, last_seq: int | None) -> list[tuple[int, int]]:
        """After a damaged store, continue above every seq that may have been allocated."""
        reserved = max(self._seqmark.reserved, last_seq or 0)
        if reserved == 0:
            return []
        self._continue_above(reserved)
        # What the damaged store still held is unknown: every seq up to the mark may be lost.
        return [(1, reserved)]

    def _continue_after_rollback(self) -> list[tuple[int, int]]:
        """Continue above every seq the last run may have handed out; return those that may be
        lost: none after a clean close, those above the watermark and not on disk after a crash
        (events kept in memory, the window's telemetry), or when commits were lost (its -wal
        file deleted, or an older copy restored)."""
        mark = self._seqmark
        if mark.state is None:
            return []
        # Closed cleanly: its last seq then is exact. Open (a crash): seqs may have been handed
        # out up to the reserved bound.
        resume = mark.last if mark.state == mark.CLOSED else max(mark.reserved, mark.last)
        if self._spool_db_top > self._db_top:
            # A record of the spool was appended after commits the database no longer has:
            # the records' watermarks counted them as on disk. Only the database's own holds.
            self._rolled_back = True
            self._db_top_held = resume
            # Nor may they pass into the database's (a segment deleted, an eviction) before
            # the report is written.
            self._spool.cap_watermarks(self._last_seq())
            log.error(
                "store_commits_lost",
                path=str(self.path),
                db_top=self._db_top,
                spool_db_top=self._spool_db_top,
            )
        watermark = self._open_watermark()
        if watermark >= resume:
            return []
        present = sorted(
            {*database.seqs_above(self._require(), watermark), *self._spool.seqs_above(watermark)}
        )
        missing = [
            (first, last)
            for first, last in _complement(present, watermark + 1, resume)
            if last >= first
        ]
        self._continue_above(resume)
        if not missing:
            return []
        log.warning(
            "seqs_unaccounted",
            path=str(self.path),
            watermark=watermark,
            seq_mark=mark.last,
            closed_cleanly=mark.state == mark.CLOSED,
            resume_after=resume,
            ranges=len(missing),
        )
        return missing

    def _open_watermark(self) -> int:
        """The watermark on disk at open: the database's, or the spool's where it is higher,
        unless the database lost commits the spool's records counted on."""
        if self._rolled_back:
            return self._last_seq()
        return max(self._last_seq(), self._spool.watermark)

    def _continue_above(self, seq: int) -> None:
        """Hand out seqs above ``seq`` only. The watermark stays where it is until the report
        of the gap is written (with it, in ``insert_hot``): a crash before then reports the gap
        again rather than never."""
        self._seqmark.ensure(seq)
        self._last = max(self._last, seq)

    def settle_wal(self) -> None:
        """After opening: checkpoint what the last run and the migrations left in the WAL and
        truncate it, once, so that the running gateway's first checkpoint does not copy it."""
        self._disk.checkpoint(self._require(), "TRUNCATE")

    def close(self, watermark: int | None = None) -> None:
        """Close; the mark records the last seq handed out, exact. ``watermark``: the last seq
        below which nothing is kept in memory unwritten (by default every seq handed out): up to
        it the store's watermark is brought, so that a clean close leaves no gap."""
        if self._db is not None:
            last: int | None = None
            with contextlib.suppress(StoreError, sqlite3.Error, OSError):
                self._raise_watermark(self._last if watermark is None else watermark)
            with contextlib.suppress(sqlite3.Error):
                last = self._last
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None
            self._spool.close()
            if last is not None:
                try:
                    self._seqmark.closed(last)
                except OSError as exc:  # the next start then checks the store as after a crash
                    log.warning("seq_mark_not_written", error=str(exc))

    def _raise_db_top(self, db: sqlite3.Connection) -> int | None:
        """In a write's transaction: raise ``meta.db_top`` to the highest seq stored, unless it
        is held (``_db_top_held``); the value written, or None."""
        top = max(self._stored_top, self._pending_top)
        if top <= self._db_top:
            return None
        held = self._db_top_held
        if held is not None and database.last_seq(db) < held:
            return None
        database.raise_db_top(top, db)
        return top

    def _raise_watermark(self, watermark: int) -> None:
        db = self._require()
        target = self._bounded_watermark(watermark)
        if target > self._last_seq():
            self._write(db, functools.partial(database.raise_watermark, target), "watermark")

    def _bounded_watermark(self, watermark: int) -> int:
        """``watermark``, kept below the seqs of rolled-back writes not yet reported."""
        return min(watermark, *(seq - 1 for seq in self._lost)) if self._lost else watermark

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the outbox is not open")
        return self._db

    def _last_seq(self) -> int:
        """The watermark on disk (``HotBatch.watermark``)."""
        return database.last_seq(self._require())

    # ----------------------------------------------------------------------------- seqs

    @property
    def last_handed_out(self) -> int:
        """The last seq handed out (to events in memory or stored)."""
        return self._last

    def seqs_left(self) -> int:
        """How many seqs the bound on disk still covers."""
        return self._seqmark.reserved - self._last

    def next_seq(self) -> int:
        """A seq for an event kept in memory (any thread); covered by the bound on disk before
        it is handed out (``OSError`` if the bound had to move and could not be written)."""
        with self._seq_lock:
            self._seqmark.ensure(self._last + 1)
            self._last += 1
            return self._last

    def reserve_seqs(self) -> None:
        """Move the bound on disk a block ahead before the seqs it covers run out, here rather
        than in ``next_seq`` on the event loop."""
        with self._seq_lock:
            self._seqmark.ensure(self._last + SEQ_RESERVE_BLOCK // 2)

    def _allocate(self, count: int) -> int:
        """``count`` seqs for rows of the transaction being attempted; return the first. If the
        transaction rolls back they are not handed out again but reported (``_write``)."""
        with self._seq_lock:
            self._seqmark.ensure(self._last + count)
            first = self._last + 1
            self._last += count
        self._taken.extend(range(first, first + count))
        return first

    # ----------------------------------------------------------------------------- writing

    @property
    def rows_per_transaction(self) -> int:
        """The most events one ``insert`` should carry, so that one commit keeps to its share of
        the WAL (``Outbox`` splits its batches by it)."""
        return self._disk.budget.rows_per_transaction

    def set_checkpoint_waker(self, wake: Callable[[], None]) -> None:
        """What to call when the WAL or the database's growth should be checkpointed soon."""
        self._disk.wake_checkpointer = wake

    @property
    def checkpoint_lock(self) -> threading.Lock:
        """Held by whoever checkpoints (the store thread or the checkpointer), one at a time."""
        return self._disk.lock

    def dropped_event(self, count: int, ranges: list[tuple[int, int]], reason: str) -> NewEvent:
        """A ``gateway.dropped`` event, as the store reports its own evictions."""
        return self._make_dropped(count, ranges, reason)

    def make_reserve(self) -> bool:
        """Create the alarm reserve if it is missing and there is room; True if it is held."""
        return self._disk.make_reserve()

    def insert(
        self,
        events: Sequence[NewEvent],
        *,
        key: str | None = None,
        committed: Callable[[list[int]], None] | None = None,
    ) -> list[int]:
        """Store events in one transaction with a full fsync; return their seqs.

        Alarms are committed as they are: they never wait for an eviction or a checkpoint (the
        next write of other events evicts for them). On a full disk the store makes room
        (``DiskGuard.make_room``) and tries again; ``StoreFullError`` if there is still none.
        ``key``: the events are one alarm, stored under ``key`` in its transaction; when an alarm
        is stored under it already nothing is stored and ``[]`` returned (``alarm_under_key``).
        ``committed`` is called with the seqs as soon as the COMMIT (and its fsync) returned,
        before the bookkeeping that follows a write (the WAL's size, the checkpointer): whoever
        waits for an alarm is told one step earlier. It must not raise.
        """
        urgent = all(event.is_alarm for event in events)
        if key is not None:
            if len(events) != 1 or not urgent:
                raise ValueError("a key names one alarm")
            if self.alarm_under_key(key) is not None:
                return []
        db = self._prepare(urgent=urgent)
        now = self._now()
        work = functools.partial(self._insert_rows, events, now, urgent)
        if key is not None:
            work = functools.partial(_keyed, work, key, events[0].id, now)
        seqs, evicted = self._write(db, work, "insert")
        for seq in evicted:
            self._released.pop(seq, None)
        if committed is not None:
            committed(seqs)
        self._disk.after_write(db, urgent=urgent)
        return seqs

    def _insert_rows(
        self, events: Sequence[NewEvent], now: float, urgent: bool, db: sqlite3.Connection
    ) -> tuple[list[int], list[int]]:
        evicted: list[int] = []
        if not urgent:
            incoming = sum(row_bytes(event) for event in events)
            if self._over_quota(db, incoming):
                self._evict(db, now, evicted, incoming)
        first = self._allocate(len(events)) if events else 0
        seqs = list(range(first, first + len(events)))
        for seq, event in zip(seqs, events, strict=True):
            self._insert_row(db, seq, event, now)
        if not urgent and self._disk.full_cap is None and self._over_quota(db, 0):
            self._evict(db, now, evicted, 0)  # (on a full disk: evicted before)
        return seqs, evicted

    def insert_hot(self, batch: HotBatch) -> None:
        """Write events kept in memory with their seqs: telemetry as one record of the spool,
        the others in transactions of the store's size, first (``batch.rows`` holds them first;
        ``batch.written`` counts what is durable if a write fails), with the watermark.

        Those in flight stay in flight (their ack deletes them), released ones keep their retry
        time; the others are claimed in seq order, even below the claim cursor.
        """
        fresh = batch.epoch == self._epoch
        split = next(
            (n for n, (_, event) in enumerate(batch.rows) if _spooled(event)), len(batch.rows)
        )
        rows, spooled = batch.rows[:split], batch.rows[split:]
        if any(not _spooled(event) for _, event in spooled):
            raise ValueError("a batch holds its telemetry last")
        if spooled:
            below = min(seq for seq, _ in spooled) - 1
            if rows or batch.dropped_count or self._lost:
                self._insert_hot_sql(batch, rows, min(below, batch.watermark), fresh)
        else:
            self._insert_hot_sql(batch, rows, batch.watermark, fresh)
        if spooled:
            self._spool_append(batch, spooled, fresh)

    def _spool_append(
        self, batch: HotBatch, spooled: list[tuple[int, NewEvent]], fresh: bool
    ) -> None:
        """The batch's telemetry, one record of the spool, after room is made for it."""
        watermark = self._bounded_watermark(batch.watermark)
        records = encode_records(spooled, watermark, self._db_top)
        size = sum(len(data) for data, _ in records)
        db = self._prepare(urgent=False)
        for attempt in range(1, FULL_ATTEMPTS + 1):
            if self._over_quota(db, size, to_spool=True):
                evicted: list[int] = []
                self._write(
                    db,
                    functools.partial(self._evict_for_spool, evicted, size, self._now()),
                    "evict",
                )
                for seq in evicted:
                    self._released.pop(seq, None)
                # The eviction's report raised the database's top: the records name it.
                records = encode_records(spooled, watermark, self._db_top)
            try:
                self._spool.append(
                    spooled,
                    watermark,
                    inflight=batch.inflight if fresh else (),
                    retry_at=batch.retry_at,
                    records=records,
                )
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                if attempt == FULL_ATTEMPTS:
                    log.error("store_full", write="spool", attempts=attempt, error=str(exc))  # noqa: TRY400
                    raise StoreFullError(f"the disk is full: the spool failed: {exc}") from exc
                # As for the database: the disk is full from now on (neither file grows), the
                # reserve is given back for the WAL, and the oldest telemetry makes room.
                self._disk.make_room(db, exc, "spool", attempt)
            else:
                break
        batch.written = len(batch.rows)

    def _evict_for_spool(
        self, evicted: list[int], incoming: int, now: float, db: sqlite3.Connection
    ) -> None:
        self._evict(db, now, evicted, incoming, to_spool=True)

    def _insert_hot_sql(
        self, batch: HotBatch, rows: list[tuple[int, NewEvent]], watermark: int, fresh: bool
    ) -> None:
        step = self.rows_per_transaction
        for start in range(0, max(len(rows), 1), step):
            chunk = rows[start : start + step]
            ahead = rows[start + step][0] - 1 if start + step < len(rows) else watermark
            inflight = {seq for seq, _ in chunk if seq in batch.inflight} if fresh else set()
            added = inflight - self._inflight
            self._inflight |= added  # spared by an eviction in the same transaction
            db = self._prepare(urgent=False)
            work = functools.partial(
                self._insert_hot_rows,
                chunk,
                batch if start == 0 else None,
                min(ahead, watermark),
                self._now(),
            )
            try:
                evicted, reported = self._write(db, work, "insert")
            except BaseException:
                self._inflight -= added
                raise
            batch.written = start + len(chunk)
            batch.reported = True
            lost = set(reported)
            self._lost = [seq for seq in self._lost if seq not in lost]
            now = self.mono()
            for seq, _ in chunk:
                if seq in inflight:
                    continue
                retry_at = batch.retry_at.get(seq)
                if retry_at is not None:
                    self._released[seq] = retry_at
                elif seq <= self._cursor:
                    self._released[seq] = now
            for seq in evicted:
                self._released.pop(seq, None)
            self._disk.after_write(db)

    def _insert_hot_rows(
        self,
        chunk: list[tuple[int, NewEvent]],
        report: HotBatch | None,
        watermark: int,
        now: float,
        db: sqlite3.Connection,
    ) -> tuple[list[int], list[int]]:
        evicted: list[int] = []
        incoming = sum(row_bytes(event) for _, event in chunk)
        if self._over_quota(db, incoming):
            self._evict(db, now, evicted, incoming)
        reports: list[NewEvent] = []
        if report is not None and report.dropped_count:
            reports.append(
                self._make_dropped(
                    report.dropped_count, seq_ranges(report.dropped_seqs), "buffer_full"
                )
            )
        lost = list(self._lost)
        if lost:
            reports.append(self._make_dropped(len(lost), seq_ranges(lost), "store_rolled_back"))
        for event in reports:
            self._insert_row(db, self._allocate(1), event, now)
        for seq, event in chunk:
            self._insert_row(db, seq, event, now)
        if self._disk.full_cap is None and self._over_quota(db, 0):
            self._evict(db, now, evicted, 0)
        database.raise_watermark(watermark, db)  # the rolled-back seqs are reported here
        return evicted, lost

    def _insert_row(self, db: sqlite3.Connection, seq: int, event: NewEvent, now: float) -> None:
        self._pending_top = max(self._pending_top, seq)
        size = row_bytes(event)
        alarm = event.is_alarm
        db.execute(
            "INSERT INTO events (seq, id, kind, class, device, data, ts, ts_synced, mono_ns, "
            "boot_id, size, attempt, alarm_state, due_at, created_at, crc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, NULL, ?, ?)",
            (
                seq,
                event.id,
                event.kind,
                event_class(event.kind),
                event.device,
                event.data_json,
                event.ts,
                int(event.ts_synced),
                event.mono_ns,
                event.boot_id,
                size,
                "pending" if alarm else None,
                now,
                row_crc(event.id, event.kind, event.device, event.data_json),
            ),
        )
        self._stored_bytes += size

    def _over_quota(
        self,
        db: sqlite3.Connection,
        incoming: int,
        *,
        evicting: bool = False,
        to_spool: bool = False,
    ) -> bool:
        """Would ``incoming`` more bytes take the outbox over its quota (the rows' bytes, or
        the database's live pages: ``DiskGuard.db_limit``)? ``evicting``: over the level an
        eviction goes down to. ``to_spool``: the bytes go to the spool, not the database."""
        fraction = EVICT_TO_FRACTION if evicting else 1.0
        spool = self._spool.disk_bytes
        if self._stored_bytes + spool + incoming > self.max_bytes * fraction:
            return True
        limit = self._disk.db_limit() - (self._disk.evict_slack() if evicting else 0)
        spool_cap = self._spool_limit()
        if spool_cap is None:
            return self._disk.live_bytes(db) + spool + incoming * DB_BYTES_PER_ROW_BYTE > limit
        # A full disk: neither the database nor the spool may grow; ``incoming`` goes to one.
        if to_spool:
            return spool + incoming > spool_cap * fraction
        return self._disk.live_bytes(db) + incoming * DB_BYTES_PER_ROW_BYTE > limit

    def _spool_limit(self) -> int | None:
        """On a full disk, what the spool may take: what it took when the disk was found full
        (its oldest segments make room for new ones). None while the disk has room."""
        if self._disk.full_cap is None:
            self._spool_cap = None
        elif self._spool_cap is None:
            self._spool_cap = self._spool.disk_bytes
        return self._spool_cap

    def _evict(
        self,
        db: sqlite3.Connection,
        now: float,
        evicted: list[int],
        incoming: int,
        *,
        to_spool: bool = False,
    ) -> None:
        """Delete the oldest evictable events until there is room; report them as dropped.

        Never alarms, never events in flight. Earlier ``gateway.dropped`` events go last, and
        when one goes, the gaps it explained move into the new one, so every gap stays explained.
        """
        explained: list[tuple[int, int]] = []
        unsequenced: dict[str, int] = {}  # counts of evicted reports of events without a seq
        self._trim_quarantine(db, incoming, to_spool=to_spool)
        passes = [(klass, "kind!='gateway.dropped'") for klass in EVICTION_ORDER]
        passes.append(("gateway", "kind='gateway.dropped'"))
        for klass, which in passes:
            # The spool's telemetry is the oldest; on a full disk only a write to the spool makes
            # room there (the database's own pages are what a write to it lacks).
            spool_counts = self._disk.full_cap is None or to_spool
            while (
                klass == "telemetry"
                and spool_counts
                and self._over_quota(db, incoming, evicting=True, to_spool=to_spool)
            ):
                segment = self._spool.evictable()
                if segment is None:
                    break
                evicted += self._spool.doom(segment)
                # Its records' watermark stays with the database, in the report's transaction.
                database.raise_watermark(self._bounded_watermark(segment.watermark()), db)
            cursor = 0
            reports = which.startswith("kind=")
            while self._over_quota(db, incoming, evicting=True, to_spool=to_spool):
                rows = self._evictable(db, klass, which, cursor, lenient=reports)
                if not rows:
                    break
                cursor = rows[-1][0]
                doomed = [row for row in rows if row[0] not in self._inflight]
                if reports:  # a damaged report is left to the quarantine: its gaps stay explained
                    doomed = [row for row in doomed if row_damage(row[2:]) is None]
                db.executemany("DELETE FROM events WHERE seq=?", [(row[0],) for row in doomed])
                for seq, size, *row in doomed:
                    self._stored_bytes -= size
                    evicted.append(seq)
                    if reports:
                        report = json.loads(row[4])  # data, intact
                        explained.extend(tuple(r) for r in report["seq_ranges"])
                        if not report["seq_ranges"]:
                            reason = report["reason"]
                            unsequenced[reason] = unsequenced.get(reason, 0) + report["count"]
            if not self._over_quota(db, incoming, evicting=True, to_spool=to_spool):
                break
        if not evicted:
            log.warning(
                "quota_exceeded",
                stored_bytes=self._stored_bytes,
                max_bytes=self.max_bytes,
                disk_full=self._disk.full_cap is not None,
            )
            return
        reason = "disk_quota" if self._disk.full_cap is None else "disk_full"
        ranges = merge_ranges([*seq_ranges(evicted), *explained])
        for start in range(0, len(ranges), MAX_RANGES_PER_DROPPED):
            chunk = ranges[start : start + MAX_RANGES_PER_DROPPED]
            count = sum(b - a + 1 for a, b in chunk)
            self._insert_row(db, self._allocate(1), self._make_dropped(count, chunk, reason), now)
        for why, count in unsequenced.items():  # carried over, so that no count is lost
            self._insert_row(db, self._allocate(1), self._make_dropped(count, [], why), now)
        log.warning("events_evicted", count=len(evicted), ranges=len(ranges), reason=reason)

    def _evictable(
        self, db: sqlite3.Connection, klass: str, which: str, cursor: int, *, lenient: bool
    ) -> list[Any]:
        """The next rows of ``klass`` an eviction may take: (seq, size, *``CLAIM_COLUMNS``)
        for reports (``lenient``: text that is not UTF-8 read so that ``row_damage`` finds it),
        (seq, size) for the rest."""
        columns = f"seq, size, {CLAIM_COLUMNS}" if lenient else "seq, size"
        query = (
            f"SELECT {columns} FROM events WHERE class=? AND seq>? AND {which} "  # noqa: S608
            "ORDER BY seq LIMIT 64"
        )
        if not lenient:
            return db.execute(query, (klass, cursor)).fetchall()
        db.text_factory = lenient_text
        try:
            return db.execute(query, (klass, cursor)).fetchall()
        finally:
            db.text_factory = str

    def _trim_quarantine(
        self, db: sqlite3.Connection, incoming: int, *, to_spool: bool = False
    ) -> None:
        """Damaged rows kept for inspection are the first to go when the quota is reached."""
        trimmed = 0
        while self._over_quota(db, incoming, evicting=True, to_spool=to_spool):
            gone = integrity.trim_quarantine(db)
            if gone <= 0:
                break
            trimmed += gone
        if trimmed:
            log.warning("quarantine_trimmed", count=trimmed)

    def _prepare(self, *, urgent: bool) -> sqlite3.Connection:
        """The connection, made ready for a write (``DiskGuard.prepare``)."""
        db = self._require()
        self._disk.prepare(db, urgent=urgent)
        return db

    def _write(
        self, db: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T], what: str
    ) -> _T:
        """Run ``work`` in one transaction; on a full disk make room and run it again.

        ``work`` may change ``_stored_bytes`` (put back on failure) and take seqs (``_allocate``:
        on failure they are lost, reported by the next ``insert_hot``), nothing else in memory.
        """
        for attempt in range(1, FULL_ATTEMPTS + 1):
            stored = self._stored_bytes
            self._taken = []
            self._pending_top = 0
            try:
                with transaction(db):
                    done = work(db)
                    top = self._raise_db_top(db)
            except BaseException as exc:
                self._spool.spare_doomed()
                self._stored_bytes = stored
                self._lost += self._taken
                if not isinstance(exc, (sqlite3.Error, OSError)):
                    raise
                if not is_disk_full(exc):
                    raise
                if attempt == FULL_ATTEMPTS:
                    log.error("store_full", write=what, attempts=attempt, error=str(exc))  # noqa: TRY400
                    raise StoreFullError(f"the disk is full: {what} failed: {exc}") from exc
                self._disk.make_room(db, exc, what, attempt)
            else:
                self._taken = []
                self._stored_top = max(self._stored_top, self._pending_top)
                if top is not None:
                    self._db_top, self._db_top_held = top, None
                if self._spool.has_doomed():
                    # Their report is in the -wal file only, and later records' watermarks count
                    # their events as on disk: into the database file before the segments go,
                    # so that a database that loses its -wal cannot lose the report with it.
                    self._disk.checkpoint(db, "PASSIVE")
                self._spool.drop_doomed()  # their report is committed
                return done
        raise AssertionError("unreachable")  # pragma: no cover

    # ----------------------------------------------------------------------------- delivery

    def claim(self, max_events: int) -> list[StoredEvent]:
        """``claim_wire``, as one object per event."""
        events: list[StoredEvent] = []
        for item in self.claim_wire(max_events):
            if isinstance(item, WireRun):
                events += item.events()
            else:
                events.append(item)
        return events

    def claim_wire(self, max_events: int) -> list[StoredEvent | WireRun]:
        """Events to publish next: alarms first, then the rest in seq order. They stay stored.
        The spool's come as stretches of their wire JSON (``WireRun``), without an object each.

        Every row is checked as it is claimed (``row_damage``): a damaged one would spoil the
        whole message its raw JSON goes into, so it is never sent but quarantined and reported
        with ``gateway.dropped``, and the rest goes out.
        """
        db = self._require()
        try:
            claim = self._claim_rows(max_events)
        except sqlite3.OperationalError:
            # Text that is not UTF-8 (a damaged row) cannot be read the usual way: read it so
            # that the check can tell it apart.
            db.text_factory = lenient_text
            try:
                claim = self._claim_rows(max_events)
            finally:
                db.text_factory = str
        for seq in claim.taken_released:
            del self._released[seq]
        self._cursor = claim.cursor
        events: list[StoredEvent | WireRun] = [
            StoredEvent(seq, event_id, kind, device, data, ts, bool(synced), attempt)
            for seq, event_id, kind, device, data, ts, synced, attempt, _ in claim.rows
        ]
        # In flight before the report of damaged rows is stored: its eviction must spare them.
        self._inflight.update(row[0] for row in claim.rows)
        if claim.damaged:
            self._quarantine(claim.damaged)
        if len(events) < max_events:
            runs, unreadable = self._spool.claim_runs(max_events - len(events), self.mono())
            events += runs
            if unreadable:
                self._report_unreadable(unreadable)
        return events

    def _report_unreadable(self, ranges: list[tuple[int, int]]) -> None:
        """Records of the spool found damaged when claimed: their seqs are reported, then they
        are forgotten (if the report cannot be written they stay on disk, skipped, and the next
        start finds them again)."""
        count = sum(last - first + 1 for first, last in ranges)
        log.error("spool_records_lost", ranges=ranges, count=count)
        try:
            self.insert([self._make_dropped(count, ranges, integrity.DAMAGED_ROW_REASON)])
        except (StoreError, sqlite3.Error, OSError) as exc:
            log.error("spool_loss_not_reported", ranges=ranges, error=str(exc))  # noqa: TRY400
            return
        self._spool.forget_unreadable()
        self._delete_finished()

    def _claim_rows(self, max_events: int) -> _Claim:
        """What ``claim`` takes, checked; reads only, so that it can be run again."""
        db = self._require()
        now = self.mono()
        claim = _Claim(cursor=self._cursor)
        alarms = [
            row
            for row in db.execute(
                f"SELECT {CLAIM_COLUMNS} FROM events "  # noqa: S608
                "WHERE class='alarm' AND alarm_state='pending' ORDER BY seq"
            )
            if row[0] not in self._inflight and self._released.get(row[0], now) <= now
        ]
        claim.taken_released += [row[0] for row in alarms if row[0] in self._released]
        claim.add(alarms, alarm=True)
        taken = set(claim.taken_released)
        ready = [
            seq
            for seq, retry_at in self._released.items()
            if retry_at <= now and seq not in self._inflight and seq not in taken
        ][: max(0, max_events - len(claim.rows))]
        if ready:
            marks = ",".join("?" * len(ready))
            claim.add(
                db.execute(
                    f"SELECT {CLAIM_COLUMNS} FROM events WHERE seq IN ({marks}) ORDER BY seq",  # noqa: S608
                    ready,
                ).fetchall()
            )
            claim.taken_released += ready
        while (room := max_events - len(claim.rows)) > 0 and len(claim.damaged) < DAMAGED_PER_CLAIM:
            rows = db.execute(
                f"SELECT {CLAIM_COLUMNS} FROM events "  # noqa: S608
                "WHERE seq>? AND class!='alarm' ORDER BY seq LIMIT ?",
                (claim.cursor, room),
            ).fetchall()
            if not rows:
                break
            claim.cursor = rows[-1][0]
            claim.add(row for row in rows if row[0] not in self._inflight)  # written in flight
        return claim

    def _quarantine(self, damaged: list[tuple[int, str, bool]]) -> None:
        """Move damaged rows to the quarantine table and report their seqs as dropped.

        The report is stored first: a crash in between reports a row twice, never not at all.
        A row that cannot be moved now stays where it is and is found again later (and is not
        reported again by this process).
        """
        seqs = sorted(seq for seq, _, _ in damaged)
        unreported = [seq for seq in seqs if seq not in self._damage_reported]
        now = self._now()
        try:
            if unreported:
                self.insert(
                    [
                        self._make_dropped(
                            len(unreported), seq_ranges(unreported), integrity.DAMAGED_ROW_REASON
                        )
                    ]
                )
                self._damage_reported.update(unreported)
            db = self._prepare(urgent=False)
            self._write(db, functools.partial(self._quarantine_rows, damaged, now), "quarantine")
        except (StoreError, sqlite3.Error, OSError) as exc:
            log.error("damaged_events_not_quarantined", seqs=seqs, error=str(exc))  # noqa: TRY400
            return
        for seq in seqs:
            self._released.pop(seq, None)
            self._resends.forget(seq)
            self._damage_reported.discard(seq)
        for seq, why, alarm in damaged:
            log.error("damaged_event_quarantined", seq=seq, why=why, alarm=alarm)
            if alarm:  # the alarm tracker tells the senior it will not be delivered
                self._quarantined_alarms.append(integrity.quarantined_alarm(db, seq))

    def _quarantine_rows(
        self, damaged: list[tuple[int, str, bool]], now: float, db: sqlite3.Connection
    ) -> None:
        self._stored_bytes -= integrity.quarantine_rows(damaged, now, db)

    def ack(self, seqs: Sequence[int]) -> list[HeldAlarm]:
        """The broker has them: delete them, except alarms, which wait for the platform's ack.

        Returns the alarms that became delivered. On a full disk that leaves no room at all,
        the events are published again later (a duplicate, never a loss) and nothing raises.
        """
        return self.ack_some(seqs)[0]

    def ack_some(
        self, seqs: Sequence[int], stop: Callable[[], bool] | None = None
    ) -> tuple[list[HeldAlarm], int]:
        """``ack``, that ends early when ``stop()`` says so (asked every ``ACK_STEP_ROWS``
        rows): what is deleted is committed at once, and how many of ``seqs`` (a prefix) were
        dealt with is returned with the alarms; the rest are left in flight, for the caller to
        ack later. So an alarm's commit waits for one step, while a transaction stays large
        otherwise. The spool's events are all dealt with at once (in memory).
        """
        others = self._spool.ack(seqs)
        self._delete_finished()
        if not others:
            return [], len(seqs)
        delivered, handled = self._ack_rows_some(others, stop)
        if handled == len(others):
            return delivered, len(seqs)
        # A prefix of ``seqs``: up to the first row left (spool events after it were dealt with
        # too; acknowledged again later, they are found nowhere and nothing happens).
        return delivered, list(seqs).index(others[handled])

    def _ack_rows_some(
        self, seqs: Sequence[int], stop: Callable[[], bool] | None
    ) -> tuple[list[HeldAlarm], int]:
        db = self._prepare(urgent=False)
        pending: list[tuple[int, str, str, str | None, int]] = []
        done: list[int] = []
        step = min(SQL_CHUNK, self.rows_per_transaction)
        db.execute("PRAGMA synchronous=NORMAL")  # losing a delete only means a duplicate
        try:
            for start in range(0, len(seqs), step):
                chunk = list(seqs[start : start + step])
                rows, taken = self._write(
                    db, functools.partial(self._ack_steps, chunk, stop), "ack"
                )
                pending += rows
                done += chunk[:taken]
                if taken < len(chunk):
                    break
        except StoreFullError:
            self.release(seqs[len(done) :], self.mono() + ACK_RETRY_ON_FULL_S)
            done = list(seqs)  # (dealt with: to be published again)
        except BaseException:
            self.release(seqs[len(done) :], self.mono())  # not recorded: publish them again
            raise
        finally:
            # What was committed is done, whatever became of the rest.
            self._inflight.difference_update(done)
            self._resends.delivered(pending, self.mono())
            db.execute("PRAGMA synchronous=FULL")
        self._disk.after_write(db)
        delivered = [
            HeldAlarm(event_id, seq, kind, device, n) for seq, event_id, kind, device, n in pending
        ]
        return delivered, len(done)

    def _ack_steps(
        self, chunk: list[int], stop: Callable[[], bool] | None, db: sqlite3.Connection
    ) -> tuple[list[tuple[int, str, str, str | None, int]], int]:
        """One transaction of ``ack_some``: the rows deleted, and how many of ``chunk``."""
        if stop is None:
            return self._ack_rows(chunk, db), len(chunk)
        pending: list[tuple[int, str, str, str | None, int]] = []
        for start in range(0, len(chunk), ACK_STEP_ROWS):
            if start and stop():
                return pending, start
            pending += self._ack_rows(chunk[start : start + ACK_STEP_ROWS], db)
        return pending, len(chunk)

    def _ack_rows(
        self, chunk: list[int], db: sqlite3.Connection
    ) -> list[tuple[int, str, str, str | None, int]]:
        low, high = min(chunk), max(chunk)
        params: Sequence[int]
        if high - low + 1 == len(chunk) == len(set(chunk)):  # every seq of a range (the drain)
            where, params = "seq BETWEEN ? AND ?", (low, high)
        else:
            where, params = f"seq IN ({','.join('?' * len(chunk))})", chunk
        pending: list[tuple[int, str, str, str | None, int]] = db.execute(
            "SELECT seq, id, kind, device, attempt FROM events "  # noqa: S608
            f"WHERE {where} AND class='alarm' AND alarm_state='pending'",
            params,
        ).fetchall()
        self._stored_bytes -= db.execute(
            f"SELECT COALESCE(SUM(size), 0) FROM events WHERE {where} AND class!='alarm'",  # noqa: S608
            params,
        ).fetchone()[0]
        db.execute(f"DELETE FROM events WHERE {where} AND class!='alarm'", params)  # noqa: S608
        db.executemany(
            "UPDATE events SET alarm_state='delivered' WHERE seq=?", [(row[0],) for row in pending]
        )
        return pending

    def release(self, seqs: Iterable[int], retry_at: float) -> None:
        """Publication failed (refused by the broker): keep them and try again at ``retry_at``
        (seconds on the store's monotonic clock, ``mono()``)."""
        for seq in self._spool.release(seqs, retry_at):
            self._inflight.discard(seq)
            self._released[seq] = retry_at

    def release_all(self, epoch: int | None = None) -> None:
        """The link is gone: nothing is in flight any more; start again from the oldest.
        ``epoch``: the caller's count of them (``HotBatch.epoch``)."""
        if epoch is not None:
            self._epoch = epoch
        self._inflight.clear()
        self._released.clear()
        self._cursor = 0
        self._spool.release_all()

    # ----------------------------------------------------------------------------- alarms

    def promote_due_alarms(self) -> tuple[list[HeldAlarm], list[HeldAlarm]]:
        """Delivered alarms whose ack did not come in time go out again with attempt + 1.

        Returns (promoted, given_up): alarms older than the give-up window are dropped instead.
        Deadlines are monotonic, so a clock step cannot make an alarm look 24 h old; a delivered
        alarm found after a restart gets a fresh ack timeout.
        """
        due = self._resends.due(self._require(), self.mono())
        if not due:
            return [], []
        db = self._prepare(urgent=True)
        try:
            promoted, given_up = self._write(
                db, functools.partial(self._promote_rows, due), "promote_due_alarms"
            )
        except StoreFullError:
            return [], []  # tried again at the next round; the alarms stay held meanwhile
        self._disk.after_write(db, urgent=True)
        for alarm in [*promoted, *given_up]:
            self._resends.forget(alarm.seq)
        for alarm in given_up:
            log.error("alarm_given_up", alarm_id=alarm.id, seq=alarm.seq, attempts=alarm.attempt)
        return promoted, given_up

    def _promote_rows(
        self, due: list[Any], db: sqlite3.Connection
    ) -> tuple[list[HeldAlarm], list[HeldAlarm]]:
        promoted, given_up, freed = self._resends.promote_rows(due, db)
        self._stored_bytes -= freed
        return promoted, given_up

    def acknowledge_alarms(
        self, ids: Sequence[str], make_audit: Callable[[HeldAlarm], NewEvent] | None = None
    ) -> list[HeldAlarm]:
        """The platform acknowledged: forget these alarms. Returns those the store held.

        ``make_audit`` makes the audit event of each alarm found; it is stored in the same
        transaction that deletes the alarm, so that neither is on disk without the other.
        On a full disk room is made as for an alarm (``StoreFullError`` only if there is none).
        """
        db = self._prepare(urgent=True)
        found = self._write(
            db, functools.partial(self._acknowledge_rows, ids, make_audit), "acknowledge_alarms"
        )
        for alarm in found:
            self._inflight.discard(alarm.seq)
            self._released.pop(alarm.seq, None)
            self._resends.forget(alarm.seq)
        self._disk.after_write(db, urgent=True)
        return found

    def _acknowledge_rows(
        self,
        ids: Sequence[str],
        make_audit: Callable[[HeldAlarm], NewEvent] | None,
        db: sqlite3.Connection,
    ) -> list[HeldAlarm]:
        found, freed = acknowledged_rows(ids, db)
        self._stored_bytes -= freed
        if make_audit is None or not found:
            return found
        audits = [make_audit(alarm) for alarm in found]
        self._insert_rows(audits, self._now(), True, db)  # as urgent as the alarm
        return found

    def take_quarantined_alarms(self) -> list[HeldAlarm]:
        """The alarms quarantined as damaged since the last call (they will never be sent)."""
        taken, self._quarantined_alarms = self._quarantined_alarms, []
        return taken

    def alarm_under_key(self, key: str) -> str | None:
        """The id of the alarm stored under ``key`` (``insert``), if it is still remembered."""
        return alarm_under_key(self._require(), key)

    def held_alarms(self) -> list[HeldAlarm]:
        return read_held_alarms(self._require())

    # ----------------------------------------------------------------------------- clock

    def correct_timestamps(self, boot_id: str, wall_now: float, mono_now_ns: int) -> int:
        """Rewrite the unsynchronised timestamps taken during this boot from monotonic time."""
        spooled = self._spool.correct_timestamps(boot_id, wall_now, mono_now_ns)
        rows = timestamps.unsynced(self._require(), boot_id)
        if not rows:
            return spooled
        db = self._prepare(urgent=False)
        step = self.rows_per_transaction  # each transaction keeps to its share of the WAL
        for start in range(0, len(rows), step):
            changes = timestamps.corrections(rows[start : start + step], wall_now, mono_now_ns)
            self._write(
                db, functools.partial(timestamps.correct_rows, changes), "correct_timestamps"
            )
        self._disk.after_write(db)
        return len(rows) + spooled

    # ----------------------------------------------------------------------------- commands

    def command_result(self, cmd_id: str) -> str | None:
        return commands.command_result(self._require(), cmd_id)

    def remember_command(
        self, cmd_id: str, result_json: str, keep: int = commands.COMMAND_IDS_KEPT
    ) -> None:
        """Remember a command's result (``commands.remember_command``)."""
        db = self._prepare(urgent=False)
        self._write(
            db,
            functools.partial(commands.remember_command, cmd_id, result_json, self._now(), keep),
            "remember_command",
        )
        self._disk.after_write(db)

    # ----------------------------------------------------------------------------- figures

    def stats(self) -> StoreStats:
        db = self._require()
        queued = {
            klass: count
            for klass, count in db.execute("SELECT class, COUNT(*) FROM events GROUP BY class")
        }
        oldest = db.execute("SELECT ts FROM events ORDER BY seq LIMIT 1").fetchone()
        held = sum(1 for _ in db.execute("SELECT 1 FROM events WHERE class='alarm'"))
        oldest_ts = [str(oldest[0])] if oldest is not None else []
        spooled = self._spool.queued()
        if spooled:
            queued["telemetry"] = queued.get("telemetry", 0) + spooled
            oldest_ts += [ts for ts in (self._spool.oldest_ts(),) if ts is not None]
        return StoreStats(
            queued=queued,
            oldest_queued_ts=min(oldest_ts) if oldest_ts else None,
            stored_bytes=self._stored_bytes + self._spool.disk_bytes,
            last_seq=self._last,
            alarms_held=held,
        )


def _spooled(event: NewEvent) -> bool:
    """Telemetry goes to the spool; every other event to the database."""
    return event_class(event.kind) == "telemetry"
