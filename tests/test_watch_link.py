"""``BleWatch`` in-process against the simulated watch (bleak client on a simulated backend).

The D-Bus tests (tests/test_watch.py) run the link through bleak's BlueZ backend and remain the
main evidence; these drive it step by step: an SOS is raised once and confirmed 0x01, then 0x02
once acknowledged, an acknowledgement told while the alarm is being stored waits for 0x01, and
an alert raised while the watch was away is repeated and raised once on the new link.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from drivers.watch.ble import BleWatch, LinkState
from drivers.watch.codec import ALERT_CONFIRM, CARE_ALERT, AlertConfirmStatus, CareEvent
from drivers.watch.store import WatchStore
from gateway.app.alarms import AlarmTracker
from gateway.app.config import VitalsSection, WatchSection
from gateway.core.clock import SystemClock
from gateway.core.ports import AlarmRaiser, AlarmState, EventSink
from gateway.store.alarms import AlarmTiming
from gateway.store.outbox import Outbox
from gateway.store.sink import EventFactory, OutboxSink
from gateway.store.sqlite import SqliteStore
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
    async with linked(tmp_path, watch, platform, platform) as link:
        yield link, platform


@asynccontextmanager
async def linked(
    tmp_path: Path, watch: WatchSim, sink: EventSink, alarms: AlarmRaiser
) -> AsyncIterator[BleWatch]:
    settings = WatchSection(
        enabled=True, reconnect_min_s=0.05, reconnect_cap_s=0.1, offline_after_s=30
    )
    link = BleWatch(
        ADDRESS,
        settings,
        VitalsSection(),
        sink=sink,
        alarms=alarms,
        store=WatchStore(tmp_path / "watches.json"),
        clock=SystemClock(tmp_path / "timesync"),
        client_class=SimBleakClient,
        find=sim_finder(watch),
    )
    task = asyncio.create_task(link.run(), name="watch-link")
    try:
        await watch.wait_subscribed(CARE_ALERT, TIMEOUT_S)
        yield link
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


# ------------------------------------------------------------------ against the real outbox


class OutboxReadingWatch(WatchSim):
    """The simulated watch, looking into the gateway's outbox (another connection, read-only)
    the moment it takes each Alert Confirm 0x01 (in the write, before the central's reply)."""

    def __init__(self, address: str, outbox_path: Path) -> None:
        super().__init__(address)
        self.outbox_path = outbox_path
        self.at_received: list[tuple[int, int, int]] = []  # alert_seq, alarms, keys committed

    def _write(self, char_uuid: str, data: bytes) -> None:
        super()._write(char_uuid, data)  # (raises for a write the watch does not take)
        if char_uuid == ALERT_CONFIRM and data[1:] == bytes([AlertConfirmStatus.RECEIVED]):
            reader = sqlite3.connect(f"file:{self.outbox_path}?mode=ro", uri=True)
            try:
                alarms = reader.execute("SELECT COUNT(*) FROM events WHERE kind LIKE 'alarm.%'")
                keys = reader.execute("SELECT COUNT(*) FROM alarm_keys")
                counts = (alarms.fetchone()[0], keys.fetchone()[0])
            finally:
                reader.close()
            self.at_received.append((data[0], *counts))


@asynccontextmanager
async def stored_link(tmp_path: Path, watch: WatchSim) -> AsyncIterator[BleWatch]:
    """The link raising its alarms through the gateway's alarm tracker into a real outbox."""
    clock = SystemClock(tmp_path / "timesync")
    factory = EventFactory(clock, "test-boot")
    store = SqliteStore(
        tmp_path / "outbox.sqlite3",
        max_bytes=256 * 1024 * 1024,
        timing=AlarmTiming(),
        make_dropped=lambda count, ranges, reason: factory.make(
            "gateway.dropped", {"count": count, "seq_ranges": ranges, "reason": reason}
        ),
        boot_id="test-boot",
    )
    outbox = Outbox(store)
    await outbox.open()
    sink = OutboxSink(outbox, factory)
    tracker = AlarmTracker(sink)
    tracker.link_changed(True, [])  # as if the uplink were up: no 0x03 "not delivered"
    try:
        async with linked(tmp_path, watch, sink, tracker) as link:
            tracker.subscribe(link)
            yield link
    finally:
        await outbox.close()


def _told(link: BleWatch) -> list[int | None]:
    return [alert.told for alert in link.store.state(ADDRESS).alerts]


async def test_each_0x01_finds_its_alarm_and_key_committed(tmp_path: Path) -> None:
    """The watch is told "received" only once the alarm raised for its alert and the alert's
    key are committed (the outbox commits alarms with synchronous=FULL: fsynced); the first
    confirm comes from the link's task after a new link's grace, the next ones from the task
    that raised their alarms, at once. Each alert joins the watch list once its 0x01 is taken."""
    watch = OutboxReadingWatch(ADDRESS, tmp_path / "outbox.sqlite3")
    async with stored_link(tmp_path, watch) as link:
        for seq in range(1, 5):
            assert await watch.care_alert(CareEvent.SOS, seq, watch_time=850_000_000 + seq)
            await watch.wait_confirmed(seq, TIMEOUT_S)
        assert watch.at_received == [(seq, seq, seq) for seq in range(1, 5)]
        assert watch.confirms == [(seq, 0x01) for seq in range(1, 5)]
        assert _told(link) == [AlertConfirmStatus.RECEIVED] * 4
        assert link.counters["confirm_written"] == 4


async def test_an_0x01_lost_with_the_link_leaves_the_alert_listed_and_raised_once(
    tmp_path: Path,
) -> None:
    """The 0x01 written at once is lost with the link: the alert is in the watch list all the
    same, so the watch's repeat on the new link is taken for a repeat, not a second alarm."""
    watch = OutboxReadingWatch(ADDRESS, tmp_path / "outbox.sqlite3")
    async with stored_link(tmp_path, watch) as link:
        assert await watch.care_alert(CareEvent.SOS, 1, watch_time=850_000_001)
        await watch.wait_confirmed(1, TIMEOUT_S)  # the grace is over: the next goes at once
        watch.fail_next_confirms(1)
        assert await watch.care_alert(CareEvent.SOS, 2, watch_time=850_000_002)
        await watch.wait_confirmed(2, TIMEOUT_S)  # repeated on the new link, then confirmed
        assert watch.connections == 2
        assert link.counters["confirm_failed"] == 1
        assert link.counters["alert_repeated"] == 1
        assert watch.at_received == [(1, 1, 1), (2, 2, 2)]
        assert watch.confirms == [(1, 0x01), (2, 0x01)]
        await wait_until(lambda: _told(link) == [1, 1], "both alerts told received")
