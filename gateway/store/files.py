"""The store's files on disk: mode 0600, durable replacement, the seq mark beside the database."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import structlog

log = structlog.get_logger("gateway.store.files")

SEQ_RESERVE_BLOCK = 4096
PRIVATE_FILE_MODE = 0o600  # the outbox, its -wal/-shm and seq mark: events name seniors' devices


class SeqMark:
    """A sidecar file: an upper bound of every seq ever handed out, and how the store was left.

    The bound is written (with fsync) a block ahead of the seqs handed out, before any seq of
    the block is used, so that seqs of events kept in memory, and a store that has to be moved
    aside, never make the gateway reuse a sequence number. Beside it: whether the store was
    closed cleanly, with its exact last seq then, or is open (a crash leaves it so: every seq up
    to the bound may then have been handed out). The mark is not written per commit.
    """

    OPEN, CLOSED = "open  ", "closed"  # fixed width: the record can be rewritten in place

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reserved = 0
        self.state: str | None = None  # None: no mark, or one from before the state was kept
        self.last = 0
        with contextlib.suppress(OSError, ValueError):
            fields = path.read_text().split()
            self.reserved = int(fields[0]) if fields else 0
            if len(fields) == 3 and f"{fields[1]:6}" in (self.OPEN, self.CLOSED):
                self.state, self.last = f"{fields[1]:6}", int(fields[2])

    def _record(self, reserved: int | None = None) -> bytes:
        bound = self.reserved if reserved is None else reserved
        return f"{bound:020d} {self.state or self.OPEN} {self.last:020d}\n".encode()

    def ensure(self, seq: int) -> None:
        """Make ``seq`` covered by the bound on disk, a block ahead; the bound in memory moves
        only once it is written (a failed write is tried again by the next call)."""
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
        except OSError as exc:  # a full disk must not stop the gateway: the state at least is
            # noted in place (no new block is needed), so that a crash is not taken for a close
            log.warning("seq_mark_not_written", path=str(self.path), error=str(exc))
            self._note_in_place()

    def _note_in_place(self) -> None:
        try:
            fd = open_private(self.path, os.O_WRONLY | os.O_CREAT)
            try:
                os.pwrite(fd, self._record(), 0)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("seq_mark_not_written", path=str(self.path), error=str(exc))

    def closed(self, last: int) -> None:
        """The store was closed cleanly with ``last`` as its exact last seq."""
        self.state, self.last = self.CLOSED, last
        self._replace()

    def _replace(self, reserved: int | None = None) -> None:
        """Write the whole record durably: a temporary file, fsync, rename, fsync the folder."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, self._record(reserved))
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)
        fsync_dir(self.path.parent)


def open_private(path: Path, flags: int) -> int:
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


def make_private(path: Path, *, create: bool = False) -> None:
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


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
