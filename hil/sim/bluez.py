"""A fake BlueZ (``org.bluez``) on a private D-Bus bus, serving simulated health watches to bleak.

``FakeBluez`` owns the name ``org.bluez`` on a bus (see ``hil.sim.dbus.PrivateSystemBus``)
and exports what bleak's BlueZ backend reads, with the object paths, interfaces, properties and
errors of BlueZ 5.66: the ObjectManager at ``/``, ``org.bluez.Adapter1`` at ``/org/bluez/hci0``,
one ``org.bluez.Device1`` per watch, and while a watch is connected its ``GattService1``,
``GattCharacteristic1`` and (Client Characteristic Configuration) ``GattDescriptor1`` objects.
``WatchSim`` is one watch as its datasheet (specs/watch-ble.md) describes it: the GATT table,
the care alerts that stay pending until confirmed and come again after every reconnection, and
test hooks for the radio (range, link loss, a write lost with the link, a stalled BlueZ).

How the fake follows BlueZ 5.66, where bleak or bleak-retry-connector can tell:

- Discovery is per D-Bus client (``StartDiscovery`` twice: ``InProgress``; ``StopDiscovery``
  without a session: ``Failed``; a client leaving the bus ends its session). While any session
  runs, every watch that advertises (in range, not connected) sends ``PropertiesChanged(RSSI)``
  every ``advertising_interval_s``; when discovery stops, RSSI is invalidated. A device object
  removed with ``RemoveDevice`` appears again (``InterfacesAdded``) once discovery sees it.
- ``Connect`` emits ``Connected=True``, the GATT objects (``InterfacesAdded``) and
  ``ServicesResolved=True``, then replies. Out of range, it replies
  ``org.bluez.Error.Failed: le-connection-abort-by-local`` after ``connect_attempt_s`` without a
  ``Connected`` change (no link was made), or succeeds if the watch comes into range first.
- Link loss and ``Disconnect``: ``Notifying=False`` on subscribed characteristics,
  ``ServicesResolved=False``, the GATT objects removed (``InterfacesRemoved``) unless the watch
  is paired (bonded: BlueZ keeps its attribute cache, and exports it with the device), then
  ``Connected=False``.
- Notification sessions (``StartNotify``) belong to the D-Bus client that asked; the watch's CCC
  descriptor is enabled while any session exists. Notifications and indications both arrive as
  ``PropertiesChanged(Value)``, truncated to ATT_MTU - 3 bytes like ATT does.
- GATT errors are BlueZ's: ``NotPermitted`` "Read not permitted" / "Write not permitted",
  ``InvalidArguments`` "Invalid Length" / "Invalid offset", ``NotSupported`` for notify or write
  without response where the characteristic lacks them, ``Failed`` "Not connected".

Simplifications (none is visible to bleak): ``AcquireNotify``/``AcquireWrite`` are not offered
(``NotifyAcquired``/``WriteAcquired`` are absent, so bleak always uses ``StartNotify``);
discovery filters are stored and reported but not applied (bleak filters service UUIDs itself);
``GetAll`` keeps reporting the last RSSI after it was invalidated; temporary devices are not
removed by a timer; each exported object's interfaces come in their own ``InterfacesAdded``.

dbus-fast fails its connection when a burst of messages outruns the socket, so the fake waits
for the daemon to acknowledge (a ``Ping`` round trip) after every
``MAX_OUTSTANDING_NOTIFICATIONS`` notifications sent by ``notify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from dbus_fast import (
    DBusError,
    Message,
    MessageType,
    NameFlag,
    PropertyAccess,
    RequestNameReply,
    Variant,
)
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import DBusSignature
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property

from drivers.watch.codec import (
    ALERT_CONFIRM,
    BATTERY_LEVEL,
    BATTERY_SERVICE,
    BLOOD_PRESSURE_MEASUREMENT,
    BLOOD_PRESSURE_SERVICE,
    CARE_ALERT,
    CARE_SERVICE,
    HEALTH_THERMOMETER_SERVICE,
    HEART_RATE_MEASUREMENT,
    HEART_RATE_SERVICE,
    PLX_CONTINUOUS_MEASUREMENT,
    PLX_SPOT_CHECK_MEASUREMENT,
    PULSE_OXIMETER_SERVICE,
    STEPS,
    TEMPERATURE_MEASUREMENT,
    CareEvent,
    encode_battery,
    encode_blood_pressure,
    encode_care_alert,
    encode_heart_rate,
    encode_plx_continuous,
    encode_plx_spot_check,
    encode_steps,
    encode_temperature,
)
from hil.sim.service import Observed, SimService

# --- D-Bus names (BlueZ 5.66) -------------------------------------------------------------------

BLUEZ_SERVICE = "org.bluez"
ADAPTER_INTERFACE = "org.bluez.Adapter1"
DEVICE_INTERFACE = "org.bluez.Device1"
GATT_SERVICE_INTERFACE = "org.bluez.GattService1"
GATT_CHARACTERISTIC_INTERFACE = "org.bluez.GattCharacteristic1"
GATT_DESCRIPTOR_INTERFACE = "org.bluez.GattDescriptor1"
PROPERTIES_INTERFACE = "org.freedesktop.DBus.Properties"

ERROR_FAILED = "org.bluez.Error.Failed"
ERROR_IN_PROGRESS = "org.bluez.Error.InProgress"
ERROR_NOT_PERMITTED = "org.bluez.Error.NotPermitted"
ERROR_NOT_SUPPORTED = "org.bluez.Error.NotSupported"
ERROR_INVALID_ARGUMENTS = "org.bluez.Error.InvalidArguments"
ERROR_NOT_READY = "org.bluez.Error.NotReady"
ERROR_DOES_NOT_EXIST = "org.bluez.Error.DoesNotExist"
ERROR_ALREADY_EXISTS = "org.bluez.Error.AlreadyExists"
ERROR_CONNECTION_ATTEMPT_FAILED = "org.bluez.Error.ConnectionAttemptFailed"
# What BlueZ answers Connect when the LE connection attempt gave up (the device did not answer)
CONNECT_FAILED_REASON = "le-connection-abort-by-local"
# What BlueZ answers a GATT request that failed because the link went down during it
LINK_LOST_REASON = "Operation failed"

CCC_DESCRIPTOR = "00002902-0000-1000-8000-00805f9b34fb"
DISCOVERY_FILTERS = (
    "UUIDs",
    "RSSI",
    "Pathloss",
    "Transport",
    "DuplicateData",
    "Discoverable",
    "Pattern",
)

# --- Timing and sizes ---------------------------------------------------------------------------

ADVERTISING_INTERVAL_S = 0.1  # RSSI updates while discovery runs (real watches: 0.1..1 s)
CONNECT_ATTEMPT_S = 0.3  # how long an LE connection attempt to a silent watch lasts
MAX_OUTSTANDING_NOTIFICATIONS = 32  # notifications sent before waiting for the daemon
ATT_MTU = 23  # the watch does not negotiate a larger MTU
FIRST_HANDLE = 0x0010  # after the GAP and GATT services, which BlueZ does not export
WATCH_APPEARANCE = 0x00C0  # GAP appearance "Generic Watch"
STOP_TIMEOUT_S = 5.0

_U16 = struct.Struct("<H")
_ALARM_EVENTS = (CareEvent.SOS, CareEvent.FALL)
_NAME_OWNER_CHANGED_RULE = (
    "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
    "member='NameOwnerChanged',path='/org/freedesktop/DBus'"
)

# D-Bus signatures as annotations dbus-fast reads
DBusStr = Annotated[str, DBusSignature("s")]
DBusPath = Annotated[str, DBusSignature("o")]
DBusBool = Annotated[bool, DBusSignature("b")]
DBusInt16 = Annotated[int, DBusSignature("n")]
DBusUInt16 = Annotated[int, DBusSignature("q")]
DBusUInt32 = Annotated[int, DBusSignature("u")]
DBusBytes = Annotated[bytes, DBusSignature("ay")]
DBusStrList = Annotated[list[str], DBusSignature("as")]
DBusPathList = Annotated[list[str], DBusSignature("ao")]
DBusOptions = Annotated[dict[str, Variant], DBusSignature("a{sv}")]
# no out arguments ("-> None" reaches dbus-fast as the string "None" under postponed annotations)
DBusVoid = Annotated[None, DBusSignature("")]


# --- The watch's GATT table (datasheet) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CharacteristicSpec:
    """One characteristic of the datasheet: UUID and BlueZ ``Flags``."""

    uuid: str
    flags: tuple[str, ...]

    @property
    def subscribable(self) -> bool:
        return "notify" in self.flags or "indicate" in self.flags


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One primary service of the datasheet and its characteristics, in handle order."""

    uuid: str
    characteristics: tuple[CharacteristicSpec, ...]


GATT_TABLE: tuple[ServiceSpec, ...] = (
    ServiceSpec(HEART_RATE_SERVICE, (CharacteristicSpec(HEART_RATE_MEASUREMENT, ("notify",)),)),
    ServiceSpec(BATTERY_SERVICE, (CharacteristicSpec(BATTERY_LEVEL, ("read", "notify")),)),
    ServiceSpec(
        PULSE_OXIMETER_SERVICE,
        (
            CharacteristicSpec(PLX_SPOT_CHECK_MEASUREMENT, ("indicate",)),
            CharacteristicSpec(PLX_CONTINUOUS_MEASUREMENT, ("notify",)),
        ),
    ),
    ServiceSpec(
        BLOOD_PRESSURE_SERVICE, (CharacteristicSpec(BLOOD_PRESSURE_MEASUREMENT, ("indicate",)),)
    ),
    ServiceSpec(
        HEALTH_THERMOMETER_SERVICE, (CharacteristicSpec(TEMPERATURE_MEASUREMENT, ("indicate",)),)
    ),
    ServiceSpec(
        CARE_SERVICE,
        (
            CharacteristicSpec(CARE_ALERT, ("notify",)),
            CharacteristicSpec(ALERT_CONFIRM, ("write",)),
            CharacteristicSpec(STEPS, ("read", "notify")),
        ),
    ),
)
ALL_SERVICES: tuple[str, ...] = tuple(service.uuid for service in GATT_TABLE)


# --- The watch --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingAlert:
    """An SOS or fall alert the watch repeats until the gateway confirms its ``alert_seq``."""

    event: int
    alert_seq: int
    watch_time: int

    @property
    def payload(self) -> bytes:
        return encode_care_alert(self.event, self.alert_seq, self.watch_time)


class WatchSim(Observed):
    """One health watch (peripheral side) as its datasheet describes it.

    Attach it to a ``FakeBluez`` (constructor or ``add``) to make it visible to a central. State
    the tests steer: ``in_range``, ``battery``, ``steps``, ``fail_next_confirms``, ``drop_link``,
    ``stall``. State they read: ``connected``, ``connections``, ``confirms``, ``pending_alerts``,
    ``notifications`` (every value the central was sent, by characteristic UUID).
    """

    def __init__(
        self,
        address: str,
        *,
        alias: str = "CareWatch",
        services: Iterable[str] = ALL_SERVICES,
        battery: int = 90,
        steps: int = 0,
        rssi: int = -60,
        paired: bool = False,
        address_type: str = "public",
        connect_attempt_s: float = CONNECT_ATTEMPT_S,
    ) -> None:
        self.address = address.upper()
        self.alias = alias
        offered = {uuid.lower() for uuid in services}
        unknown = offered - set(ALL_SERVICES)
        if unknown:
            raise ValueError(f"services not in the datasheet: {sorted(unknown)}")
        self.services: tuple[ServiceSpec, ...] = tuple(s for s in GATT_TABLE if s.uuid in offered)
        self.rssi = rssi
        self.paired = paired
        self.address_type = address_type
        self.connect_attempt_s = connect_attempt_s
        self.connections = 0
        self.confirms: list[tuple[int, int]] = []
        self.notifications: dict[str, list[bytes]] = {}
        self._battery = battery
        self._steps = steps
        self._in_range = True
        self._stalled = False
        self._fail_confirms = 0
        self._pending: dict[int, PendingAlert] = {}
        self._node: _DeviceNode | None = None
        super().__init__()

    def __repr__(self) -> str:
        return f"WatchSim({self.address!r}, connected={self.connected}, in_range={self.in_range})"

    # --- State ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """The radio link to the central is up."""
        return self._node is not None and self._node.link_up

    @property
    def in_range(self) -> bool:
        """False: stops advertising and drops an existing link; connection attempts fail. True:
        advertises again, and a connection attempt still running succeeds."""
        return self._in_range

    @in_range.setter
    def in_range(self, value: bool) -> None:
        if value == self._in_range:
            return
        self._in_range = value
        if self._node is not None:
            if value:
                self._node.came_into_range()
            else:
                self._node.went_out_of_range()
        self._notify_change()

    @property
    def stalled(self) -> bool:
        return self._stalled

    @property
    def battery(self) -> int:
        return self._battery

    @battery.setter
    def battery(self, percent: int) -> None:
        """Set the level; notified at once when the central subscribed to Battery Level."""
        self._battery = percent
        self._send_now(BATTERY_LEVEL, encode_battery(percent))

    @property
    def steps(self) -> int:
        return self._steps

    @steps.setter
    def steps(self, steps: int) -> None:
        """Set steps today; notified at once when the central subscribed to Steps."""
        self._steps = steps
        self._send_now(STEPS, encode_steps(steps))

    @property
    def pending_alerts(self) -> list[PendingAlert]:
        """Alarm alerts not confirmed yet, oldest first."""
        return list(self._pending.values())

    def is_subscribed(self, char_uuid: str) -> bool:
        """The central enabled notifications/indications of ``char_uuid`` (CCC descriptor)."""
        return self._node is not None and self._node.is_notifying(char_uuid.lower())

    def offers(self, char_uuid: str) -> bool:
        return any(c.uuid == char_uuid.lower() for s in self.services for c in s.characteristics)

    # --- Sending ----------------------------------------------------------------------------

    async def notify(self, char_uuid: str, payload: bytes) -> bool:
        """Notify (or indicate) ``payload`` on ``char_uuid``. False, and nothing is sent, when
        the link is down, the central has not subscribed, or BlueZ is stalled. Waits for the bus
        after every ``MAX_OUTSTANDING_NOTIFICATIONS`` notifications."""
        char_uuid = char_uuid.lower()
        node = self._node
        if node is None or not self._deliverable(char_uuid):
            return False
        await node.bluez.flow_control()
        if self._node is not node or not self._deliverable(char_uuid):
            return False
        node.send_value(char_uuid, payload)
        return True

    async def heart_rate(
        self,
        bpm: int,
        *,
        contact: bool = True,
        energy_kj: int | None = None,
        rr_intervals_s: Sequence[float] = (),
    ) -> bool:
        """Notify a Heart Rate Measurement; ``contact=False`` is "supported, not detected"."""
        payload = encode_heart_rate(
            bpm, contact=contact, energy_kj=energy_kj, rr_intervals_s=rr_intervals_s
        )
        return await self.notify(HEART_RATE_MEASUREMENT, payload)

    async def spo2(self, spo2: float | None, pulse_rate: float | None) -> bool:
        """Notify a PLX Continuous Measurement (None: NaN, probe off)."""
        return await self.notify(
            PLX_CONTINUOUS_MEASUREMENT, encode_plx_continuous(spo2, pulse_rate)
        )

    async def spo2_spot_check(
        self, spo2: float | None, pulse_rate: float | None, *, timestamp: datetime | None = None
    ) -> bool:
        """Indicate a PLX Spot-Check Measurement."""
        payload = encode_plx_spot_check(spo2, pulse_rate, timestamp=timestamp)
        return await self.notify(PLX_SPOT_CHECK_MEASUREMENT, payload)

    async def blood_pressure(
        self,
        systolic: float,
        diastolic: float,
        mean: float,
        *,
        pulse_rate: float | None = None,
        timestamp: datetime | None = None,
    ) -> bool:
        """Indicate a Blood Pressure Measurement in mmHg."""
        payload = encode_blood_pressure(
            systolic, diastolic, mean, pulse_rate=pulse_rate, timestamp=timestamp
        )
        return await self.notify(BLOOD_PRESSURE_MEASUREMENT, payload)

    async def temperature(
        self,
        celsius: float,
        *,
        temperature_type: int | None = None,
        timestamp: datetime | None = None,
    ) -> bool:
        """Indicate a Temperature Measurement in degC."""
        payload = encode_temperature(
            celsius, temperature_type=temperature_type, timestamp=timestamp
        )
        return await self.notify(TEMPERATURE_MEASUREMENT, payload)

    async def send_steps(self, steps: int) -> bool:
        """Set steps today and notify them (False when not delivered now)."""
        self._steps = steps
        return await self.notify(STEPS, encode_steps(steps))

    async def care_alert(self, event: int, alert_seq: int, watch_time: int = 0) -> bool:
        """Raise a care alert. SOS and fall alerts stay pending until an Alert Confirm with
        their ``alert_seq`` arrives, and are notified again after every reconnection. Returns
        whether it was notified now."""
        if event in _ALARM_EVENTS:
            self._pending[alert_seq] = PendingAlert(event, alert_seq, watch_time)
            self._notify_change()
        return await self.notify(CARE_ALERT, encode_care_alert(event, alert_seq, watch_time))

    # --- Test hooks -------------------------------------------------------------------------

    def fail_next_confirms(self, n: int) -> None:
        """The next ``n`` Alert Confirm writes are lost with the link: each write fails with a
        BlueZ error and the link goes down; the alert stays pending."""
        self._fail_confirms = n

    def drop_link(self) -> None:
        """Link loss (supervision timeout): the central sees Connected/ServicesResolved False,
        and every subscription ends."""
        if self._node is not None:
            self._node.link_lost()

    def stall(self, stalled: bool = True) -> None:
        """BlueZ stalls for this device while the bus stays up: nothing more is delivered,
        method calls on its objects get no reply, Connected stays as it was. ``stall(False)``
        recovers: calls left unanswered get an error, and a link lost meanwhile is reported."""
        if stalled == self._stalled:
            return
        self._stalled = stalled
        if not stalled and self._node is not None:
            self._node.recovered()
        self._notify_change()

    # --- Waiting ----------------------------------------------------------------------------

    def _timed_out(self, what: str) -> str:
        return f"{self.address}: {what}"

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109
        await self.wait_for(lambda w: w.connected, timeout, "not connected")

    async def wait_disconnected(self, timeout: float) -> None:  # noqa: ASYNC109
        await self.wait_for(lambda w: not w.connected, timeout, "still connected")

    async def wait_subscribed(self, char_uuid: str, timeout: float) -> None:  # noqa: ASYNC109
        await self.wait_for(
            lambda w: w.is_subscribed(char_uuid), timeout, f"{char_uuid} not subscribed"
        )

    async def wait_confirmed(self, alert_seq: int, timeout: float) -> None:  # noqa: ASYNC109
        await self.wait_for(
            lambda w: any(seq == alert_seq for seq, _ in w.confirms),
            timeout,
            f"alert {alert_seq} not confirmed",
        )

    # --- Peripheral side, called by the fake BlueZ ----------------------------------------

    def _deliverable(self, char_uuid: str) -> bool:
        return not self._stalled and self.is_subscribed(char_uuid)

    def _send_now(self, char_uuid: str, payload: bytes) -> None:
        if self._node is not None and self._deliverable(char_uuid):
            self._node.send_value(char_uuid, payload)

    def _read(self, char_uuid: str) -> bytes:
        if char_uuid == BATTERY_LEVEL:
            return encode_battery(self._battery)
        if char_uuid == STEPS:
            return encode_steps(self._steps)
        raise DBusError(ERROR_NOT_PERMITTED, "Read not permitted")

    def _write(self, char_uuid: str, data: bytes) -> None:
        """A write request from the central. Raises DBusError as BlueZ would answer."""
        if char_uuid != ALERT_CONFIRM:
            raise DBusError(ERROR_NOT_PERMITTED, "Write not permitted")
        if self._fail_confirms > 0:
            self._fail_confirms -= 1
            assert self._node is not None
            self._node.bluez.later(0.0, self._node.link_lost)  # after the error reply
            raise DBusError(ERROR_FAILED, LINK_LOST_REASON)
        if len(data) != _U16.size:
            raise DBusError(ERROR_INVALID_ARGUMENTS, "Invalid Length")
        alert_seq, status = data[0], data[1]
        self.confirms.append((alert_seq, status))
        self._pending.pop(alert_seq, None)
        self._notify_change()

    def _sent(self, char_uuid: str, payload: bytes) -> None:
        self.notifications.setdefault(char_uuid, []).append(payload)

    def _subscribed(self, char_uuid: str) -> list[bytes]:
        """The CCC descriptor was enabled: what the watch sends right away (pending alerts)."""
        self._notify_change()
        if char_uuid == CARE_ALERT:
            return [alert.payload for alert in self._pending.values()]
        return []


# --- The fake BlueZ -----------------------------------------------------------------------------


class FakeBluezError(RuntimeError):
    """The fake could not take the name org.bluez, or is used while not running."""


class FakeBluez(SimService):
    """``org.bluez`` on the bus at ``bus_address``, with one adapter and the given watches.

    ``async with FakeBluez(address, [watch]) as bluez:`` runs it in the caller's event loop;
    leaving the block releases the name and closes the bus connection.
    """

    def __init__(
        self,
        bus_address: str,
        watches: Iterable[WatchSim] = (),
        *,
        adapter: str = "hci0",
        adapter_address: str = "00:1A:7D:DA:71:13",
        advertising_interval_s: float = ADVERTISING_INTERVAL_S,
    ) -> None:
        self.bus_address = bus_address
        self.adapter_name = adapter
        self.adapter_path = f"/org/bluez/{adapter}"
        self.adapter_address = adapter_address
        self.advertising_interval_s = advertising_interval_s
        self._initial = list(watches)
        self._nodes: dict[str, _DeviceNode] = {}
        self._bus: MessageBus | None = None
        self._adapter: _Adapter | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._discovery_sessions: dict[str, dict[str, Any]] = {}
        self._discovering = asyncio.Event()
        self._caller = ""
        self._unflushed = 0
        self._flush_lock = asyncio.Lock()

    # --- Life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, follow clients leaving the bus, own org.bluez, export the adapter and the
        watches given so far, and start advertising."""
        if self._bus is not None:
            raise FakeBluezError("FakeBluez already started")
        bus = self._bus = MessageBus(bus_address=self.bus_address)
        try:
            await bus.connect()
            bus.add_message_handler(self._filter)
            await self._call_daemon("AddMatch", "s", [_NAME_OWNER_CHANGED_RULE])
            await self._own_name(bus)
            self._adapter = _Adapter(self)
            bus.export(self.adapter_path, self._adapter)
            for watch in self._initial:
                self.add(watch)
            self._spawn(self._advertise(), f"fake-bluez[{self.adapter_name}].advertise")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop advertising, detach the watches and close the bus connection. Idempotent."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for node in list(self._nodes.values()):
            node.detach()
        self._nodes.clear()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]

    # --- Devices ------------------------------------------------------------------------------

    def add(self, watch: WatchSim) -> None:
        """Make ``watch`` known to BlueZ (its Device1 appears: InterfacesAdded)."""
        if self._bus is None:
            self._initial.append(watch)
            return
        if watch.address in self._nodes:
            raise FakeBluezError(f"{watch.address} already added")
        if watch._node is not None:
            raise FakeBluezError(f"{watch.address} already belongs to another FakeBluez")
        node = _DeviceNode(self, watch)
        self._nodes[watch.address] = node
        node.export_device()

    def remove(self, address: str) -> None:
        """The watch leaves this world: its link drops and its Device1 goes (InterfacesRemoved)."""
        node = self._nodes.pop(address.upper())
        node.link_lost()
        node.unexport_device()
        node.detach()

    def watch(self, address: str) -> WatchSim:
        return self._nodes[address.upper()].watch

    @property
    def watches(self) -> list[WatchSim]:
        return [node.watch for node in self._nodes.values()]

    @property
    def discovering(self) -> bool:
        """A D-Bus client is running a discovery session (not only holding a filter)."""
        return any("started" in session for session in self._discovery_sessions.values())

    def device_path(self, address: str) -> str:
        return f"{self.adapter_path}/dev_{address.upper().replace(':', '_')}"

    # --- Internals used by the exported objects -----------------------------------------------

    @property
    def bus(self) -> MessageBus:
        if self._bus is None:
            raise FakeBluezError("FakeBluez not running")
        return self._bus

    @property
    def caller(self) -> str:
        """The unique bus name of the client whose method call is being handled."""
        return self._caller

    def node_by_path(self, path: str) -> _DeviceNode | None:
        for node in self._nodes.values():
            if node.path == path:
                return node
        return None

    def start_discovery(self, sender: str) -> None:
        if sender in self._discovery_sessions and "started" in self._discovery_sessions[sender]:
            raise DBusError(ERROR_IN_PROGRESS, "Operation already in progress")
        assert self._adapter is not None
        if not self._adapter.powered:
            raise DBusError(ERROR_NOT_READY, "Resource Not Ready")
        was = self.discovering
        self._discovery_sessions.setdefault(sender, {})["started"] = True
        if not was:
            self._discovery_changed()
        self._later(0.0, self._advertise_once)

    def stop_discovery(self, sender: str) -> None:
        session = self._discovery_sessions.get(sender)
        if session is None or "started" not in session:
            raise DBusError(ERROR_FAILED, "No discovery started")
        self._end_session(sender)

    def set_discovery_filter(self, sender: str, options: dict[str, Variant]) -> None:
        unknown = set(options) - set(DISCOVERY_FILTERS)
        if unknown:
            raise DBusError(ERROR_INVALID_ARGUMENTS, "Invalid arguments in method call")
        if options:
            self._discovery_sessions.setdefault(sender, {})["filter"] = options
            return
        session = self._discovery_sessions.get(sender)
        if session is not None:
            session.pop("filter", None)
            if not session:
                del self._discovery_sessions[sender]

    def remove_device(self, path: str) -> None:
        node = self.node_by_path(path)
        if node is None or not node.exported:
            raise DBusError(ERROR_DOES_NOT_EXIST, "Does Not Exist")
        node.link_lost()
        node.unexport_device()

    def send(self, msg: Message) -> None:
        if self._bus is not None:
            self._bus.send(msg)

    async def flow_control(self) -> None:
        """Count a notification; every ``MAX_OUTSTANDING_NOTIFICATIONS`` wait until the daemon
        answered a Ping, so everything sent before it has left this connection."""
        self._unflushed += 1
        if self._unflushed < MAX_OUTSTANDING_NOTIFICATIONS:
            return
        async with self._flush_lock:
            if self._unflushed >= MAX_OUTSTANDING_NOTIFICATIONS:
                await self._call_daemon("Ping", "", [], interface="org.freedesktop.DBus.Peer")
                self._unflushed = 0

    def later(self, delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self._later(delay_s, callback)

    def forget_timer(self, timer: asyncio.TimerHandle) -> None:
        timer.cancel()
        self._timers.discard(timer)

    # --- Private ------------------------------------------------------------------------------

    def _filter(self, msg: Message) -> Message | bool | None:
        """Runs before dbus-fast dispatches: tracks clients, answers for stalled devices."""
        if msg.message_type == MessageType.SIGNAL:
            if msg.member == "NameOwnerChanged" and msg.sender == "org.freedesktop.DBus":
                name, _old, new = msg.body
                if not new and name.startswith(":"):
                    self._client_left(name)
            return None
        if msg.message_type != MessageType.METHOD_CALL:
            return None
        self._caller = msg.sender or ""
        path = msg.path or ""
        for node in self._nodes.values():
            if path == node.path or path.startswith(node.path + "/"):
                return node.filter_call(msg)
        return None

    def _client_left(self, name: str) -> None:
        if name in self._discovery_sessions:
            self._end_session(name)
        for node in self._nodes.values():
            node.client_left(name)

    def _end_session(self, sender: str) -> None:
        was = self.discovering
        self._discovery_sessions.pop(sender, None)
        if was and not self.discovering:
            self._discovery_changed()
            for node in self._nodes.values():
                node.discovery_stopped()

    def _discovery_changed(self) -> None:
        if self.discovering:
            self._discovering.set()
        else:
            self._discovering.clear()
        if self._adapter is not None:
            self._adapter.emit_properties_changed({"Discovering": self.discovering})

    async def _advertise(self) -> None:
        while True:
            await self._discovering.wait()
            self._advertise_once()
            await asyncio.sleep(self.advertising_interval_s)

    def _advertise_once(self) -> None:
        if not self.discovering:
            return
        for node in self._nodes.values():
            node.advertise()

    @staticmethod
    async def _own_name(bus: MessageBus) -> None:
        reply = await bus.request_name(BLUEZ_SERVICE, NameFlag.DO_NOT_QUEUE)
        if reply != RequestNameReply.PRIMARY_OWNER:
            raise FakeBluezError(f"could not own {BLUEZ_SERVICE}: {reply.name}")

    async def _call_daemon(
        self,
        member: str,
        signature: str,
        body: list[Any],
        *,
        interface: str = "org.freedesktop.DBus",
    ) -> None:
        reply = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface=interface,
                member=member,
                signature=signature,
                body=body,
            )
        )
        if reply.message_type == MessageType.ERROR:
            raise FakeBluezError(f"{member}: {reply.error_name} {reply.body}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _later(self, delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        def run() -> None:
            self._timers.discard(timer)
            if self._bus is not None:
                callback()

        timer = asyncio.get_running_loop().call_later(delay_s, run)
        self._timers.add(timer)
        return timer


@dataclass(slots=True)
class _ParkedConnect:
    msg: Message
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class _GattObjects:
    services: list[tuple[str, _GattService]] = field(default_factory=list)
    characteristics: dict[str, tuple[str, _GattCharacteristic]] = field(default_factory=dict)
    descriptors: list[tuple[str, _GattDescriptor]] = field(default_factory=list)


class _DeviceNode:
    """BlueZ's side of one watch: its D-Bus objects and the connection state BlueZ reports."""

    def __init__(self, bluez: FakeBluez, watch: WatchSim) -> None:
        self.bluez = bluez
        self.watch = watch
        self.path = bluez.device_path(watch.address)
        self.device = _Device(self)
        self.exported = False
        self.link_up = False  # the radio link (the watch's view)
        self.connected = False  # what BlueZ has reported on D-Bus
        self.services_resolved = False
        self.paired = watch.paired
        self.trusted = False
        self.blocked = False
        self.alias = watch.alias
        self.gatt = _build_gatt(self)
        self.gatt_exported = False
        self.sessions: dict[str, set[str]] = {}  # characteristic UUID -> D-Bus clients
        self.parked_connects: list[_ParkedConnect] = []
        self.stalled_calls: list[Message] = []
        watch._node = self

    def detach(self) -> None:
        self.link_up = False
        self.connected = False
        self.sessions.clear()
        for parked in self.parked_connects:
            if parked.timer is not None:
                parked.timer.cancel()
        self.parked_connects.clear()
        self.stalled_calls.clear()
        if self.watch._node is self:
            self.watch._node = None
        self.watch._notify_change()

    # --- Export -------------------------------------------------------------------------------

    def export_device(self) -> None:
        if not self.exported:
            self.bluez.bus.export(self.path, self.device)
            self.exported = True
            if self.paired:  # BlueZ loads a bonded device's attribute cache with the device
                self.export_gatt()

    def unexport_device(self) -> None:
        if self.exported:
            self.unexport_gatt()
            self.bluez.bus.unexport(self.path, self.device)
            self.exported = False

    def export_gatt(self) -> None:
        if self.gatt_exported:
            return
        bus = self.bluez.bus
        for path, service in self.gatt.services:
            bus.export(path, service)
        for path, char in self.gatt.characteristics.values():
            bus.export(path, char)
        for path, desc in self.gatt.descriptors:
            bus.export(path, desc)
        self.gatt_exported = True

    def unexport_gatt(self) -> None:
        if not self.gatt_exported:
            return
        bus = self.bluez.bus
        for path, desc in self.gatt.descriptors:
            bus.unexport(path, desc)
        for path, char in self.gatt.characteristics.values():
            bus.unexport(path, char)
        for path, service in self.gatt.services:
            bus.unexport(path, service)
        self.gatt_exported = False

    # --- Signals ------------------------------------------------------------------------------

    @property
    def silent(self) -> bool:
        return self.watch.stalled or self.bluez._bus is None

    def emit_device(self, changed: dict[str, Any], invalidated: Sequence[str] = ()) -> None:
        if not self.silent and self.exported:
            self.device.emit_properties_changed(changed, list(invalidated))

    def advertise(self) -> None:
        """One advertisement seen by the discovering adapter."""
        if self.silent or not self.watch.in_range or self.link_up:
            return
        if not self.exported:
            self.export_device()  # discovery found it again (after RemoveDevice)
            return
        self.device.emit_properties_changed({"RSSI": self.watch.rssi})

    def discovery_stopped(self) -> None:
        if not self.connected:
            self.emit_device({}, ["RSSI"])

    def send_value(self, char_uuid: str, payload: bytes) -> None:
        """A notification or indication: the characteristic's Value changes on D-Bus."""
        path, char = self.gatt.characteristics[char_uuid]
        payload = payload[: ATT_MTU - 3]
        char.value = payload
        self.watch._sent(char_uuid, payload)
        self.bluez.send(
            Message.new_signal(
                path,
                PROPERTIES_INTERFACE,
                "PropertiesChanged",
                "sa{sv}as",
                [GATT_CHARACTERISTIC_INTERFACE, {"Value": Variant("ay", payload)}, []],
            )
        )

    # --- Connection -------------------------------------------------------------------------

    def filter_call(self, msg: Message) -> Message | bool | None:
        """Method calls on this device's objects before dbus-fast dispatches them."""
        if self.watch.stalled:
            self.stalled_calls.append(msg)
            return True  # no reply
        if msg.interface == DEVICE_INTERFACE and msg.member == "Connect" and not self.connected:
            if self.watch.in_range:
                return None  # _Device.Connect answers
            parked = _ParkedConnect(msg)
            parked.timer = self.bluez.later(
                self.watch.connect_attempt_s, lambda: self._connect_failed(parked)
            )
            self.parked_connects.append(parked)
            return True
        return None

    def _connect_failed(self, parked: _ParkedConnect) -> None:
        if parked in self.parked_connects:
            self.parked_connects.remove(parked)
            self.bluez.send(Message.new_error(parked.msg, ERROR_FAILED, CONNECT_FAILED_REASON))

    def connect(self) -> None:
        """Connect(): the link comes up, services are resolved."""
        if self.connected:
            return
        self.link_up = True
        self.connected = True
        self.watch.connections += 1
        self.emit_device({"Connected": True})
        self.export_gatt()
        self.services_resolved = True
        self.emit_device({"ServicesResolved": True})
        self.watch._notify_change()

    def came_into_range(self) -> None:
        parked, self.parked_connects = self.parked_connects, []
        for attempt in parked:
            if attempt.timer is not None:
                self.bluez.forget_timer(attempt.timer)
            self.connect()
            self.bluez.send(Message.new_method_return(attempt.msg))

    def went_out_of_range(self) -> None:
        self.link_lost()
        self.emit_device({}, ["RSSI"])

    def disconnect(self) -> None:
        """Disconnect(): also cancels a connection attempt still running."""
        parked, self.parked_connects = self.parked_connects, []
        for attempt in parked:
            if attempt.timer is not None:
                self.bluez.forget_timer(attempt.timer)
            self.bluez.send(Message.new_error(attempt.msg, ERROR_FAILED, CONNECT_FAILED_REASON))
        self.link_lost()

    def link_lost(self) -> None:
        if not self.link_up and not self.connected:
            return
        self.link_up = False
        if not self.watch.stalled:  # else reported when BlueZ recovers
            self._report_disconnected()
        self.watch._notify_change()

    def _report_disconnected(self) -> None:
        for char_uuid in list(self.sessions):
            self._end_notify(char_uuid)
        self.sessions.clear()
        if self.services_resolved:
            self.services_resolved = False
            self.emit_device({"ServicesResolved": False})
        if not self.paired:
            self.unexport_gatt()
        if self.connected:
            self.connected = False
            self.emit_device({"Connected": False})

    def recovered(self) -> None:
        calls, self.stalled_calls = self.stalled_calls, []
        for msg in calls:
            self.bluez.send(Message.new_error(msg, ERROR_FAILED, LINK_LOST_REASON))
        if self.connected and not self.link_up:
            self._report_disconnected()

    def pair(self) -> None:
        if self.paired:
            raise DBusError(ERROR_ALREADY_EXISTS, "Already Exists")
        if not self.watch.in_range:
            raise DBusError(ERROR_CONNECTION_ATTEMPT_FAILED, "Page Timeout")
        self.connect()
        self.paired = self.watch.paired = True
        self.emit_device({"Paired": True})

    # --- Notification sessions ----------------------------------------------------------------

    def is_notifying(self, char_uuid: str) -> bool:
        return bool(self.sessions.get(char_uuid))

    def start_notify(self, char_uuid: str, sender: str) -> None:
        if not self.connected:
            raise DBusError(ERROR_FAILED, "Not connected")
        clients = self.sessions.setdefault(char_uuid, set())
        if sender in clients:
            return
        first = not clients
        clients.add(sender)
        if first:
            _path, char = self.gatt.characteristics[char_uuid]
            char.emit_properties_changed({"Notifying": True})
            # the CCC write reaches the watch; it answers after BlueZ replied to StartNotify
            self.bluez.later(0.0, lambda: self._on_subscribed(char_uuid))

    def _on_subscribed(self, char_uuid: str) -> None:
        if not self.is_notifying(char_uuid):
            return
        for payload in self.watch._subscribed(char_uuid):
            if not self.watch.stalled:
                self.send_value(char_uuid, payload)

    def stop_notify(self, char_uuid: str, sender: str) -> None:
        clients = self.sessions.get(char_uuid)
        if not clients or sender not in clients:
            raise DBusError(ERROR_FAILED, "No notify session started")
        clients.discard(sender)
        if not clients:
            self._end_notify(char_uuid)

    def _end_notify(self, char_uuid: str) -> None:
        self.sessions.pop(char_uuid, None)
        _path, char = self.gatt.characteristics[char_uuid]
        if not self.silent:
            char.emit_properties_changed({"Notifying": False})
        self.watch._notify_change()

    def client_left(self, name: str) -> None:
        for char_uuid, clients in list(self.sessions.items()):
            if name in clients:
                clients.discard(name)
                if not clients:
                    self._end_notify(char_uuid)


def _build_gatt(node: _DeviceNode) -> _GattObjects:
    gatt = _GattObjects()
    handle = FIRST_HANDLE
    for spec in node.watch.services:
        service_path = f"{node.path}/service{handle:04x}"
        gatt.services.append((service_path, _GattService(node, spec.uuid, handle)))
        handle += 1
        for char_spec in spec.characteristics:
            char_path = f"{service_path}/char{handle:04x}"
            char = _GattCharacteristic(node, char_spec, service_path, handle)
            gatt.characteristics[char_spec.uuid] = (char_path, char)
            handle += 2  # declaration and value
            if char_spec.subscribable:
                desc_path = f"{char_path}/desc{handle:04x}"
                gatt.descriptors.append((desc_path, _GattDescriptor(node, char, char_path, handle)))
                handle += 1
    return gatt


# --- Exported interfaces ------------------------------------------------------------------------


class _Adapter(ServiceInterface):
    """org.bluez.Adapter1."""

    def __init__(self, bluez: FakeBluez) -> None:
        super().__init__(ADAPTER_INTERFACE)
        self._bluez = bluez
        self.powered = True
        self._alias = "carebed"
        self._discoverable = False
        self._pairable = True

    @dbus_method()
    def StartDiscovery(self) -> DBusVoid:
        self._bluez.start_discovery(self._bluez.caller)

    @dbus_method()
    def StopDiscovery(self) -> DBusVoid:
        self._bluez.stop_discovery(self._bluez.caller)

    @dbus_method()
    def SetDiscoveryFilter(self, options: DBusOptions) -> DBusVoid:
        self._bluez.set_discovery_filter(self._bluez.caller, options)

    @dbus_method()
    def GetDiscoveryFilters(self) -> DBusStrList:
        return list(DISCOVERY_FILTERS)

    @dbus_method()
    def RemoveDevice(self, device: DBusPath) -> DBusVoid:
        self._bluez.remove_device(device)

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return self._bluez.adapter_address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return "public"

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return "carebed"

    @dbus_property()
    def Alias(self) -> DBusStr:
        return self._alias

    @Alias.setter  # type: ignore[no-redef]
    def Alias(self, value: DBusStr) -> None:
        self._alias = value

    @dbus_property(access=PropertyAccess.READ)
    def Class(self) -> DBusUInt32:
        return 0

    @dbus_property()
    def Powered(self) -> DBusBool:
        return self.powered

    @Powered.setter  # type: ignore[no-redef]
    def Powered(self, value: DBusBool) -> None:
        self.powered = value
        self.emit_properties_changed({"Powered": value, "PowerState": "on" if value else "off"})

    @dbus_property(access=PropertyAccess.READ)
    def PowerState(self) -> DBusStr:
        return "on" if self.powered else "off"

    @dbus_property()
    def Discoverable(self) -> DBusBool:
        return self._discoverable

    @Discoverable.setter  # type: ignore[no-redef]
    def Discoverable(self, value: DBusBool) -> None:
        self._discoverable = value

    @dbus_property(access=PropertyAccess.READ)
    def DiscoverableTimeout(self) -> DBusUInt32:
        return 180

    @dbus_property()
    def Pairable(self) -> DBusBool:
        return self._pairable

    @Pairable.setter  # type: ignore[no-redef]
    def Pairable(self, value: DBusBool) -> None:
        self._pairable = value

    @dbus_property(access=PropertyAccess.READ)
    def PairableTimeout(self) -> DBusUInt32:
        return 0

    @dbus_property(access=PropertyAccess.READ)
    def Discovering(self) -> DBusBool:
        return self._bluez.discovering

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> DBusStrList:
        return [
            "00001800-0000-1000-8000-00805f9b34fb",
            "00001801-0000-1000-8000-00805f9b34fb",
            "0000180a-0000-1000-8000-00805f9b34fb",
        ]

    @dbus_property(access=PropertyAccess.READ)
    def Modalias(self) -> DBusStr:
        return "usb:v1D6Bp0246d0542"

    @dbus_property(access=PropertyAccess.READ)
    def Roles(self) -> DBusStrList:
        return ["central", "peripheral"]


class _Device(ServiceInterface):
    """org.bluez.Device1 of one watch."""

    def __init__(self, node: _DeviceNode) -> None:
        super().__init__(DEVICE_INTERFACE)
        self._node = node

    @dbus_method()
    def Connect(self) -> DBusVoid:
        self._node.connect()

    @dbus_method()
    def Disconnect(self) -> DBusVoid:
        self._node.disconnect()

    @dbus_method()
    def Pair(self) -> DBusVoid:
        self._node.pair()

    @dbus_method()
    def CancelPairing(self) -> DBusVoid:
        raise DBusError(ERROR_DOES_NOT_EXIST, "Does Not Exist")

    @dbus_property(access=PropertyAccess.READ)
    def Address(self) -> DBusStr:
        return self._node.watch.address

    @dbus_property(access=PropertyAccess.READ)
    def AddressType(self) -> DBusStr:
        return self._node.watch.address_type

    @dbus_property(access=PropertyAccess.READ)
    def Name(self) -> DBusStr:
        return self._node.watch.alias

    @dbus_property()
    def Alias(self) -> DBusStr:
        return self._node.alias

    @Alias.setter  # type: ignore[no-redef]
    def Alias(self, value: DBusStr) -> None:
        self._node.alias = value or self._node.watch.alias

    @dbus_property(access=PropertyAccess.READ)
    def Appearance(self) -> DBusUInt16:
        return WATCH_APPEARANCE

    @dbus_property(access=PropertyAccess.READ)
    def Paired(self) -> DBusBool:
        return self._node.paired

    @dbus_property()
    def Trusted(self) -> DBusBool:
        return self._node.trusted

    @Trusted.setter  # type: ignore[no-redef]
    def Trusted(self, value: DBusBool) -> None:
        self._node.trusted = value

    @dbus_property()
    def Blocked(self) -> DBusBool:
        return self._node.blocked

    @Blocked.setter  # type: ignore[no-redef]
    def Blocked(self, value: DBusBool) -> None:
        self._node.blocked = value

    @dbus_property(access=PropertyAccess.READ)
    def LegacyPairing(self) -> DBusBool:
        return False

    @dbus_property(access=PropertyAccess.READ)
    def RSSI(self) -> DBusInt16:
        return self._node.watch.rssi

    @dbus_property(access=PropertyAccess.READ)
    def Connected(self) -> DBusBool:
        return self._node.connected

    @dbus_property(access=PropertyAccess.READ)
    def UUIDs(self) -> DBusStrList:
        return [service.uuid for service in self._node.watch.services]

    @dbus_property(access=PropertyAccess.READ)
    def Adapter(self) -> DBusPath:
        return self._node.bluez.adapter_path

    @dbus_property(access=PropertyAccess.READ)
    def ServicesResolved(self) -> DBusBool:
        return self._node.services_resolved


class _GattService(ServiceInterface):
    """org.bluez.GattService1."""

    def __init__(self, node: _DeviceNode, uuid: str, handle: int) -> None:
        super().__init__(GATT_SERVICE_INTERFACE)
        self._node = node
        self._uuid = uuid
        self._handle = handle

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self._uuid

    @dbus_property(access=PropertyAccess.READ)
    def Primary(self) -> DBusBool:
        return True

    @dbus_property(access=PropertyAccess.READ)
    def Device(self) -> DBusPath:
        return self._node.path

    @dbus_property(access=PropertyAccess.READ)
    def Includes(self) -> DBusPathList:
        return []

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> DBusUInt16:
        return self._handle


class _GattCharacteristic(ServiceInterface):
    """org.bluez.GattCharacteristic1 (ReadValue, WriteValue, StartNotify, StopNotify)."""

    def __init__(
        self, node: _DeviceNode, spec: CharacteristicSpec, service_path: str, handle: int
    ) -> None:
        super().__init__(GATT_CHARACTERISTIC_INTERFACE)
        self._node = node
        self.spec = spec
        self._service_path = service_path
        self._handle = handle
        self.value = b""

    def _check_connected(self) -> None:
        if not self._node.connected:
            raise DBusError(ERROR_FAILED, "Not connected")

    @dbus_method()
    def ReadValue(self, options: DBusOptions) -> DBusBytes:
        self._check_connected()
        if "read" not in self.spec.flags:
            raise DBusError(ERROR_NOT_PERMITTED, "Read not permitted")
        value = self._node.watch._read(self.spec.uuid)
        offset = options["offset"].value if "offset" in options else 0
        if offset > len(value):
            raise DBusError(ERROR_INVALID_ARGUMENTS, "Invalid offset")
        if value != self.value:
            self.value = value
            self.emit_properties_changed({"Value": value})
        return value[offset:]

    @dbus_method()
    def WriteValue(self, value: DBusBytes, options: DBusOptions) -> DBusVoid:
        self._check_connected()
        write_type = options["type"].value if "type" in options else "request"
        if write_type == "command" and "write-without-response" not in self.spec.flags:
            raise DBusError(ERROR_NOT_SUPPORTED, "Operation is not supported")
        if "write" not in self.spec.flags and "write-without-response" not in self.spec.flags:
            raise DBusError(ERROR_NOT_PERMITTED, "Write not permitted")
        if "offset" in options and options["offset"].value:
            raise DBusError(ERROR_INVALID_ARGUMENTS, "Invalid offset")
        self._node.watch._write(self.spec.uuid, bytes(value))

    @dbus_method()
    def StartNotify(self) -> DBusVoid:
        if not self.spec.subscribable:
            raise DBusError(ERROR_NOT_SUPPORTED, "Notify is not supported")
        self._node.start_notify(self.spec.uuid, self._node.bluez.caller)

    @dbus_method()
    def StopNotify(self) -> DBusVoid:
        self._node.stop_notify(self.spec.uuid, self._node.bluez.caller)

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return self.spec.uuid

    @dbus_property(access=PropertyAccess.READ)
    def Service(self) -> DBusPath:
        return self._service_path

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self.value

    @dbus_property(access=PropertyAccess.READ)
    def Notifying(self) -> DBusBool:
        return self._node.is_notifying(self.spec.uuid)

    @dbus_property(access=PropertyAccess.READ)
    def Flags(self) -> DBusStrList:
        return list(self.spec.flags)

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> DBusUInt16:
        return self._handle

    @dbus_property(access=PropertyAccess.READ)
    def MTU(self) -> DBusUInt16:
        return ATT_MTU


class _GattDescriptor(ServiceInterface):
    """org.bluez.GattDescriptor1: the Client Characteristic Configuration of a characteristic."""

    def __init__(
        self, node: _DeviceNode, char: _GattCharacteristic, char_path: str, handle: int
    ) -> None:
        super().__init__(GATT_DESCRIPTOR_INTERFACE)
        self._node = node
        self._char = char
        self._char_path = char_path
        self._handle = handle

    def _ccc(self) -> bytes:
        if not self._node.is_notifying(self._char.spec.uuid):
            return b"\x00\x00"
        return b"\x01\x00" if "notify" in self._char.spec.flags else b"\x02\x00"

    @dbus_method()
    def ReadValue(self, options: DBusOptions) -> DBusBytes:
        if not self._node.connected:
            raise DBusError(ERROR_FAILED, "Not connected")
        return self._ccc()

    @dbus_method()
    def WriteValue(self, value: DBusBytes, options: DBusOptions) -> DBusVoid:
        # BlueZ owns the CCC descriptors: clients use StartNotify/StopNotify
        raise DBusError(ERROR_NOT_PERMITTED, "Write not permitted")

    @dbus_property(access=PropertyAccess.READ)
    def UUID(self) -> DBusStr:
        return CCC_DESCRIPTOR

    @dbus_property(access=PropertyAccess.READ)
    def Characteristic(self) -> DBusPath:
        return self._char_path

    @dbus_property(access=PropertyAccess.READ)
    def Value(self) -> DBusBytes:
        return self._ccc()

    @dbus_property(access=PropertyAccess.READ)
    def Handle(self) -> DBusUInt16:
        return self._handle
