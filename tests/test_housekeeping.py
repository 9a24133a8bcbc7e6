"""Heartbeat and timestamp correction when the clock becomes synchronised."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.app.housekeeping import ClockWatcher, GatewayStatus, Heartbeat
from gateway.core.clock import ManualClock
from gateway.store.alarms import AlarmTiming
from gateway.store.outbox import Outbox
from gateway.store.sink import EventFactory, OutboxSink
from gateway.store.sqlite import SqliteStore

BOOT = "boot-7"


def make_outbox(tmp_path: Path, clock: ManualClock) -> tuple[Outbox, OutboxSink]:
    factory = EventFactory(clock, BOOT)
    store = SqliteStore(
        tmp_path / "o.sqlite3",
        max_bytes=10**8,
        timing=AlarmTiming(),
        make_dropped=lambda count, ranges, reason: factory.make(
            "gateway.dropped", {"count": count, "seq_ranges": ranges, "reason": reason}
        ),
        now=clock.wall,
        monotonic_ns=clock.monotonic_ns,
        boot_id=BOOT,
    )
    outbox = Outbox(store, group_commit_s=0)
    return outbox, OutboxSink(outbox, factory)


async def test_clock_sync_corrects_waiting_events_and_says_so(tmp_path: Path) -> None:
    clock = ManualClock(wall=1_000.0, synced=False)  # a Pi without RTC: 1970
    outbox, sink = make_outbox(tmp_path, clock)
    await outbox.open()
    await sink.emit("telemetry.vitals", {"heart_rate": 70}, "watch-AABBCCDDEEFF")
    clock.advance(5)
    await sink.emit("device.tamper", {}, "btn-00000001")
    watcher = ClockWatcher(clock, outbox, sink, BOOT, poll_s=0.01)
    task = asyncio.create_task(watcher.run())
    clock.advance(2)
    clock.set_wall(1_800_000_000.0)
    clock.synced = True
    async with asyncio.timeout(10):
        while (await outbox.stats()).queued.get("gateway", 0) == 0:
            await asyncio.sleep(0.01)
    task.cancel()
    events = {e.kind: e for e in (await outbox.claim(10))[0]}
    assert json.loads(events["gateway.clock"].data_json) == {
        "synced": True,
        "corrected_events": 2,
    }
    assert events["telemetry.vitals"].ts_synced
    assert events["telemetry.vitals"].ts == "2027-01-15T07:59:53.000Z"  # 7 s before the sync
    assert events["device.tamper"].ts == "2027-01-15T07:59:58.000Z"
    assert events["gateway.clock"].ts_synced
    await outbox.close()


async def test_heartbeat_reports_the_queue(tmp_path: Path) -> None:
    clock = ManualClock()
    outbox, sink = make_outbox(tmp_path, clock)
    await outbox.open()
    await sink.emit("telemetry.vitals", {"heart_rate": 70}, "watch-AABBCCDDEEFF")
    status = GatewayStatus(outbox, clock, "1.2.3")
    task = asyncio.create_task(Heartbeat(status, sink, interval_s=0.01).run())
    async with asyncio.timeout(10):
        while (await outbox.stats()).queued.get("gateway", 0) == 0:
            await asyncio.sleep(0.01)
    task.cancel()
    beats = [e for e in (await outbox.claim(10))[0] if e.kind == "gateway.heartbeat"]
    data = json.loads(beats[0].data_json)
    assert data["queued"] == {"telemetry": 1}
    assert data["oldest_queued_ts"] is not None
    assert data["disk_free_bytes"] > 0
    assert data["version"] == "1.2.3"
    assert data["clock_synced"] is True
    await outbox.close()


class FaultAppearingDuringEmit(OutboxSink):
    """The real sink, except that a fault appears while the first heartbeat is being stored."""

    def __init__(self, sink: OutboxSink, appear: Callable[[], None]) -> None:
        super().__init__(sink.outbox, sink.factory)
        self.appear = appear
        self.beats = 0

    async def emit(self, kind: str, data: dict[str, Any], device: str | None = None) -> str:
        if kind == "gateway.heartbeat":
            self.beats += 1
            if self.beats == 1:
                self.appear()
        return await super().emit(kind, data, device)


class OneFault:
    """A ``FaultSource`` with a fault from the start."""

    def __init__(self) -> None:
        self.listeners: list[Callable[[], None]] = []

    def faults(self) -> list[dict[str, Any]]:
        since = "2027-01-15T07:59:53.000Z"
        return [{"code": "pairing_unreadable", "device": "rcv-gw", "message": "x", "since": since}]

    def on_faults_changed(self, callback: Callable[[], None]) -> None:
        self.listeners.append(callback)

    def changed(self) -> None:
        for callback in self.listeners:
            callback()


async def test_a_fault_that_changes_during_a_heartbeat_gets_its_own_at_once(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    outbox, real_sink = make_outbox(tmp_path, clock)
    await outbox.open()
    status = GatewayStatus(outbox, clock, "1.2.3")
    source = OneFault()
    status.add_fault_source(source)
    sink = FaultAppearingDuringEmit(real_sink, source.changed)
    task = asyncio.create_task(Heartbeat(status, sink, interval_s=3600).run())
    try:
        async with asyncio.timeout(5):  # not an hour later
            while sink.beats < 2:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await outbox.close()
