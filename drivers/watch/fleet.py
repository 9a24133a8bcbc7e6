"""The home's watches: one ``BleWatch`` task per paired watch, pairing, scanning, status.

Watches are paired by address, in the configuration file (``[watch] addresses``) or with
``carebed watch pair`` (kept in ``watches.json`` in the state directory). Each runs as its own
supervised task, restarted with back-off if it ever crashes, so one watch's trouble never stops
the others. Scans and checks for the installer run beside the links.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from bleak import BleakClient, BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak_retry_connector import establish_connection

from drivers.watch import codec
from drivers.watch.ble import (
    MAX_CONNECT_ATTEMPTS,
    SERVICES,
    BleWatch,
    LinkClock,
    VitalsSettings,
    WatchSettings,
    bounded_disconnect,
    find_device,
    offered_services,
)
from drivers.watch.errors import LINK_ERRORS, WatchCheckError
from drivers.watch.store import WatchStore
from gateway.core.i18n import _
from gateway.core.ports import AlarmRaiser, AlarmState, EventSink
from gateway.core.supervisor import Supervisor

log = structlog.get_logger("drivers.watch.fleet")

MAX_SCAN_S = 120
PROGRESS_EVERY_S = 1.0


@dataclass(slots=True)
class Seen:
    """A BLE device heard during a scan."""

    address: str
    name: str | None
    rssi: int
    uuids: set[str] = field(default_factory=set)

    def report(self, paired: bool) -> dict[str, Any]:
        return {
            "event": "device",
            "address": self.address,
            "name": self.name,
            "rssi": self.rssi,
            "heart_rate": codec.HEART_RATE_SERVICE in self.uuids,
            "care": codec.CARE_SERVICE in self.uuids,
            "paired": paired,
        }


async def scan_nearby(
    adapter: str, seconds: float, paired: set[str]
) -> AsyncIterator[dict[str, Any]]:
    """Progress once a second, then every device heard, strongest first."""
    seen: dict[str, Seen] = {}

    def heard(device: BLEDevice, advertisement: AdvertisementData) -> None:
        entry = seen.get(device.address)
        if entry is None:
            entry = seen[device.address] = Seen(
                device.address, advertisement.local_name or device.name, advertisement.rssi
            )
        entry.rssi = advertisement.rssi
        entry.name = advertisement.local_name or entry.name
        entry.uuids.update(uuid.lower() for uuid in advertisement.service_uuids)

    started = time.monotonic()
    async with BleakScanner(heard, bluez={"adapter": adapter}):
        while (elapsed := time.monotonic() - started) < seconds:
            yield {"event": "progress", "elapsed_s": round(elapsed), "found": len(seen)}
            await asyncio.sleep(min(PROGRESS_EVERY_S, seconds - elapsed))
    for entry in sorted(seen.values(), key=lambda s: -s.rssi):
        yield entry.report(entry.address.upper() in paired)


def _unreadable(address: str, exc: Exception) -> str:
    return _("{address}: reading the watch failed: {error}").format(address=address, error=exc)


async def check_watch(address: str, settings: WatchSettings) -> dict[str, Any]:
    """Connect to a watch, read its battery and list its services, disconnect."""
    address = address.upper()
    device = await find_device(address, settings.adapter, settings.connect_timeout_s)
    if device is None:
        raise WatchCheckError(
            _("{address} was not found: is the watch on, charged and within a few metres?").format(
                address=address
            )
        )
    try:
        async with asyncio.timeout(settings.connect_timeout_s):
            client = await establish_connection(
                BleakClient, device, codec.device_id(address), max_attempts=MAX_CONNECT_ATTEMPTS
            )
    except TimeoutError as exc:
        raise WatchCheckError(
            _(
                "{address} did not answer within {seconds:.0f} s: is the watch on, charged and "
                "within a few metres?"
            ).format(address=address, seconds=settings.connect_timeout_s)
        ) from exc
    except LINK_ERRORS as exc:
        raise WatchCheckError(
            _("{address} refused the connection: {error}").format(address=address, error=exc)
        ) from exc
    try:
        services = offered_services(client)
        battery = None
        if client.services.get_characteristic(codec.BATTERY_LEVEL) is not None:
            raw = await client.read_gatt_char(codec.BATTERY_LEVEL)
            battery = codec.parse_battery(bytes(raw)).level
    except LINK_ERRORS as exc:
        raise WatchCheckError(_unreadable(address, exc)) from exc
    except codec.WatchFrameError as exc:
        raise WatchCheckError(_unreadable(address, exc)) from exc
    finally:
        await bounded_disconnect(client, settings.disconnect_timeout_s)
    return {"address": address, "battery": battery, "services": services}


def missing_services(services: list[str]) -> list[str]:
    return [name for name in SERVICES.values() if name not in services]


class WatchFleet:
    """Every paired watch's link, and the installer's scan / pair / unpair."""

    def __init__(
        self,
        settings: WatchSettings,
        vitals: VitalsSettings,
        *,
        configured: Iterable[str],
        store: WatchStore,
        sink: EventSink,
        alarms: AlarmRaiser,
        clock: LinkClock,
    ) -> None:
        self.settings = settings
        self.vitals = vitals
        self.store = store
        self.sink = sink
        self.alarms = alarms
        self.clock = clock
        self.configured = {address.upper() for address in configured}
        self.watches: dict[str, BleWatch] = {}
        self._supervisor = Supervisor()

    def addresses(self) -> list[str]:
        return sorted(self.configured | set(self.store.addresses()))

    def _start(self, address: str) -> None:
        """Start a watch's link; a watch that cannot be set up is logged, the others run."""
        if address in self.watches:
            return
        try:
            watch = BleWatch(
                address,
                self.settings,
                self.vitals,
                sink=self.sink,
                alarms=self.alarms,
                store=self.store,
                clock=self.clock,
            )
        except ValueError:
            log.exception("watch_not_started", address=address)
            return
        self.watches[watch.address] = watch
        self._supervisor.start(f"watch[{watch.address}]", watch.run)

    async def run(self) -> None:
        try:
            for address in self.addresses():
                self._start(address)
            await asyncio.Event().wait()
        finally:
            await self.close()
            self.watches.clear()

    async def close(self) -> None:
        # The links end first (each disconnects, bounded), then what is left is flushed.
        await self._supervisor.stop_all(self.settings.disconnect_timeout_s + 1)
        watches = list(self.watches.values())
        await asyncio.gather(*(watch.close() for watch in watches), return_exceptions=True)

    # ------------------------------------------------------------------------------ alarms

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None:
        """``AlarmListener``: pass an alarm's state to the watch that raised it."""
        if device is None or not device.startswith("watch-"):
            return
        for watch in self.watches.values():
            if watch.device == device:
                watch.alarm_state_changed(alarm_id, kind, device, state)

    def update_vitals(self, vitals: VitalsSettings) -> None:
        self.vitals = vitals
        for watch in self.watches.values():
            watch.update_vitals(vitals)

    # ------------------------------------------------------------------------------ installer

    async def scan(self, seconds: float) -> AsyncIterator[dict[str, Any]]:
        async for report in scan_nearby(self.settings.adapter, seconds, set(self.addresses())):
            yield report

    async def check(self, address: str) -> dict[str, Any]:
        """The watch's battery and services; from its own link when it has one (the watch takes
        one central: a second connection attempt beside the link would compete with it)."""
        watch = self.watches.get(address.upper())
        if watch is None:
            return await check_watch(address, self.settings)
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                await watch.connected.wait()
        except TimeoutError:
            raise WatchCheckError(
                _(
                    "{address} is paired but has not connected within {seconds:.0f} s: is the "
                    "watch on, charged and within a few metres?"
                ).format(address=watch.address, seconds=self.settings.connect_timeout_s)
            ) from None
        return {"address": watch.address, "battery": watch.battery, "services": watch.services}

    async def pair(self, address: str) -> dict[str, Any]:
        """Check the watch, then keep it: its link starts; the platform hears ``device.paired``."""
        report = await self.check(address)
        address = report["address"]
        missing = missing_services(report["services"])
        newly = address not in self.configured and self.store.add(address)
        await self.store.flush()
        self._start(address)
        if newly:
            log.info("watch_paired", watch=codec.device_id(address), services=report["services"])
            await self.sink.emit("device.paired", {}, codec.device_id(address))
        return {**report, "device": codec.device_id(address), "missing": missing, "new": newly}

    async def unpair(self, address: str) -> bool:
        """Forget a watch paired with ``pair``; False when it was not paired that way.

        Raises ``WatchCheckError`` for a watch of the configuration file: it is unpaired there.
        """
        address = address.upper()
        if address in self.configured:
            raise WatchCheckError(
                _(
                    "{address} is in the configuration file ([watch] addresses): remove it there "
                    "and restart the gateway"
                ).format(address=address)
            )
        if address not in self.store:
            return False
        watch = self.watches.pop(address, None)
        if watch is not None:
            await self._supervisor.stop(f"watch[{address}]", self.settings.disconnect_timeout_s + 1)
            await watch.close()
        self.store.remove(address)
        await self.store.flush()
        await self.sink.emit("device.unpaired", {}, codec.device_id(address))
        return True

    def status(self) -> list[dict[str, Any]]:
        return [
            self.watches[a].status() if a in self.watches else {"address": a, "connected": False}
            for a in self.addresses()
        ]
