"""``carebed watch scan|pair|list|unpair``: the installer's commands, with and without the daemon,
through bleak and the fake BlueZ."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from drivers.watch import codec
from hil.sim.bluez import ALL_SERVICES, FakeBluez, WatchSim
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from tests.gateway_rig import kinds, running_gateway, wait_platform
from tests.support.ble import private_system_bus
from tests.support.daemon import gateway_config
from tests.test_button_cli import carebed

PAIRED = "C0:FF:EE:00:00:01"
NEW = "C0:FF:EE:00:00:02"
OTHER = "5A:11:02:93:7C:10"  # a heart-rate strap: no care service
TIMEOUT_S = 15.0
LINK = {"enabled": True, "connect_timeout_s": 2.0, "reconnect_min_s": 0.05, "reconnect_cap_s": 0.2}


def _watches() -> list[WatchSim]:
    strap = [codec.HEART_RATE_SERVICE, codec.BATTERY_SERVICE]
    return [
        WatchSim(PAIRED, rssi=-70),
        WatchSim(NEW, rssi=-50, battery=77),
        WatchSim(OTHER, alias="HR-Strap", services=strap, rssi=-85),
    ]


async def test_scan_pair_list_unpair_through_the_daemon(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watches = _watches()
    async with (
        private_system_bus(tmp_path / "dbus", monkeypatch) as bus,
        FakeBluez(bus, watches),
        running_gateway(tmp_path, mosquitto, watch={**LINK, "addresses": [PAIRED]}) as rig,
    ):
        config = tmp_path / "carebed.toml"
        await watches[0].wait_subscribed(codec.CARE_ALERT, TIMEOUT_S)

        status, out = await carebed(config, "watch", "scan", "--seconds", "2")
        assert status == 0, out
        assert "scanning… 0 s" in out and "scanning… 1 s" in out
        lines = [line.split() for line in out.splitlines() if line.strip()[:2] in ("C0", "5A")]
        # Strongest first; the connected watch does not advertise, so it is not heard.
        assert [line[0] for line in lines] == [NEW, OTHER]
        assert lines[0][1:] == ["-50", "dBm", "CareWatch", "WATCH"]
        assert lines[1][-2:] == ["partial:", "heart_rate"]

        status, out = await carebed(config, "watch", "pair", NEW.lower())
        assert status == 0, out
        assert "battery 77 %" in out
        assert "services: heart_rate, battery, pulse_oximeter" in out
        assert "watch-C0FFEE000002 paired." in out
        await watches[1].wait_subscribed(codec.CARE_ALERT, TIMEOUT_S)  # its link started
        await wait_platform(platform, lambda p: kinds(p, "device.paired"), "device.paired")
        assert [e["device"] for e in kinds(platform, "device.paired")] == ["watch-C0FFEE000002"]
        stored = json.loads((tmp_path / "state" / "watches.json").read_text())
        assert NEW in stored["paired"]

        status, out = await carebed(config, "watch", "pair", OTHER)
        assert status == 0, out
        assert "WARNING: without the care service" in out

        status, out = await carebed(config, "watch", "pair", PAIRED)  # its link answers
        assert status == 0 and "battery 90 %" in out and "was already paired" in out, out

        status, out = await carebed(config, "watch", "list")
        assert status == 0, out
        assert f"{PAIRED}  connected" in out and f"{NEW}  connected" in out

        status, out = await carebed(config, "watch", "unpair", NEW)
        assert (status, out.strip()) == (0, f"{NEW} unpaired")
        await watches[1].wait_disconnected(TIMEOUT_S)
        await wait_platform(platform, lambda p: kinds(p, "device.unpaired"), "device.unpaired")
        assert rig.gateway.watches is not None
        assert NEW not in rig.gateway.watches.addresses()

        status, out = await carebed(config, "watch", "unpair", PAIRED)
        assert status == 1 and "configuration file" in out  # unpaired there, not here

        status, out = await carebed(config, "watch", "pair", "not-an-address")
        assert status == 1 and "not a BLE address" in out


async def test_pair_reports_a_watch_that_is_not_there(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(NEW)
    async with (
        private_system_bus(tmp_path / "dbus", monkeypatch) as bus,
        FakeBluez(bus, [watch]),
        running_gateway(tmp_path, mosquitto, watch=LINK),
    ):
        watch.in_range = False
        status, out = await carebed(tmp_path / "carebed.toml", "watch", "pair", NEW)
        assert status == 1, out
        assert f"carebed: {NEW} did not answer within 2 s" in out


async def test_without_the_daemon_pair_uses_bluetooth_itself(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = gateway_config(tmp_path, mosquitto, watch=LINK)
    watch = WatchSim(NEW, services=ALL_SERVICES, battery=64)
    async with private_system_bus(tmp_path / "dbus", monkeypatch) as bus, FakeBluez(bus, [watch]):
        status, out = await carebed(config, "watch", "pair", NEW)
        assert status == 0, out
        assert "battery 64 %" in out and "the daemon is not running" in out
        assert watch.connections == 1 and not watch.connected
        status, out = await carebed(config, "watch", "list")
        assert status == 0 and NEW in out
        status, out = await carebed(config, "watch", "scan", "--seconds", "1")
        assert status == 0 and NEW in out


async def test_a_scan_while_the_daemon_scans_is_a_sentence_not_an_exception(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon scans for one command: a second one, meanwhile, finds the adapter busy
    (BlueZ's InProgress) and says so, with what to do."""
    async with (
        private_system_bus(tmp_path / "dbus", monkeypatch) as bus,
        FakeBluez(bus, [WatchSim(NEW)]) as bluez,
        running_gateway(tmp_path, mosquitto, watch=LINK),
    ):
        config = tmp_path / "carebed.toml"
        first = asyncio.create_task(carebed(config, "watch", "scan", "--seconds", "8"))
        async with asyncio.timeout(TIMEOUT_S):
            while not bluez.discovering:
                await asyncio.sleep(0.05)
        status, out = await carebed(config, "watch", "scan", "--seconds", "1")
        assert status == 1, out
        assert "the Bluetooth adapter is busy" in out and "run the command again" in out
        assert "Error" not in out and "Traceback" not in out
        status, out = await first
        assert status == 0 and NEW in out, out
