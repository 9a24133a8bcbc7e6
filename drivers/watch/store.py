"""Which watches belong to this home, and the care alerts they raised: a small durable file.

The watch notifies an alert again, with the same ``alert_seq``, after every reconnection until the
gateway writes Alert Confirm for it. The alerts raised are kept here, across restarts, with what the
watch has been told (and still has to be told), so that a repeat is never a second alarm and the
watch hears "help is on the way" even when the platform's acknowledgement came while it was away.

``alert_seq`` is one byte and restarts when the watch does, so a remembered alert matches a new
notification only when it could really be a repeat: the same ``alert_seq``, event and
``watch_time``, raised less than ``ALERT_MEMORY_S`` ago, not yet acknowledged by the platform, and
never confirmed to the watch (or confirmed less than ``CONFIRMED_REPEAT_S`` ago: the confirm's
answer may have been lost with the link). Anything else is a new alert: when in doubt the gateway
raises a second alarm rather than swallow one.

Watches paired by ``carebed watch pair`` are listed here; those of the configuration file are not
(their alerts are kept all the same).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from drivers.watch.codec import CareEvent
from drivers.watch.errors import WatchListError
from gateway.core.files import StateFile

ALERT_MEMORY_S = 24 * 3600.0  # as long as the platform's alarm give-up window
CONFIRMED_REPEAT_S = 60.0
MAX_ALERTS_PER_WATCH = 64
ALARM_EVENTS = (CareEvent.SOS, CareEvent.FALL)  # their alarms wait for the acknowledgement
FALL_KEPT_S = 600.0  # the wearer's cancel of a fall names it


@dataclass(slots=True)
class RaisedAlert:
    """One care alert of a watch and what became of it."""

    seq: int
    event: int
    watch_time: int  # seconds since 2000 by the watch's clock; 0 = not set
    event_id: str  # the event the gateway raised for it ("" when it raised none)
    at: float  # unix time it was raised
    told: int | None = None  # the last Alert Confirm status the watch took
    told_at: float | None = None
    due: list[int] = field(default_factory=list)  # statuses still to write, in order
    acknowledged: bool = False  # the platform acknowledged its alarm

    def repeats(self, seq: int, event: int, watch_time: int, now: float) -> bool:
        if (seq, event, watch_time) != (self.seq, self.event, self.watch_time):
            return False
        if now - self.at > ALERT_MEMORY_S:
            return False
        if self.told_at is not None:  # the watch took a confirm: it repeats only if the answer
            return now - self.told_at <= CONFIRMED_REPEAT_S  # to that write was lost
        # Never confirmed: the watch repeats it. Acknowledged in the meantime, it is the same
        # alert when the watch's clock says so; without a clock it may be a new one after a
        # reboot, and a second alarm is better than none.
        return watch_time != 0 or not self.acknowledged


def _over(alert: RaisedAlert, now: float) -> bool:
    """Nothing more can come of it: too old, or confirmed and settled (its alarm acknowledged,
    or not an alarm) with nothing left to tell the watch; a fall stays while the wearer may
    still cancel it. Kept small, the file is quick to write before each confirm."""
    if now - alert.at > ALERT_MEMORY_S:
        return True
    if alert.due or alert.told_at is None or now - alert.told_at <= CONFIRMED_REPEAT_S:
        return False
    if alert.event == CareEvent.FALL and now - alert.at <= FALL_KEPT_S:
        return False
    return alert.acknowledged or alert.event not in ALARM_EVENTS


_STATUSES = (1, 2, 3)


def _alert(raw: Any) -> RaisedAlert:
    """One remembered alert, checked: a damaged file is set aside, never half believed."""
    alert = RaisedAlert(**raw)
    numbers_ok = all(
        type(v) is int and 0 <= v <= limit
        for v, limit in ((alert.seq, 255), (alert.event, 255), (alert.watch_time, 2**32 - 1))
    )
    told_ok = alert.told is None or alert.told in _STATUSES
    due_ok = isinstance(alert.due, list) and all(status in _STATUSES for status in alert.due)
    times_ok = isinstance(alert.at, int | float) and (
        alert.told_at is None or isinstance(alert.told_at, int | float)
    )
    if not (
        numbers_ok
        and told_ok
        and due_ok
        and times_ok
        and isinstance(alert.event_id, str)
        and isinstance(alert.acknowledged, bool)
    ):
        raise ValueError(f"not an alert: {raw!r}")
    return alert


@dataclass(slots=True)
class WatchState:
    alerts: list[RaisedAlert] = field(default_factory=list)
    worn: bool | None = None  # as last reported to the platform


@dataclass(slots=True)
class _Content:
    paired: dict[str, float] = field(default_factory=dict)  # address -> unix time paired
    state: dict[str, WatchState] = field(default_factory=dict)


def _parse(raw: Any) -> _Content:
    content = _Content()
    for address, at in raw["paired"].items():
        content.paired[str(address).upper()] = float(at)
    for address, entry in raw["state"].items():
        alerts = [_alert(alert) for alert in entry["alerts"]]
        worn = entry.get("worn")
        content.state[str(address).upper()] = WatchState(
            alerts, None if worn is None else bool(worn)
        )
    return content


class WatchStore:
    """The paired watches (by BLE address, upper case) and each watch's raised alerts.

    Changes are made in memory; ``flush()`` writes them (atomically, with a backup) in a worker
    thread, so an fsync on an SD card never holds up the event loop.
    """

    def __init__(self, path: Path, *, repair: bool = True) -> None:
        self.path = path
        self._file: StateFile[_Content] = StateFile(
            path, _parse, _Content, repair=repair, error=WatchListError
        )
        self._content = self._file.load()
        self._dirty = False
        self._backup_behind = False
        self._lock = asyncio.Lock()

    def _snapshot(self) -> dict[str, Any]:
        return {
            "paired": dict(self._content.paired),
            "state": {
                address: {"alerts": [asdict(a) for a in state.alerts], "worn": state.worn}
                for address, state in self._content.state.items()
            },
        }

    def save(self) -> None:
        """Write now, from the calling thread (commands outside the daemon's loop)."""
        self._dirty = False
        self._file.save(self._snapshot())

    async def flush(self, *, backup: bool = True) -> None:
        """Write what changed, from a worker thread; returns once it is on disk. Without
        ``backup`` only the file itself is written (half the fsyncs): for the write an alarm's
        feedback waits on; the next flush brings the backup up to date."""
        async with self._lock:
            if not self._dirty:
                if backup and self._backup_behind:
                    self._backup_behind = False
                    await asyncio.to_thread(self._file.save, self._snapshot())
                return
            self._dirty = False
            try:
                await asyncio.to_thread(self._file.save, self._snapshot(), backup=backup)
            except BaseException:
                self._dirty = True  # written at the next flush
                raise
            self._backup_behind = not backup

    # ------------------------------------------------------------------------------ pairing

    def addresses(self) -> list[str]:
        """The watches paired with ``carebed watch pair``."""
        return sorted(self._content.paired)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and address.upper() in self._content.paired

    def add(self, address: str) -> bool:
        """Pair a watch; False when it was paired already."""
        address = address.upper()
        if address in self._content.paired:
            return False
        self._content.paired[address] = time.time()
        self._dirty = True
        return True

    def remove(self, address: str) -> bool:
        """Forget a watch and its alerts; False when it was not paired."""
        address = address.upper()
        if self._content.paired.pop(address, None) is None:
            return False
        self._content.state.pop(address, None)
        self._dirty = True
        return True

    # ------------------------------------------------------------------------------ state

    def state(self, address: str) -> WatchState:
        return self._content.state.setdefault(address.upper(), WatchState())

    def changed(self) -> None:
        """An alert or the worn state was changed in place: write it at the next flush."""
        self._dirty = True

    def repeat_of(self, address: str, seq: int, event: int, watch_time: int) -> RaisedAlert | None:
        """The alert raised earlier that this notification repeats, if any."""
        now = time.time()
        for alert in reversed(self.state(address).alerts):
            # The alert_seq first: of up to 64 alerts remembered, most differ in it.
            if alert.seq == seq and alert.repeats(seq, event, watch_time, now):
                return alert
        return None

    def raised(self, address: str, alert: RaisedAlert) -> None:
        state = self.state(address)
        now = time.time()
        state.alerts = [a for a in state.alerts if not _over(a, now)]
        state.alerts.append(alert)
        while len(state.alerts) > MAX_ALERTS_PER_WATCH:  # the oldest that owes the watch nothing
            settled = next((a for a in state.alerts if not a.due), None)
            if settled is None:
                break
            state.alerts.remove(settled)
        self._dirty = True

    def latest(self, address: str, event: int) -> RaisedAlert | None:
        """The most recent alert of this kind still remembered."""
        for alert in reversed(self.state(address).alerts):
            if alert.event == event:
                return alert
        return None

    def worn(self, address: str) -> bool | None:
        """Worn or not as last reported to the platform; None when never reported."""
        return self.state(address).worn

    def set_worn(self, address: str, worn: bool) -> None:
        state = self.state(address)
        if state.worn != worn:
            state.worn = worn
            self._dirty = True
