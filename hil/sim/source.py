"""A simulated event source: a watch's heart rate and an occasional button alarm."""

from __future__ import annotations

import asyncio
import random

import structlog

from gateway.core.ports import AlarmRaiser, EventSink

log = structlog.get_logger("hil.sim")

SIM_WATCH = "watch-C0FFEE000001"
SIM_BUTTON = "btn-0000A11C"


class SimEventSource:
    """Emits ``telemetry.vitals`` every interval (``burst`` at a time) and alarms every so often."""

    def __init__(
        self,
        sink: EventSink,
        alarms: AlarmRaiser,
        *,
        telemetry_interval_s: float,
        alarm_interval_s: float | None,
        burst: int = 1,
        seed: int | None = None,
    ) -> None:
        self.sink = sink
        self.alarms = alarms
        self.telemetry_interval_s = telemetry_interval_s
        self.alarm_interval_s = alarm_interval_s
        self.burst = burst
        self._rng = random.Random(seed)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._telemetry(), name="sim.telemetry")
            if self.alarm_interval_s is not None:
                group.create_task(self._alarms(self.alarm_interval_s), name="sim.alarms")

    async def _telemetry(self) -> None:
        heart_rate = 72
        while True:
            for _ in range(self.burst):
                heart_rate = max(45, min(130, heart_rate + self._rng.randint(-3, 3)))
                await self.sink.emit(
                    "telemetry.vitals", {"heart_rate": heart_rate, "contact": True}, SIM_WATCH
                )
            await asyncio.sleep(self.telemetry_interval_s)

    async def _alarms(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            press = self._rng.choice(["short", "long"])
            alarm_id = await self.alarms.raise_alarm(
                "alarm.button",
                {"press": press, "battery": self._rng.randint(20, 100), "rssi": -60},
                SIM_BUTTON,
            )
            log.info("sim_alarm_raised", alarm_id=alarm_id, press=press)
