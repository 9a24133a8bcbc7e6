"""Damaged rows: the checksum stored with each event, the check of every row as it is claimed,
and the quarantine table that keeps what could not be sent."""

from __future__ import annotations

import json
import re
import sqlite3
import zlib
from collections.abc import Sequence
from typing import Any

from gateway.core.events import KIND_DATA, TS_PATTERN
from gateway.store.alarms import HeldAlarm
from gateway.store.database import delete_event

WIRE_COLUMNS = "seq, id, kind, device, data, ts, ts_synced, attempt"  # StoredEvent's fields
CLAIM_COLUMNS = f"{WIRE_COLUMNS}, crc"
DAMAGED_ROW_REASON = "event_corrupt"  # gateway.dropped reason for a quarantined row
QUARANTINE_KEPT = 1000  # damaged rows kept for inspection, the newest
DAMAGED_PER_CLAIM = 500  # a claim stops there: their gateway.dropped stays small
_TS = re.compile(TS_PATTERN, re.ASCII)  # [0-9] only, as JSON Schema reads \d
_EVENT_ID = re.compile(r"[0-9A-Za-z_.:-]{1,128}")  # UUIDv7 (or ULID): nothing JSON must escape


def row_crc(event_id: str, kind: str, device: str | None, data: str) -> int:
    """The checksum stored with an event: CRC-32 of what goes raw into its wire JSON (the
    timestamp is checked by its pattern instead, as clock correction rewrites it)."""
    text = f"{event_id}\x1f{kind}\x1f{chr(0) if device is None else device}\x1f{data}"
    return zlib.crc32(text.encode())


def row_damage(row: Sequence[Any]) -> str | None:
    """Why a stored row (``CLAIM_COLUMNS``) cannot go on the wire as it is; None when intact.

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


def lenient_text(raw: bytes) -> str:
    """Text as stored, bytes that are not UTF-8 kept as surrogates (which ``row_damage`` finds)."""
    return raw.decode("utf-8", "surrogateescape")


def quarantine_rows(
    damaged: list[tuple[int, str, bool]], now: float, db: sqlite3.Connection
) -> int:
    """Move damaged rows (seq, why, alarm) to the quarantine table, keeping its newest
    ``QUARANTINE_KEPT``; return the bytes freed in the events table."""
    freed = 0
    for seq, why, _ in damaged:
        db.execute(
            "INSERT OR REPLACE INTO quarantine (seq, quarantined_at, why, id, kind, "
            "class, device, data, ts, ts_synced, attempt, alarm_state, crc) "
            "SELECT seq, ?, ?, id, kind, class, device, data, ts, ts_synced, attempt, "
            "alarm_state, crc FROM events WHERE seq=?",
            (now, why, seq),
        )
        freed += delete_event(db, seq)
    db.execute(
        "DELETE FROM quarantine WHERE seq NOT IN "
        "(SELECT seq FROM quarantine ORDER BY seq DESC LIMIT ?)",
        (QUARANTINE_KEPT,),
    )
    return freed


def quarantined_alarm(db: sqlite3.Connection, seq: int) -> HeldAlarm:
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


def trim_quarantine(db: sqlite3.Connection) -> int:
    """Delete the oldest rows of the quarantine, a few; return how many went (0: it is empty)."""
    return int(
        db.execute(
            "DELETE FROM quarantine WHERE seq IN (SELECT seq FROM quarantine ORDER BY seq LIMIT 64)"
        ).rowcount
    )
