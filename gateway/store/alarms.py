"""The alarms the outbox holds until the platform acknowledges them: resent when no
acknowledgement comes in time, given up after a day, forgotten when acknowledged; and the key
each alarm was raised under, so that a producer's repeat is not a second alarm."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.store.database import delete_event

# At least as long as any producer repeats an alarm under its key (the watch remembers its alerts
# for a day: drivers.watch.store.ALERT_MEMORY_S); a repeat after that is a second alarm.
ALARM_KEY_KEPT_S = 24 * 3600.0


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


class ResendSchedule:
    """When each delivered alarm is resent if the platform has not acknowledged it.

    In memory only, on the monotonic clock (seconds): a restart starts it afresh. The store
    thread owns it, with the connection passed in.
    """

    def __init__(
        self,
        timing: AlarmTiming,
        *,
        now: Callable[[], float] = time.time,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
        boot_id: str = "",
        clock_synced: Callable[[], bool] = lambda: True,
    ) -> None:
        self.timing = timing
        self._now = now
        self._monotonic_ns = monotonic_ns
        self._boot_id = boot_id
        self._clock_synced = clock_synced
        self._due: dict[int, float] = {}  # delivered alarm seq -> when to resend

    def __len__(self) -> int:
        return len(self._due)

    def delivered(
        self, alarms: Sequence[tuple[int, str, str, str | None, int]], now: float
    ) -> None:
        """The broker has these alarms (seq, id, kind, device, attempt): wait for the platform."""
        for seq, _, _, _, attempt in alarms:
            wait = self.timing.ack_timeout_s if attempt == 1 else self.timing.resend_interval_s
            self._due[seq] = now + wait

    def forget(self, seq: int) -> None:
        self._due.pop(seq, None)

    def due(self, db: sqlite3.Connection, now: float) -> list[Any]:
        """The delivered alarms whose resend is due; a delivered alarm found after a restart
        gets a fresh ack timeout."""
        rows = db.execute(
            "SELECT seq, id, kind, device, attempt, created_at, mono_ns, boot_id, ts_synced "
            "FROM events WHERE class='alarm' AND alarm_state='delivered' ORDER BY seq"
        ).fetchall()
        due = []
        for row in rows:
            deadline = self._due.setdefault(row[0], now + self.timing.ack_timeout_s)
            if deadline <= now:
                due.append(row)
        return due

    def promote_rows(
        self, due: list[Any], db: sqlite3.Connection
    ) -> tuple[list[HeldAlarm], list[HeldAlarm], int]:
        """Put ``due`` back to pending with attempt + 1, or delete those past the give-up window;
        return (promoted, given_up, bytes freed)."""
        promoted: list[HeldAlarm] = []
        given_up: list[HeldAlarm] = []
        freed = 0
        for seq, event_id, kind, device, attempt, created_at, mono_ns, boot_id, synced in due:
            if self._age_s(created_at, mono_ns, boot_id, bool(synced)) >= (
                self.timing.give_up_after_s
            ):
                freed += delete_event(db, seq)
                given_up.append(HeldAlarm(event_id, seq, kind, device, attempt))
                continue
            db.execute(
                "UPDATE events SET alarm_state='pending', attempt=attempt+1 WHERE seq=?", (seq,)
            )
            promoted.append(HeldAlarm(event_id, seq, kind, device, attempt + 1))
        return promoted, given_up, freed

    def _age_s(self, created_at: float, mono_ns: int, boot_id: str, synced: bool) -> float:
        """How long ago an event was made; 0 when that cannot be known safely."""
        if boot_id == self._boot_id:
            return (self._monotonic_ns() - mono_ns) / 1e9
        if synced and self._clock_synced():
            return self._now() - created_at
        return 0.0  # made in another boot with an unsynchronised clock: never give up early


def acknowledged_rows(ids: Sequence[str], db: sqlite3.Connection) -> tuple[list[HeldAlarm], int]:
    """Delete the alarms of these ids; return those found and the bytes freed."""
    found: list[HeldAlarm] = []
    freed = 0
    for event_id in ids:
        row = db.execute(
            "SELECT seq, kind, device, attempt FROM events WHERE id=? AND class='alarm'",
            (event_id,),
        ).fetchone()
        if row is None:
            continue
        seq, kind, device, attempt = row
        freed += delete_event(db, seq)
        found.append(HeldAlarm(event_id, seq, kind, device, attempt))
    return found, freed


def read_held_alarms(db: sqlite3.Connection) -> list[HeldAlarm]:
    return [
        HeldAlarm(*row)
        for row in db.execute(
            "SELECT id, seq, kind, device, attempt FROM events WHERE class='alarm' ORDER BY seq"
        )
    ]


def alarm_under_key(db: sqlite3.Connection, key: str) -> str | None:
    """The id of the alarm stored under ``key`` (within ``ALARM_KEY_KEPT_S``), if any."""
    row = db.execute("SELECT alarm_id FROM alarm_keys WHERE key=?", (key,)).fetchone()
    return None if row is None else str(row[0])


def remember_alarm_key(key: str, alarm_id: str, now: float, db: sqlite3.Connection) -> None:
    """In the alarm's transaction: ``key`` names it from now on; the keys older than
    ``ALARM_KEY_KEPT_S`` go (or that lie that far ahead: stored before the clock was set back)."""
    db.execute(
        "DELETE FROM alarm_keys WHERE created_at < ? OR created_at > ?",
        (now - ALARM_KEY_KEPT_S, now + ALARM_KEY_KEPT_S),
    )
    db.execute(
        "INSERT INTO alarm_keys (key, alarm_id, created_at) VALUES (?, ?, ?)", (key, alarm_id, now)
    )
