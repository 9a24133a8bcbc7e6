"""Which watches belong to this home, and the care alerts already raised: a small durable file.

The watch notifies an alert again, with the same ``alert_seq``, after every reconnection until the
gateway confirms it. The alerts raised are kept here, across restarts, so that a repeat is never a
second alarm. ``alert_seq`` is one byte and restarts when the watch reboots, so a remembered alert
only matches a repeat that could still be one:

- same ``alert_seq``, event and ``watch_time``, and raised less than ``ALERT_MEMORY_S`` ago; and
- when the watch's clock is not set (``watch_time`` 0, nothing else tells two alerts apart): only
  while the alert is unconfirmed, or for ``CONFIRMED_REPEAT_S`` after the watch took the confirm
  (a watch that took the confirm does not repeat the alert; a new one with that number is new).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.files import StateFile

ALERT_MEMORY_S = 24 * 3600.0
CONFIRMED_REPEAT_S = 60.0
MAX_ALERTS_PER_WATCH = 32


@dataclass(slots=True)
class RaisedAlert:
    seq: int
    event: int
    watch_time: int  # seconds since 2000 by the watch's clock; 0 = not set
    event_id: str  # the event (alarm) the gateway raised for it
    at: float  # unix time it was raised
    confirmed_at: float | None = None  # unix time the watch took Alert Confirm 0x01

    def repeats(self, seq: int, event: int, watch_time: int, now: float) -> bool:
        if (seq, event, watch_time) != (self.seq, self.event, self.watch_time):
            return False
        if now - self.at > ALERT_MEMORY_S:
            return False
        if watch_time != 0 or self.confirmed_at is None:
            return True
        return now - self.confirmed_at <= CONFIRMED_REPEAT_S


@dataclass(slots=True)
class PairedWatch:
    address: str
    paired_at: float
    alerts: list[RaisedAlert]
    worn: bool | None = None  # as last reported to the platform


def _parse(raw: Any) -> dict[str, PairedWatch]:
    watches: dict[str, PairedWatch] = {}
    for address, entry in raw["watches"].items():
        alerts = [RaisedAlert(**alert) for alert in entry.get("alerts", [])]
        worn = entry.get("worn")
        watches[str(address).upper()] = PairedWatch(
            str(address).upper(),
            float(entry["paired_at"]),
            alerts,
            None if worn is None else bool(worn),
        )
    return watches


class WatchStore:
    """The paired watches (by BLE address, upper case) and their recently raised alerts."""

    def __init__(self, path: Path, *, repair: bool = True) -> None:
        self.path = path
        self._file: StateFile[dict[str, PairedWatch]] = StateFile(path, _parse, dict, repair=repair)
        self._watches = self._file.load()

    def _save(self) -> None:
        self._file.save(
            {
                "watches": {
                    address: {
                        "paired_at": watch.paired_at,
                        "alerts": [asdict(alert) for alert in watch.alerts],
                        "worn": watch.worn,
                    }
                    for address, watch in self._watches.items()
                }
            }
        )

    def addresses(self) -> list[str]:
        return sorted(self._watches)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and address.upper() in self._watches

    def add(self, address: str) -> bool:
        """Pair a watch; False when it was paired already."""
        address = address.upper()
        if address in self._watches:
            return False
        self._watches[address] = PairedWatch(address, time.time(), [])
        self._save()
        return True

    def remove(self, address: str) -> bool:
        """Forget a watch; False when it was not paired."""
        if self._watches.pop(address.upper(), None) is None:
            return False
        self._save()
        return True

    def _watch(self, address: str) -> PairedWatch:
        address = address.upper()
        watch = self._watches.get(address)
        if watch is None:  # configured in the file, not paired with the command: remember it
            watch = self._watches[address] = PairedWatch(address, time.time(), [])
        return watch

    def repeat_of(self, address: str, seq: int, event: int, watch_time: int) -> RaisedAlert | None:
        """The alert raised earlier that this notification repeats, if any."""
        now = time.time()
        for alert in self._watch(address).alerts:
            if alert.repeats(seq, event, watch_time, now):
                return alert
        return None

    def raised(self, address: str, alert: RaisedAlert) -> None:
        watch = self._watch(address)
        now = time.time()
        watch.alerts = [a for a in watch.alerts if now - a.at <= ALERT_MEMORY_S]
        watch.alerts.append(alert)
        del watch.alerts[:-MAX_ALERTS_PER_WATCH]
        self._save()

    def confirmed(self, address: str, alert: RaisedAlert) -> None:
        """The watch took Alert Confirm 0x01 for ``alert``: it will not repeat it."""
        if alert.confirmed_at is None:
            alert.confirmed_at = time.time()
            if alert in self._watch(address).alerts:
                self._save()

    def worn(self, address: str) -> bool | None:
        """Worn or not as last reported to the platform; None when never reported."""
        watch = self._watches.get(address.upper())
        return None if watch is None else watch.worn

    def set_worn(self, address: str, worn: bool) -> None:
        watch = self._watch(address)
        if watch.worn != worn:
            watch.worn = worn
            self._save()
