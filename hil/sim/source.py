"""A simulated event source: a watch's heart rate and an occasional button alarm."""

from __future__ import annotations

import asyncio
import random
import tomllib
from pathlib import Path
from typing import Annotated

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.core.errors import ConfigError
from gateway.core.ports import AlarmRaiser, EventSink
from gateway.core.supervisor import Factory

log = structlog.get_logger("hil.sim")

SIM_WATCH = "watch-C0FFEE000001"
SIM_BUTTON = "btn-0000A11C"


class SimSettings(BaseModel):
    """The ``[sim]`` table of the rig's settings file: how fast and how much the source emits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    telemetry_interval_s: Annotated[float, Field(gt=0)] = 5.0
    alarm_interval_s: Annotated[float, Field(gt=0)] | None = None
    burst: Annotated[int, Field(ge=1, le=10000)] = 1
    seed: int | None = None

    def source(self, sink: EventSink, alarms: AlarmRaiser) -> Factory:
        """The ``EventSource`` the daemon starts: this source's ``run``."""
        return SimEventSource(sink, alarms, **self.model_dump()).run


class _SimFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sim: SimSettings = SimSettings()


def load_settings(path: Path) -> SimSettings:
    """Read the ``[sim]`` table of ``path``; ConfigError names the key that is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), [f"cannot read it: {exc}"]) from exc
    try:
        return _SimFile.model_validate(data).sim
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        ]
        raise ConfigError(str(path), problems) from exc


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
