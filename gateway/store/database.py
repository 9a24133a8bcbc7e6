"""The outbox database file: connection settings, integrity check and migrations at opening,
a damaged file moved aside, and the transactions every write runs in."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import structlog

from gateway.core.errors import StoreCorruptError, StoreError, StoreVersionError
from gateway.store.files import make_private

log = structlog.get_logger("gateway.store.database")

_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26  # primary result codes that mean a damaged file


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("gateway.store") / "schema"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text()))
    return sorted(found)


SCHEMA_VERSION = max(version for version, _ in _migrations())


@dataclass(slots=True)
class OpenReport:
    """What happened when the store was opened."""

    moved_aside: Path | None = None
    lost_ranges: list[tuple[int, int]] = field(default_factory=list)
    loss_reason: str | None = None
    migrated_from: int | None = None


def make_files_private(path: Path) -> None:
    """Create the database file 0600; tighten it and an earlier -wal/-shm (an older
    version's, another tool's) before any connection holds locks on them. SQLite gives a
    new -wal and -shm the database file's mode."""
    try:
        for suffix in ("", "-wal", "-shm"):
            make_private(Path(f"{path}{suffix}"), create=suffix == "")
    except OSError as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA foreign_keys=ON")
    # Checkpoints run on a thread of their own (worker.Checkpointer), never inside a commit (an
    # alarm would wait behind copying megabytes into the database file). The store thread
    # checkpoints only before or after a write of other events, without waiting for the
    # checkpointer unless the WAL or the database's growth is at its cap (``DiskGuard.prepare``).
    db.execute("PRAGMA wal_autocheckpoint=0")
    return db


def open_checked(path: Path) -> tuple[sqlite3.Connection, int | None]:
    """Open, check and migrate; return the connection and the schema version migrated from
    (0: a new file; None: none was needed)."""
    try:
        db = _connect(path)
        check = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorcode", None) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            raise StoreCorruptError(f"cannot open: {exc}") from exc
        # locked, unreadable, I/O error: not damage. Never move a healthy store aside.
        raise StoreError(f"cannot open {path}: {exc}") from exc
    if check != "ok":
        db.close()
        raise StoreCorruptError(f"integrity check failed: {check}")
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        db.close()
        raise StoreVersionError(
            f"{path} has schema version {version}, newer than this carebed's "
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
    return db, migrated_from


def move_aside(path: Path, now: float, why: str) -> tuple[Path, int | None]:
    """Keep a damaged database for inspection; return where it went and its last seq."""
    last = None
    with contextlib.suppress(sqlite3.Error):
        probe = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            last = int(probe.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])
        finally:
            probe.close()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.replace(Path(f"{target}{suffix}"))
    log.error("store_moved_aside", path=str(path), moved_to=str(target), why=why)
    return target, last


def last_seq(db: sqlite3.Connection) -> int:
    row = db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
    return int(row[0])


def raise_watermark(seq: int, db: sqlite3.Connection) -> None:
    """``meta.last_seq`` is the watermark: every seq up to it is on disk, delivered or
    reported. It only moves up."""
    db.execute("UPDATE meta SET value=? WHERE key='last_seq' AND value<?", (seq, seq))


def db_top(db: sqlite3.Connection) -> int:
    """``meta.db_top``: the highest seq ever committed to the file, in a row or a report."""
    row = db.execute("SELECT value FROM meta WHERE key='db_top'").fetchone()
    return int(row[0])


def raise_db_top(seq: int, db: sqlite3.Connection) -> None:
    """Raise ``meta.db_top`` to ``seq`` (in the transaction that stores it). It only moves up."""
    db.execute("UPDATE meta SET value=? WHERE key='db_top' AND value<?", (seq, seq))


def top_seq(db: sqlite3.Connection) -> int:
    """The highest seq the file knows of: the watermark, a row, a quarantined row."""
    row = db.execute(
        "SELECT MAX((SELECT value FROM meta WHERE key='last_seq'), "
        "COALESCE((SELECT MAX(seq) FROM events), 0), "
        "COALESCE((SELECT MAX(seq) FROM quarantine), 0))"
    ).fetchone()
    return int(row[0])


def seqs_above(db: sqlite3.Connection, seq: int) -> list[int]:
    """The seqs of rows (quarantined ones included) above ``seq``, in order."""
    return [
        int(found)
        for (found,) in db.execute(
            "SELECT seq FROM events WHERE seq>? UNION SELECT seq FROM quarantine WHERE seq>? "
            "ORDER BY 1",
            (seq, seq),
        )
    ]


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
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


def delete_event(db: sqlite3.Connection, seq: int) -> int:
    """Delete one event; return the bytes counted for it (0 for a damaged count)."""
    row = db.execute("SELECT size FROM events WHERE seq=?", (seq,)).fetchone()
    db.execute("DELETE FROM events WHERE seq=?", (seq,))
    return 0 if row is None or type(row[0]) is not int else row[0]
