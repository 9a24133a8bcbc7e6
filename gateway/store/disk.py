"""The outbox's disk space: its quota shared out between its files, the alarm reserve, and how
writes go on when the disk is full (early checkpoints, the database capped at its size)."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.core.events import NewEvent
from gateway.store.files import fsync_dir

log = structlog.get_logger("gateway.store.disk")

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
EVENT_OVERHEAD_BYTES = 160  # envelope bytes around data, counted against the quota
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


def row_bytes(event: NewEvent) -> int:
    """The bytes an event counts for against the quota."""
    return len(event.data_json) + EVENT_OVERHEAD_BYTES


class AlarmReserve:
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
            fsync_dir(self.path.parent)
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


class DiskGuard:
    """What the store keeps to bound its files and to write on a full disk (store thread)."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.budget = DiskBudget.of(max_bytes)
        self.wal_path = Path(f"{path}-wal")
        self.reserve = AlarmReserve(path.with_name(path.name + ".reserve"), self.budget.reserve)
        self.full_cap: int | None = None  # the disk is full: the database file may not grow
        self.page_size = 4096
        self.prepared: sqlite3.Connection | None = None
        self.lock = threading.Lock()  # one checkpoint at a time
        self._checkpointer_seen = False  # at work at the last write of other events
        self.wake_checkpointer: Callable[[], None] = lambda: None

    def make_reserve(self) -> bool:
        """Create the alarm reserve if it is missing and there is room; True if it is held."""
        if self.reserve.held:
            return True
        # After a full disk, only once there is room for all of it: space has really returned.
        if not self.reserve.make(smaller=self.full_cap is None):
            return False
        if self.full_cap is not None:
            self.full_cap = None
            log.info("disk_space_returned", reserve_bytes=self.reserve.held)
        return True

    # The quota (outbox.max_bytes) bounds the files, not only the rows: the database may hold
    # ``budget.db`` bytes of live pages (freed pages are reused, so the file stops growing
    # there), the WAL is checkpointed and restarted before it passes ``budget.wal``, and the
    # rest is the alarm reserve, the -shm index and the seq mark. On a full disk the database
    # may not grow at all (``full_cap``). Either way telemetry leaves ALARM_HEADROOM_BYTES of
    # free pages for alarms, which never evict.

    def db_limit(self) -> int:
        limit = self.budget.db if self.full_cap is None else min(self.budget.db, self.full_cap)
        return limit - min(ALARM_HEADROOM_BYTES, max(limit, 0) // 8)

    def live_bytes(self, db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self.page_size

    def evict_slack(self) -> int:
        """How far below its limit an eviction takes the database: a tenth of the quota (at
        most a quarter of the WAL's share, so that its transaction fits the WAL); on a full
        disk only a little, since every deleted page is written to the WAL."""
        if self.full_cap is not None:
            return FULL_EVICT_SLACK_BYTES
        return min(max(self.db_limit(), 0) // 10, self.budget.wal // 8)

    # A full disk (ENOSPC, SQLITE_FULL). In WAL mode every write, a DELETE included, appends to
    # the WAL, and a checkpoint grows the database file by the pages the WAL added. So: keep the
    # WAL and the pending growth small at all times (checkpointed early), keep a reserve file,
    # and when a write finds the disk full give the reserve back, checkpoint (the WAL then
    # restarts at its beginning and needs no new space), cap the database at its size (new
    # telemetry evicts old) and try again.

    def prepare(self, db: sqlite3.Connection, *, urgent: bool) -> None:
        """Before a write: the connection's settings, the reserve, and (not for alarms) a large
        WAL or growth is checkpointed now: waiting for the checkpointer only at their cap, where
        one more transaction (rows and their eviction) could pass the WAL's share or the reserve;
        below it, only if the checkpointer is not at it already (an alarm may be queued).

        The checkpointer copies the WAL off this thread, but while the store keeps writing its
        copy never lets the WAL restart (a transaction begun meanwhile appends to it), and the
        WAL would grow to the quarter of its share, where this thread copies megabytes (tens of
        milliseconds that an alarm queued behind the call in progress waits for). So once the
        checkpointer has been seen at work and is done, this thread copies what was appended
        meanwhile (little), and the next transaction restarts the WAL."""
        if self.prepared is not db:
            # A restarted WAL is cut back to this: past it, the WAL holds that much since.
            db.execute(f"PRAGMA journal_size_limit={self.budget.wal // 8}")
            self.page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            self.prepared = db
        if not urgent and not self.reserve.held:
            self.make_reserve()  # a statvfs, unless there is room; never on an alarm's time
        if not urgent:
            wal, growth = self.pressure(db)
            held = self.reserve.held  # the growth it covers (none: every write checkpointed)
            full = self.full_cap is not None  # the WAL must fit in the file it already has
            if full or wal > self.budget.wal * 5 // 8 or growth > held * 3 // 4:
                self.checkpoint(db)
            elif wal > self.budget.wal // 4 or growth > held // 2:
                self.checkpoint(db, wait=False)
            elif self._checkpointer_done() and wal > self.budget.wal // 8:
                self.checkpoint(db, wait=False)  # what the checkpointer left: the WAL restarts

    def _checkpointer_done(self) -> bool:
        """The checkpointer was at work at the last check and is done now."""
        busy = self.lock.locked()
        done, self._checkpointer_seen = self._checkpointer_seen and not busy, busy
        return done

    def after_write(self, db: sqlite3.Connection, *, urgent: bool = False) -> None:
        wal, growth = self.pressure(db)
        if not urgent and growth > 0 and not self.reserve.held:
            self.checkpoint(db, wait=False)  # else the next write's ``prepare`` waits for it
        elif (
            self.full_cap is not None
            or wal > self.budget.wal // 8
            or growth > self.reserve.held // 4
        ):
            self.wake_checkpointer()

    def pressure(self, db: sqlite3.Connection) -> tuple[int, int]:
        """(bytes in the WAL file, bytes the database file grows by at the next checkpoint)."""
        try:
            wal = os.stat(self.wal_path).st_size
        except FileNotFoundError:
            wal = 0
        try:
            on_disk = os.stat(self.path).st_size
        except FileNotFoundError:
            on_disk = 0
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        return wal, max(0, pages * self.page_size - on_disk)

    def checkpoint(
        self, db: sqlite3.Connection, mode: str = "PASSIVE", *, wait: bool = True
    ) -> bool:
        """A checkpoint on the store's own connection: nothing else writes meanwhile, so it
        completes and the next transaction restarts the WAL at its beginning. After a failed
        commit SQLite does not restart it by itself: ``RESTART`` makes sure it does. Without
        ``wait``, nothing is done while the checkpointer is at work."""
        if not self.lock.acquire(blocking=wait):
            return False
        try:
            busy = db.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("checkpoint_failed", error=str(exc), by="store")
            return False
        finally:
            self.lock.release()
        return not busy

    def make_room(
        self, db: sqlite3.Connection, exc: BaseException, what: str, attempt: int
    ) -> None:
        """A write found the disk full: cap the database, give the reserve back, checkpoint."""
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        first = self.full_cap is None
        self.full_cap = pages * self.page_size  # from now on the database may not grow
        released = self.reserve.release()
        if first or released:
            log.error(
                "disk_full",
                path=str(self.path),
                write=what,
                error=str(exc),
                reserve_released=released,
                database_bytes=self.full_cap,
            )
        # RESTART: the next transaction writes the WAL from its beginning, in space it has.
        # If that was not enough, TRUNCATE gives the WAL's blocks back to the filesystem: the
        # seq mark may need one (a new file every 4096 seqs), the WAL grows again into the rest.
        self.checkpoint(db, "RESTART" if attempt == 1 else "TRUNCATE")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == _SQLITE_FULL


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
