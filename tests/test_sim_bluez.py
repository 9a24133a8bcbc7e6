"""The simulated watch behind the fake BlueZ, driven by bleak's real BlueZ backend (and
bleak-retry-connector) over a private dbus-daemon: what the gateway's tests rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import pytest
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import (
    BleakDBusError,
    BleakError,
    BleakGATTProtocolError,
    BleakGATTProtocolErrorCode,
)

from drivers.watch.codec import (
    ALERT_CONFIRM,
    BATTERY_LEVEL,
    BLOOD_PRESSURE_MEASUREMENT,
    CARE_ALERT,
    CARE_SERVICE,
    HEART_RATE_MEASUREMENT,
    HEART_RATE_SERVICE,
    PLX_CONTINUOUS_MEASUREMENT,
    PULSE_OXIMETER_SERVICE,
    STEPS,
    TEMPERATURE_MEASUREMENT,
    CareEvent,
    encode_alert_confirm,
    encode_blood_pressure,
    encode_care_alert,
    encode_heart_rate,
    encode_plx_continuous,
    encode_sfloat,
    encode_steps,
    encode_temperature,
    parse_blood_pressure,
    parse_care_alert,
    parse_heart_rate,
    parse_plx_continuous,
    parse_steps,
    parse_temperature,
)
from hil.sim.bluez import ALL_SERVICES, CONNECT_FAILED_REASON, FakeBluez, WatchSim
from hil.sim.dbus import connection_count, match_rule_count, match_rules
from tests.support.ble import private_system_bus

ADDRESS = "AA:BB:CC:DD:EE:01"
TIMEOUT_S = 1.5  # every wait below ends on a condition; this is only the deadline

HR_VECTORS = ("0648", "0400", "164B00042003", "0982002301")


# --- Fixtures -----------------------------------------------------------------------------------


@pytest.fixture
async def system_bus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    async with private_system_bus(tmp_path / "dbus", monkeypatch) as address:
        yield address


@pytest.fixture
def watch() -> WatchSim:
    return WatchSim(ADDRESS)


@pytest.fixture
async def bluez(system_bus: str, watch: WatchSim) -> AsyncIterator[FakeBluez]:
    async with FakeBluez(system_bus, [watch]) as fake:
        yield fake


async def _scan(address: str = ADDRESS) -> tuple[BLEDevice, AdvertisementData]:
    found: list[AdvertisementData] = []

    def match(device: BLEDevice, adv: AdvertisementData) -> bool:
        if device.address != address:
            return False
        found.append(adv)
        return True

    device = await BleakScanner.find_device_by_filter(match, timeout=TIMEOUT_S)
    assert device is not None, f"{address} not found by scanning"
    return device, found[-1]


async def _managed_paths(address: str) -> set[str]:
    """The object paths org.bluez exports (ObjectManager.GetManagedObjects)."""
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path="/",
                interface="org.freedesktop.DBus.ObjectManager",
                member="GetManagedObjects",
            )
        )
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    return set(reply.body[0])


class Received:
    """Notification values bleak delivered, with a condition wait."""

    def __init__(self) -> None:
        self.values: list[bytes] = []
        self._changed = asyncio.Event()

    def __call__(self, _char: object, data: bytearray) -> None:
        self.values.append(bytes(data))
        self._changed.set()

    async def wait_count(self, count: int, timeout: float = TIMEOUT_S) -> list[bytes]:
        async with asyncio.timeout(timeout):
            while len(self.values) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.values


class Disconnects:
    """bleak's disconnected_callback, counted, with a condition wait."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def __call__(self, _client: BleakClient) -> None:
        self.count += 1
        self._changed.set()

    async def wait_count(self, count: int, timeout: float = TIMEOUT_S) -> None:
        async with asyncio.timeout(timeout):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


# --- Encoders against the datasheet's vectors ----------------------------------------------------


def test_encoders_reproduce_the_datasheet_vectors() -> None:
    assert encode_heart_rate(72) == bytes.fromhex("0648")
    assert encode_heart_rate(0, contact=False) == bytes.fromhex("0400")
    assert encode_heart_rate(75, rr_intervals_s=(1.0, 0.78125)) == bytes.fromhex("164B00042003")
    assert encode_heart_rate(130, contact=None, energy_kj=291)[2:] == bytes.fromhex("2301")
    assert encode_plx_continuous(97, 72) == bytes.fromhex("0061004800")
    assert encode_plx_continuous(None, None) == bytes.fromhex("00FF07FF07")
    assert encode_blood_pressure(120, 80, 93, pulse_rate=70) == bytes.fromhex(
        "04 78 00 50 00 5D 00 46 00"
    )
    assert encode_blood_pressure(
        140, 90, 105, timestamp=datetime(2026, 11, 30, 10, 15), pulse_rate=72
    ) == bytes.fromhex("06 8C 00 5A 00 69 00 EA 07 0B 1E 0A 0F 00 48 00")
    assert encode_temperature(36.6) == bytes.fromhex("00 6E 01 00 FF")
    assert encode_temperature(36.6, temperature_type=2) == bytes.fromhex("04 6E 01 00 FF 02")
    assert encode_temperature(98.6, fahrenheit=True) == bytes.fromhex("01 DA 03 00 FF")
    assert encode_sfloat(36.5) == bytes.fromhex("6DF1")
    assert encode_sfloat(None) == bytes.fromhex("FF07")
    assert encode_care_alert(CareEvent.SOS, 5) == bytes.fromhex("01 05 00 00 00 00")
    assert encode_care_alert(CareEvent.FALL, 6, 86400) == bytes.fromhex("02 06 80 51 01 00")


def test_encoders_round_trip_through_the_gateway_codec() -> None:
    hr = parse_heart_rate(encode_heart_rate(300, energy_kj=12, rr_intervals_s=(0.5,)))
    assert (hr.heart_rate, hr.energy_kj, hr.rr_ms, hr.worn) == (300, 12, (500.0,), True)
    plx = parse_plx_continuous(encode_plx_continuous(98.5, 61))
    assert (plx.spo2, plx.pulse_rate) == (98.5, 61)
    bp = parse_blood_pressure(encode_blood_pressure(121.5, 79, 93.2, user_id=1, status=3))
    assert (bp.systolic, bp.diastolic, bp.map, bp.user_id, bp.status) == (121.5, 79, 93.2, 1, 3)
    assert parse_temperature(encode_temperature(-12.25)).temperature_c == -12.25
    assert parse_steps(encode_steps(123456)).steps == 123456


# --- bleak against the fake ---------------------------------------------------------------------


async def test_scan_finds_the_watch_with_rssi_and_service_uuids(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    device, adv = await _scan()
    assert device.name == "CareWatch"
    assert adv.rssi == -60
    assert HEART_RATE_SERVICE in adv.service_uuids
    assert CARE_SERVICE in adv.service_uuids
    assert not bluez.discovering, "the scanner's discovery session ended"


async def test_connect_read_battery_and_receive_heart_rate_vectors(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    device, _ = await _scan()
    received = Received()
    async with BleakClient(device, timeout=TIMEOUT_S) as client:
        assert watch.connected and watch.connections == 1
        assert await client.read_gatt_char(BATTERY_LEVEL) == bytes([90])
        char = client.services.get_characteristic(HEART_RATE_MEASUREMENT)
        assert char is not None and char.properties == ["notify"]
        confirm = client.services.get_characteristic(ALERT_CONFIRM)
        assert confirm is not None and confirm.properties == ["write"]
        await client.start_notify(HEART_RATE_MEASUREMENT, received)
        assert watch.is_subscribed(HEART_RATE_MEASUREMENT)
        for vector in HR_VECTORS:
            assert await watch.notify(HEART_RATE_MEASUREMENT, bytes.fromhex(vector))
        values = await received.wait_count(len(HR_VECTORS))
        assert values == [bytes.fromhex(v) for v in HR_VECTORS]
        assert parse_heart_rate(values[0]).heart_rate == 72
        assert not parse_heart_rate(values[1]).worn
        assert await watch.heart_rate(80, contact=False)
        assert parse_heart_rate((await received.wait_count(5))[4]).worn is False
        watch.battery = 41  # not subscribed to Battery Level: nothing is sent
        assert await client.read_gatt_char(BATTERY_LEVEL) == bytes([41])
    await watch.wait_disconnected(TIMEOUT_S)
    assert not await watch.heart_rate(72), "nothing is sent without a link"


async def test_write_alert_confirm_is_recorded(bluez: FakeBluez, watch: WatchSim) -> None:
    device, _ = await _scan()
    received = Received()
    async with BleakClient(device, timeout=TIMEOUT_S) as client:
        await client.start_notify(CARE_ALERT, received)
        assert await watch.care_alert(CareEvent.FALL, 6, 86400)
        alert = parse_care_alert((await received.wait_count(1))[0])
        assert (alert.event, alert.alert_seq) == (CareEvent.FALL, 6)
        assert [a.alert_seq for a in watch.pending_alerts] == [6]
        await client.write_gatt_char(ALERT_CONFIRM, encode_alert_confirm(6, 1), response=True)
        assert watch.confirms == [(6, 1)]
        assert watch.pending_alerts == []
        with pytest.raises(BleakGATTProtocolError) as short:
            await client.write_gatt_char(ALERT_CONFIRM, b"\x06", response=True)
        assert short.value.code == BleakGATTProtocolErrorCode.INVALID_ATTRIBUTE_VALUE_LENGTH
        with pytest.raises(BleakGATTProtocolError) as unreadable:
            await client.read_gatt_char(ALERT_CONFIRM)
        assert unreadable.value.code == BleakGATTProtocolErrorCode.READ_NOT_PERMITTED
    assert watch.confirms == [(6, 1)]


async def test_drop_link_fires_disconnected_callback_and_reconnect_works(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    device, _ = await _scan()
    disconnects = Disconnects()
    client = BleakClient(device, disconnected_callback=disconnects, timeout=TIMEOUT_S)
    await client.connect()
    await client.start_notify(HEART_RATE_MEASUREMENT, Received())
    watch.drop_link()
    await disconnects.wait_count(1)
    assert not client.is_connected
    assert not watch.is_subscribed(HEART_RATE_MEASUREMENT)
    assert not any("/service" in p for p in await _managed_paths(bluez.bus_address))
    await client.disconnect()  # releases the client's bus connection

    received = Received()
    await client.connect()
    assert watch.connections == 2
    await client.start_notify(HEART_RATE_MEASUREMENT, received)
    assert await watch.heart_rate(72)
    assert await received.wait_count(1) == [bytes.fromhex("0648")]
    await client.disconnect()
    assert disconnects.count == 2
    assert not watch.connected


async def test_connect_by_address_scans_first(bluez: FakeBluez, watch: WatchSim) -> None:
    async with BleakClient(ADDRESS, timeout=TIMEOUT_S) as client:
        assert client.name == "CareWatch"
        assert await client.read_gatt_char(STEPS) == bytes(4)
    assert watch.connections == 1 and not bluez.discovering


async def test_pending_sos_is_notified_again_after_each_reconnection_until_confirmed(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    device, _ = await _scan()
    assert not await watch.care_alert(CareEvent.SOS, 5), "no link yet: pending only"
    for round_ in range(2):
        received = Received()
        async with BleakClient(device, timeout=TIMEOUT_S) as client:
            await client.start_notify(CARE_ALERT, received)
            assert (await received.wait_count(1))[0] == bytes.fromhex("010500000000")
            if round_ == 1:
                await client.write_gatt_char(ALERT_CONFIRM, encode_alert_confirm(5, 2), True)
        await watch.wait_disconnected(TIMEOUT_S)
    assert watch.confirms == [(5, 2)]

    received = Received()
    async with BleakClient(device, timeout=TIMEOUT_S) as client:
        await client.start_notify(CARE_ALERT, received)
        await client.start_notify(STEPS, Received())  # a later round trip: nothing came before
        assert received.values == []
    assert watch.notifications[CARE_ALERT] == [bytes.fromhex("010500000000")] * 2


async def test_a_confirm_lost_with_the_link_leaves_the_alert_pending(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    device, _ = await _scan()
    watch.fail_next_confirms(1)
    disconnects = Disconnects()
    client = BleakClient(device, disconnected_callback=disconnects, timeout=TIMEOUT_S)
    await client.connect()
    received = Received()
    await client.start_notify(CARE_ALERT, received)
    assert await watch.care_alert(CareEvent.SOS, 9)
    await received.wait_count(1)
    with pytest.raises(BleakDBusError) as failed:
        await client.write_gatt_char(ALERT_CONFIRM, encode_alert_confirm(9, 1), response=True)
    assert failed.value.dbus_error == "org.bluez.Error.Failed"
    await disconnects.wait_count(1)
    await client.disconnect()
    assert watch.confirms == [] and [a.alert_seq for a in watch.pending_alerts] == [9]

    received = Received()
    await client.connect()
    await client.start_notify(CARE_ALERT, received)
    assert (await received.wait_count(1))[0] == encode_care_alert(CareEvent.SOS, 9)
    await client.write_gatt_char(ALERT_CONFIRM, encode_alert_confirm(9, 1), response=True)
    await client.disconnect()
    assert watch.confirms == [(9, 1)] and watch.pending_alerts == []


async def test_out_of_range_connect_fails_and_an_existing_link_drops(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    device, _ = await _scan()
    disconnects = Disconnects()
    client = BleakClient(device, disconnected_callback=disconnects, timeout=TIMEOUT_S)
    await client.connect()
    watch.in_range = False
    await disconnects.wait_count(1)
    await client.disconnect()

    # BlueZ answers le-connection-abort-by-local; bleak then waits for a Connected change that
    # never comes (no link was made) and gives up at its own timeout
    watch.connect_attempt_s = 0.05
    with pytest.raises(TimeoutError):
        await BleakClient(device, timeout=0.3).connect()
    assert watch.connections == 1
    with pytest.raises(BleakError, match="not found"):  # not advertising: a scan misses it
        await BleakClient(ADDRESS, timeout=0.2).connect()

    watch.in_range = True
    async with BleakClient(device, timeout=TIMEOUT_S) as again:
        assert again.is_connected
    assert watch.connections == 2


async def test_connect_to_a_silent_watch_gets_the_bluez_error(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

    watch.in_range = False
    watch.connect_attempt_s = 0.05
    bus = await MessageBus(bus_address=bluez.bus_address).connect()
    try:
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path=bluez.device_path(ADDRESS),
                interface="org.bluez.Device1",
                member="Connect",
            )
        )
    finally:
        bus.disconnect()
        await bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    assert (reply.error_name, reply.body) == ("org.bluez.Error.Failed", [CONNECT_FAILED_REASON])


async def test_a_burst_of_500_notifications_arrives_and_the_bus_stays_up(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    device, _ = await _scan()
    received = Received()
    disconnects = Disconnects()
    async with BleakClient(device, disconnected_callback=disconnects, timeout=TIMEOUT_S) as client:
        await client.start_notify(STEPS, received)
        for steps in range(500):
            assert await watch.send_steps(steps)
        values = await received.wait_count(500)
        assert [parse_steps(v).steps for v in values] == list(range(500))
        assert await client.read_gatt_char(BATTERY_LEVEL) == bytes([90])
        assert disconnects.count == 0
    assert disconnects.count == 1


async def test_match_rules_return_to_baseline_after_connect_and_drop_cycles(
    bluez: FakeBluez, watch: WatchSim, system_bus: str
) -> None:
    device, _ = await _scan()
    baseline = await match_rule_count(system_bus)
    assert baseline > 0, await match_rules(system_bus)  # bleak's manager and the fake's
    connections = await connection_count(system_bus)
    disconnects = Disconnects()
    client = BleakClient(device, disconnected_callback=disconnects, timeout=TIMEOUT_S)
    for cycle in range(1, 7):
        await client.connect()
        await client.start_notify(HEART_RATE_MEASUREMENT, Received())
        assert await connection_count(system_bus) == connections + 1  # the client's own
        if cycle % 2:
            watch.drop_link()
            await disconnects.wait_count(cycle)
        await client.disconnect()  # also after a drop: only this releases the connection
    assert await match_rule_count(system_bus) == baseline
    assert await connection_count(system_bus) == connections


async def test_stalled_bluez_answers_nothing_until_it_recovers(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    device, _ = await _scan()
    disconnects = Disconnects()
    client = BleakClient(device, disconnected_callback=disconnects, timeout=TIMEOUT_S)
    await client.connect()
    received = Received()
    await client.start_notify(HEART_RATE_MEASUREMENT, received)
    watch.stall()
    assert not await watch.heart_rate(70)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await client.read_gatt_char(BATTERY_LEVEL)
    watch.drop_link()  # BlueZ says nothing while stalled
    assert client.is_connected and not watch.connected
    watch.stall(False)
    await disconnects.wait_count(1)
    await client.disconnect()
    await client.connect()
    assert await client.read_gatt_char(BATTERY_LEVEL) == bytes([90])
    await client.disconnect()
    assert received.values == []


async def test_a_watch_without_pulse_oximeter_does_not_export_it(system_bus: str) -> None:
    watch = WatchSim(ADDRESS, services=[s for s in ALL_SERVICES if s != PULSE_OXIMETER_SERVICE])
    async with FakeBluez(system_bus, [watch]):
        device, adv = await _scan()
        assert PULSE_OXIMETER_SERVICE not in adv.service_uuids
        async with BleakClient(device, timeout=TIMEOUT_S) as client:
            assert client.services.get_service(PULSE_OXIMETER_SERVICE) is None
            assert client.services.get_characteristic(PLX_CONTINUOUS_MEASUREMENT) is None
            indicate = client.services.get_characteristic(TEMPERATURE_MEASUREMENT)
            assert indicate is not None and indicate.properties == ["indicate"]
            received = Received()
            await client.start_notify(BLOOD_PRESSURE_MEASUREMENT, received)
            assert await watch.blood_pressure(120, 80, 93, pulse_rate=70)
            bp = parse_blood_pressure((await received.wait_count(1))[0])
            assert (bp.systolic, bp.diastolic, bp.pulse_rate) == (120, 80, 70)


async def test_bleak_retry_connector_establishes_a_connection(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    from bleak_retry_connector import establish_connection, get_device
    from bleak_retry_connector.bluez import get_connected_devices, wait_for_disconnect

    device, _ = await _scan()
    known = await get_device(ADDRESS)
    assert known is not None and known.details["path"] == bluez.device_path(ADDRESS)
    client = await establish_connection(BleakClient, device, "watch", max_attempts=2)
    try:
        assert [d.address for d in await get_connected_devices(device)] == [ADDRESS]
        assert await client.read_gatt_char(BATTERY_LEVEL) == bytes([90])
        watch.drop_link()
        await wait_for_disconnect(device, 0)
    finally:
        await client.disconnect()
    assert await get_connected_devices(device) == []

    watch.paired = True  # bonded watches keep their GATT objects: the services cache is used
    bluez.remove(ADDRESS)
    bluez.add(watch)
    device, _ = await _scan()
    for _ in range(2):
        client = await establish_connection(BleakClient, device, "watch", max_attempts=2)
        assert await client.read_gatt_char(BATTERY_LEVEL) == bytes([90])
        await client.disconnect()
    assert watch.connections == 3


async def test_pairing_keeps_the_gatt_objects_across_a_disconnection(
    bluez: FakeBluez, watch: WatchSim
) -> None:
    device, _ = await _scan()
    async with BleakClient(device, pair=True, timeout=TIMEOUT_S) as client:
        services = {s.uuid for s in client.services}
    assert services == set(ALL_SERVICES)
    assert watch.connections == 1
    paths = await _managed_paths(bluez.bus_address)
    assert sum("/service" in p and "/char" not in p for p in paths) == len(ALL_SERVICES)
    async with BleakClient(device, pair=True, timeout=TIMEOUT_S) as client:  # already paired
        assert await client.read_gatt_char(BATTERY_LEVEL) == bytes([90])
    assert watch.connections == 2
