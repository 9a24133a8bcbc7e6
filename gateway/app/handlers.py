"""The commands the gateway serves: the platform's (``down/cmd``) and the installer's (socket).

Each command reads its arguments into a frozen model; a command both paths offer (pairing and
unpairing a button) reads the same model on both. What was wrong is said in one place, naming the
argument and what it must be, and becomes the path's error: ``CommandError("invalid_args")`` for
the platform, ``ControlError`` for the control socket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, TypeVar

import structlog
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from drivers.button.codec import device_id
from drivers.button.errors import ReceiverUnavailableError
from drivers.button.serial import SerialButtonLink, parse_device
from drivers.camera.policy import CameraPolicy
from drivers.watch.errors import WatchCheckError
from drivers.watch.fleet import MAX_SCAN_S, WatchFleet
from gateway.app.alarms import AlarmTracker
from gateway.app.config import GatewayConfig, ble_address
from gateway.app.housekeeping import GatewayStatus, Heartbeat
from gateway.app.settings import RemoteSettings
from gateway.core.errors import CommandError, ControlError
from gateway.core.i18n import N_, _
from gateway.store.outbox import Outbox
from gateway.store.sink import OutboxSink
from gateway.uplink.link import MqttUplink

log = structlog.get_logger("gateway.app.handlers")

MAX_PAIRING_S = 255  # PAIR_MODE carries the duration in one byte

ArgsT = TypeVar("ArgsT", bound="Args")
Reply = AsyncIterator[dict[str, Any]]


# ------------------------------------------------------------------------------ arguments


class Args(BaseModel):
    """A command's arguments: only its fields, each of its type as sent ("30" is not 30).

    Each field's ``description`` completes "NAME must be …" in what the caller reads (marked
    for the catalogs with ``N_``, translated where it is read)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class NoArgs(Args):
    """A command that takes no arguments."""


def _button_id(value: object) -> int:
    """``btn-00A1B2C3`` as the button's id; one sentence for any other value (``parse_device``
    lets ``int`` speak for bad hex digits)."""
    try:
        if isinstance(value, str):
            return parse_device(value)
    except ValueError:
        pass
    raise ValueError(
        _("{value} is not a button device id (e.g. btn-00A1B2C3)").format(value=repr(value))
    )


def _ble_address(value: object) -> str:
    return ble_address(str(value))


class ButtonPairArgs(Args):
    """``button.pair``, from the platform and from the socket: how long pairing stays open."""

    duration_s: int = Field(60, ge=1, le=MAX_PAIRING_S, description=N_("an integer from 1 to {le}"))


class ButtonUnpairArgs(Args):
    """``button.unpair``, from the platform and from the socket: ``device`` read as the id."""

    device: Annotated[int, BeforeValidator(_button_id)] = Field(
        description=N_("a button device id (e.g. btn-00A1B2C3)")
    )


class CameraCallArgs(Args):
    """``camera.call``: why the platform asks for a call, and for which alarm if any."""

    reason: str = Field(description=N_("text"))
    alarm_id: str | None = Field(None, description=N_("an alarm id or null"))


class CameraTestArgs(Args):
    """``camera.test``: ``call`` places a test call after the checks."""

    call: bool = Field(False, description=N_("true or false"))


class WatchScanArgs(Args):
    """``watch.scan``: how long to listen."""

    seconds: int = Field(10, ge=1, le=MAX_SCAN_S, description=N_("an integer from 1 to {le}"))


class WatchAddressArgs(Args):
    """``watch.pair`` and ``watch.unpair``: the watch's address, read in upper case."""

    address: Annotated[str, BeforeValidator(_ble_address)] = Field(
        description=N_("a BLE address (e.g. C0:FF:EE:00:00:01)")
    )


def problem(model: type[Args], exc: ValidationError) -> str:
    """What is wrong with the arguments, for a person: each argument and what it must be."""
    fields = model.model_fields
    errors = exc.errors()
    extra = sorted(str(error["loc"][0]) for error in errors if error["type"] == "extra_forbidden")
    problems: list[str] = []
    if extra:
        problems.append(
            _("does not take {extra} (takes {fields})").format(
                extra=", ".join(map(repr, extra)), fields=", ".join(fields)
            )
            if fields
            else _("takes no arguments, got {extra}").format(extra=extra)
        )
    for error in errors:
        if error["type"] == "extra_forbidden":
            continue
        name = str(error["loc"][0])
        if error["type"] == "value_error":  # the field's own check says what it saw
            problems.append(f"{name}: {error['ctx']['error']}")
        else:
            problems.append(
                _("{name} must be {what}").format(name=name, what=_described(fields[name]))
            )
    return "; ".join(dict.fromkeys(problems))


def _described(field: FieldInfo) -> str:
    """A field's ``description`` in the reader's language, its bounds (``{le}``) filled in."""
    bounds = {
        name: getattr(item, name)
        for item in field.metadata
        for name in ("ge", "le")
        if hasattr(item, name)
    }
    return _(field.description).format(**bounds) if field.description else ""


def command_args(model: type[ArgsT], args: dict[str, Any]) -> ArgsT:
    """A platform command's arguments; ``CommandError("invalid_args")`` when they do not fit."""
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise CommandError("invalid_args", problem(model, exc)) from None


def control_args(model: type[ArgsT], args: dict[str, Any]) -> ArgsT:
    """A control request's arguments; ``ControlError`` when they do not fit."""
    try:
        return model.model_validate(args)
    except ValidationError as exc:
        raise ControlError(problem(model, exc)) from None


# ------------------------------------------------------------------------------ commands


class GatewayCommands:
    """The platform's ``ping``, ``status`` and ``test_alarm``."""

    def __init__(
        self,
        gateway_id: str,
        *,
        status: GatewayStatus,
        outbox: Outbox,
        uplink: MqttUplink,
        alarms: AlarmTracker,
        button: SerialButtonLink | None,
        watches: WatchFleet | None,
    ) -> None:
        self.gateway_id = gateway_id
        self._status = status
        self._outbox = outbox
        self._uplink = uplink
        self._alarms = alarms
        self._button = button
        self._watches = watches

    async def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        command_args(NoArgs, args)
        return {"pong": True}

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        command_args(NoArgs, args)
        snapshot = await self._status.snapshot()
        devices: list[dict[str, Any]] = [] if self._button is None else [self._button.status()]
        if self._watches is not None:
            devices.append({"watches": self._watches.status()})
        snapshot["devices"] = devices
        snapshot["alarms_held"] = await self._outbox.count_held_alarms()
        snapshot["uplink"] = {
            "connected": self._uplink.connected.is_set(),
            "rejected_messages": self._uplink.stats.rejected_messages,
        }
        return snapshot

    async def control_status(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The installer's view: what ``status`` tells the platform, and the last seq handed
        out (events delivered from memory never reach the database, so only the daemon knows)."""
        control_args(NoArgs, args)
        snapshot = await self.status({})
        snapshot["last_seq"] = (await self._outbox.stats()).last_seq
        yield snapshot

    async def test_alarm(self, args: dict[str, Any]) -> dict[str, Any]:
        """The whole alarm chain with ``data.test: true``; no camera, no button is told."""
        command_args(NoArgs, args)
        data = {"press": "short", "battery": None, "rssi": None, "test": True}
        alarm_id = await self._alarms.raise_alarm("alarm.button", data, f"rcv-{self.gateway_id}")
        return {"alarm_id": alarm_id}


class SettingsCommand:
    """The platform's ``config.set``; ``cfg`` is the configuration in force since."""

    def __init__(
        self,
        cfg: GatewayConfig,
        remote_settings: RemoteSettings,
        *,
        heartbeat: Heartbeat,
        watches: WatchFleet | None,
        sink: OutboxSink,
    ) -> None:
        self.cfg = cfg
        self._remote_settings = remote_settings
        self._heartbeat = heartbeat
        self._watches = watches
        self._sink = sink

    async def config_set(self, args: dict[str, Any]) -> dict[str, Any]:
        """Intervals or thresholds change: validated (by ``RemoteSettings``, which knows the
        settable keys), applied, persisted, audited."""
        self.cfg, changes = self._remote_settings.apply(self.cfg, args)
        if not changes:
            return {"changed": []}
        self._heartbeat.set_interval(self.cfg.gateway.heartbeat_s)
        if self._watches is not None:
            self._watches.update_vitals(self.cfg.vitals)
        log.info("config_changed", by="platform", keys=[change["key"] for change in changes])
        await self._sink.emit(
            "audit.config_changed",
            {"who": "platform", "what": "config.set", "why": None, "changes": changes},
        )
        return {"changed": [change["key"] for change in changes]}


class ButtonCommands:
    """Pairing and unpairing buttons, from the platform and from ``carebed button``."""

    def __init__(self, button: SerialButtonLink | None) -> None:
        self._button = button

    def _platform_button(self) -> SerialButtonLink:
        if self._button is None:
            raise CommandError("forbidden", "no button receiver is configured on this gateway")
        return self._button

    def _control_button(self) -> SerialButtonLink:
        if self._button is None:
            raise ControlError(_("no button receiver is configured ([button] enabled = false)"))
        return self._button

    async def pair(self, args: dict[str, Any]) -> dict[str, Any]:
        button = self._platform_button()
        pair = command_args(ButtonPairArgs, args)
        try:
            button.open_pairing(pair.duration_s)
        except ReceiverUnavailableError as exc:
            raise CommandError("busy", str(exc)) from exc
        return {"duration_s": pair.duration_s}

    async def unpair(self, args: dict[str, Any]) -> dict[str, Any]:
        button = self._platform_button()
        unpair = command_args(ButtonUnpairArgs, args)
        return {"unpaired": await button.unpair(unpair.device)}

    async def control_list(self, args: dict[str, Any]) -> Reply:
        button = self._control_button()
        control_args(NoArgs, args)
        yield button.status()

    async def control_pair(self, args: dict[str, Any]) -> Reply:
        button = self._control_button()
        pair = control_args(ButtonPairArgs, args)
        try:
            button.open_pairing(pair.duration_s)
        except ReceiverUnavailableError as exc:
            raise ControlError(str(exc)) from exc
        paired: list[str] = []
        yield {"event": "open", "seconds": pair.duration_s}
        async for bid in button.paired_during(pair.duration_s):
            paired.append(device_id(bid))
            yield {"event": "paired", "device": device_id(bid)}
        yield {"event": "closed", "paired": paired}

    async def control_unpair(self, args: dict[str, Any]) -> Reply:
        button = self._control_button()
        unpair = control_args(ButtonUnpairArgs, args)
        yield {"device": device_id(unpair.device), "unpaired": await button.unpair(unpair.device)}

    async def control_confirm(self, args: dict[str, Any]) -> Reply:
        button = self._control_button()
        control_args(NoArgs, args)
        confirmed = button.confirm_pairing()
        yield {"confirmed": confirmed, "buttons": [device_id(b) for b in button.pairing.buttons()]}


class CameraCommands:
    """A call asked for by the platform; ``carebed camera test``."""

    def __init__(self, camera: CameraPolicy | None, *, remote_access: bool) -> None:
        self._camera = camera
        self._remote_access = remote_access

    async def call(self, args: dict[str, Any]) -> dict[str, Any]:
        """The platform asks for a call: only when remote camera access is enabled here."""
        if self._camera is None or not self._remote_access:
            raise CommandError("forbidden", "remote camera access is disabled on this gateway")
        call = command_args(CameraCallArgs, args)
        self._camera.call_for_platform(call.alarm_id, call.reason)
        return {"requested": True}

    async def control_test(self, args: dict[str, Any]) -> Reply:
        if self._camera is None:
            raise ControlError(_("no camera is configured ([camera] enabled = false)"))
        test = control_args(CameraTestArgs, args)
        yield {"event": "status", **await self._camera.check()}
        if test.call:
            self._camera.test_call()  # runs on; its states go to the platform as camera.call
            yield {"event": "called", "device": self._camera.device}


class WatchCommands:
    """``carebed watch list|scan|pair|unpair`` through the daemon, which holds the watches."""

    def __init__(self, watches: WatchFleet | None) -> None:
        self._watches = watches

    def _control_watches(self) -> WatchFleet:
        if self._watches is None:
            raise ControlError(_("watches are not enabled ([watch] enabled = false)"))
        return self._watches

    async def control_list(self, args: dict[str, Any]) -> Reply:
        watches = self._control_watches()
        control_args(NoArgs, args)
        yield {"watches": watches.status()}

    async def control_scan(self, args: dict[str, Any]) -> Reply:
        scan = control_args(WatchScanArgs, args)
        async for report in self._control_watches().scan(scan.seconds):
            yield report
        yield {"event": "done"}

    async def control_pair(self, args: dict[str, Any]) -> Reply:
        watches = self._control_watches()
        address = control_args(WatchAddressArgs, args).address
        yield {"event": "checking", "address": address}
        try:
            yield {"event": "paired", **await watches.pair(address)}
        except WatchCheckError as exc:
            raise ControlError(str(exc)) from exc

    async def control_unpair(self, args: dict[str, Any]) -> Reply:
        address = control_args(WatchAddressArgs, args).address
        try:
            unpaired = await self._control_watches().unpair(address)
        except WatchCheckError as exc:
            raise ControlError(str(exc)) from exc
        yield {"address": address, "unpaired": unpaired}
