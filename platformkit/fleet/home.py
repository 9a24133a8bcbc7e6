"""One simulated home: the daemon's own composition (store, outbox, uplink, heartbeat,
commands) in a state directory of its own, fed by ``HomeTraffic``, and what it observed."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.app import config
from gateway.app.daemon import Gateway
from gateway.core.ports import AlarmRaiser, AlarmState, EventSink
from gateway.core.supervisor import Factory
from platformkit.fleet.traffic import HomeTraffic, TrafficSettings


@dataclass(frozen=True, slots=True)
class HomeSettings:
    """What every home of a fleet shares (the rest is the shipped configuration's defaults)."""

    host: str
    port: int
    protocol: str = "5"
    heartbeat_s: float = 60.0
    group_commit_s: float = 60.0
    backoff_min_s: float = 0.5
    backoff_cap_s: float = 60.0
    ack_timeout_s: float = 30.0
    vitals_interval_s: float | None = None  # None: the shipped intervals per metric
    traffic: TrafficSettings = field(default_factory=TrafficSettings)


@dataclass(slots=True)
class AlarmLog:
    """The alarm states the gateway told its listeners, first time each (monotonic s)."""

    states: dict[str, dict[str, float]] = field(default_factory=dict)
    undelivered: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set on every state told

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None:
        if state is AlarmState.UNDELIVERED:
            self.undelivered += 1
        self.states.setdefault(alarm_id, {}).setdefault(state.value, time.monotonic())
        self.changed.set()


def home_config(
    gateway_id: str, state_dir: Path, settings: HomeSettings, port: int
) -> config.GatewayConfig:
    mqtt: dict[str, Any] = {
        "host": settings.host,
        "port": port,
        "plaintext": True,
        "protocol": settings.protocol,
        "backoff_min_s": settings.backoff_min_s,
        "backoff_cap_s": settings.backoff_cap_s,
    }
    sections: dict[str, Any] = {
        "gateway": {
            "id": gateway_id,
            "state_dir": str(state_dir),
            "control_socket": str(state_dir / "control.sock"),
            "heartbeat_s": settings.heartbeat_s,
        },
        "mqtt": mqtt,
        "outbox": {"group_commit_s": settings.group_commit_s},
        "alarms": {"ack_timeout_s": settings.ack_timeout_s},
    }
    if settings.vitals_interval_s is not None:
        metrics = ("heart_rate", "rr_ms", "spo2", "pulse_rate", "steps")
        sections["vitals"] = {"intervals": dict.fromkeys(metrics, settings.vitals_interval_s)}
    return config.parse(sections, source="<fleet>")


class FleetGateway(Gateway):
    """The daemon's ``Gateway``; at shutdown it notes what its outbox still held when closed."""

    left_queued: dict[str, int] | None = None

    async def shutdown(self, lifecycle: dict[str, Any]) -> None:
        close = self.outbox.close

        async def close_counting() -> None:
            try:
                self.left_queued = dict((await self.outbox.stats()).queued)
            finally:
                await close()

        self.outbox.close = close_counting  # type: ignore[method-assign]
        await super().shutdown(lifecycle)


class Home:
    """A gateway, its traffic and what it saw; ``run`` until ``stop`` is set."""

    def __init__(
        self, index: int, gateway_id: str, state_dir: Path, settings: HomeSettings, seed: int
    ) -> None:
        self.index = index
        self.gateway_id = gateway_id
        self.state_dir = state_dir
        self.settings = settings
        self.port = settings.port
        self.alarm_log = AlarmLog()
        self.gateway: FleetGateway | None = None
        self.traffic: HomeTraffic | None = None
        self.seed = seed
        self.started_mono: float | None = None
        self.online_mono: float | None = None
        self.online = asyncio.Event()  # connected once
        self.error: str | None = None

    def build(self) -> FleetGateway:
        cfg = home_config(self.gateway_id, self.state_dir, self.settings, self.port)
        self.traffic = HomeTraffic(
            self.gateway_id,
            self.index,
            self.settings.traffic,
            cfg.vitals.intervals.model_dump(),
            random.Random(self.seed),
        )
        traffic = self.traffic
        traffic.press_ended = self.alarm_log.changed.set

        def source(sink: EventSink, alarms: AlarmRaiser) -> Factory:
            return lambda: traffic.run(sink, alarms)

        gateway = FleetGateway(cfg, sources={f"fleet[{self.gateway_id}]": source})
        self.traffic.link_up = gateway.uplink.connected.is_set
        gateway.alarms.subscribe(self.alarm_log)
        self.gateway = gateway
        return gateway

    async def run(self, stop: asyncio.Event) -> None:
        gateway = self.gateway or self.build()
        self.started_mono = time.monotonic()
        watch = asyncio.create_task(self._online(gateway))
        try:
            await gateway.run(stop)
        except Exception as exc:  # noqa: BLE001 - one home's failure is reported, not fatal
            self.error = repr(exc)
        finally:
            watch.cancel()

    async def _online(self, gateway: Gateway) -> None:
        await gateway.uplink.connected.wait()
        self.online_mono = time.monotonic()
        self.online.set()

    async def press(self) -> str | None:
        """A press of the button now (an injected alarm); None before the gateway runs."""
        if self.gateway is None or self.traffic is None or not self.gateway.started.is_set():
            return None
        return await self.traffic.press(self.gateway.alarms)

    def pause_alarms(self) -> None:
        """No more presses; vitals, heartbeats and supervision go on."""
        if self.traffic is not None:
            self.traffic.alarms_paused = True

    async def alarms_answered(self) -> None:
        """Until no press is being stored and every alarm raised here reached the gateway's
        "acknowledged" (the senior's feedback)."""
        log, traffic = self.alarm_log, self.traffic
        while True:
            log.changed.clear()
            raised = traffic.alarms_raised if traffic is not None else []
            pressing = traffic.pressing if traffic is not None else 0
            if not pressing and all(
                "acknowledged" in log.states.get(a.alarm_id, {}) for a in raised
            ):
                return
            await log.changed.wait()

    def result(self) -> dict[str, Any]:
        """What the home saw, for the report (JSON)."""
        gateway, traffic = self.gateway, self.traffic
        store = gateway.outbox.store if gateway is not None else None
        return {
            "gw": self.gateway_id,
            "error": self.error,
            "last_seq": store.last_handed_out if store is not None else 0,
            "left_queued": gateway.left_queued if gateway is not None else None,
            "connects": gateway.uplink.stats.connects if gateway is not None else 0,
            "subscribe_refused": gateway.uplink.stats.subscribe_refused if gateway else 0,
            "events_emitted": traffic.events_emitted if traffic is not None else 0,
            "started_mono": self.started_mono,
            "online_mono": self.online_mono,
            "alarms": [
                {
                    "id": raised.alarm_id,
                    "raised_mono": raised.raised_mono,
                    "stored_mono": raised.stored_mono,
                    "link_down": raised.link_down,
                    "states": self.alarm_log.states.get(raised.alarm_id, {}),
                }
                for raised in (traffic.alarms_raised if traffic is not None else [])
            ],
            "undelivered_told": self.alarm_log.undelivered,
        }
