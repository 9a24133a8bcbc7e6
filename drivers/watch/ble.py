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
  0x01 once stored, 0x02 when the platform acknowledges and 0x03 when they could not be delivered;
- not worn (heart-rate contact bits, take-off / put-on alerts): ``device.not_worn`` and
  ``device.worn`` once per change; no vitals and no edge rule while not worn;
- vitals are aggregated per metric (``VitalsAggregator``) and checked by the edge rules
  (``RuleEngine``), which raise ``alarm.vitals``.

Notifications arrive in bleak's callbacks; they are queued and handled in order by one task, so a
slow durable write never reorders events and never blocks bleak.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.device import BLEDevice
from bleak.exc import BleakError
from bleak_retry_connector import establish_connection, get_device_by_adapter

from drivers.base import AlarmRaiser, AlarmState, EventSink
from drivers.watch import codec
from drivers.watch.codec import AlertConfirmStatus, CareAlert, CareEvent, WatchFrameError
from drivers.watch.rules import Rule, RuleEngine
from drivers.watch.store import RaisedAlert, WatchStore
from drivers.watch.vitals import VitalsAggregator
from gateway.backoff import Backoff
from gateway.events import ts_from_unix

log = structlog.get_logger("drivers.watch.ble")

SESSION_RESET_S = 30.0  # a session that lasted this long resets the reconnect back-off
MAX_CONNECT_ATTEMPTS = 2  # per round of establish_connection; the rounds back off
SUPERVISE_TICK_S = 0.25
GATT_TIMEOUT_S = 10.0  # one write with response; a stalled BlueZ never answers
WRIST_METRICS = (
    *("heart_rate", "rr_ms", "spo2", "pulse_rate"),
    *("systolic", "diastolic", "map", "temperature_c"),
)
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
    """The reporting intervals and the edge rules (``gateway.config.VitalsSection``)."""

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


async def bounded_disconnect(client: BleakClient, timeout_s: float) -> bool:
    """``disconnect()`` that gives up after ``timeout_s`` (a stalled BlueZ never answers)."""
    try:
        async with asyncio.timeout(timeout_s):
            await client.disconnect()
    except (TimeoutError, BleakError, EOFError, OSError) as exc:
        log.warning("watch_disconnect_failed", error=type(exc).__name__)
        return False
    return True


def offered_services(client: BleakClient) -> list[str]:
    """The datasheet's services the connected watch offers, by name."""
    return [name for uuid, name in SERVICES.items() if client.services.get_service(uuid)]


async def find_device(address: str, adapter: str, scan_s: float) -> BLEDevice | None:
    """The watch as BlueZ knows it; a scan when BlueZ has no object for it (yet)."""
    device = await get_device_by_adapter(address, adapter)
    if device is not None:
        return device
    from bleak import BleakScanner  # noqa: PLC0415 - only when BlueZ does not know the watch

    return await BleakScanner.find_device_by_address(
        address, timeout=scan_s, bluez={"adapter": adapter}
    )


@dataclass(slots=True)
class _Session:
    client: BleakClient
    lost: asyncio.Event
    started: float  # monotonic s


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
    ) -> None:
        self.address = address.upper()
        self.device = codec.device_id(self.address)
        self.settings = settings
        self.sink = sink
        self.alarms = alarms
        self.store = store
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self.aggregator = VitalsAggregator(intervals_of(vitals))
        self.rules = RuleEngine(rules_of(vitals))
        self.services: list[str] = []
        self.battery: int | None = None
        self.connected = asyncio.Event()
        self.worn: bool | None = store.worn(self.address)
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._session: _Session | None = None
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_cap_s)
        self._last_data = self._mono()
        self._last_seen_wall: float | None = None
        self._away_since = self._mono()
        self._offline = False
        self._online_reported = False
        self._battery_reported: tuple[int, bool] | None = None
        self._vitals_added = asyncio.Event()
        self._missing_logged: set[str] = set()
        # Alert Confirm: what the watch still has to be told, and the alert of each alarm.
        self._confirm_due: dict[int, list[int]] = {}  # alert_seq -> statuses to write, in order
        self._confirm_written: dict[int, int] = {}  # alert_seq -> the last status written
        self._confirm_added = asyncio.Event()
        self._alert_of: dict[str, RaisedAlert] = {}  # alarm id -> alert
        self._alert_by_seq: dict[int, RaisedAlert] = {}  # the latest alert of each alert_seq
        self._status_of: dict[str, int] = {}  # alarm id -> the last status the watch was given
        self._raising = False
        self._deferred: list[tuple[str, AlarmState]] = []
        self._open_fall: str | None = None

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

    async def _keep_link(self) -> None:
        while True:
            try:
                device = await find_device(
                    self.address, self.settings.adapter, self.settings.connect_timeout_s
                )
                if device is None:
                    self.counters["not_found"] += 1
                    log.info("watch_not_found", watch=self.device)
                else:
                    await self._session_with(device)
            except asyncio.CancelledError:
                raise
            except (BleakError, TimeoutError, EOFError, OSError) as exc:
                self.counters["connect_failed"] += 1
                log.info("watch_connect_failed", watch=self.device, error=str(exc)[:200])
            except Exception:
                self.counters["link_crashed"] += 1
                log.exception("watch_link_crashed", watch=self.device)
            await asyncio.sleep(self._backoff.next_delay())

    async def _session_with(self, device: BLEDevice) -> None:
        lost = asyncio.Event()

        def disconnected(_client: BleakClient) -> None:
            lost.set()

        async with asyncio.timeout(self.settings.connect_timeout_s):
            client = await establish_connection(
                BleakClient,
                device,
                self.device,
                disconnected_callback=disconnected,
                max_attempts=MAX_CONNECT_ATTEMPTS,
            )
        session = _Session(client, lost, self._mono())
        self._session = session
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await self._start(client)
            await self._connected_now()
            await self._until_lost(session)
        finally:
            self._session = None
            self.connected.clear()
            self._away_since = self._mono()
            # Also after a link loss: only disconnect() releases the client's own bus connection.
            await bounded_disconnect(client, self.settings.disconnect_timeout_s)
            if self._mono() - session.started >= SESSION_RESET_S:
                self._backoff.reset()
            log.info("watch_disconnected", watch=self.device)

    async def _start(self, client: BleakClient) -> None:
        """Subscribe to what the watch offers; read battery and steps."""
        self.services = offered_services(client)
        for uuid, service in SERVICES.items():
            if service not in self.services and service not in self._missing_logged:
                self._missing_logged.add(service)
                log.info("watch_service_missing", watch=self.device, service=service, uuid=uuid)
        for uuid in (codec.BATTERY_LEVEL, codec.STEPS):
            if client.services.get_characteristic(uuid) is not None:
                self._queue.put_nowait((uuid, bytes(await client.read_gatt_char(uuid))))
        for uuid in NOTIFIED:
            if client.services.get_characteristic(uuid) is not None:
                await client.start_notify(uuid, self._notified(uuid))
        log.info("watch_connected", watch=self.device, services=self.services)

    def _notified(self, uuid: str) -> Callable[[BleakGATTCharacteristic, bytearray], None]:
        def callback(_char: BleakGATTCharacteristic, data: bytearray) -> None:
            self._last_data = self._mono()
            self._queue.put_nowait((uuid, bytes(data)))

        return callback

    async def _connected_now(self) -> None:
        now = self._mono()
        self._last_data = now
        self._last_seen_wall = self.clock.wall()
        self.connected.set()
        if self._offline or not self._online_reported:
            self._offline = False
            self._online_reported = True
            await self.sink.emit(
                "device.online",
                {"reason": "connected", "last_seen": ts_from_unix(self._last_seen_wall)},
                self.device,
            )
        if self._confirm_due:
            self._confirm_added.set()

    async def _until_lost(self, session: _Session) -> None:
        """Write Alert Confirms as they come due; end when the link is lost or falls silent."""
        while not session.lost.is_set():
            if self._confirm_due:
                await self._write_confirms(session.client)
                continue
            self._confirm_added.clear()
            waits = [
                asyncio.ensure_future(session.lost.wait()),
                asyncio.ensure_future(self._confirm_added.wait()),
            ]
            try:
                await asyncio.wait(waits, timeout=SUPERVISE_TICK_S, return_when="FIRST_COMPLETED")
            finally:
                for waiter in waits:
                    waiter.cancel()
            if self._silent():
                self.counters["silent_link"] += 1
                log.warning(
                    "watch_link_silent",
                    watch=self.device,
                    silent_s=round(self._mono() - self._last_data, 1),
                )
                await bounded_disconnect(session.client, self.settings.disconnect_timeout_s)
                return

    def _silent(self) -> bool:
        """Worn, offering heart rate, and nothing heard for ``silent_after_s``."""
        return (
            self.worn is not False
            and "heart_rate" in self.services
            and self._mono() - self._last_data > self.settings.silent_after_s
        )

    async def _write_confirms(self, client: BleakClient) -> None:
        seq, statuses = next(iter(self._confirm_due.items()))
        status = statuses[0]
        try:
            async with asyncio.timeout(GATT_TIMEOUT_S):
                await client.write_gatt_char(
                    codec.ALERT_CONFIRM, codec.encode_alert_confirm(seq, status), response=True
                )
        except (BleakError, TimeoutError, EOFError, OSError) as exc:
            self.counters["confirm_failed"] += 1
            log.info("watch_confirm_failed", watch=self.device, alert_seq=seq, error=str(exc))
            await asyncio.sleep(SUPERVISE_TICK_S)  # the link is likely going: let it be noticed
            return
        statuses.pop(0)
        if not statuses:
            del self._confirm_due[seq]
        self._confirm_written[seq] = status
        self.counters["confirm_written"] += 1
        log.info("watch_confirm_written", watch=self.device, alert_seq=seq, status=status)
        alert = self._alert_by_seq.get(seq)
        if alert is not None:
            self.store.confirmed(self.address, alert)

    def _confirm(self, alert: RaisedAlert, status: int, *, again: bool = False) -> None:
        """Tell the watch ``status`` for ``alert`` (now, or when it is connected again), after
        what it was told before; a status it already shows is not written twice unless
        ``again`` (the watch repeated the alert: it did not get it)."""
        self._alert_by_seq[alert.seq] = alert
        self._status_of[alert.event_id] = status
        queue = self._confirm_due.setdefault(alert.seq, [])
        last = queue[-1] if queue else (None if again else self._confirm_written.get(alert.seq))
        if status != last:
            queue.append(status)
        if not queue:
            del self._confirm_due[alert.seq]
        self._confirm_added.set()

    async def _supervise_presence(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_TICK_S)
            away = self._mono() - self._away_since
            if self.connected.is_set() or self._offline or away < self.settings.offline_after_s:
                continue
            self._offline = True
            log.warning("watch_offline", watch=self.device, away_s=round(away))
            last_seen = None if self._last_seen_wall is None else ts_from_unix(self._last_seen_wall)
            await self.sink.emit(
                "device.offline", {"reason": "disconnected", "last_seen": last_seen}, self.device
            )

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
            self._last_seen_wall = self.clock.wall()
            try:
                await handlers[uuid](data)
            except WatchFrameError as exc:
                self.counters["bad_payload"] += 1
                log.warning("watch_bad_payload", watch=self.device, uuid=uuid, error=str(exc))

    async def _heart_rate(self, data: bytes) -> None:
        reading = codec.parse_heart_rate(data)
        await self._set_worn(reading.worn)
        if reading.heart_rate is not None:
            await self._reading("heart_rate", reading.heart_rate)
        if reading.worn and reading.rr_ms:
            self.aggregator.add("rr_ms", list(reading.rr_ms), self._mono())

    async def _battery(self, data: bytes) -> None:
        level = codec.parse_battery(data).level
        if level is None:
            return
        self.battery = level
        low = level <= self.settings.low_battery_percent
        last = self._battery_reported
        if last is None or last[1] != low or abs(last[0] - level) >= BATTERY_REPORT_STEP:
            self._battery_reported = (level, low)
            await self.sink.emit("device.battery", {"level": level, "low": low}, self.device)

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
        if not worn:
            self.aggregator.discard(WRIST_METRICS)
            self.rules.pause()
        log.info("watch_worn" if worn else "watch_not_worn", watch=self.device)
        return await self.sink.emit("device.worn" if worn else "device.not_worn", {}, self.device)

    async def _care_alert(self, data: bytes) -> None:
        alert = codec.parse_care_alert(data)
        watch_time = _watch_seconds(alert)
        earlier = self.store.repeat_of(self.address, alert.alert_seq, alert.event, watch_time)
        if earlier is not None:
            self.counters["alert_repeated"] += 1
            log.info("watch_alert_repeated", watch=self.device, alert_seq=alert.alert_seq)
            self._alert_of.setdefault(earlier.event_id, earlier)
            status = self._status_of.get(earlier.event_id, AlertConfirmStatus.RECEIVED)
            self._confirm(earlier, status, again=True)
            return
        event_id = await self._raise_for(alert)
        raised = RaisedAlert(alert.alert_seq, alert.event, watch_time, event_id, self.clock.wall())
        self.store.raised(self.address, raised)
        if event_id:
            self._alert_of[event_id] = raised
        self._confirm(raised, AlertConfirmStatus.RECEIVED)
        deferred, self._deferred = self._deferred, []
        for alarm_id, state in deferred:
            self.alarm_state_changed(alarm_id, "", self.device, state)

    async def _raise_for(self, alert: CareAlert) -> str:
        """Store what the alert says (alarms durably); the event's id, "" when none was sent."""
        event = alert.event
        if event in (CareEvent.SOS, CareEvent.FALL):
            kind = "alarm.watch_sos" if event == CareEvent.SOS else "alarm.fall"
            self._raising = True
            try:
                alarm_id = await self.alarms.raise_alarm(kind, {}, self.device)
            finally:
                self._raising = False
            if event == CareEvent.FALL:
                self._open_fall = alarm_id
            log.warning("watch_alarm", watch=self.device, kind=kind, alert_seq=alert.alert_seq)
            return alarm_id
        if event == CareEvent.FALL_CANCELLED:
            self._raising = True
            try:
                cancel_id = await self.alarms.raise_alarm(
                    "alarm.cancelled", {"alarm_id": self._open_fall}, self.device
                )
            finally:
                self._raising = False
            self._open_fall = None
            return cancel_id
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

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None:
        """``AlarmListener``: an alarm raised from this watch's alert changed state."""
        if device != self.device:
            return
        if self._raising:  # during raise_alarm: after the 0x01 of the alert being stored
            self._deferred.append((alarm_id, state))
            return
        alert = self._alert_of.get(alarm_id)
        if alert is None:
            return
        status = {
            AlarmState.ACKNOWLEDGED: AlertConfirmStatus.ACKNOWLEDGED,
            AlarmState.UNDELIVERED: AlertConfirmStatus.NOT_DELIVERED,
        }.get(state)
        if status is not None:
            self._confirm(alert, status)

    # ------------------------------------------------------------------------------ status

    async def close(self) -> None:
        """Disconnect (bounded) when the gateway stops or the watch is unpaired."""
        session = self._session
        if session is not None and session.client.is_connected:
            await bounded_disconnect(session.client, self.settings.disconnect_timeout_s)

    def status(self) -> dict[str, Any]:
        now = self._mono()
        return {
            "device": self.device,
            "address": self.address,
            "connected": self.connected.is_set(),
            "online": not self._offline,
            "worn": self.worn,
            "battery": self.battery,
            "services": self.services,
            "silent_s": round(now - self._last_data, 1),
            "counters": dict(self.counters),
        }


def _watch_seconds(alert: CareAlert) -> int:
    if alert.watch_time is None:
        return 0
    return int((alert.watch_time - codec.WATCH_EPOCH).total_seconds())
