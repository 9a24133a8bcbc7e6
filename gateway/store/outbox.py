"""The durable outbox: events wait in SQLite until the broker has acknowledged them.

``SqliteStore`` is synchronous and owned by one thread; ``Outbox`` is its asyncio face, which runs
every store call on that thread and group-commits telemetry (alarms are committed with a full fsync
before ``put`` returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import json
import os
import queue
import re
import sqlite3
import stat
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import structlog

from gateway.core.errors import StoreCorruptError, StoreError, StoreFullError, StoreVersionError
from gateway.core.events import (
    KIND_DATA,
    TS_PATTERN,
    NewEvent,
    StoredEvent,
    event_class,
    ts_from_unix,
)

log = structlog.get_logger("gateway.store.outbox")

SEQ_RESERVE_BLOCK = 4096
PRIVATE_FILE_MODE = 0o600  # the outbox, its -wal/-shm and seq mark: events name seniors' devices
EVICTION_ORDER = ("telemetry", "device", "camera", "audit", "cmdres", "gateway")
EVICT_TO_FRACTION = 0.9
EVENT_OVERHEAD_BYTES = 160  # envelope bytes around data, counted against the quota
CHECKPOINT_INTERVAL_S = 1.0
CHECKPOINT_SPACING_S = 0.25  # between checkpoints the store asks for
SQL_CHUNK = 500  # seqs per IN (...) list
_WIRE_COLUMNS = "seq, id, kind, device, data, ts, ts_synced, attempt"  # StoredEvent's fields
_CLAIM_COLUMNS = f"{_WIRE_COLUMNS}, crc"
_TS = re.compile(TS_PATTERN, re.ASCII)  # [0-9] only, as JSON Schema reads \d
_EVENT_ID = re.compile(r"[0-9A-Za-z_.:-]{1,128}")  # UUIDv7 (or ULID): nothing JSON must escape
DAMAGED_ROW_REASON = "event_corrupt"  # gateway.dropped reason for a quarantined row
QUARANTINE_KEPT = 1000  # damaged rows kept for inspection, the newest
DAMAGED_PER_CLAIM = 500  # a claim stops there: their gateway.dropped stays small
COMMAND_IDS_KEPT = 10_000  # command ids remembered for idempotency, the newest
MAX_RANGES_PER_DROPPED = 2000  # keeps one gateway.dropped event far below 256 KiB
_T = TypeVar("_T")
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26  # primary result codes that mean a damaged file

DroppedFactory = Callable[[int, list[tuple[int, int]], str], NewEvent]


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("gateway.store") / "schema"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


SCHEMA_VERSION = max(version for version, _ in _migrations())


def seq_ranges(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Compress sequence numbers into inclusive ``[first, last]`` ranges."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


def merge_ranges(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of inclusive ranges, sorted, adjacent ones joined."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def row_crc(event_id: str, kind: str, device: str | None, data: str) -> int:
    """The checksum stored with an event: CRC-32 of what goes raw into its wire JSON (the
    timestamp is checked by its pattern instead, as clock correction rewrites it)."""
    text = f"{event_id}\x1f{kind}\x1f{chr(0) if device is None else device}\x1f{data}"
    return zlib.crc32(text.encode())


def row_damage(row: Sequence[Any]) -> str | None:
    """Why a stored row (``_CLAIM_COLUMNS``) cannot go on the wire as it is; None when intact.

    An intact row makes valid JSON in ``StoredEvent.wire_json``. Rows stored before checksums
    (``crc`` NULL) are checked by parsing their data instead.
    """
    seq, event_id, kind, device, data, ts, synced, attempt, crc = row
    if not (type(seq) is int and type(synced) is int and type(attempt) is int):
        return "not_an_integer"
    if not (
        type(event_id) is str
        and type(kind) is str
        and type(data) is str
        and type(ts) is str
        and (device is None or type(device) is str)
    ):
        return "not_text"
    if _TS.fullmatch(ts) is None:
        return "bad_timestamp"
    try:
        if crc is None:
            return _unchecksummed_damage(event_id, kind, device, data)
        if type(crc) is not int or crc != row_crc(event_id, kind, device, data):
            return "checksum_mismatch"
    except UnicodeEncodeError:
        return "not_utf8"
    return None


def _unchecksummed_damage(event_id: str, kind: str, device: str | None, data: str) -> str | None:
    if kind not in KIND_DATA:
        return "unknown_kind"
    if _EVENT_ID.fullmatch(event_id) is None:
        return "bad_id"
    if device is not None:
        device.encode()
    data.encode()
    try:
        value = json.loads(data, parse_constant=_refuse_constant)
    except ValueError:
        return "data_not_json"
    return None if isinstance(value, dict) else "data_not_object"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _lenient_text(raw: bytes) -> str:
    """Text as stored, bytes that are not UTF-8 kept as surrogates (which ``row_damage`` finds)."""
    return raw.decode("utf-8", "surrogateescape")


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


@dataclass(frozen=True, slots=True)
class AlarmTiming:
    ack_timeout_s: float = 30.0
    resend_interval_s: float = 60.0
    give_up_after_s: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class HeldAlarm:
    """An alarm the outbox still holds, as reported to the alarm state machine."""

    id: str
    seq: int
    kind: str
    device: str | None
    attempt: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    queued: dict[str, int]
    oldest_queued_ts: str | None
    stored_bytes: int
    last_seq: int
    alarms_held: int


@dataclass(slots=True)
class OpenReport:
    """What happened when the store was opened."""

    moved_aside: Path | None = None
    lost_ranges: list[tuple[int, int]] = field(default_factory=list)
    loss_reason: str | None = None
    migrated_from: int | None = None


class _SeqMark:
    """A sidecar file: an upper bound of every seq ever allocated, and what the store held.

    The bound is written (with fsync) a block ahead of the allocations, so that a store that has
    to be moved aside never makes the gateway reuse a sequence number. Beside it: whether the
    store was closed cleanly, and its last seq then (or, while it is open, the last committed one,
    rewritten in place after each commit without fsync: it survives a crash of the process). A
    store that reopens below that last seq has lost commits (its -wal file gone or older).
    """

    OPEN, CLOSED = "open  ", "closed"  # fixed width: the record is rewritten in place

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reserved = 0
        self.state: str | None = None  # None: no mark, or one from before the state was kept
        self.last = 0
        self._fd: int | None = None
        with contextlib.suppress(OSError, ValueError):
            fields = path.read_text().split()
            self.reserved = int(fields[0]) if fields else 0
            if len(fields) == 3 and f"{fields[1]:6}" in (self.OPEN, self.CLOSED):
                self.state, self.last = f"{fields[1]:6}", int(fields[2])

    def _record(self, reserved: int | None = None) -> bytes:
        bound = self.reserved if reserved is None else reserved
        return f"{bound:020d} {self.state or self.OPEN} {self.last:020d}\n".encode()

    def ensure(self, seq: int) -> None:
        """Make ``seq`` covered by the bound on disk; the bound in memory moves only once it is
        written (a failed write is tried again by the next call)."""
        if seq <= self.reserved:
            return
        reserved = seq + SEQ_RESERVE_BLOCK
        self._replace(reserved)
        self.reserved = reserved

    def opened(self, last: int) -> None:
        """The store is open at ``last``: from now on a crash leaves it "open"."""
        self.state, self.last = self.OPEN, last
        self.reserved = max(self.reserved, last)
        try:
            self._replace()
        except OSError as exc:  # a full disk must not stop the gateway; each commit's note in
            # place (``committed``) still records the state as open
            log.warning("seq_mark_not_written", path=str(self.path), error=str(exc))

    def committed(self, last: int) -> None:
        """A commit made ``last`` the last seq: noted in place, without fsync."""
        if last <= self.last:
            return
        self.last = last
        try:
            if self._fd is None:  # created here if the first start could not (a full disk)
                self._fd = _open_private(self.path, os.O_WRONLY | os.O_CREAT)
            os.pwrite(self._fd, self._record(), 0)
        except OSError as exc:  # the commit stands: only the check after a lost -wal weakens
            log.warning("seq_mark_not_written", path=str(self.path), error=str(exc))

    def closed(self, last: int) -> None:
        """The store was closed cleanly with ``last`` as its exact last seq."""
        self.state, self.last = self.CLOSED, last
        self._replace()
        self.release()

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _replace(self, reserved: int | None = None) -> None:
        """Write the whole record durably: a temporary file, fsync, rename, fsync the folder."""
        self.release()
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = _open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, self._record(reserved))
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)
        _fsync_dir(self.path.parent)


def _open_private(path: Path, flags: int) -> int:
    """``os.open``; a new file gets mode 0600 whatever the umask, an existing one is made 0600."""
    fd = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != PRIVATE_FILE_MODE:
            os.fchmod(fd, PRIVATE_FILE_MODE)
    except PermissionError:  # someone else's file: usable all the same
        log.warning("store_file_mode_not_changed", path=str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _make_private(path: Path, *, create: bool = False) -> None:
    """Give a store file mode 0600: created so (``create``) whatever the umask, or tightened.

    By its path, never by opening and closing it: closing any descriptor of a file drops every
    POSIX lock this process holds on it, SQLite's included (its -shm would then be reset under
    it by the next process to open the store: SIGBUS).
    """
    if create:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    try:
        status = os.stat(path)
    except FileNotFoundError:
        if create:
            raise
        return
    if stat.S_ISREG(status.st_mode) and stat.S_IMODE(status.st_mode) != PRIVATE_FILE_MODE:
        try:
            os.chmod(path, PRIVATE_FILE_MODE)
        except PermissionError:  # someone else's file: usable all the same
            log.warning("store_file_mode_not_changed", path=str(path))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        self.timing = timing
        self._make_dropped = make_dropped
        self._now = now
        self._monotonic_ns = monotonic_ns
        self._boot_id = boot_id
        self._clock_synced = clock_synced
        self._db: sqlite3.Connection | None = None
        self._seqmark = _SeqMark(path.with_name(path.name + ".seqmark"))
        self._stored_bytes = 0
        # In memory only, on the monotonic clock (seconds): a restart starts them afresh.
        self._inflight: set[int] = set()
        self._released: dict[int, float] = {}  # seq -> when to try again
        self._alarm_due: dict[int, float] = {}  # delivered alarm seq -> when to resend
        self._cursor = 0
        self._damage_reported: set[int] = set()  # damaged rows reported but not yet moved
        self._quarantined_alarms: list[HeldAlarm] = []  # until take_quarantined_alarms
        self._disk = _DiskGuard(path, max_bytes)

    def mono(self) -> float:
        """Seconds on the store's monotonic clock (deadlines for ``release``)."""
        return self._monotonic_ns() / 1e9

    def in_flight(self) -> int:
        """How many events are claimed and awaiting their PUBACK."""
        return len(self._inflight)

    def resends_scheduled(self) -> int:
        """How many delivered alarms have a resend scheduled (awaiting the platform's ack)."""
        return len(self._alarm_due)

    # ----------------------------------------------------------------------------- opening

    def open(self) -> OpenReport:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._make_files_private()
        report = OpenReport()
        try:
            report.migrated_from = self._open_checked()
        except StoreCorruptError as exc:
            report.moved_aside, last_seq = self._move_aside(str(exc))
            self._make_files_private()
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
        self._seqmark.opened(self._last_seq())
        return report

    def _make_files_private(self) -> None:
        """Create the database file 0600; tighten it and an earlier -wal/-shm (an older
        version's, another tool's) before any connection holds locks on them. SQLite gives a
        new -wal and -shm the database file's mode."""
        try:
            for suffix in ("", "-wal", "-shm"):
                _make_private(Path(f"{self.path}{suffix}"), create=suffix == "")
        except OSError as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        # Checkpoints run on a thread of their own (_Checkpointer), never inside a commit (an
        # alarm would wait behind copying megabytes into the database file). The store thread
        # checkpoints only before or after a write of other events, without waiting for the
        # checkpointer unless the WAL or the database's growth is at its cap (``_prepare``).
        db.execute("PRAGMA wal_autocheckpoint=0")
        return db

    def _open_checked(self) -> int | None:
        """Open, check and migrate; return the schema version migrated from (0: a new file)."""
        try:
            db = self._connect()
            check = db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorcode", None) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                raise StoreCorruptError(f"cannot open: {exc}") from exc
            # locked, unreadable, I/O error: not damage. Never move a healthy store aside.
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        if check != "ok":
            db.close()
            raise StoreCorruptError(f"integrity check failed: {check}")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            db.close()
            raise StoreVersionError(
                f"{self.path} has schema version {version}, newer than this carebed's "
                f"{SCHEMA_VERSION}: install the newer carebed again, or move the file aside"
            )
        migrated_from = None
        for target, script in _migrations():
            if target <= version:
                continue
            migrated_from = version if migrated_from is None else migrated_from
            try:
                db.execute("BEGIN IMMEDIATE")
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={target}")
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                db.execute("ROLLBACK")
                db.close()
                raise StoreError(f"migration to schema {target} failed: {exc}") from exc
        self._db = db
        self._stored_bytes = int(
            db.execute("SELECT COALESCE(SUM(size), 0) FROM events").fetchone()[0]
        )
        if migrated_from != 0:
            self._seqmark.ensure(self._last_seq())
        return migrated_from

    def _move_aside(self, why: str) -> tuple[Path, int | None]:
        """Keep a damaged database for inspection; return where it went and its last seq."""
        last_seq = None
        with contextlib.suppress(sqlite3.Error):
            probe = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                last_seq = int(
                    probe.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0]
                )
            finally:
                probe.close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._now()))
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                source.replace(Path(f"{target}{suffix}"))
        log.error("store_moved_aside", path=str(self.path), moved_to=str(target), why=why)
        return target, last_seq

    def _restart_sequence_after_loss(self, last_seq: int | None) -> list[tuple[int, int]]:
        """After a damaged store, continue above every seq that may have been allocated."""
        reserved = max(self._seqmark.reserved, last_seq or 0)
        if reserved == 0:
            return []
        self._continue_above(reserved)
        # What the damaged store still held is unknown: every seq up to the mark may be lost.
        return [(1, reserved)]

    def _continue_after_rollback(self) -> list[tuple[int, int]]:
        """A store below the last seq the mark saw committed has lost commits (its -wal file
        deleted, or an older copy restored): continue above every seq it may have issued and
        return the seqs that may be lost. An intact store (any kill -9 included) returns []."""
        mark = self._seqmark
        last = self._last_seq()
        if mark.state is None or last >= mark.last:
            return []
        # Closed cleanly: its last seq then is exact. Open (a crash): commits may have followed
        # the last one noted, up to the reserved bound.
        resume = mark.last if mark.state == mark.CLOSED else max(mark.reserved, mark.last)
        log.error(
            "store_rolled_back",
            path=str(self.path),
            last_seq=last,
            seq_mark=mark.last,
            closed_cleanly=mark.state == mark.CLOSED,
            resume_after=resume,
        )
        self._continue_above(resume)
        return [(last + 1, resume)]

    def _continue_above(self, seq: int) -> None:
        db = self._prepare(urgent=True)
        self._write(db, functools.partial(_set_last_seq, seq), "continue_above")
        self._seqmark.ensure(seq)

    def close(self) -> None:
        if self._db is not None:
            last: int | None = None
            with contextlib.suppress(sqlite3.Error):
                last = self._last_seq()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None
            if last is not None:
                try:
                    self._seqmark.closed(last)
                except OSError as exc:  # the next start then checks the store as after a crash
                    log.warning("seq_mark_not_written", error=str(exc))
        self._seqmark.release()

    def _require(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the outbox is not open")
        return self._db

    def _last_seq(self) -> int:
        row = self._require().execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
        return int(row[0])

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
        disk = self._disk
        if disk.reserve.held:
            return True
        # After a full disk, only once there is room for all of it: space has really returned.
        if not disk.reserve.make(smaller=disk.full_cap is None):
            return False
        if disk.full_cap is not None:
            disk.full_cap = None
            log.info("disk_space_returned", reserve_bytes=disk.reserve.held)
        return True

    def insert(self, events: Sequence[NewEvent]) -> list[int]:
        """Store events in one transaction with a full fsync; return their seqs.

        Alarms are committed as they are: they never wait for an eviction or a checkpoint (the
        next write of other events evicts for them). On a full disk the store makes room
        (``_make_room``) and tries again; ``StoreFullError`` if there is still none.
        """
        urgent = all(event.is_alarm for event in events)
        db = self._prepare(urgent=urgent)
        now = self._now()
        seqs, evicted, last = self._write(
            db, functools.partial(self._insert_rows, events, now, urgent), "insert"
        )
        self._seqmark.committed(last)
        for seq in evicted:
            self._released.pop(seq, None)
        self._after_write(db, urgent=urgent)
        return seqs

    def _insert_rows(
        self, events: Sequence[NewEvent], now: float, urgent: bool, db: sqlite3.Connection
    ) -> tuple[list[int], list[int], int]:
        seqs: list[int] = []
        evicted: list[int] = []
        last = self._last_seq()
        self._seqmark.ensure(last + len(events) + 1)
        if not urgent:
            incoming = sum(_row_bytes(event) for event in events)
            if self._over_quota(db, incoming):
                last = self._evict(db, last, now, evicted, incoming)
        for event in events:
            last += 1
            self._insert_row(db, last, event, now)
            seqs.append(last)
        if not urgent and self._disk.full_cap is None and self._over_quota(db, 0):
            last = self._evict(db, last, now, evicted, 0)  # (on a full disk: evicted before)
        db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (last,))
        return seqs, evicted, last

    def _insert_row(self, db: sqlite3.Connection, seq: int, event: NewEvent, now: float) -> None:
        size = _row_bytes(event)
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

    # The quota (outbox.max_bytes) bounds the files, not only the rows: the database may hold
    # ``budget.db`` bytes of live pages (freed pages are reused, so the file stops growing
    # there), the WAL is checkpointed and restarted before it passes ``budget.wal``, and the
    # rest is the alarm reserve, the -shm index and the seq mark. On a full disk the database
    # may not grow at all (``full_cap``). Either way telemetry leaves ALARM_HEADROOM_BYTES of
    # free pages for alarms, which never evict.

    def _db_limit(self) -> int:
        disk = self._disk
        limit = disk.budget.db if disk.full_cap is None else min(disk.budget.db, disk.full_cap)
        return limit - min(ALARM_HEADROOM_BYTES, max(limit, 0) // 8)

    def _live_bytes(self, db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self._disk.page_size

    def _over_quota(self, db: sqlite3.Connection, incoming: int, *, evicting: bool = False) -> bool:
        """Would ``incoming`` more row bytes take the outbox over its quota? ``evicting``: over
        the level an eviction goes down to."""
        fraction = EVICT_TO_FRACTION if evicting else 1.0
        if self._stored_bytes + incoming > self.max_bytes * fraction:
            return True
        limit = self._db_limit() - (self._evict_slack() if evicting else 0)
        return self._live_bytes(db) + incoming * DB_BYTES_PER_ROW_BYTE > limit

    def _evict_slack(self) -> int:
        """How far below its limit an eviction takes the database: a tenth of the quota (at
        most a quarter of the WAL's share, so that its transaction fits the WAL); on a full
        disk only a little, since every deleted page is written to the WAL."""
        if self._disk.full_cap is not None:
            return FULL_EVICT_SLACK_BYTES
        return min(max(self._db_limit(), 0) // 10, self._disk.budget.wal // 8)

    def _evict(
        self, db: sqlite3.Connection, last: int, now: float, evicted: list[int], incoming: int
    ) -> int:
        """Delete the oldest evictable events until there is room; report them as dropped.

        Never alarms, never events in flight. Earlier ``gateway.dropped`` events go last, and
        when one goes, the gaps it explained move into the new one, so every gap stays explained.
        """
        explained: list[tuple[int, int]] = []
        unsequenced: dict[str, int] = {}  # counts of evicted reports of events without a seq
        self._trim_quarantine(db, incoming)
        passes = [(klass, "kind!='gateway.dropped'") for klass in EVICTION_ORDER]
        passes.append(("gateway", "kind='gateway.dropped'"))
        for klass, which in passes:
            cursor = 0
            reports = which.startswith("kind=")
            while self._over_quota(db, incoming, evicting=True):
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
            if not self._over_quota(db, incoming, evicting=True):
                break
        if not evicted:
            log.warning(
                "quota_exceeded",
                stored_bytes=self._stored_bytes,
                max_bytes=self.max_bytes,
                disk_full=self._disk.full_cap is not None,
            )
            return last
        reason = "disk_quota" if self._disk.full_cap is None else "disk_full"
        ranges = merge_ranges([*seq_ranges(evicted), *explained])
        for start in range(0, len(ranges), MAX_RANGES_PER_DROPPED):
            chunk = ranges[start : start + MAX_RANGES_PER_DROPPED]
            count = sum(b - a + 1 for a, b in chunk)
            last += 1
            self._seqmark.ensure(last)
            self._insert_row(db, last, self._make_dropped(count, chunk, reason), now)
        for why, count in unsequenced.items():  # carried over, so that no count is lost
            last += 1
            self._seqmark.ensure(last)
            self._insert_row(db, last, self._make_dropped(count, [], why), now)
        log.warning("events_evicted", count=len(evicted), ranges=len(ranges), reason=reason)
        return last

    def _evictable(
        self, db: sqlite3.Connection, klass: str, which: str, cursor: int, *, lenient: bool
    ) -> list[Any]:
        """The next rows of ``klass`` an eviction may take: (seq, size, *``_CLAIM_COLUMNS``)
        for reports (``lenient``: text that is not UTF-8 read so that ``row_damage`` finds it),
        (seq, size) for the rest."""
        columns = f"seq, size, {_CLAIM_COLUMNS}" if lenient else "seq, size"
        query = (
            f"SELECT {columns} FROM events WHERE class=? AND seq>? AND {which} "  # noqa: S608
            "ORDER BY seq LIMIT 64"
        )
        if not lenient:
            return db.execute(query, (klass, cursor)).fetchall()
        db.text_factory = _lenient_text
        try:
            return db.execute(query, (klass, cursor)).fetchall()
        finally:
            db.text_factory = str

    def _trim_quarantine(self, db: sqlite3.Connection, incoming: int) -> None:
        """Damaged rows kept for inspection are the first to go when the quota is reached."""
        trimmed = 0
        while self._over_quota(db, incoming, evicting=True):
            gone = db.execute(
                "DELETE FROM quarantine WHERE seq IN "
                "(SELECT seq FROM quarantine ORDER BY seq LIMIT 64)"
            ).rowcount
            if gone <= 0:
                break
            trimmed += gone
        if trimmed:
            log.warning("quarantine_trimmed", count=trimmed)

    # A full disk (ENOSPC, SQLITE_FULL). In WAL mode every write, a DELETE included, appends to
    # the WAL, and a checkpoint grows the database file by the pages the WAL added. So: keep the
    # WAL and the pending growth small at all times (checkpointed early), keep a reserve file,
    # and when a write finds the disk full give the reserve back, checkpoint (the WAL then
    # restarts at its beginning and needs no new space), cap the database at its size (new
    # telemetry evicts old) and try again.

    def _prepare(self, *, urgent: bool) -> sqlite3.Connection:
        """Before a write: the connection's settings, the reserve, and (not for alarms) a large
        WAL or growth is checkpointed now: waiting for the checkpointer only at their cap, where
        one more transaction (rows and their eviction) could pass the WAL's share or the reserve;
        below it, only if the checkpointer is not at it already (an alarm may be queued)."""
        db = self._require()
        disk = self._disk
        if disk.prepared is not db:
            # A restarted WAL is cut back to this: past it, the WAL holds that much since.
            db.execute(f"PRAGMA journal_size_limit={disk.budget.wal // 8}")
            disk.page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            disk.prepared = db
        if not urgent and not disk.reserve.held:
            self.make_reserve()  # a statvfs, unless there is room; never on an alarm's time
        if not urgent:
            wal, growth = self._pressure(db)
            held = disk.reserve.held  # the growth it covers (none: every write checkpointed)
            full = disk.full_cap is not None  # the WAL must fit in the file it already has
            if full or wal > disk.budget.wal * 5 // 8 or growth > held * 3 // 4:
                self._checkpoint(db)
            elif wal > disk.budget.wal // 4 or growth > held // 2:
                self._checkpoint(db, wait=False)
        return db

    def _after_write(self, db: sqlite3.Connection, *, urgent: bool = False) -> None:
        wal, growth = self._pressure(db)
        disk = self._disk
        if not urgent and growth > 0 and not disk.reserve.held:
            self._checkpoint(db, wait=False)  # else the next write's ``_prepare`` waits for it
        elif (
            disk.full_cap is not None
            or wal > disk.budget.wal // 8
            or growth > disk.reserve.held // 4
        ):
            disk.wake_checkpointer()

    def _pressure(self, db: sqlite3.Connection) -> tuple[int, int]:
        """(bytes in the WAL file, bytes the database file grows by at the next checkpoint)."""
        disk = self._disk
        try:
            wal = os.stat(disk.wal_path).st_size
        except FileNotFoundError:
            wal = 0
        try:
            on_disk = os.stat(self.path).st_size
        except FileNotFoundError:
            on_disk = 0
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        return wal, max(0, pages * disk.page_size - on_disk)

    def _checkpoint(
        self, db: sqlite3.Connection, mode: str = "PASSIVE", *, wait: bool = True
    ) -> bool:
        """A checkpoint on the store's own connection: nothing else writes meanwhile, so it
        completes and the next transaction restarts the WAL at its beginning. After a failed
        commit SQLite does not restart it by itself: ``RESTART`` makes sure it does. Without
        ``wait``, nothing is done while the checkpointer is at work."""
        if not self._disk.lock.acquire(blocking=wait):
            return False
        try:
            busy = db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("checkpoint_failed", error=str(exc), by="store")
            return False
        finally:
            self._disk.lock.release()
        return not busy

    def _write(
        self, db: sqlite3.Connection, work: Callable[[sqlite3.Connection], _T], what: str
    ) -> _T:
        """Run ``work`` in one transaction; on a full disk make room and run it again.

        ``work`` may change ``_stored_bytes`` (put back on failure), nothing else in memory.
        """
        for attempt in range(1, FULL_ATTEMPTS + 1):
            stored = self._stored_bytes
            try:
                with _transaction(db):
                    return work(db)
            except (sqlite3.Error, OSError) as exc:
                self._stored_bytes = stored
                if not _is_disk_full(exc):
                    raise
                if attempt == FULL_ATTEMPTS:
                    log.error("store_full", write=what, attempts=attempt, error=str(exc))  # noqa: TRY400
                    raise StoreFullError(f"the disk is full: {what} failed: {exc}") from exc
                self._make_room(db, exc, what, attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _make_room(
        self, db: sqlite3.Connection, exc: BaseException, what: str, attempt: int
    ) -> None:
        disk = self._disk
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        first = disk.full_cap is None
        disk.full_cap = pages * disk.page_size  # from now on the database may not grow
        released = disk.reserve.release()
        if first or released:
            log.error(
                "disk_full",
                path=str(self.path),
                write=what,
                error=str(exc),
                reserve_released=released,
                database_bytes=disk.full_cap,
            )
        # RESTART: the next transaction writes the WAL from its beginning, in space it has.
        # If that was not enough, TRUNCATE gives the WAL's blocks back to the filesystem: the
        # seq mark may need one (a new file every 4096 seqs), the WAL grows again into the rest.
        self._checkpoint(db, "RESTART" if attempt == 1 else "TRUNCATE")

    # ----------------------------------------------------------------------------- delivery

    def claim(self, max_events: int) -> list[StoredEvent]:
        """Events to publish next: alarms first, then the rest in seq order. They stay stored.

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
            db.text_factory = _lenient_text
            try:
                claim = self._claim_rows(max_events)
            finally:
                db.text_factory = str
        for seq in claim.taken_released:
            del self._released[seq]
        self._cursor = claim.cursor
        events = [
            StoredEvent(seq, event_id, kind, device, data, ts, bool(synced), attempt)
            for seq, event_id, kind, device, data, ts, synced, attempt, _ in claim.rows
        ]
        # In flight before the report of damaged rows is stored: its eviction must spare them.
        self._inflight.update(event.seq for event in events)
        if claim.damaged:
            self._quarantine(claim.damaged)
        return events

    def _claim_rows(self, max_events: int) -> _Claim:
        """What ``claim`` takes, checked; reads only, so that it can be run again."""
        db = self._require()
        now = self.mono()
        claim = _Claim(cursor=self._cursor)
        alarms = [
            row
            for row in db.execute(
                f"SELECT {_CLAIM_COLUMNS} FROM events "  # noqa: S608
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
                    f"SELECT {_CLAIM_COLUMNS} FROM events WHERE seq IN ({marks}) ORDER BY seq",  # noqa: S608
                    ready,
                ).fetchall()
            )
            claim.taken_released += ready
        while (room := max_events - len(claim.rows)) > 0 and len(claim.damaged) < DAMAGED_PER_CLAIM:
            rows = db.execute(
                f"SELECT {_CLAIM_COLUMNS} FROM events "  # noqa: S608
                "WHERE seq>? AND class!='alarm' ORDER BY seq LIMIT ?",
                (claim.cursor, room),
            ).fetchall()
            if not rows:
                break
            claim.cursor = rows[-1][0]
            claim.add(rows)
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
                            len(unreported), seq_ranges(unreported), DAMAGED_ROW_REASON
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
            self._alarm_due.pop(seq, None)
            self._damage_reported.discard(seq)
        for seq, why, alarm in damaged:
            log.error("damaged_event_quarantined", seq=seq, why=why, alarm=alarm)
            if alarm:  # the alarm tracker tells the senior it will not be delivered
                self._quarantined_alarms.append(self._quarantined_alarm(db, seq))

    def _quarantine_rows(
        self, damaged: list[tuple[int, str, bool]], now: float, db: sqlite3.Connection
    ) -> None:
        for seq, why, _ in damaged:
            db.execute(
                "INSERT OR REPLACE INTO quarantine (seq, quarantined_at, why, id, kind, "
                "class, device, data, ts, ts_synced, attempt, alarm_state, crc) "
                "SELECT seq, ?, ?, id, kind, class, device, data, ts, ts_synced, attempt, "
                "alarm_state, crc FROM events WHERE seq=?",
                (now, why, seq),
            )
            self._stored_bytes -= self._delete_alarm(db, seq)
        db.execute(
            "DELETE FROM quarantine WHERE seq NOT IN "
            "(SELECT seq FROM quarantine ORDER BY seq DESC LIMIT ?)",
            (QUARANTINE_KEPT,),
        )

    def ack(self, seqs: Sequence[int]) -> list[HeldAlarm]:
        """The broker has them: delete them, except alarms, which wait for the platform's ack.

        Returns the alarms that became delivered. On a full disk that leaves no room at all,
        the events are published again later (a duplicate, never a loss) and nothing raises.
        """
        db = self._prepare(urgent=False)
        pending: list[tuple[int, str, str, str | None, int]] = []
        done: list[int] = []
        step = min(SQL_CHUNK, self.rows_per_transaction)
        db.execute("PRAGMA synchronous=NORMAL")  # losing a delete only means a duplicate
        try:
            for start in range(0, len(seqs), step):
                chunk = list(seqs[start : start + step])
                pending += self._write(db, functools.partial(self._ack_rows, chunk), "ack")
                done += chunk
        except StoreFullError:
            self.release(seqs[len(done) :], self.mono() + ACK_RETRY_ON_FULL_S)
        except BaseException:
            self.release(seqs[len(done) :], self.mono())  # not recorded: publish them again
            raise
        finally:
            # What was committed is done, whatever became of the rest.
            self._inflight.difference_update(done)
            now = self.mono()
            for seq, _, _, _, attempt in pending:
                wait = self.timing.ack_timeout_s if attempt == 1 else self.timing.resend_interval_s
                self._alarm_due[seq] = now + wait
            db.execute("PRAGMA synchronous=FULL")
        self._after_write(db)
        return [
            HeldAlarm(event_id, seq, kind, device, n) for seq, event_id, kind, device, n in pending
        ]

    def _ack_rows(
        self, chunk: list[int], db: sqlite3.Connection
    ) -> list[tuple[int, str, str, str | None, int]]:
        marks = ",".join("?" * len(chunk))
        pending: list[tuple[int, str, str, str | None, int]] = db.execute(
            "SELECT seq, id, kind, device, attempt FROM events "  # noqa: S608
            f"WHERE seq IN ({marks}) AND class='alarm' AND alarm_state='pending'",
            chunk,
        ).fetchall()
        self._stored_bytes -= db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM events "  # noqa: S608
            f"WHERE seq IN ({marks}) AND class!='alarm'",
            chunk,
        ).fetchone()[0]
        db.execute(
            f"DELETE FROM events WHERE seq IN ({marks}) AND class!='alarm'",  # noqa: S608
            chunk,
        )
        db.executemany(
            "UPDATE events SET alarm_state='delivered' WHERE seq=?", [(row[0],) for row in pending]
        )
        return pending

    def release(self, seqs: Iterable[int], retry_at: float) -> None:
        """Publication failed (refused by the broker): keep them and try again at ``retry_at``
        (seconds on the store's monotonic clock, ``mono()``)."""
        for seq in seqs:
            self._inflight.discard(seq)
            self._released[seq] = retry_at

    def release_all(self) -> None:
        """The link is gone: nothing is in flight any more; start again from the oldest."""
        self._inflight.clear()
        self._released.clear()
        self._cursor = 0

    # ----------------------------------------------------------------------------- alarms

    def promote_due_alarms(self) -> tuple[list[HeldAlarm], list[HeldAlarm]]:
        """Delivered alarms whose ack did not come in time go out again with attempt + 1.

        Returns (promoted, given_up): alarms older than the give-up window are dropped instead.
        Deadlines are monotonic, so a clock step cannot make an alarm look 24 h old; a delivered
        alarm found after a restart gets a fresh ack timeout.
        """
        db = self._require()
        now = self.mono()
        rows = db.execute(
            "SELECT seq, id, kind, device, attempt, created_at, mono_ns, boot_id, ts_synced "
            "FROM events WHERE class='alarm' AND alarm_state='delivered' ORDER BY seq"
        ).fetchall()
        due = []
        for row in rows:
            deadline = self._alarm_due.setdefault(row[0], now + self.timing.ack_timeout_s)
            if deadline <= now:
                due.append(row)
        if not due:
            return [], []
        db = self._prepare(urgent=True)
        try:
            promoted, given_up = self._write(
                db, functools.partial(self._promote_rows, due), "promote_due_alarms"
            )
        except StoreFullError:
            return [], []  # tried again at the next round; the alarms stay held meanwhile
        self._after_write(db, urgent=True)
        for alarm in [*promoted, *given_up]:
            self._alarm_due.pop(alarm.seq, None)
        for alarm in given_up:
            log.error("alarm_given_up", alarm_id=alarm.id, seq=alarm.seq, attempts=alarm.attempt)
        return promoted, given_up

    def _promote_rows(
        self, due: list[Any], db: sqlite3.Connection
    ) -> tuple[list[HeldAlarm], list[HeldAlarm]]:
        promoted: list[HeldAlarm] = []
        given_up: list[HeldAlarm] = []
        for seq, event_id, kind, device, attempt, created_at, mono_ns, boot_id, synced in due:
            if self._age_s(created_at, mono_ns, boot_id, bool(synced)) >= (
                self.timing.give_up_after_s
            ):
                self._stored_bytes -= self._delete_alarm(db, seq)
                given_up.append(HeldAlarm(event_id, seq, kind, device, attempt))
                continue
            db.execute(
                "UPDATE events SET alarm_state='pending', attempt=attempt+1 WHERE seq=?", (seq,)
            )
            promoted.append(HeldAlarm(event_id, seq, kind, device, attempt + 1))
        return promoted, given_up

    def _age_s(self, created_at: float, mono_ns: int, boot_id: str, synced: bool) -> float:
        """How long ago an event was made; 0 when that cannot be known safely."""
        if boot_id == self._boot_id:
            return (self._monotonic_ns() - mono_ns) / 1e9
        if synced and self._clock_synced():
            return self._now() - created_at
        return 0.0  # made in another boot with an unsynchronised clock: never give up early

    def _delete_alarm(self, db: sqlite3.Connection, seq: int) -> int:
        """Delete one event; return the bytes counted for it (0 for a damaged count)."""
        row = db.execute("SELECT size FROM events WHERE seq=?", (seq,)).fetchone()
        db.execute("DELETE FROM events WHERE seq=?", (seq,))
        return 0 if row is None or type(row[0]) is not int else row[0]

    def acknowledge_alarms(
        self, ids: Sequence[str], make_audit: Callable[[HeldAlarm], NewEvent] | None = None
    ) -> list[HeldAlarm]:
        """The platform acknowledged: forget these alarms. Returns those the store held.

        ``make_audit`` makes the audit event of each alarm found; it is stored in the same
        transaction that deletes the alarm, so that neither is on disk without the other.
        On a full disk room is made as for an alarm (``StoreFullError`` only if there is none).
        """
        db = self._prepare(urgent=True)
        found, last = self._write(
            db, functools.partial(self._acknowledge_rows, ids, make_audit), "acknowledge_alarms"
        )
        if last is not None:
            self._seqmark.committed(last)
        for alarm in found:
            self._inflight.discard(alarm.seq)
            self._released.pop(alarm.seq, None)
            self._alarm_due.pop(alarm.seq, None)
        self._after_write(db, urgent=True)
        return found

    def _acknowledge_rows(
        self,
        ids: Sequence[str],
        make_audit: Callable[[HeldAlarm], NewEvent] | None,
        db: sqlite3.Connection,
    ) -> tuple[list[HeldAlarm], int | None]:
        found: list[HeldAlarm] = []
        for event_id in ids:
            row = db.execute(
                "SELECT seq, kind, device, attempt FROM events WHERE id=? AND class='alarm'",
                (event_id,),
            ).fetchone()
            if row is None:
                continue
            seq, kind, device, attempt = row
            self._stored_bytes -= self._delete_alarm(db, seq)
            found.append(HeldAlarm(event_id, seq, kind, device, attempt))
        if make_audit is None or not found:
            return found, None
        audits = [make_audit(alarm) for alarm in found]
        _, _, last = self._insert_rows(audits, self._now(), True, db)  # as urgent as the alarm
        return found, last

    def _quarantined_alarm(self, db: sqlite3.Connection, seq: int) -> HeldAlarm:
        """What can be read of a quarantined alarm (its fields may be the damaged part)."""
        row = db.execute(
            "SELECT CAST(id AS BLOB), CAST(kind AS BLOB), CAST(device AS BLOB), attempt "
            "FROM quarantine WHERE seq=?",
            (seq,),
        ).fetchone()
        if row is None:
            return HeldAlarm("", seq, "alarm.button", None, 1)
        event_id, kind, device, attempt = (
            value.decode(errors="replace") if isinstance(value, bytes) else value for value in row
        )
        return HeldAlarm(
            str(event_id or ""),
            seq,
            str(kind or "alarm.button"),
            None if device is None else str(device),
            attempt if type(attempt) is int else 1,
        )

    def take_quarantined_alarms(self) -> list[HeldAlarm]:
        """The alarms quarantined as damaged since the last call (they will never be sent)."""
        taken, self._quarantined_alarms = self._quarantined_alarms, []
        return taken

    def held_alarms(self) -> list[HeldAlarm]:
        return [
            HeldAlarm(*row)
            for row in self._require().execute(
                "SELECT id, seq, kind, device, attempt FROM events WHERE class='alarm' ORDER BY seq"
            )
        ]

    # ----------------------------------------------------------------------------- clock

    def correct_timestamps(self, boot_id: str, wall_now: float, mono_now_ns: int) -> int:
        """Rewrite the unsynchronised timestamps taken during this boot from monotonic time."""
        db = self._require()
        rows = db.execute(
            "SELECT seq, mono_ns FROM events WHERE ts_synced=0 AND boot_id=?", (boot_id,)
        ).fetchall()
        if not rows:
            return 0
        db = self._prepare(urgent=False)
        step = self.rows_per_transaction  # each transaction keeps to its share of the WAL
        for start in range(0, len(rows), step):
            changes = [
                (ts_from_unix(wall), wall, seq)
                for seq, mono in rows[start : start + step]
                for wall in (wall_now - (mono_now_ns - mono) / 1e9,)
            ]
            self._write(db, functools.partial(_correct_rows, changes), "correct_timestamps")
        self._after_write(db)
        return len(rows)

    # ----------------------------------------------------------------------------- commands

    def command_result(self, cmd_id: str) -> str | None:
        row = (
            self._require().execute("SELECT result FROM commands WHERE id=?", (cmd_id,)).fetchone()
        )
        return None if row is None else str(row[0])

    def remember_command(self, cmd_id: str, result_json: str, keep: int = COMMAND_IDS_KEPT) -> None:
        """Remember a command's result; the oldest ids beyond the ``keep`` newest are forgotten.

        By arrival order, never by the clock: a clock step must not make a command run twice.
        """
        db = self._prepare(urgent=False)
        self._write(
            db,
            functools.partial(_remember_command, cmd_id, result_json, self._now(), keep),
            "remember_command",
        )
        self._after_write(db)

    # ----------------------------------------------------------------------------- figures

    def stats(self) -> StoreStats:
        db = self._require()
        queued = {
            klass: count
            for klass, count in db.execute("SELECT class, COUNT(*) FROM events GROUP BY class")
        }
        oldest = db.execute("SELECT ts FROM events ORDER BY seq LIMIT 1").fetchone()
        held = sum(1 for _ in db.execute("SELECT 1 FROM events WHERE class='alarm'"))
        return StoreStats(
            queued=queued,
            oldest_queued_ts=None if oldest is None else str(oldest[0]),
            stored_bytes=self._stored_bytes,
            last_seq=self._last_seq(),
            alarms_held=held,
        )


def _correct_rows(changes: list[tuple[str, float, int]], db: sqlite3.Connection) -> None:
    db.executemany("UPDATE events SET ts=?, ts_synced=1, created_at=? WHERE seq=?", changes)


def _remember_command(
    cmd_id: str, result_json: str, now: float, keep: int, db: sqlite3.Connection
) -> None:
    db.execute("DELETE FROM commands WHERE id=?", (cmd_id,))
    newest = db.execute(
        "INSERT INTO commands (id, received_at, result) VALUES (?, ?, ?)",
        (cmd_id, now, result_json),
    ).lastrowid  # n, the arrival order
    assert newest is not None
    db.execute("DELETE FROM commands WHERE n<=?", (newest - keep,))


def _set_last_seq(seq: int, db: sqlite3.Connection) -> None:
    db.execute("UPDATE meta SET value=? WHERE key='last_seq'", (seq,))


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error so no transaction is left open."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


# ----------------------------------------------------------------------------- disk budget

QUOTA_MIN_BYTES = 1024 * 1024  # outbox.max_bytes: the database's share is then 3/4 of it
ALARM_RESERVE_MIN_BYTES = 64 * 1024
ALARM_RESERVE_MAX_BYTES = 4 * 1024 * 1024
ALARM_HEADROOM_BYTES = 64 * 1024  # free pages in the database that telemetry leaves to alarms
WAL_MIN_BYTES = 128 * 1024
WAL_MAX_BYTES = 32 * 1024 * 1024
WAL_FRAME_BYTES = 4096 + 24
SHM_BLOCK_BYTES = 32 * 1024  # of the -shm index, per 4096 WAL frames
SIDECAR_BYTES = 4096  # the seq mark and its temporary copy
DB_BYTES_PER_ROW_BYTE = 2  # database pages per byte counted for a row (indexes, page slack)
FULL_EVICT_SLACK_BYTES = 16 * 1024
FULL_ATTEMPTS = 3
ACK_RETRY_ON_FULL_S = 5.0
MAX_ROWS_PER_TRANSACTION = 5000
WAL_BYTES_PER_ROW = 512  # what one more row adds to a transaction's WAL (430 B measured)
_SQLITE_FULL = 13


@dataclass(frozen=True, slots=True)
class DiskBudget:
    """How ``outbox.max_bytes`` is shared out between the outbox's files."""

    max_bytes: int
    reserve: int  # the alarm reserve file
    wal: int  # the -wal file
    shm: int  # the -shm index
    db: int  # live pages of the database file

    @classmethod
    def of(cls, max_bytes: int) -> DiskBudget:
        """Share out ``max_bytes``; ``ValueError`` below ``QUOTA_MIN_BYTES``, where the rows
        would get too small a share (every write of other events would evict them all)."""
        if max_bytes < QUOTA_MIN_BYTES:
            raise ValueError(
                f"an outbox quota of {max_bytes} bytes is below the minimum of {QUOTA_MIN_BYTES}"
            )
        reserve = min(ALARM_RESERVE_MAX_BYTES, max(ALARM_RESERVE_MIN_BYTES, max_bytes // 16))
        wal = min(WAL_MAX_BYTES, max(WAL_MIN_BYTES, max_bytes // 8))
        shm = SHM_BLOCK_BYTES * (1 + wal // WAL_FRAME_BYTES // 4096)
        return cls(max_bytes, reserve, wal, shm, max_bytes - reserve - wal - shm - SIDECAR_BYTES)

    @property
    def rows_per_transaction(self) -> int:
        """So that one transaction adds at most a quarter of the WAL's share, and of the
        reserve (what a checkpoint on a full disk may need to grow the database by)."""
        share = min(self.wal, self.reserve) // 4
        return max(16, min(MAX_ROWS_PER_TRANSACTION, share // WAL_BYTES_PER_ROW))


class _AlarmReserve:
    """Disk space kept for alarms: a file beside the outbox, allocated and fsynced, given back
    when the disk is full so that the WAL and the database can grow, made again once there is
    room. ``size`` is what the quota gives it, but never more than half of what is free: a
    smaller one is better than none. After a full disk it is made again only once it can be
    as large as it was (space has really returned)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._held: int | None = None
        self._given_back = ALARM_RESERVE_MIN_BYTES  # the size it had when it was given back

    @property
    def held(self) -> int:
        """Bytes held (0: none)."""
        if self._held is None:
            try:
                found = self.path.stat().st_size
            except OSError:
                found = 0
            self._held = found if ALARM_RESERVE_MIN_BYTES <= found <= self.size else 0
        return self._held

    def make(self, *, smaller: bool) -> bool:
        free = _free_bytes(self.path.parent)
        size = min(self.size, free // 2 // ALARM_RESERVE_MIN_BYTES * ALARM_RESERVE_MIN_BYTES)
        if size < (ALARM_RESERVE_MIN_BYTES if smaller else self._given_back):
            return False  # no room: tried again at the next write
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.ftruncate(fd, 0)
                _allocate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self._held = 0
            log.warning("alarm_reserve_not_made", path=str(self.path), error=str(exc))
            return False
        self._held = size
        log.info("alarm_reserve_made", path=str(self.path), bytes=size)
        return True

    def release(self) -> bool:
        """Give the space back; True if there was a reserve to give."""
        self._given_back = self.held or self._given_back
        self._held = 0
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


class _DiskGuard:
    """What the store keeps to bound its files and to write on a full disk (store thread)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.budget = DiskBudget.of(max_bytes)
        self.wal_path = Path(f"{path}-wal")
        self.reserve = _AlarmReserve(path.with_name(path.name + ".reserve"), self.budget.reserve)
        self.full_cap: int | None = None  # the disk is full: the database file may not grow
        self.page_size = 4096
        self.prepared: sqlite3.Connection | None = None
        self.lock = threading.Lock()  # one checkpoint at a time
        self.wake_checkpointer: Callable[[], None] = lambda: None


def _allocate(fd: int, size: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        block = bytes(64 * 1024)
        for offset in range(0, size, len(block)):
            os.pwrite(fd, block[: size - offset], offset)


def _free_bytes(directory: Path) -> int:
    try:
        vfs = os.statvfs(directory)
    except OSError:
        return 0
    return vfs.f_bavail * vfs.f_frsize


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == _SQLITE_FULL


def _row_bytes(event: NewEvent) -> int:
    return len(event.data_json) + EVENT_OVERHEAD_BYTES


class _Checkpointer:
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


class _StoreWorker:
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
        self._worker = _StoreWorker()
        self._checkpointer: _Checkpointer | None = None
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
        self._checkpointer = _Checkpointer(self.store.path, self.store.checkpoint_lock)
        self.store.set_checkpoint_waker(self._checkpointer.wake)
        return report

    async def put(self, event: NewEvent) -> None:
        """Store an event. An alarm is on disk (fsync) on return; others within the window.

        Only an alarm that cannot be stored raises; other events wait in the buffer.
        """
        if self._closed:
            raise StoreError("the outbox is closed")
        if event.is_alarm:
            await self._commit_alarm(event)
            return
        self._buffer.append(event)
        if len(self._buffer) > self.buffer_limit:
            self._drop_oldest()
        if self._failing:
            return  # the retry timer commits the buffer
        if self.group_commit_s == 0 or len(self._buffer) >= self.max_buffered:
            await self._commit_logged()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.group_commit_s, self._on_timer)

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

    async def _commit_alarm(self, alarm: NewEvent) -> None:
        """Commit the alarm alone, ahead of queued telemetry work (alarms are their own class, so
        this reorders nothing within a class; the buffer keeps its normal path and order)."""
        self.alarms_arriving += 1
        try:
            await self._insert([alarm])
        finally:
            self.alarms_arriving -= 1

    async def _insert(self, batch: list[NewEvent], report: int = 0) -> None:
        """Run one insert to its end even when the caller is cancelled meanwhile: the store
        thread commits or rolls back regardless, and only its real outcome decides what happens
        to the batch (a cancelled caller must not make committed events be stored twice).
        ``report``: a count of dropped events, reported with the batch."""
        urgent = bool(batch) and all(event.is_alarm for event in batch)
        rows = batch
        if report:
            self._reporting = True
            rows = [self.store.dropped_event(report, [], "buffer_full"), *batch]
        future = asyncio.wrap_future(self._worker.submit(self.store.insert, (rows,), urgent=urgent))
        future.add_done_callback(functools.partial(self._inserted, batch, report))
        await asyncio.shield(future)

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
                self.alarm_stored.set()
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
