"""Periodic gateway events: the heartbeat, and timestamp correction when the clock syncs."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import structlog

from gateway.core.clock import Clock
from gateway.core.faults import FaultListeners
from gateway.core.ports import FaultSource
from gateway.store.outbox import Outbox
from gateway.store.sink import OutboxSink

log = structlog.get_logger("gateway.app.housekeeping")

CLOCK_POLL_S = 5.0


class GatewayStatus:
    """What ``gateway.heartbeat`` and the ``status`` command report."""

    def __init__(self, outbox: Outbox, clock: Clock, version: str) -> None:
        self.outbox = outbox
        self.clock = clock
        self.version = version
        self.started_mono = time.monotonic()
        self._fault_sources: list[FaultSource] = []
        self._fault_listeners = FaultListeners()

    def add_fault_source(self, source: FaultSource) -> None:
        self._fault_sources.append(source)
        source.on_faults_changed(self._fault_listeners.notify)

    def on_faults_changed(self, callback: Callable[[], None]) -> None:
        self._fault_listeners.add(callback)

    def faults(self) -> list[dict[str, Any]]:
        return [fault for source in self._fault_sources for fault in source.faults()]

    async def snapshot(self) -> dict[str, Any]:
        stats = await self.outbox.stats()
        try:  # where the outbox is, which need not be the state directory
            vfs = os.statvfs(self.outbox.path.parent)
            disk_free = vfs.f_bavail * vfs.f_frsize
        except OSError:
            disk_free = 0
        return {
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "queued": stats.queued,
            "oldest_queued_ts": stats.oldest_queued_ts,
            "disk_free_bytes": disk_free,
            "clock_synced": self.clock.is_synced(),
            "faults": self.faults(),
            "version": self.version,
        }


class Heartbeat:
    """``gateway.heartbeat`` every interval, and at once when a fault appears or ends."""

    def __init__(self, status: GatewayStatus, sink: OutboxSink, interval_s: float) -> None:
        self.status = status
        self.sink = sink
        self.interval_s = interval_s
        self._changed = asyncio.Event()
        self._now = False
        status.on_faults_changed(self.report_now)

    def report_now(self) -> None:
        """Send a heartbeat at once (then the next one a whole interval later)."""
        self._now = True
        self._changed.set()

    def set_interval(self, interval_s: float) -> None:
        """A new interval (``config.set``): the next heartbeat comes one new interval from now."""
        self.interval_s = interval_s
        self._changed.set()

    async def run(self) -> None:
        self._now = self._now or bool(self.status.faults())  # a fault found at start: at once
        while True:
            self._changed.clear()  # before the emit: a fault that appears during it is not lost
            if self._now:
                self._now = False
                await self.sink.emit("gateway.heartbeat", await self.status.snapshot())
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._changed.wait()
                continue
            except TimeoutError:
                pass
            await self.sink.emit("gateway.heartbeat", await self.status.snapshot())


class ClockWatcher:
    """When the wall clock becomes synchronised, correct this boot's unsynchronised timestamps."""

    def __init__(
        self,
        clock: Clock,
        outbox: Outbox,
        sink: OutboxSink,
        boot_id: str,
        poll_s: float = CLOCK_POLL_S,
    ) -> None:
        self.clock = clock
        self.outbox = outbox
        self.sink = sink
        self.boot_id = boot_id
        self.poll_s = poll_s
        self.synced = clock.is_synced()  # as the gateway started: events so far carry this

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            now_synced = self.clock.is_synced()
            if now_synced and not self.synced:
                await self.correct()
            self.synced = now_synced

    async def correct(self) -> int:
        await self.outbox.flush()
        corrected = await self.outbox.correct_timestamps(
            self.boot_id,
            self.clock.wall(),
            self.clock.monotonic_ns(),
        )
        log.info("clock_synchronised", corrected_events=corrected)
        await self.sink.emit("gateway.clock", {"synced": True, "corrected_events": corrected})
        return corrected
