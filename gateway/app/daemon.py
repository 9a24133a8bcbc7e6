"""The composition root: builds every component from the configuration and runs them."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

import structlog

from drivers.button.pairing import PairingStore
from drivers.button.serial import SerialButtonLink
from drivers.camera.gpio import GpiodLine, OutputLine, RelayTrigger, UnavailableLine
from drivers.camera.policy import CameraPolicy
from drivers.watch.fleet import WatchFleet
from drivers.watch.store import WatchStore
from gateway.app.alarms import AlarmTracker
from gateway.app.commands import CommandProcessor
from gateway.app.config import CameraSection, GatewayConfig
from gateway.app.control import ControlServer
from gateway.app.control import Handler as ControlHandler
from gateway.app.diagnose import DaemonDiagnosis, TestAlarm
from gateway.app.handlers import (
    ButtonCommands,
    CameraCommands,
    GatewayCommands,
    SettingsCommand,
    WatchCommands,
)
from gateway.app.housekeeping import ClockWatcher, GatewayStatus, Heartbeat
from gateway.app.sdnotify import GatewayState, SystemdNotifier, status_loop, watchdog_loop
from gateway.app.settings import RemoteSettings
from gateway.core.clock import Clock, SystemClock, read_boot_id
from gateway.core.errors import StoreError
from gateway.core.events import NewEvent
from gateway.core.ports import AlarmRaiser, EventSink
from gateway.core.supervisor import Factory, Supervisor
from gateway.store.alarms import AlarmTiming
from gateway.store.outbox import Outbox
from gateway.store.sink import EventFactory, OutboxSink
from gateway.store.sqlite import SqliteStore
from gateway.uplink.link import MqttUplink

log = structlog.get_logger("gateway.app.daemon")

GIL_SWITCH_INTERVAL_S = 0.0005
SHUTDOWN_DRAIN_S = 3.0
SHUTDOWN_TASKS_S = 5.0  # the watches disconnect (bounded by watch.disconnect_timeout_s)
STATUS_LINE_S = 2.0  # how often the systemd status line is looked at (sent when it changes)

# An event source beyond the configured devices (the simulated rig's): given the sink and the
# alarm raiser, it returns the coroutine function the supervisor runs.
EventSource = Callable[[EventSink, AlarmRaiser], Factory]


def version() -> str:
    try:
        return metadata.version("carebed")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class Gateway:
    """Everything the daemon runs, wired together."""

    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
        boot_id: str | None = None,
        relay_line: OutputLine | None = None,
        sources: Mapping[str, EventSource] | None = None,
    ) -> None:
        self.remote_settings = RemoteSettings(cfg.remote_settings_path)
        cfg = self.remote_settings.load(cfg)
        self.clock = clock or SystemClock()
        self.notifier = notifier or SystemdNotifier.from_env()
        self.boot_id = boot_id or read_boot_id()
        self.version = version()
        self.factory = EventFactory(self.clock, self.boot_id)
        self.store = SqliteStore(
            cfg.outbox_path,
            max_bytes=cfg.outbox.max_bytes,
            timing=AlarmTiming(
                ack_timeout_s=cfg.alarms.ack_timeout_s,
                resend_interval_s=cfg.alarms.resend_interval_s,
                give_up_after_s=cfg.alarms.give_up_after_s,
            ),
            make_dropped=self._dropped_event,
            now=self.clock.wall,
            monotonic_ns=self.clock.monotonic_ns,
            boot_id=self.boot_id,
            clock_synced=self.clock.is_synced,
        )
        self.outbox = Outbox(self.store, group_commit_s=cfg.outbox.group_commit_s)
        self.sink = OutboxSink(self.outbox, self.factory)
        self.alarms = AlarmTracker(self.sink)
        self.status = GatewayStatus(self.outbox, self.clock, self.version)
        self.commands = CommandProcessor(self.outbox, self.sink, self.clock)
        self.heartbeat = Heartbeat(self.status, self.sink, cfg.gateway.heartbeat_s)
        self.button: SerialButtonLink | None = None
        if cfg.button.enabled:
            self.button = SerialButtonLink(
                cfg.button,
                gateway_id=cfg.gateway_id,
                sink=self.sink,
                alarms=self.alarms,
                pairing=PairingStore(cfg.pairing_path),
                clock=self.clock,
            )
            self.alarms.subscribe(self.button)
            self.status.add_fault_source(self.button)  # a damaged pairing list
        self.camera: CameraPolicy | None = None
        if cfg.camera.enabled:
            self.camera = self._camera_policy(cfg.camera, relay_line)
            self.alarms.subscribe(self.camera)
        self.watches: WatchFleet | None = None
        if cfg.watch.enabled:
            self.watches = WatchFleet(
                cfg.watch,
                cfg.vitals,
                configured=cfg.watch.addresses,
                store=WatchStore(cfg.watches_path),
                sink=self.sink,
                alarms=self.alarms,
                clock=self.clock,
            )
            self.alarms.subscribe(self.watches)
        self.uplink = MqttUplink(
            cfg.gateway_id,
            cfg.mqtt,
            self.outbox,
            self.alarms,
            self.commands.handle,
            username=cfg.mqtt_username,
            version=self.version,
            boot_id=self.boot_id,
            wall=self.clock.wall,
        )
        self.sources = {
            name: make(self.sink, self.alarms) for name, make in (sources or {}).items()
        }
        self.supervisor = Supervisor()
        self.settings = SettingsCommand(
            cfg,
            self.remote_settings,
            heartbeat=self.heartbeat,
            watches=self.watches,
            sink=self.sink,
        )
        self.control = ControlServer(cfg.control_socket, self._wire_commands(cfg))
        self.started = asyncio.Event()

    def _dropped_event(self, count: int, ranges: list[tuple[int, int]], reason: str) -> NewEvent:
        return self.factory.make(
            "gateway.dropped", {"count": count, "seq_ranges": ranges, "reason": reason}
        )

    def _camera_policy(self, camera: CameraSection, line: OutputLine | None) -> CameraPolicy:
        if camera.trigger == "relay":
            if line is None:
                try:
                    line = GpiodLine(
                        camera.relay_chip, camera.relay_line, active_low=camera.relay_active_low
                    )
                except (OSError, ImportError, ValueError) as exc:
                    # A camera problem must never keep the gateway (and its alarms) down.
                    log.error(  # noqa: TRY400 - the reason is in the message
                        "camera_relay_unavailable", chip=camera.relay_chip, error=str(exc)
                    )
                    line = UnavailableLine(str(exc))
            return CameraPolicy(
                camera, sink=self.sink, relay=RelayTrigger(line, camera.relay_pulse_s)
            )
        from drivers.camera.http import HttpCamera  # noqa: PLC0415 - httpx only with an HTTP camera

        return CameraPolicy(
            camera,
            sink=self.sink,
            camera_factory=lambda: HttpCamera(
                camera.url,
                user=camera.user,
                password=camera.password.get_secret_value(),
                fingerprint_sha256=camera.fingerprint_sha256,
                request_timeout_s=camera.request_timeout_s,
            ),
        )

    @property
    def cfg(self) -> GatewayConfig:
        """The configuration in force: the file's, with the platform's ``config.set`` laid over."""
        return self.settings.cfg

    def _wire_commands(self, cfg: GatewayConfig) -> dict[str, ControlHandler]:
        """Register the platform's commands; the control socket's, returned."""
        gateway = GatewayCommands(
            cfg.gateway_id,
            status=self.status,
            outbox=self.outbox,
            uplink=self.uplink,
            alarms=self.alarms,
            button=self.button,
            watches=self.watches,
        )
        buttons = ButtonCommands(self.button)
        camera = CameraCommands(self.camera, remote_access=cfg.camera.remote_access)
        watches = WatchCommands(self.watches)
        self.commands.register("ping", gateway.ping, audited=False)
        self.commands.register("status", gateway.status, audited=False)
        self.commands.register("test_alarm", gateway.test_alarm)
        self.commands.register("config.set", self.settings.config_set)
        if self.button is not None:
            self.commands.register("button.pair", buttons.pair)
            self.commands.register("button.unpair", buttons.unpair)
        self.commands.register("camera.call", camera.call)
        diagnosis = DaemonDiagnosis(
            uplink=self.uplink,
            button=self.button,
            receiver_answer_s=cfg.button.receiver_answer_s,
            watches=self.watches,
            camera=self.camera,
            clock=self.clock,
            sink=self.sink,
            outbox=self.outbox,
        )
        test_alarm = TestAlarm(cfg.gateway_id, self.alarms, self.clock)
        return {
            "doctor": diagnosis.control_doctor,
            "test_alarm": test_alarm.control_test_alarm,
            "status": gateway.control_status,
            "button.list": buttons.control_list,
            "button.pair": buttons.control_pair,
            "button.unpair": buttons.control_unpair,
            "button.confirm": buttons.control_confirm,
            "camera.test": camera.control_test,
            "watch.list": watches.control_list,
            "watch.scan": watches.control_scan,
            "watch.pair": watches.control_pair,
            "watch.unpair": watches.control_unpair,
        }

    async def run(self, stop: asyncio.Event) -> int:
        # The event loop, the store thread and paho's thread share the GIL; at the default 5 ms
        # switch interval an alarm waits for whichever thread is busy with the backlog.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        report = await self.outbox.open()
        lifecycle = {"version": self.version, "boot_id": self.boot_id}
        if report.lost_ranges:
            count = sum(last - first + 1 for first, last in report.lost_ranges)
            await self.sink.emit(
                "gateway.dropped",
                {"count": count, "seq_ranges": report.lost_ranges, "reason": report.loss_reason},
            )
        await self.sink.emit("gateway.started", lifecycle)
        self.supervisor.start(f"uplink[{self.cfg.mqtt.host}]", self.uplink.run)
        self.supervisor.start("gateway.heartbeat", self.heartbeat.run)
        watcher = ClockWatcher(self.clock, self.outbox, self.sink, self.boot_id)
        self.supervisor.start("gateway.clock", watcher.run)
        interval = self.notifier.watchdog_interval_s
        if interval is not None:
            self.supervisor.start(
                "systemd.watchdog", lambda: watchdog_loop(self.notifier, interval)
            )
        self.supervisor.start("gateway.control", self.control.run)
        if self.button is not None:
            self.supervisor.start(f"button[{self.cfg.button.port}]", self.button.run)
        if self.watches is not None:
            self.supervisor.start(f"watches[{self.cfg.watch.adapter}]", self.watches.run)
        for name, source in self.sources.items():
            self.supervisor.start(name, source)
        # Everything allocated so far lives as long as the daemon: keep it out of the collector's
        # full passes, which otherwise pause the loop for ~10 ms while a backlog drains.
        gc.freeze()
        log.info("gateway_started", gw=self.cfg.gateway_id, version=self.version)
        self.notifier.ready(str(await self.state()))
        if self.notifier.enabled:
            self.supervisor.start(
                "systemd.status", lambda: status_loop(self.notifier, self.state, STATUS_LINE_S)
            )
        self.started.set()
        await stop.wait()
        await self.shutdown(lifecycle)
        return 0

    async def state(self) -> GatewayState:
        """The systemd status line's facts."""
        return GatewayState(
            uplink_up=self.uplink.connected.is_set(),
            buttons=None if self.button is None else len(self.button.pairing.buttons()),
            watches=None if self.watches is None else len(self.watches.addresses()),
            alarms_pending=await self.outbox.count_held_alarms(),
        )

    async def shutdown(self, lifecycle: dict[str, Any]) -> None:
        log.info("gateway_stopping")
        self.notifier.stopping()
        for name in self.sources:  # nothing more from them after gateway.stopping
            await self.supervisor.stop(name)
        # Not written now: the drain delivers it (and anything else in memory), and the
        # outbox's close writes whatever it could not (a full disk: close() logs what is lost).
        try:
            await self.sink.emit("gateway.stopping", lifecycle)
        except StoreError as exc:
            log.error("shutdown_store_failed", error=str(exc))  # noqa: TRY400
        await self.uplink.stop(SHUTDOWN_DRAIN_S)
        await self.supervisor.stop_all(SHUTDOWN_TASKS_S)  # the alarm sources first
        if self.camera is not None:
            await self.camera.close()
        await self.outbox.close()
        log.info("gateway_stopped")


class StopRequest:
    """Records SIGTERM/SIGINT from the first moment of the process, before the loop exists."""

    def __init__(self) -> None:
        self.requested = False
        self._event: asyncio.Event | None = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True
        if self._event is not None:
            self._event.set()

    def attach(self) -> asyncio.Event:
        """An event set by the signals, handled from now on by the running loop."""
        self._event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._event.set)
        if self.requested:
            self._event.set()
        return self._event


async def run(
    cfg: GatewayConfig,
    stop_request: StopRequest,
    sources: Mapping[str, EventSource] | None = None,
) -> int:
    """Run the daemon until SIGTERM or SIGINT."""
    return await Gateway(cfg, sources=sources).run(stop_request.attach())
