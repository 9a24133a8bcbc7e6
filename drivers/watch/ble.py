"""One health watch over BLE (bleak): connect, subscribe, turn notifications into events.

``BleWatch`` keeps the link to one paired watch for as long as the gateway runs:

- connects by address with bleak-retry-connector's ``establish_connection`` (as Home Assistant
  does), subscribes to every characteristic of the datasheet the watch offers (a missing service
  is logged once, not an error), reads battery and steps on connect;
- reconnects with capped, jittered back-off when the link drops; each session's tasks and bleak
  client are torn down before the next one starts;
- a watch that is worn but sends nothing for ``silent_after_s`` is a stalled link (BlueZ gives no
  disconnect then): it is torn down with a bounded ``disconnect()`` and reconnected;
- ``device.offline`` when the watch has been away for ``offline_after_s``, ``device.online`` when it
  connects again (and at its first connection after a start: the platform may hold it offline);
- care alerts become alarms once per ``alert_seq`` (``WatchStore``), are confirmed to the watch with
  0x01 once stored, 0x02 when the platform acknowledges and 0x03 when they could not be delivered
  (which status is owed when: ``AlertConfirms``; this module writes them). An alert stamped by
  the watch's clock raises its alarm under a key naming the alert (``alert_key``), so the 0x01
  goes out as soon as the alarm is committed: a repeat after a crash finds the alarm by its key,
  and the watch list is written once the watch took the 0x01 (it repeats the alert until then);
- not worn (heart-rate contact bits, take-off / put-on alerts): ``device.not_worn`` and
  ``device.worn`` once per change; no vitals and no edge rule while not worn;
- vitals are aggregated per metric (``VitalsAggregator``) and checked by the edge rules
  (``RuleEngine``), which raise ``alarm.vitals``.

Notifications arrive in bleak's callbacks; they are queued and handled in order by one task, so a
slow durable write never reorders events and never blocks bleak. The link's task writes the Alert
Confirms as they come due, except a new alert's own, which the handling task writes at once.

The link's lifecycle is ``LinkState``. Its client class and device finder are arguments, so that
it runs against bleak's BlueZ backend in the gateway and against a simulated watch in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import structlog
from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak_retry_connector import (
    close_stale_connections,
    establish_connection,
    get_device_by_adapter,
)
from bleak_retry_connector.bluez import get_connected_devices

from drivers.watch import codec
from drivers.watch.alerts import AlertConfirms, confirm_grace_s
from drivers.watch.codec import CareAlert, CareEvent, WatchFrameError
from drivers.watch.errors import LINK_ERRORS, WatchLinkError
from drivers.watch.rules import Rule, RuleEngine
from drivers.watch.store import FALL_KEPT_S, RaisedAlert, WatchStore
from drivers.watch.vitals import METRICS, VitalsAggregator
from gateway.core.backoff import Backoff
from gateway.core.feedback import FeedbackHold
from gateway.core.kinds import AlarmKind
from gateway.core.ports import AlarmRaiser, AlarmState, EventSink
from gateway.core.presence import BatteryReporter, Presence

log = structlog.get_logger("drivers.watch.ble")

SESSION_RESET_S = 30.0  # a session that lasted this long resets the reconnect back-off
MAX_CONNECT_ATTEMPTS = 2  # per round of establish_connection; the rounds back off
SUPERVISE_TICK_S = 0.25
GATT_TIMEOUT_S = 10.0  # one read or write with response; a stalled BlueZ never answers
FIND_SLACK_S = 5.0  # a scan's start and stop on top of its duration
STORE_EVERY_S = 0.5  # coalesces the watch list's writes after confirms
STALE_CLOSE_S = 10.0
WRIST_METRICS = tuple(metric for metric in METRICS if metric != "steps")  # not while off
BATTERY_REPORT_STEP = 10  # device.battery when the level moved this much (or low changed)

NOTIFIED = (
    codec.HEART_RATE_MEASUREMENT,
    codec.BATTERY_LEVEL,
    codec.PLX_CONTINUOUS_MEASUREMENT,
    codec.PLX_SPOT_CHECK_MEASUREMENT,
    codec.BLOOD_PRESSURE_MEASUREMENT,
    codec.TEMPERATURE_MEASUREMENT,
    codec.CARE_ALERT,
    codec.STEPS,
)
SERVICES = {
    codec.HEART_RATE_SERVICE: "heart_rate",
    codec.BATTERY_SERVICE: "battery",
    codec.PULSE_OXIMETER_SERVICE: "pulse_oximeter",
    codec.BLOOD_PRESSURE_SERVICE: "blood_pressure",
    codec.HEALTH_THERMOMETER_SERVICE: "thermometer",
    codec.CARE_SERVICE: "care",
}


class WatchSettings(Protocol):
    adapter: str
    connect_timeout_s: float
    reconnect_min_s: float
    reconnect_cap_s: float
    offline_after_s: float
    silent_after_s: float
    disconnect_timeout_s: float
    low_battery_percent: int


class VitalsSettings(Protocol):
    """The reporting intervals and the edge rules (``gateway.app.config.VitalsSection``)."""

    @property
    def intervals(self) -> Any: ...
    @property
    def rules(self) -> Any: ...


class LinkClock(Protocol):
    def wall(self) -> float: ...
    def monotonic_ns(self) -> int: ...


def rules_of(vitals: VitalsSettings) -> list[Rule]:
    return [
        Rule(name, rule.threshold, rule.min_duration_s, rule.hysteresis, rule.enabled)
        for name, rule in vitals.rules
    ]


def intervals_of(vitals: VitalsSettings) -> dict[str, float]:
    return dict(vitals.intervals)


async def bounded_disconnect(client: BleakClient, timeout_s: float) -> None:
    """``disconnect()`` that gives up after ``timeout_s`` (a stalled BlueZ never answers)."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.disconnect()
    except LINK_ERRORS as exc:
        log.warning("watch_disconnect_failed", error=type(exc).__name__)


def offered_services(client: BleakClient) -> list[str]:
    """The datasheet's services the connected watch offers, by name."""
    return [name for uuid, name in SERVICES.items() if client.services.get_service(uuid)]


DeviceFinder = Callable[[str, str, float], Awaitable[BLEDevice | None]]


async def find_device(address: str, adapter: str, scan_s: float) -> BLEDevice | None:
    """The watch as BlueZ knows it; a scan when BlueZ has no object for it (yet)."""
    device = await get_device_by_adapter(address, adapter)
    if device is not None:
        return device
    return await BleakScanner.find_device_by_address(
        address, timeout=scan_s, bluez={"adapter": adapter}
    )


class LinkState(StrEnum):
    """Where the link to the watch is in its lifecycle."""

    IDLE = "idle"  # no link: backing off before the next try
    CONNECTING = "connecting"  # finding the watch, closing a stale link, connecting
    STARTING = "starting"  # connected: subscribing, first reads
    CONNECTED = "connected"  # writing confirms as they come due, watching for silence
    RELINK = "relink"  # a fresh connection is asked for: the session ends at its next check
    DISCONNECTING = "disconnecting"  # the session is over: a bounded disconnect()


@dataclass(slots=True)
class _Session:
    client: BleakClient
    lost: asyncio.Event
    started: float  # monotonic s
    # Alert Confirm, looked up once per session rather than by UUID on every write.
    confirm_char: BleakGATTCharacteristic | str = codec.ALERT_CONFIRM


class BleWatch:
    """The link to one paired watch, and what it tells the platform (see the module doc)."""

    def __init__(
        self,
        address: str,
        settings: WatchSettings,
        vitals: VitalsSettings,
        *,
        sink: EventSink,
        alarms: AlarmRaiser,
        store: WatchStore,
        clock: LinkClock,
        client_class: type[BleakClient] = BleakClient,
        find: DeviceFinder = find_device,
    ) -> None:
        self.address = address.upper()
        self.device = codec.device_id(self.address)
        self.settings = settings
        self.sink = sink
        self.alarms = alarms
        self.store = store
        self.clock = clock
        self.client_class = client_class
        self.find = find
        self.state = LinkState.IDLE
        self.counters: Counter[str] = Counter()
        self.aggregator = VitalsAggregator(intervals_of(vitals))
        self.rules = RuleEngine(rules_of(vitals))
        self.services: list[str] = []
        self.battery: int | None = None  # the last level read
        self.presence = Presence(self.device, sink.emit)
        self.batteries = BatteryReporter(
            self.device,
            sink.emit,
            low_percent=settings.low_battery_percent,
            step=BATTERY_REPORT_STEP,
        )
        self.connected = asyncio.Event()
        self.worn: bool | None = store.worn(self.address)
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._session: _Session | None = None
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_cap_s)
        self._last_data = self._mono()
        self._away_since = self._mono()
        self._vitals_added = asyncio.Event()
        self._wake = asyncio.Event()  # a confirm is due, the link was lost, or a relink is asked
        self._writing = asyncio.Lock()  # one Alert Confirm write at a time
        self._persist = asyncio.Event()  # the store has changes to write
        self._persist_now = asyncio.Event()  # ... and one of them must be on disk at once
        self._missing_logged: set[str] = set()
        self._subscribed: set[str] = set()
        self.alerts = AlertConfirms(
            self.device, store.state(self.address).alerts, self._store_changed
        )
        # Alarm states told while a care alert is being settled (see _care_alert).
        self._held: FeedbackHold[tuple[str, AlarmState]] = FeedbackHold()

    def _mono(self) -> float:
        return self.clock.monotonic_ns() / 1e9

    # ------------------------------------------------------------------------------ running

    async def run(self) -> None:
        """Keep the link, handle what it brings and report vitals, until cancelled."""
        name = f"watch[{self.address}]"
        async with asyncio.TaskGroup() as group:
            group.create_task(self._keep_link(), name=f"{name}.link")
            group.create_task(self._handle_queue(), name=f"{name}.handle")
            group.create_task(self._report_vitals(), name=f"{name}.vitals")
            group.create_task(self._supervise_presence(), name=f"{name}.presence")
            group.create_task(self._write_store(), name=f"{name}.store")

    async def _keep_link(self) -> None:
        while True:
            self.state = LinkState.CONNECTING
            try:
                async with asyncio.timeout(self.settings.connect_timeout_s + FIND_SLACK_S):
                    device = await self.find(
                        self.address, self.settings.adapter, self.settings.connect_timeout_s
                    )
                if device is None:
                    self.counters["not_found"] += 1
                    log.info("watch_not_found", watch=self.device)
                else:
                    await self._session_with(device)
            except asyncio.CancelledError:
                raise
            except LINK_ERRORS as exc:
                self.counters["connect_failed"] += 1
                log.info("watch_connect_failed", watch=self.device, error=str(exc)[:200])
            except Exception:
                self.counters["link_crashed"] += 1
                log.exception("watch_link_crashed", watch=self.device)
            self.state = LinkState.IDLE
            await asyncio.sleep(self._backoff.next_delay())

    async def _close_stale(self, device: BLEDevice) -> None:
        """A connection BlueZ still holds (from before a restart, or a disconnect that did not
        finish) is closed first: bleak-retry-connector would ride it, and the watch, seeing no
        reconnection, would not repeat what it has not had confirmed."""
        if not await get_connected_devices(device):
            return
        log.warning("watch_stale_connection", watch=self.device)
        try:
            async with asyncio.timeout(STALE_CLOSE_S):
                await close_stale_connections(device)
        except LINK_ERRORS as exc:
            log.error(  # noqa: TRY400 - the reason is in the message
                "watch_stale_close_failed", watch=self.device, error=str(exc)[:200]
            )

    async def _session_with(self, device: BLEDevice) -> None:
        lost = asyncio.Event()

        def disconnected(_client: BleakClient) -> None:
            lost.set()
            self._wake.set()

        await self._close_stale(device)
        async with asyncio.timeout(self.settings.connect_timeout_s):
            client = await establish_connection(
                self.client_class,
                device,
                self.device,
                disconnected_callback=disconnected,
                max_attempts=MAX_CONNECT_ATTEMPTS,
            )
        session = _Session(client, lost, self._mono())
        self._session = session
        self.state = LinkState.STARTING
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await self._start(client)
            confirm_char = client.services.get_characteristic(codec.ALERT_CONFIRM)
            if confirm_char is not None:
                session.confirm_char = confirm_char
            await self._connected_now()
            await self._until_lost(session)
        except WatchLinkError:
            pass
        finally:
            self.state = LinkState.DISCONNECTING
            self._session = None
            self.connected.clear()
            self._away_since = self._mono()
            # Also after a link loss: only disconnect() releases the client's own bus connection.
            await bounded_disconnect(client, self.settings.disconnect_timeout_s)
            if self._mono() - session.started >= SESSION_RESET_S:
                self._backoff.reset()
            log.info("watch_disconnected", watch=self.device)

    async def _start(self, client: BleakClient) -> None:
        """Subscribe to what the watch offers, care alerts first; read battery and steps.

        Only the care alerts are indispensable: any other characteristic that fails is logged
        and left out, so that a vital sign never keeps an SOS from arriving.
        """
        self.services = offered_services(client)
        for uuid, service in SERVICES.items():
            if service not in self.services and service not in self._missing_logged:
                self._missing_logged.add(service)
                log.info("watch_service_missing", watch=self.device, service=service, uuid=uuid)
        self._subscribed = set()
        if client.services.get_characteristic(codec.CARE_ALERT) is not None:
            await client.start_notify(codec.CARE_ALERT, self._notified(codec.CARE_ALERT))
            self._subscribed.add(codec.CARE_ALERT)
        for uuid in (codec.BATTERY_LEVEL, codec.STEPS):
            if client.services.get_characteristic(uuid) is not None:
                with self._optional(uuid, "read"):
                    self._queue.put_nowait((uuid, bytes(await client.read_gatt_char(uuid))))
        for uuid in NOTIFIED:
            if uuid != codec.CARE_ALERT and client.services.get_characteristic(uuid) is not None:
                with self._optional(uuid, "subscribe"):
                    await client.start_notify(uuid, self._notified(uuid))
                    self._subscribed.add(uuid)
        log.info("watch_connected", watch=self.device, services=self.services)

    @contextlib.contextmanager
    def _optional(self, uuid: str, what: str) -> Iterator[None]:
        try:
            yield
        except LINK_ERRORS as exc:
            self.counters[f"{what}_failed"] += 1
            log.warning(
                "watch_gatt_failed", what=what, watch=self.device, uuid=uuid, error=str(exc)
            )

    def _notified(self, uuid: str) -> Callable[[BleakGATTCharacteristic, bytearray], None]:
        def callback(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            self._last_data = self._mono()
            self._queue.put_nowait((uuid, bytes(data)))

        return callback

    async def _connected_now(self) -> None:
        self._last_data = self._mono()
        self.presence.heard(self.clock.wall())
        if self.state is LinkState.STARTING:  # not when a relink was asked meanwhile
            self.state = LinkState.CONNECTED
        self.connected.set()
        await self.presence.came_online("connected")  # back, or first seen since the start
        self._wake.set()  # statuses that came due while the watch was away

    async def _until_lost(self, session: _Session) -> None:
        """Write Alert Confirms as they come due; end when the link is lost or falls silent."""
        while not session.lost.is_set():
            if self.state is LinkState.RELINK:
                log.info("watch_relink", watch=self.device)
                raise WatchLinkError
            await self._check_alive(session.client)
            if self._settled(session) and await self._write_due(session):
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SUPERVISE_TICK_S):
                    await self._wake.wait()

    async def _check_alive(self, client: BleakClient) -> None:
        """A stalled BlueZ reports no disconnection: nothing heard for ``silent_after_s`` is
        a lost link when the watch is worn and sends heart rate (it does, every second or so);
        otherwise a battery read must answer in time."""
        silent_s = self._mono() - self._last_data
        if silent_s <= self.settings.silent_after_s:
            return
        if self.worn is not False and codec.HEART_RATE_MEASUREMENT in self._subscribed:
            await self._silent_link(silent_s)
        if "battery" in self.services:
            try:
                async with asyncio.timeout(self._gatt_timeout_s()):
                    value = await client.read_gatt_char(codec.BATTERY_LEVEL)
            except LINK_ERRORS:
                await self._silent_link(silent_s)
            self._queue.put_nowait((codec.BATTERY_LEVEL, bytes(value)))
        self._last_data = self._mono()

    async def _silent_link(self, silent_s: float) -> None:
        """The link looks up but carries nothing: for the platform the watch was away (an alert
        in that time reaches the gateway only when the watch repeats it on the new link)."""
        self.counters["silent_link"] += 1
        log.warning("watch_link_silent", watch=self.device, silent_s=round(silent_s, 1))
        await self.presence.went_offline("silent_link")
        raise WatchLinkError

    def _settled(self, session: _Session) -> bool:
        """Whether confirms may be written: on a new link the watch repeats what it still holds
        first, and each repeat or new alert settles what its alert_seq stands for before
        anything is written to it."""
        return self._graced(session) and not self._held.holding

    def _graced(self, session: _Session) -> bool:
        """The new link's grace is over (see ``_settled``)."""
        return self._mono() - session.started >= confirm_grace_s(self.settings.silent_after_s)

    async def _write_due(self, session: _Session) -> bool:
        """Write the next status due, one write at a time; False when none is due. True also
        when the session is ending: the link's loop then ends it."""
        async with self._writing:
            if session.lost.is_set() or self.state is LinkState.RELINK:
                return True
            alert = self.alerts.next_due()
            if alert is None:
                return False
            await self._write_confirm(session, alert)
            return True

    async def _confirm_raised(self, alert: RaisedAlert) -> None:
        """A new alert's 0x01, written by the task that raised its alarm as soon as the alarm
        and its key are committed, before anything else is done for the alert: the link's task
        would wake only after every callback queued before it (the uplink's claim of that alarm
        among them), and the watch is waiting. Left to the link's task when it cannot be
        written now (not connected, within a new link's grace, another write under way)."""
        session = self._session
        if (
            session is None
            or self.state is not LinkState.CONNECTED
            or self._writing.locked()
            or not self._graced(session)
        ):
            return
        async with self._writing:  # (free: taken at once, without a turn of the loop)
            if session.lost.is_set() or alert.due[:1] != [codec.AlertConfirmStatus.RECEIVED]:
                return
            await self._confirm_now(self._write_confirm(session, alert))

    async def _confirm_at_once(self) -> None:
        """What came due while an alert was settled (a repeat's confirm, an unkeyed alert's
        0x01), written by the task that settled it, in the same step. Left to the link's task
        when it could not write now itself (not connected, not settled, writing)."""
        session = self._session
        if (
            session is None
            or self.state is not LinkState.CONNECTED
            or self._writing.locked()
            or not self._settled(session)
        ):
            return
        await self._confirm_now(self._write_due(session))

    async def _confirm_now(self, write: Awaitable[object]) -> None:
        try:
            await write
        except WatchLinkError:  # BlueZ does not answer: the link's task makes the link again
            if self.state in _LIVE:
                self.state = LinkState.RELINK
            self._wake.set()

    def _gatt_timeout_s(self) -> float:
        """A read or write takes a few connection intervals; one that hangs is a stalled BlueZ."""
        return min(GATT_TIMEOUT_S, max(1.0, self.settings.silent_after_s))

    async def _write_confirm(self, session: _Session, alert: RaisedAlert) -> None:
        client = session.client
        status = alert.due[0]
        try:
            value = codec.encode_alert_confirm(alert.seq, status)
        except WatchFrameError:  # only from a damaged watch list: nothing the watch could take
            self.alerts.unwritable(alert)
            return
        try:
            async with asyncio.timeout(self._gatt_timeout_s()):
                # With response: the watch's datasheet gives Alert Confirm "write" only.
                await client.write_gatt_char(session.confirm_char, value, response=True)
        except TimeoutError:
            self.counters["confirm_failed"] += 1
            log.warning("watch_confirm_timeout", watch=self.device, alert_seq=alert.seq)
            raise WatchLinkError from None  # BlueZ does not answer: make the link again
        except LINK_ERRORS as exc:
            self.counters["confirm_failed"] += 1
            log.info("watch_confirm_failed", watch=self.device, alert_seq=alert.seq, error=str(exc))
            await asyncio.sleep(SUPERVISE_TICK_S)  # the link is likely going: let it be noticed
            if client.is_connected:
                self.alerts.refused(alert, status)  # a refusal on a live link, not a lost link
            return
        self.alerts.written(alert, status, self.clock.wall())
        self.counters["confirm_written"] += 1
        log.info(
            "watch_confirm_written", watch=self.device, alert_seq=alert.seq, status=int(status)
        )

    def _store_changed(self, urgent: bool = False) -> None:
        self.store.changed()
        self._persist.set()
        if urgent:
            self._persist_now.set()

    async def _write_store(self) -> None:
        """Write what changed (statuses told and due, worn), at most every ``STORE_EVERY_S``;
        at once (also in the middle of that wait) for what the watch must be shown even after a
        crash: an acknowledgement, and the alert whose 0x01 the watch took."""
        while True:
            await self._persist.wait()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STORE_EVERY_S):
                    await self._persist_now.wait()
            self._persist.clear()
            self._persist_now.clear()
            try:
                await self.store.flush()
            except OSError:
                self.counters["store_write_failed"] += 1
                log.exception("watch_store_write_failed", path=str(self.store.path))

    async def _supervise_presence(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_TICK_S)
            away = self._mono() - self._away_since
            if (
                self.connected.is_set()
                or self.presence.online is False
                or away < self.settings.offline_after_s
            ):
                continue
            log.warning("watch_offline", watch=self.device, away_s=round(away))
            await self.presence.went_offline("disconnected")

    # ------------------------------------------------------------------------------ handling

    async def _handle_queue(self) -> None:
        handlers = {
            codec.HEART_RATE_MEASUREMENT: self._heart_rate,
            codec.BATTERY_LEVEL: self._battery,
            codec.PLX_CONTINUOUS_MEASUREMENT: self._plx_continuous,
            codec.PLX_SPOT_CHECK_MEASUREMENT: self._plx_spot_check,
            codec.BLOOD_PRESSURE_MEASUREMENT: self._blood_pressure,
            codec.TEMPERATURE_MEASUREMENT: self._temperature,
            codec.CARE_ALERT: self._care_alert,
            codec.STEPS: self._steps,
        }
        while True:
            uuid, data = await self._queue.get()
            self.presence.heard(self.clock.wall())
            try:
                await handlers[uuid](data)
            except WatchFrameError as exc:
                self.counters["bad_payload"] += 1
                log.warning("watch_bad_payload", watch=self.device, uuid=uuid, error=str(exc))
            except Exception:
                # Storing failed (disk, database): never a crash of the link. An alert not stored
                # is not confirmed; a fresh connection makes the watch repeat it.
                self.counters["handler_failed"] += 1
                log.exception("watch_handler_failed", watch=self.device, uuid=uuid)
                if uuid == codec.CARE_ALERT and self.state in _LIVE:
                    self.state = LinkState.RELINK
                    self._wake.set()

    async def _heart_rate(self, data: bytes) -> None:
        reading = codec.parse_heart_rate(data)
        if reading.contact is not None:  # a watch without contact detection says nothing of it
            await self._set_worn(reading.worn)
        if reading.heart_rate is not None:
            await self._reading("heart_rate", reading.heart_rate)
        if reading.worn and self.worn is not False and reading.rr_ms:
            self.aggregator.add("rr_ms", list(reading.rr_ms), self._mono())

    async def _battery(self, data: bytes) -> None:
        level = codec.parse_battery(data).level
        if level is None:
            return
        self.battery = level
        await self.batteries.level(level)

    async def _plx_continuous(self, data: bytes) -> None:
        reading = codec.parse_plx_continuous(data)
        await self._reading("spo2", reading.spo2)
        await self._reading("pulse_rate", reading.pulse_rate)

    async def _plx_spot_check(self, data: bytes) -> None:
        reading = codec.parse_plx_spot_check(data)
        await self._reading("spo2", reading.spo2)
        await self._reading("pulse_rate", reading.pulse_rate)

    async def _blood_pressure(self, data: bytes) -> None:
        reading = codec.parse_blood_pressure(data)
        await self._reading("systolic", reading.systolic)
        await self._reading("diastolic", reading.diastolic)
        await self._reading("map", reading.map)
        await self._reading("pulse_rate", reading.pulse_rate)

    async def _temperature(self, data: bytes) -> None:
        await self._reading("temperature_c", codec.parse_temperature(data).temperature_c)

    async def _steps(self, data: bytes) -> None:
        self.aggregator.add("steps", codec.parse_steps(data).steps, self._mono())
        self._vitals_added.set()

    async def _reading(self, metric: str, value: float | None) -> None:
        """A wrist reading: to the aggregator and the edge rules, unless the watch is off."""
        if self.worn is False:
            self.counters["reading_not_worn"] += 1
            return
        now = self._mono()
        if value is not None:
            self.aggregator.add(metric, value, now)
            self._vitals_added.set()
        for trip in self.rules.observe(metric, value, now):
            log.warning("watch_vitals_alarm", watch=self.device, rule=trip.rule, value=trip.value)
            await self.alarms.raise_alarm("alarm.vitals", trip.data(), self.device)

    async def _set_worn(self, worn: bool) -> str | None:
        """Report a change of worn / not worn; the event's id, None when nothing changed."""
        if worn == self.worn:
            return None
        self.worn = worn
        self.store.set_worn(self.address, worn)
        self._persist.set()
        if not worn:
            self.aggregator.discard(WRIST_METRICS)
            self.rules.pause()
        log.info("watch_worn" if worn else "watch_not_worn", watch=self.device)
        return await self.sink.emit("device.worn" if worn else "device.not_worn", {}, self.device)

    async def _care_alert(self, data: bytes) -> None:
        """Settle one alert. Until it is settled nothing is written to the watch, and the states
        of an alarm raised for it wait: its 0x01 is due once the alert is on disk, so it always
        comes first."""
        alert = codec.parse_care_alert(data)
        self._held.start()
        try:
            await self._settle(alert, _watch_seconds(alert))
        finally:
            held = self._held.end()
            self._wake.set()
        for alarm_id, state in held:
            self.alarm_state_changed(alarm_id, "", self.device, state)
        await self._confirm_at_once()

    async def _settle(self, alert: CareAlert, watch_time: int) -> None:
        earlier = self.store.repeat_of(self.address, alert.alert_seq, alert.event, watch_time)
        if earlier is not None:
            self.counters["alert_repeated"] += 1
            log.info("watch_alert_repeated", watch=self.device, alert_seq=alert.alert_seq)
            self.alerts.repeated(earlier)
            return
        self.alerts.new(alert.alert_seq)
        key = alert_key(self.address, alert, watch_time) if alert.event in _ALARM_ALERTS else None
        event_id = await self._raise_for(alert, key)
        raised = RaisedAlert(
            alert.alert_seq,
            alert.event,
            watch_time,
            event_id,
            self.clock.wall(),
            due=[codec.AlertConfirmStatus.RECEIVED],
        )
        self.alerts.raised(raised)
        if key is None:
            # Known as raised before the watch is told: no second alarm (or device.worn) for a
            # repeat after a crash.
            self.store.raised(self.address, raised)
            await self.store.flush(backup=False)
            return
        # Under a key the alarm's store knows the alert already (a repeat after a crash finds
        # its alarm): the 0x01 goes first, then the alert joins the watch list, which is written
        # once the watch took the 0x01 (``AlertConfirms.written``; no await comes in between).
        try:
            await self._confirm_raised(raised)
        finally:
            self.store.raised(self.address, raised)

    async def _raise_for(self, alert: CareAlert, key: str | None) -> str:
        """Store what the alert says (alarms durably, under ``key``); the event's id, "" when
        none was sent."""
        event = alert.event
        if event in (CareEvent.SOS, CareEvent.FALL):
            kind: AlarmKind = "alarm.watch_sos" if event == CareEvent.SOS else "alarm.fall"
            alarm_id = await self.alarms.raise_alarm(kind, {}, self.device, key=key)
            logged = functools.partial(
                log.warning, "watch_alarm", watch=self.device, kind=kind, alert_seq=alert.alert_seq
            )
            asyncio.get_running_loop().call_soon(logged)  # once the 0x01 is on its way
            return alarm_id
        if event == CareEvent.FALL_CANCELLED:  # the fall being counted down on the watch
            fall = self.store.latest(self.address, CareEvent.FALL)
            recent = fall is not None and self.clock.wall() - fall.at <= FALL_KEPT_S
            fall_id = fall.event_id if fall is not None and recent and fall.event_id else None
            return await self.alarms.raise_alarm(
                "alarm.cancelled", {"alarm_id": fall_id}, self.device, key=key
            )
        if event in (CareEvent.TAKEN_OFF, CareEvent.PUT_ON):
            return await self._set_worn(event == CareEvent.PUT_ON) or ""
        # Unknown: logged and counted, never guessed; confirmed so it is not repeated forever.
        self.counters["unknown_care_event"] += 1
        log.warning("watch_unknown_care_event", watch=self.device, event=event)
        return ""

    # ------------------------------------------------------------------------------ vitals

    async def _report_vitals(self) -> None:
        while True:
            due = self.aggregator.next_due()
            self._vitals_added.clear()
            if due is None:
                await self._vitals_added.wait()
                continue
            wait_s = due - self._mono()
            if wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._vitals_added.wait()
                continue
            data = self.aggregator.due(self._mono())
            if data:
                await self.sink.emit("telemetry.vitals", data, self.device)

    def update_vitals(self, vitals: VitalsSettings) -> None:
        """New intervals and rules from the platform (``config.set``)."""
        self.aggregator.set_intervals(intervals_of(vitals))
        self.rules.update(rules_of(vitals))
        self._vitals_added.set()

    # ------------------------------------------------------------------------------ feedback

    def _alert_of(self, alarm_id: str) -> RaisedAlert | None:
        for alert in self.store.state(self.address).alerts:
            if alert.event_id == alarm_id:
                return alert
        return None

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None:
        """``AlarmListener``: an alarm raised from this watch's alert changed state."""
        if device != self.device:
            return
        if self._held.hold((alarm_id, state)):  # after the alert is settled (see _care_alert)
            return
        alert = self._alert_of(alarm_id)
        if alert is not None and self.alerts.alarm_state(alert, state):
            self._wake.set()

    # ------------------------------------------------------------------------------ status

    async def close(self) -> None:
        """After the link's task is stopped (gateway stopping, watch unpaired): disconnect if a
        session outlived a stop that timed out, and write what the store still holds."""
        session = self._session
        if session is not None and session.client.is_connected:
            await bounded_disconnect(session.client, self.settings.disconnect_timeout_s)
        with contextlib.suppress(OSError):
            await self.store.flush()

    def status(self) -> dict[str, Any]:
        now = self._mono()
        return {
            "device": self.device,
            "address": self.address,
            "connected": self.connected.is_set(),
            "online": self.presence.online,
            "worn": self.worn,
            "battery": self.battery,
            "services": self.services,
            "silent_s": round(now - self._last_data, 1),
            "counters": dict(self.counters),
        }


_LIVE = (LinkState.STARTING, LinkState.CONNECTED)  # states a relink can be asked in
_ALARM_ALERTS = (CareEvent.SOS, CareEvent.FALL, CareEvent.FALL_CANCELLED)  # raise an alarm


def alert_key(address: str, alert: CareAlert, watch_time: int) -> str | None:
    """The key an alert's alarm is raised under: the watch and the alert as the watch names it
    (``alert_seq``, event, its own clock's time). None without that time: ``alert_seq`` restarts
    with the watch, so a new alert could take an old one's key; its alarm is raised unkeyed."""
    if watch_time == 0:
        return None
    return f"watch/{address}/{alert.alert_seq}/{alert.event}/{watch_time}"


def _watch_seconds(alert: CareAlert) -> int:
    if alert.watch_time is None:
        return 0
    return int((alert.watch_time - codec.WATCH_EPOCH).total_seconds())
