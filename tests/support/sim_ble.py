"""A simulated watch reached in-process: a bleak backend over ``WatchSim``'s GATT model.

``SimBleakClient`` is a real ``BleakClient`` whose backend (``SimWatchBackend``, the way bleak
takes a third-party backend) talks to the ``WatchSim`` carried in the ``BLEDevice``'s details,
with no D-Bus and no BlueZ: reads, Alert Confirm writes, subscriptions (with the alerts the watch
repeats on them), notifications and link loss follow the simulator's datasheet model. The D-Bus
tests (``FakeBluez``) remain the evidence for bleak's BlueZ backend; this one lets a test drive
``BleWatch`` step by step.

``SimRadio`` plays the part ``FakeBluez``'s device node plays for the watch: the simulator calls
it to send a notification, to drop the link, or to schedule a callback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bleak import BleakClient
from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakError
from dbus_fast.errors import DBusError

from hil.sim.bluez import ATT_MTU, FIRST_HANDLE, WatchSim

_MAX_WRITE_BYTES = ATT_MTU - 3


def sim_device(watch: WatchSim) -> BLEDevice:
    """The ``BLEDevice`` a finder returns for ``watch`` (its details carry the simulator)."""
    return BLEDevice(watch.address, watch.alias, details=watch)


def sim_finder(watch: WatchSim) -> Callable[[str, str, float], Any]:
    """A device finder for ``BleWatch``: the watch when it is in range, else None."""

    async def find(address: str, _adapter: str, _scan_s: float) -> BLEDevice | None:
        if address.upper() != watch.address or not watch.in_range:
            return None
        return sim_device(watch)

    return find


def _gatt(watch: WatchSim) -> BleakGATTServiceCollection:
    """The watch's services, characteristics and handles, as a BlueZ central would list them."""
    services = BleakGATTServiceCollection()
    handle = FIRST_HANDLE
    for spec in watch.services:
        service = BleakGATTService(None, handle, spec.uuid)
        services.add_service(service)
        for char in spec.characteristics:
            handle += 2  # declaration, value
            characteristic = BleakGATTCharacteristic(
                None,
                handle,
                char.uuid,
                list(char.flags),  # type: ignore[arg-type]  # the datasheet's BlueZ flags
                lambda: _MAX_WRITE_BYTES,
                service,
            )
            services.add_characteristic(characteristic)
            if char.subscribable:
                handle += 1  # CCC descriptor
        handle += 1
    return services


class SimRadio:
    """The link between one central and the watch, as the simulator sees it."""

    def __init__(self, backend: SimWatchBackend) -> None:
        self._backend = backend
        self._loop = asyncio.get_running_loop()
        self.link_up = True
        self.bluez = self  # the simulator schedules through "bluez"

    async def flow_control(self) -> None:
        await asyncio.sleep(0)

    def later(self, delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self._loop.call_later(delay_s, callback)

    def is_notifying(self, char_uuid: str) -> bool:
        return self.link_up and char_uuid in self._backend.notifying

    def send_value(self, char_uuid: str, payload: bytes) -> None:
        payload = payload[:_MAX_WRITE_BYTES]
        self._backend.watch._sent(char_uuid, payload)
        callback = self._backend.notifying[char_uuid]
        self._loop.call_soon(callback, bytearray(payload))

    def link_lost(self) -> None:
        if self.link_up:
            self.link_up = False
            self._backend.lost()

    def went_out_of_range(self) -> None:
        self.link_lost()

    def came_into_range(self) -> None:
        """Nothing to do: the next connection attempt finds the watch."""

    def recovered(self) -> None:
        """Stalls are a BlueZ matter: the D-Bus tests cover them."""


class SimWatchBackend(BaseBleakClient):
    """bleak's client backend interface over a ``WatchSim`` (see the module doc)."""

    def __init__(self, address_or_ble_device: BLEDevice | str, **kwargs: Any) -> None:
        super().__init__(
            address_or_ble_device,
            disconnected_callback=kwargs.pop("disconnected_callback", None),
            timeout=kwargs.pop("timeout", 10.0),
        )
        if not isinstance(address_or_ble_device, BLEDevice) or not isinstance(
            address_or_ble_device.details, WatchSim
        ):
            raise BleakError("the simulated backend needs the BLEDevice of a WatchSim")
        self.watch = address_or_ble_device.details
        self.notifying: dict[str, NotifyCallback] = {}
        self._radio: SimRadio | None = None

    @property
    def name(self) -> str:
        return self.watch.alias

    @property
    def mtu_size(self) -> int:
        return ATT_MTU

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        await asyncio.sleep(0)
        if not self.watch.in_range or self.watch.connected:
            raise BleakError(f"Device with address {self.watch.address} was not found")
        self._radio = SimRadio(self)
        self.notifying = {}
        self.services = _gatt(self.watch)
        self.watch._node = self._radio  # type: ignore[assignment]  # the simulator's link side
        self.watch.connections += 1
        self.watch._notify_change()

    async def disconnect(self) -> None:
        await asyncio.sleep(0)
        radio = self._radio
        if radio is not None and radio.link_up:
            radio.link_up = False
            self.lost()

    def lost(self) -> None:
        """The link is down (either side): subscriptions end, the central is told."""
        self.notifying = {}
        if self.watch._node is self._radio:  # type: ignore[comparison-overlap]
            self.watch._node = None
        self._radio = None
        self.watch._notify_change()
        if self._disconnected_callback is not None:
            asyncio.get_running_loop().call_soon(self._disconnected_callback)

    @property
    def is_connected(self) -> bool:
        return self._radio is not None and self._radio.link_up

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise BleakError("the watch pairs without bonding")

    async def unpair(self) -> None:
        raise BleakError("the watch pairs without bonding")

    def _live(self) -> None:
        if not self.is_connected:
            raise BleakError("Not connected")

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, **kwargs: Any
    ) -> bytearray:
        await asyncio.sleep(0)
        self._live()
        try:
            return bytearray(self.watch._read(characteristic.uuid))
        except DBusError as exc:
            raise BleakError(f"[{exc.type}] {exc.text}") from exc

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: Any, response: bool
    ) -> None:
        await asyncio.sleep(0)
        self._live()
        try:
            self.watch._write(characteristic.uuid, bytes(data))
        except DBusError as exc:
            raise BleakError(f"[{exc.type}] {exc.text}") from exc

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, **kwargs: Any
    ) -> bytearray:
        raise BleakError("the watch link reads no descriptors")

    async def write_gatt_descriptor(self, descriptor: BleakGATTDescriptor, data: Any) -> None:
        raise BleakError("the watch link writes no descriptors")

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        await asyncio.sleep(0)
        self._live()
        uuid = characteristic.uuid
        self.notifying[uuid] = callback
        for payload in self.watch._subscribed(uuid):  # what the watch repeats at once
            assert self._radio is not None
            self._radio.send_value(uuid, payload)

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        self.notifying.pop(characteristic.uuid, None)


class SimBleakClient(BleakClient):
    """``BleakClient`` on the simulated backend: what ``BleWatch`` takes as ``client_class``."""

    def __init__(self, address_or_ble_device: BLEDevice | str, *args: Any, **kwargs: Any) -> None:
        super().__init__(address_or_ble_device, *args, backend=SimWatchBackend, **kwargs)
