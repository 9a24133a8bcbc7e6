"""What the platform was told of a device's presence and battery: each change once.

``Presence`` is one device's ``device.online`` / ``device.offline``; ``BatteryReporter`` its
``device.battery``. The drivers decide when a device is heard or away (each by its own
supervision: a button's heartbeats, the receiver's frames, a watch's link); these say whether
that is news for the platform, and tell it. A device not yet heard since the start is told
online when it is: the platform may still hold it offline from before a restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gateway.core.clock import ts_from_unix
from gateway.core.kinds import EventKind

Emit = Callable[[EventKind, dict[str, Any], str | None], Awaitable[object]]


def _ts(wall: float | None) -> str | None:
    return None if wall is None else ts_from_unix(wall)


class Presence:
    """One device's online / offline, as told to the platform through ``emit``.

    ``online`` is None until the first report since the start; pass True for a device whose
    start the platform takes as online (it is told only when it went offline and came back).
    Each report's ``last_seen`` is the wall time last given to ``heard``. The state changes
    before ``emit`` is awaited: a report whose event could not be stored is not tried again.
    """

    def __init__(self, device: str, emit: Emit, *, online: bool | None = None) -> None:
        self.device = device
        self.online = online
        self.last_seen_wall: float | None = None
        self._emit = emit

    def heard(self, wall: float) -> None:
        """The device was heard at unix time ``wall`` (no report by itself)."""
        self.last_seen_wall = wall

    async def came_online(self, reason: str) -> bool:
        """``device.online`` unless the platform knows it online; whether it was told."""
        if self.online is True:
            return False
        self.online = True
        data = {"reason": reason, "last_seen": _ts(self.last_seen_wall)}
        await self._emit("device.online", data, self.device)
        return True

    async def went_offline(self, reason: str) -> bool:
        """``device.offline`` unless the platform was told so already; whether it was told."""
        if self.online is False:
            return False
        self.online = False
        data = {"reason": reason, "last_seen": _ts(self.last_seen_wall)}
        await self._emit("device.offline", data, self.device)
        return True

    def unpaired(self) -> None:
        """The device is no longer the home's: not held offline. Paired again, it is told online
        when next heard if it was not heard since the start."""
        if self.online is False:
            self.online = None if self.last_seen_wall is None else True


class BatteryReporter:
    """One device's ``device.battery``: when low changes, when the level moved ``step`` or more
    (None: only when low changes), and always for the device's own low-battery alarm.

    A report is noted once its event is stored: one that could not be is tried again with the
    next level.
    """

    def __init__(
        self, device: str, emit: Emit, *, low_percent: int, step: int | None = None
    ) -> None:
        self.device = device
        self.low_percent = low_percent
        self.step = step
        self.reported: tuple[int | None, bool] | None = None  # (level, low) last told
        self._emit = emit

    @property
    def low(self) -> bool | None:
        """Low as last told; None before the first report."""
        return None if self.reported is None else self.reported[1]

    async def level(self, level: int | None, *, low_alarm: bool = False) -> bool:
        """A level read from the device (None: unknown); ``low_alarm``: the device itself says
        its battery is low. Whether ``device.battery`` was told."""
        low = low_alarm or (level is not None and level <= self.low_percent)
        if not (low_alarm or (level is not None and self._changed(level, low))):
            return False
        await self._emit("device.battery", {"level": level, "low": low}, self.device)
        self.reported = (level, low)
        return True

    def _changed(self, level: int, low: bool) -> bool:
        if self.reported is None:
            return True
        told_level, told_low = self.reported
        if told_low != low:
            return True
        return (
            self.step is not None
            and told_level is not None
            and abs(told_level - level) >= self.step
        )
