"""A home's traffic through the gateway's own sink and alarm path: vitals, a button, alarms.

A watch's readings go through the watch driver's ``VitalsAggregator`` at the configured
intervals; the emergency button's supervision through ``Presence`` and ``BatteryReporter`` (the
button driver's reporters); alarms through the gateway's ``AlarmTracker`` (``raise_alarm``), as a
button press would. The heartbeat and the lifecycle events are the gateway's own.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.watch.vitals import VitalsAggregator
from gateway.core.kinds import EventKind
from gateway.core.ports import AlarmRaiser, EventSink
from gateway.core.presence import BatteryReporter, Emit, Presence

LOW_BATTERY_PERCENT = 20  # the button driver's default
BATTERY_STEP = 10  # a report when the level moved this much


@dataclass(frozen=True, slots=True)
class TrafficSettings:
    """How a simulated home behaves (seconds)."""

    reading_s: float = 5.0  # the watch's readings (it notifies ~1 Hz; sampled here)
    button_supervision_s: float = 300.0  # a button's sign of life
    supervision_miss: float = 0.02  # share of supervision periods the button is not heard
    alarm_interval_s: float = 600.0  # mean time between two alarms of a home (exponential)


@dataclass(slots=True)
class RaisedAlarm:
    alarm_id: str
    raised_mono: float  # before raise_alarm was called
    stored_mono: float  # raise_alarm returned: on disk
    link_down: bool  # raised while the gateway's link was down (an outage, a reconnection)


@dataclass(slots=True)
class HomeTraffic:
    """One home's event producers; ``run`` is the daemon's event source."""

    gateway_id: str
    index: int
    settings: TrafficSettings
    vitals_intervals_s: Mapping[str, float]
    rng: random.Random
    alarms_raised: list[RaisedAlarm] = field(default_factory=list)
    events_emitted: int = 0
    link_down: bool = False  # an injected outage is on
    alarms_paused: bool = False  # the run's end: no new press, the rest of the traffic goes on
    pressing: int = 0  # presses whose alarm is being stored
    press_ended: Callable[[], None] = lambda: None  # told when a press is stored (or failed)
    link_up: Callable[[], bool] = lambda: True  # the gateway's own view of its link

    @property
    def watch(self) -> str:
        return f"watch-F1EE7{self.index:07X}"

    @property
    def button(self) -> str:
        return f"btn-{0xF1000000 + self.index:08X}"

    async def run(self, sink: EventSink, alarms: AlarmRaiser) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch(sink), name=f"fleet[{self.gateway_id}].watch")
            group.create_task(self._button(sink), name=f"fleet[{self.gateway_id}].button")
            group.create_task(self._alarms(alarms), name=f"fleet[{self.gateway_id}].alarms")

    async def _emit(
        self, sink: EventSink, kind: EventKind, data: dict[str, Any], device: str
    ) -> None:
        await sink.emit(kind, data, device)
        self.events_emitted += 1

    async def _watch(self, sink: EventSink) -> None:
        aggregator = VitalsAggregator(self.vitals_intervals_s)
        rng = self.rng
        heart_rate, spo2, steps = rng.randint(60, 85), 97.0, 0
        await asyncio.sleep(rng.uniform(0, self.settings.reading_s))
        while True:
            now = time.monotonic()
            heart_rate = max(45, min(130, heart_rate + rng.randint(-2, 2)))
            spo2 = max(90.0, min(100.0, spo2 + rng.choice((-0.5, 0.0, 0.5))))
            steps += rng.randint(0, 12)
            aggregator.add("heart_rate", heart_rate, now)
            aggregator.add("pulse_rate", heart_rate, now)
            aggregator.add("spo2", spo2, now)
            aggregator.add("steps", steps, now)
            aggregator.add("rr_ms", [round(60000 / heart_rate)], now)
            data = aggregator.due(now)
            if data is not None:
                data["contact"] = True
                await self._emit(sink, "telemetry.vitals", data, self.watch)
            await asyncio.sleep(self.settings.reading_s)

    async def _button(self, sink: EventSink) -> None:
        rng = self.rng
        emit = self._counting(sink)
        presence = Presence(self.button, emit)
        battery = BatteryReporter(
            self.button, emit, low_percent=LOW_BATTERY_PERCENT, step=BATTERY_STEP
        )
        level = rng.randint(40, 100)
        await asyncio.sleep(rng.uniform(0, self.settings.button_supervision_s))
        while True:
            if rng.random() < self.settings.supervision_miss:
                await presence.went_offline("supervision_timeout")
            else:
                presence.heard(time.time())
                await presence.came_online("heard")
                if rng.random() < 0.2:
                    level = max(0, level - 1)
                await battery.level(level)
            await asyncio.sleep(self.settings.button_supervision_s)

    def _counting(self, sink: EventSink) -> Emit:
        async def emit(kind: EventKind, data: dict[str, Any], device: str | None) -> str:
            self.events_emitted += 1
            return await sink.emit(kind, data, device)

        return emit

    async def _alarms(self, alarms: AlarmRaiser) -> None:
        rng = self.rng
        while True:
            await asyncio.sleep(rng.expovariate(1 / self.settings.alarm_interval_s))
            if not self.alarms_paused:
                await self.press(alarms)

    async def press(self, alarms: AlarmRaiser) -> str:
        """A press of the home's button: an ``alarm.button`` through the gateway's alarm path."""
        raised = time.monotonic()
        down = self.link_down or not self.link_up()
        self.pressing += 1
        try:
            alarm_id = await alarms.raise_alarm(
                "alarm.button",
                {"press": self.rng.choice(("short", "long")), "battery": 80, "rssi": -60},
                self.button,
            )
            self.alarms_raised.append(RaisedAlarm(alarm_id, raised, time.monotonic(), down))
            self.events_emitted += 1
        finally:
            self.pressing -= 1
            self.press_ended()
        return alarm_id
