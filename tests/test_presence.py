"""``Presence``, ``BatteryReporter`` and ``FeedbackHold``: each change told once, in order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.clock import ts_from_unix
from gateway.core.feedback import FeedbackHold
from gateway.core.presence import BatteryReporter, Presence


class Told:
    def __init__(self, *, fail: bool = False) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        self.fail = fail

    async def emit(self, kind: Any, data: dict[str, Any], device: str | None) -> str:
        if self.fail:
            raise OSError("disk full")
        self.events.append((kind, data, device))
        return "id"

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


async def test_a_device_first_heard_is_told_online_once() -> None:
    told = Told()
    presence = Presence("btn-00000001", told.emit)
    presence.heard(1000.0)
    assert await presence.came_online("heard")
    assert not await presence.came_online("heard")
    assert told.events == [
        ("device.online", {"reason": "heard", "last_seen": ts_from_unix(1000.0)}, "btn-00000001")
    ]


async def test_offline_once_then_online_again() -> None:
    told = Told()
    presence = Presence("watch-C0FFEE000001", told.emit)
    assert await presence.went_offline("disconnected")  # never heard: last_seen unknown
    assert not await presence.went_offline("silent_link")
    presence.heard(5.0)
    assert await presence.came_online("connected")
    assert told.events == [
        ("device.offline", {"reason": "disconnected", "last_seen": None}, "watch-C0FFEE000001"),
        (
            "device.online",
            {"reason": "connected", "last_seen": ts_from_unix(5.0)},
            "watch-C0FFEE000001",
        ),
    ]


async def test_a_device_online_from_the_start_is_told_only_after_offline() -> None:
    told = Told()
    presence = Presence("rcv-home", told.emit, online=True)
    assert not await presence.came_online("heard")
    assert await presence.went_offline("unplugged")
    assert await presence.came_online("heard")
    assert told.kinds() == ["device.offline", "device.online"]


async def test_an_unpaired_device_is_no_longer_held_offline() -> None:
    told = Told()
    heard = Presence("btn-00000001", told.emit)
    heard.heard(1.0)
    await heard.came_online("heard")
    await heard.went_offline("supervision_timeout")
    heard.unpaired()
    assert heard.online is True and not await heard.came_online("heard")
    never = Presence("btn-00000002", told.emit)
    await never.went_offline("supervision_timeout")
    never.unpaired()
    assert never.online is None and await never.came_online("heard")


async def test_a_report_that_could_not_be_stored_is_not_tried_again() -> None:
    presence = Presence("watch-C0FFEE000001", Told(fail=True).emit)
    with pytest.raises(OSError, match="disk full"):
        await presence.went_offline("disconnected")
    assert presence.online is False


async def test_battery_low_changes_and_steps() -> None:
    told = Told()
    battery = BatteryReporter("watch-C0FFEE000001", told.emit, low_percent=20, step=10)
    for level in (90, 85, 80, 79, 25, 20, 20, 21, 100):
        await battery.level(level)
    assert [(data["level"], data["low"]) for _, data, _ in told.events] == [
        (90, False),
        (80, False),
        (25, False),
        (20, True),
        (21, False),
        (100, False),
    ]


async def test_battery_without_step_reports_only_low_changes_and_alarms() -> None:
    told = Told()
    battery = BatteryReporter("btn-00000001", told.emit, low_percent=20)
    assert await battery.level(90)
    assert not await battery.level(50)
    assert not await battery.level(None)
    assert await battery.level(None, low_alarm=True)
    assert await battery.level(15, low_alarm=True)
    assert battery.low is True
    assert [(data["level"], data["low"]) for _, data, _ in told.events] == [
        (90, False),
        (None, True),
        (15, True),
    ]


async def test_a_battery_report_not_stored_is_tried_with_the_next_level() -> None:
    told = Told(fail=True)
    battery = BatteryReporter("btn-00000001", told.emit, low_percent=20)
    with pytest.raises(OSError, match="disk full"):
        await battery.level(10)
    assert battery.low is None
    told.fail = False
    assert await battery.level(10)


@given(levels=st.lists(st.none() | st.integers(0, 100), max_size=30), step=st.integers(1, 50))
async def test_battery_reports_say_each_low_change(levels: list[int | None], step: int) -> None:
    told = Told()
    battery = BatteryReporter("watch-C0FFEE000001", told.emit, low_percent=20, step=step)
    for level in levels:
        await battery.level(level)
    lows = [data["low"] for _, data, _ in told.events]
    known = [level for level in levels if level is not None]
    changes = [low for i, low in enumerate(lows) if i == 0 or low != lows[i - 1]]
    expected = [
        level <= 20
        for i, level in enumerate(known)
        if i == 0 or (level <= 20) != (known[i - 1] <= 20)
    ]
    assert changes == expected


def test_feedback_is_held_in_order_while_an_alarm_is_stored() -> None:
    hold: FeedbackHold[str] = FeedbackHold()
    assert not hold.hold("now")
    hold.start()
    assert hold.holding
    assert hold.hold("acknowledged") and hold.hold("undelivered")
    assert hold.end() == ["acknowledged", "undelivered"]
    assert not hold.holding and not hold.hold("later") and hold.end() == []
