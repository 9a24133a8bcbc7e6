"""Clock correction: once the clock is synchronised, the timestamps taken before it in this boot
are recomputed from the monotonic time each event was made at."""

from __future__ import annotations

import sqlite3

from gateway.core.clock import ts_from_unix


def unsynced(db: sqlite3.Connection, boot_id: str) -> list[tuple[int, int]]:
    """(seq, mono_ns) of the waiting events of ``boot_id`` stamped with an unsynchronised clock."""
    return db.execute(
        "SELECT seq, mono_ns FROM events WHERE ts_synced=0 AND boot_id=?", (boot_id,)
    ).fetchall()


def corrections(
    rows: list[tuple[int, int]], wall_now: float, mono_now_ns: int
) -> list[tuple[str, float, int]]:
    """(ts, wall time, seq) of each row, from the wall time now and the monotonic time now."""
    return [
        (ts_from_unix(wall), wall, seq)
        for seq, mono in rows
        for wall in (wall_now - (mono_now_ns - mono) / 1e9,)
    ]


def correct_rows(changes: list[tuple[str, float, int]], db: sqlite3.Connection) -> None:
    db.executemany("UPDATE events SET ts=?, ts_synced=1, created_at=? WHERE seq=?", changes)
