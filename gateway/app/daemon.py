"""The composition root: builds every component from the configuration and runs them."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import metadata
from typing import Any

import structlog

from drivers.button.codec import device_id
from drivers.button.pairing import PairingStore
from drivers.button.serial import SerialButtonLink, parse_device
from drivers.camera.gpio import GpiodLine, OutputLine, RelayTrigger, UnavailableLine
from drivers.camera.http import HttpCamera
from drivers.camera.policy import CameraPolicy
from drivers.watch.fleet import MAX_SCAN_S, WatchCheckError, WatchFleet
from drivers.watch.store import WatchStore
from gateway.app.alarms import AlarmTracker
from gateway.app.commands import CommandProcessor, no_args
from gateway.app.config import CameraSection, GatewayConfig, ble_address
from gateway.app.control import ControlServer
from gateway.app.housekeeping import ClockWatcher, GatewayStatus, Heartbeat
from gateway.app.sdnotify import SystemdNotifier, watchdog_loop
from gateway.app.settings import RemoteSettings
from gateway.core.clock import Clock, SystemClock, read_boot_id
from gateway.core.errors import CommandError, ControlError, StoreError
from gateway.core.events import NewEvent
from gateway.core.ports import AlarmRaiser, EventSink
from gateway.core.supervisor import Factory, Supervisor
from gateway.store.outbox import AlarmTiming, Outbox, SqliteStore
from gateway.store.sink import EventFactory, OutboxSink
from gateway.uplink.link import MqttUplink

log = structlog.get_logger("gateway.app.daemon")

GIL_SWITCH_INTERVAL_S = 0.0005
SHUTDOWN_DRAIN_S = 3.0
SHUTDOWN_TASKS_S = 5.0  # the watches disconnect (bounded by watch.disconnect_timeout_s)

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
        self.cfg = cfg
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
        self.commands.register("ping", self._ping, audited=False)
        self.commands.register("status", self._status, audited=False)
        self.commands.register("test_alarm", self._test_alarm)
        self.commands.register("config.set", self._config_set)
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
            self.commands.register("button.pair", self._button_pair)
            self.commands.register("button.unpair", self._button_unpair)
        self.camera: CameraPolicy | None = None
        if cfg.camera.enabled:
            self.camera = self._camera_policy(cfg.camera, relay_line)
            self.alarms.subscribe(self.camera)
        self.commands.register("camera.call", self._camera_call)
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
        self.control = ControlServer(
            cfg.control_socket,
            {
                "button.list": self._control_list,
                "button.pair": self._control_pair,
                "button.unpair": self._control_unpair,
                "button.confirm": self._control_confirm,
                "camera.test": self._control_camera_test,
                "watch.list": self._control_watch_list,
                "watch.scan": self._control_watch_scan,
                "watch.pair": self._control_watch_pair,
                "watch.unpair": self._control_watch_unpair,
            },
        )
        self.started = asyncio.Event()

    def _dropped_event(self, count: int, ranges: list[tuple[int, int]], reason: str) -> NewEvent:
        return self.factory.make(
            "gateway.dropped", {"count": count, "seq_ranges": ranges, "reason": reason}
        )

    async def _ping(self, args: dict[str, Any]) -> dict[str, Any]:
        no_args(args)
        return {"pong": True}

    async def _status(self, args: dict[str, Any]) -> dict[str, Any]:
        no_args(args)
        snapshot = await self.status.snapshot()
        devices: list[dict[str, Any]] = [] if self.button is None else [self.button.status()]
        if self.watches is not None:
            devices.append({"watches": self.watches.status()})
        snapshot["devices"] = devices
        snapshot["alarms_held"] = len(await self.outbox.held_alarms())
        snapshot["uplink"] = {
            "connected": self.uplink.connected.is_set(),
            "rejected_messages": self.uplink.stats.rejected_messages,
        }
        return snapshot

    async def _test_alarm(self, args: dict[str, Any]) -> dict[str, Any]:
        """The whole alarm chain with ``data.test: true``; no camera, no button is told."""
        no_args(args)
        data = {"press": "short", "battery": None, "rssi": None, "test": True}
        alarm_id = await self.alarms.raise_alarm("alarm.button", data, f"rcv-{self.cfg.gateway_id}")
        return {"alarm_id": alarm_id}

    async def _config_set(self, args: dict[str, Any]) -> dict[str, Any]:
        """The platform changes intervals or thresholds: validated, applied, persisted, audited."""
        self.cfg, changes = self.remote_settings.apply(self.cfg, args)
        if not changes:
            return {"changed": []}
        self.heartbeat.set_interval(self.cfg.gateway.heartbeat_s)
        if self.watches is not None:
            self.watches.update_vitals(self.cfg.vitals)
        log.info("config_changed", by="platform", keys=[change["key"] for change in changes])
        await self.sink.emit(
            "audit.config_changed",
            {"who": "platform", "what": "config.set", "why": None, "changes": changes},
        )
        return {"changed": [change["key"] for change in changes]}

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

    async def _camera_call(self, args: dict[str, Any]) -> dict[str, Any]:
        """The platform asks for a call: only when remote camera access is enabled here."""
        if self.camera is None or not self.cfg.camera.remote_access:
            raise CommandError("forbidden", "remote camera access is disabled on this gateway")
        alarm_id, reason = args.get("alarm_id"), args.get("reason")
        if (
            set(args) - {"alarm_id", "reason"}
            or not isinstance(reason, str)
            or not (alarm_id is None or isinstance(alarm_id, str))
        ):
            raise CommandError("invalid_args", "takes reason (text) and alarm_id (id or null)")
        self.camera.call_for_platform(alarm_id, reason)
        return {"requested": True}

    def _require_button(self) -> SerialButtonLink:
        if self.button is None:
            raise CommandError("forbidden", "no button receiver is configured on this gateway")
        return self.button

    async def _button_pair(self, args: dict[str, Any]) -> dict[str, Any]:
        button = self._require_button()
        duration = args.get("duration_s", 60)
        if set(args) - {"duration_s"} or not isinstance(duration, int) or not 1 <= duration <= 255:
            raise CommandError("invalid_args", "takes duration_s, an integer from 1 to 255")
        try:
            button.open_pairing(duration)
        except ConnectionError as exc:
            raise CommandError("busy", str(exc)) from exc
        return {"duration_s": duration}

    async def _button_unpair(self, args: dict[str, Any]) -> dict[str, Any]:
        button = self._require_button()
        if set(args) != {"device"}:
            raise CommandError("invalid_args", "takes exactly one argument, device")
        try:
            bid = parse_device(str(args["device"]))
        except ValueError as exc:
            raise CommandError("invalid_args", f"{exc} (e.g. btn-00A1B2C3)") from exc
        return {"unpaired": await button.unpair(bid)}

    # ------------------------------------------------------------------ control socket

    def _control_button(self) -> SerialButtonLink:
        if self.button is None:
            raise ControlError("no button receiver is configured ([button] enabled = false)")
        return self.button

    async def _control_list(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        yield self._control_button().status()

    async def _control_unpair(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        button = self._control_button()
        try:
            bid = parse_device(str(args.get("device")))
        except ValueError as exc:
            raise ControlError(str(exc)) from exc
        yield {"device": device_id(bid), "unpaired": await button.unpair(bid)}

    async def _control_confirm(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        button = self._control_button()
        confirmed = button.confirm_pairing()
        yield {"confirmed": confirmed, "buttons": [device_id(b) for b in button.pairing.buttons()]}

    async def _control_camera_test(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        if self.camera is None:
            raise ControlError("no camera is configured ([camera] enabled = false)")
        yield {"event": "status", **await self.camera.check()}
        if args.get("call"):
            self.camera.test_call()  # runs on; its states go to the platform as camera.call
            yield {"event": "called", "device": self.camera.device}

    def _control_watches(self) -> WatchFleet:
        if self.watches is None:
            raise ControlError("watches are not enabled ([watch] enabled = false)")
        return self.watches

    async def _control_watch_list(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        yield {"watches": self._control_watches().status()}

    async def _control_watch_scan(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        seconds = args.get("seconds", 10)
        if not isinstance(seconds, int) or not 1 <= seconds <= MAX_SCAN_S:
            raise ControlError(f"seconds must be an integer from 1 to {MAX_SCAN_S}")
        async for report in self._control_watches().scan(seconds):
            yield report
        yield {"event": "done"}

    @staticmethod
    def _watch_address(args: dict[str, Any]) -> str:
        try:
            return ble_address(str(args.get("address", "")))
        except ValueError as exc:
            raise ControlError(str(exc)) from exc

    async def _control_watch_pair(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        watches = self._control_watches()
        address = self._watch_address(args)
        yield {"event": "checking", "address": address}
        try:
            yield {"event": "paired", **await watches.pair(address)}
        except WatchCheckError as exc:
            raise ControlError(str(exc)) from exc

    async def _control_watch_unpair(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        address = self._watch_address(args)
        try:
            unpaired = await self._control_watches().unpair(address)
        except WatchCheckError as exc:
            raise ControlError(str(exc)) from exc
        yield {"address": address, "unpaired": unpaired}

    async def _control_pair(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        button = self._control_button()
        seconds = args.get("seconds", 60)
        if not isinstance(seconds, int) or not 1 <= seconds <= 255:
            raise ControlError("seconds must be an integer from 1 to 255")
        try:
            button.open_pairing(seconds)
        except ConnectionError as exc:
            raise ControlError(str(exc)) from exc
        paired: list[str] = []
        yield {"event": "open", "seconds": seconds}
        async for bid in button.paired_during(seconds):
            paired.append(device_id(bid))
            yield {"event": "paired", "device": device_id(bid)}
        yield {"event": "closed", "paired": paired}

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
        self.notifier.ready(f"carebed {self.version} running")
        self.started.set()
        await stop.wait()
        await self.shutdown(lifecycle)
        return 0

    async def shutdown(self, lifecycle: dict[str, Any]) -> None:
        log.info("gateway_stopping")
        self.notifier.stopping()
        for name in self.sources:  # nothing more from them once gateway.stopping is stored
            await self.supervisor.stop(name)
        try:
            await self.sink.emit("gateway.stopping", lifecycle)
            await self.outbox.flush()
        except StoreError as exc:  # a full disk: what could not be stored is logged by close()
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
