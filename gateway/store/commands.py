"""The command ids already run and their results, so that a command sent twice runs once."""

from __future__ import annotations

import sqlite3

COMMAND_IDS_KEPT = 10_000  # command ids remembered for idempotency, the newest


def command_result(db: sqlite3.Connection, cmd_id: str) -> str | None:
    row = db.execute("SELECT result FROM commands WHERE id=?", (cmd_id,)).fetchone()
    return None if row is None else str(row[0])


def remember_command(
    cmd_id: str, result_json: str, now: float, keep: int, db: sqlite3.Connection
) -> None:
    """Remember a command's result; the oldest ids beyond the ``keep`` newest are forgotten.

    By arrival order, never by the clock: a clock step must not make a command run twice.
    """
    db.execute("DELETE FROM commands WHERE id=?", (cmd_id,))
    newest = db.execute(
        "INSERT INTO commands (id, received_at, result) VALUES (?, ?, ?)",
        (cmd_id, now, result_json),
    ).lastrowid  # n, the arrival order
    assert newest is not None
    db.execute("DELETE FROM commands WHERE n<=?", (newest - keep,))
