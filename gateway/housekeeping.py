"""Periodic gateway events: the heartbeat, and timestamp correction when the clock syncs."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import structlog

from gateway.clock import Clock
from gateway.emitter import OutboxSink
from gateway.outbox import Outbox

log = structlog.get_logger("gateway.housekeeping")

CLOCK_POLL_S = 5.0


class GatewayStatus:
    """What ``gateway.heartbeat`` and the ``status`` command report."""

    def __init__(self, outbox: Outbox, clock: Clock, state_dir: Path, version: str) -> None:
        self.outbox = outbox
        self.clock = clock
        self.state_dir = state_dir
        self.version = version
        self.started_mono = time.monotonic()

    async def snapshot(self) -> dict[str, Any]:
        stats = await self.outbox.call(self.outbox.store.stats)
        try:  # where the outbox is, which need not be the state directory
            vfs = os.statvfs(self.outbox.store.path.parent)
            disk_free = vfs.f_bavail * vfs.f_frsize
        except OSError:
            disk_free = 0
        return {
            "uptime_s": round(time.monotonic() - self.started_mono, 3),
            "queued": stats.queued,
            "oldest_queued_ts": stats.oldest_queued_ts,
            "disk_free_bytes": disk_free,
            "clock_synced": self.clock.is_synced(),
            "version": self.version,
        }


class Heartbeat:
    def __init__(self, status: GatewayStatus, sink: OutboxSink, interval_s: float) -> None:
        self.status = status
        self.sink = sink
        self.interval_s = interval_s
        self._changed = asyncio.Event()

    def set_interval(self, interval_s: float) -> None:
        """A new interval (``config.set``): the next heartbeat comes one new interval from now."""
        self.interval_s = interval_s
        self._changed.set()

    async def run(self) -> None:
        while True:
            self._changed.clear()
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
        corrected = await self.outbox.call(
            self.outbox.store.correct_timestamps,
            self.boot_id,
            self.clock.wall(),
            self.clock.monotonic_ns(),
        )
        log.info("clock_synchronised", corrected_events=corrected)
        await self.sink.emit("gateway.clock", {"synced": True, "corrected_events": corrected})
        return corrected
