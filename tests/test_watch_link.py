"""``BleWatch`` in-process against the simulated watch (bleak client on a simulated backend).

The D-Bus tests (tests/test_watch.py) run the link through bleak's BlueZ backend and remain the
main evidence; these drive it step by step: an SOS is raised once and confirmed 0x01, then 0x02
once acknowledged, an acknowledgement told while the alarm is being stored waits for 0x01, and
an alert raised while the watch was away is repeated and raised once on the new link.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from drivers.watch.ble import BleWatch, LinkState
from drivers.watch.codec import CARE_ALERT, CareEvent
from drivers.watch.store import WatchStore
from gateway.app.config import VitalsSection, WatchSection
from gateway.core.clock import SystemClock
from gateway.core.ports import AlarmState
from hil.sim.bluez import WatchSim
from tests.support.sim_ble import SimBleakClient, sim_finder

ADDRESS = "C0:FF:EE:00:00:07"
DEVICE = "watch-C0FFEE000007"
TIMEOUT_S = 5.0  # every wait ends on a condition; this is only the deadline


class Platform:
    """The gateway side of the link's ports: events and alarms as they were stored."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        self.on_raise: Callable[[str], None] | None = None
        self._ids = itertools.count(1)

    async def emit(self, kind: Any, data: dict[str, Any], device: str | None = None) -> str:
        await asyncio.sleep(0)
        self.events.append((kind, data, device))
        return f"event-{next(self._ids)}"

    async def raise_alarm(
        self, kind: Any, data: dict[str, Any], device: str | None, *, key: str | None = None
    ) -> str:
        alarm_id = await self.emit(kind, data, device)
        if self.on_raise is not None:
            self.on_raise(alarm_id)
        return alarm_id

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


@asynccontextmanager
async def running_link(tmp_path: Path, watch: WatchSim) -> AsyncIterator[tuple[BleWatch, Platform]]:
    platform = Platform()
    settings = WatchSection(
        enabled=True, reconnect_min_s=0.05, reconnect_cap_s=0.1, offline_after_s=30
    )
    link = BleWatch(
        ADDRESS,
        settings,
        VitalsSection(),
        sink=platform,
        alarms=platform,
        store=WatchStore(tmp_path / "watches.json"),
        clock=SystemClock(tmp_path / "timesync"),
        client_class=SimBleakClient,
        find=sim_finder(watch),
    )
    task = asyncio.create_task(link.run(), name="watch-link")
    try:
        await watch.wait_subscribed(CARE_ALERT, TIMEOUT_S)
        yield link, platform
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await link.close()


async def test_an_sos_is_raised_once_confirmed_then_acknowledged(tmp_path: Path) -> None:
    watch = WatchSim(ADDRESS)
    async with running_link(tmp_path, watch) as (link, platform):
        await wait_until(lambda: link.state is LinkState.CONNECTED, "connected")
        assert await watch.care_alert(CareEvent.SOS, 7)
        await watch.wait_confirmed(7, TIMEOUT_S)
        alarm_id = next(
            f"event-{i + 1}" for i, kind in enumerate(platform.kinds()) if kind == "alarm.watch_sos"
        )
        assert watch.confirms == [(7, 0x01)]
        assert watch.pending_alerts == []

        link.alarm_state_changed(alarm_id, "alarm.watch_sos", DEVICE, AlarmState.DELIVERED)
        link.alarm_state_changed(alarm_id, "alarm.watch_sos", DEVICE, AlarmState.ACKNOWLEDGED)
        await wait_until(lambda: len(watch.confirms) == 2, "acknowledged confirm")
        assert watch.confirms == [(7, 0x01), (7, 0x02)]
        assert platform.kinds().count("alarm.watch_sos") == 1
        online = [data for kind, data, _ in platform.events if kind == "device.online"]
        assert [data["reason"] for data in online] == ["connected"]


async def test_an_acknowledgement_told_while_the_alarm_is_stored_follows_received(
    tmp_path: Path,
) -> None:
    watch = WatchSim(ADDRESS)
    async with running_link(tmp_path, watch) as (link, platform):
        # The platform's acknowledgement arrives before raise_alarm has returned.
        platform.on_raise = lambda alarm_id: link.alarm_state_changed(
            alarm_id, "alarm.watch_sos", DEVICE, AlarmState.ACKNOWLEDGED
        )
        assert await watch.care_alert(CareEvent.SOS, 3)
        await wait_until(lambda: len(watch.confirms) == 2, "both confirms")
        assert watch.confirms == [(3, 0x01), (3, 0x02)]


async def test_an_alert_raised_while_away_is_repeated_and_raised_once(tmp_path: Path) -> None:
    watch = WatchSim(ADDRESS)
    async with running_link(tmp_path, watch) as (link, platform):
        await wait_until(lambda: link.state is LinkState.CONNECTED, "connected")
        watch.in_range = False
        await wait_until(lambda: not link.connected.is_set(), "link lost")
        assert link.state is not LinkState.CONNECTED
        assert not await watch.care_alert(CareEvent.FALL, 9)  # kept by the watch, not sent
        watch.in_range = True
        await watch.wait_confirmed(9, TIMEOUT_S)
        assert watch.confirms == [(9, 0x01)]
        assert watch.connections == 2
        assert platform.kinds().count("alarm.fall") == 1
        # The watch repeats an alert it has had confirmed only when the answer was lost.
        watch.drop_link()
        await wait_until(lambda: watch.connections == 3 and link.connected.is_set(), "back")
        assert platform.kinds().count("alarm.fall") == 1
