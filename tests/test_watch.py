"""The health watch end to end: the simulated watch behind the fake BlueZ, bleak's real BlueZ
backend in the gateway, a real Mosquitto, and the platform's subscriber.

The link-drop count is reduced here; ``make soak`` (CAREBED_SOAK=1) runs the long version."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sqlite3
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakClient

from drivers.watch import codec
from drivers.watch.codec import (
    CareEvent,
    encode_blood_pressure,
    encode_heart_rate,
    encode_temperature,
)
from hil.sim.bluez import ALL_SERVICES, FakeBluez, WatchSim
from hil.sim.broker import Mosquitto
from hil.sim.dbus import connection_count, match_rule_count
from hil.sim.platform import PlatformClient
from tests.gateway_rig import RunningGateway, kinds, running_gateway, wait_platform, wait_until
from tests.support.ble import private_system_bus
from tests.support.daemon import GatewayProcess, gateway_config

ADDRESS = "C0:FF:EE:00:00:01"
DEVICE = "watch-C0FFEE000001"
TIMEOUT_S = 15.0  # every wait ends on a condition; this is only the deadline
SOAK = os.environ.get("CAREBED_SOAK") == "1"
LINK_DROPS = 500 if SOAK else 50

FAST_LINK = {
    "enabled": True,
    "addresses": [ADDRESS],
    "connect_timeout_s": 2.0,
    "reconnect_min_s": 0.05,
    "reconnect_cap_s": 0.2,
    "disconnect_timeout_s": 0.5,
    "offline_after_s": 600.0,
    "silent_after_s": 600.0,
}


@asynccontextmanager
async def watch_gateway(
    tmp_path: Path,
    broker: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    watch: WatchSim,
    *,
    link: dict[str, Any] | None = None,
    vitals: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[RunningGateway, FakeBluez]]:
    """A gateway with one paired watch, connected and subscribed when this yields."""
    async with (
        private_system_bus(tmp_path / "dbus", monkeypatch) as bus,
        FakeBluez(bus, [watch]) as bluez,
        running_gateway(
            tmp_path, broker, watch={**FAST_LINK, **(link or {})}, vitals=vitals or {}
        ) as rig,
    ):
        if watch.offers(codec.CARE_ALERT):
            await watch.wait_subscribed(codec.CARE_ALERT, TIMEOUT_S)
        await watch.wait_subscribed(codec.HEART_RATE_MEASUREMENT, TIMEOUT_S)
        yield rig, bluez


def vitals_of(platform: PlatformClient) -> list[dict[str, Any]]:
    return [e for e in kinds(platform, "telemetry.vitals") if e["device"] == DEVICE]


async def _alarms(platform: PlatformClient, kind: str, count: int = 1) -> list[dict[str, Any]]:
    await wait_platform(platform, lambda p: len(kinds(p, kind)) >= count, kind)
    return kinds(platform, kind)


async def _ack(platform: PlatformClient, alarm_id: str) -> None:
    acks = len(kinds(platform, "audit.alarm_acknowledged"))
    platform.publish("carebed/v1/gw-a/down/ack", {"v": 1, "ids": [alarm_id], "by": "desk"})
    await wait_platform(
        platform, lambda p: len(kinds(p, "audit.alarm_acknowledged")) > acks, "the ack"
    )


async def beats(watch: WatchSim, bpm: int, seconds: float, *, contact: bool = True) -> None:
    """Heart rate notifications at 20 Hz for ``seconds``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await watch.heart_rate(bpm, contact=contact)
        await asyncio.sleep(0.05)


async def test_heart_rate_reaches_the_platform_as_vitals_at_the_interval(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No pulse oximeter, no blood pressure: not an error, the rest works.
    offered = [
        uuid
        for uuid in ALL_SERVICES
        if uuid not in (codec.PULSE_OXIMETER_SERVICE, codec.BLOOD_PRESSURE_SERVICE)
    ]
    watch = WatchSim(ADDRESS, services=offered)
    interval = 1.0
    async with watch_gateway(
        tmp_path, mosquitto, monkeypatch, watch, vitals={"intervals": {"heart_rate": interval}}
    ) as (rig, _):
        await wait_platform(platform, lambda p: kinds(p, "device.online"), "device.online")
        started = asyncio.get_running_loop().time()
        for bpm in (70, 72, 74, 76, 78, 80):
            await beats(watch, bpm, 0.5)
        elapsed = asyncio.get_running_loop().time() - started
        await wait_platform(
            platform,
            lambda p: sum(e["data"]["stats"]["heart_rate"]["n"] for e in vitals_of(p)) >= 55,
            "every reading reported",
        )
        reports = vitals_of(platform)
        # Not one message per notification: one per interval (the last may still be open).
        assert 2 <= len(reports) <= elapsed / interval + 1
        for report in reports:
            stats = report["data"]["stats"]["heart_rate"]
            assert stats["n"] > 5
            assert 70 <= stats["min"] <= report["data"]["heart_rate"] <= stats["max"] <= 80
        assert reports[-1]["data"]["heart_rate"] in (78, 80)
        status = rig.gateway.watches
        assert status is not None
        (state,) = status.status()
        assert "pulse_oximeter" not in state["services"] and "care" in state["services"]
        assert state["battery"] == 90
    assert [e["data"]["level"] for e in kinds(platform, "device.battery")] == [90]


async def test_sos_is_one_alarm_although_the_watch_repeats_it_after_three_disconnections(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch) as (rig, _):
        before = watch.connections
        watch.fail_next_confirms(3)  # the link drops during each of the next three confirms
        await watch.care_alert(CareEvent.SOS, 5)
        await watch.wait_confirmed(5, TIMEOUT_S)
        assert watch.connections == before + 3  # it was notified again after each reconnection
        assert watch.confirms == [(5, 0x01)]
        await wait_platform(platform, lambda p: kinds(p, "alarm.watch_sos"), "the alarm")
        # A marker event after the repeats: everything before it has been published.
        await rig.gateway.sink.emit("gateway.power", {"mains": True})
        await wait_platform(platform, lambda p: kinds(p, "gateway.power"), "the marker")
        (alarm,) = kinds(platform, "alarm.watch_sos")
        assert alarm["device"] == DEVICE and alarm["data"] == {}
        # The platform's status command shows it too.
        platform.publish("carebed/v1/gw-a/down/cmd", {"v": 1, "id": "st-1", "name": "status"})
        await wait_platform(platform, lambda p: kinds(p, "cmd.result"), "the status")
        devices = kinds(platform, "cmd.result")[0]["data"]["result"]["devices"]
        (state,) = next(d["watches"] for d in devices if "watches" in d)
        assert (state["device"], state["connected"]) == (DEVICE, True)
        assert state["counters"]["alert_repeated"] == 3


async def test_alert_confirm_is_01_when_stored_then_02_when_the_platform_acknowledges(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch):
        await watch.care_alert(CareEvent.FALL, 6, 86400)
        await wait_platform(platform, lambda p: kinds(p, "alarm.fall"), "the fall alarm")
        await watch.wait_confirmed(6, TIMEOUT_S)
        assert watch.confirms == [(6, 0x01)]
        (alarm,) = kinds(platform, "alarm.fall")
        await _ack(platform, alarm["id"])
        await watch.wait_for(lambda w: len(w.confirms) == 2, TIMEOUT_S, "the second confirm")
        assert watch.confirms == [(6, 0x01), (6, 0x02)]

        # The wearer cancels the fall on the watch: alarm.cancelled names the fall's alarm.
        await watch.care_alert(CareEvent.FALL_CANCELLED, 7)
        await wait_platform(platform, lambda p: kinds(p, "alarm.cancelled"), "the cancel")
        (cancel,) = kinds(platform, "alarm.cancelled")
        assert cancel["data"] == {"alarm_id": alarm["id"]}


async def test_alert_not_delivered_is_confirmed_03(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch) as (rig, _):
        await wait_until(rig.gateway.uplink.connected.is_set, TIMEOUT_S, "the uplink")
        mosquitto.stop()
        await wait_until(lambda: not rig.gateway.uplink.connected.is_set(), TIMEOUT_S, "link down")
        await watch.care_alert(CareEvent.SOS, 9)
        await watch.wait_for(lambda w: len(w.confirms) == 2, TIMEOUT_S, "two confirms")
        assert watch.confirms == [(9, 0x01), (9, 0x03)]


async def test_contact_lost_is_one_not_worn_and_no_vitals_until_worn_again(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with watch_gateway(
        tmp_path, mosquitto, monkeypatch, watch, vitals={"intervals": {"heart_rate": 0.3}}
    ):
        await beats(watch, 70, 0.5)
        await wait_platform(platform, vitals_of, "vitals while worn")
        await beats(watch, 0, 1.5, contact=False)  # many notifications, several intervals
        await beats(watch, 88, 0.5)
        await wait_platform(platform, lambda p: kinds(p, "device.worn"), "worn again")
        await wait_platform(
            platform,
            lambda p: any(e["data"].get("heart_rate") == 88 for e in vitals_of(p)),
            "vitals after the watch is back on",
        )
    # Worn at the first reading (the platform did not know), not worn, worn again: one each.
    first, worn = kinds(platform, "device.worn")
    (not_worn,) = kinds(platform, "device.not_worn")
    assert first["seq"] < not_worn["seq"] < worn["seq"]
    between = [e for e in vitals_of(platform) if not_worn["seq"] < e["seq"] < worn["seq"]]
    assert between == []
    after = [e for e in vitals_of(platform) if e["seq"] > worn["seq"]]
    assert all(e["data"]["stats"]["heart_rate"]["min"] == 88 for e in after)


async def test_taking_the_watch_off_is_reported_once(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch):
        await watch.care_alert(CareEvent.TAKEN_OFF, 1)
        await beats(watch, 0, 0.3, contact=False)  # the contact bits agree: no second event
        await watch.care_alert(CareEvent.PUT_ON, 2)
        await wait_platform(platform, lambda p: kinds(p, "device.worn"), "worn")
        await watch.wait_confirmed(2, TIMEOUT_S)
    assert len(kinds(platform, "device.not_worn")) == 1
    assert len(kinds(platform, "device.worn")) == 1  # a put-on with no reading before it
    assert watch.confirms == [(1, 0x01), (2, 0x01)]


HR_HIGH = {"threshold": 120, "min_duration_s": 1.0, "hysteresis": 5}


async def test_heart_rate_above_the_threshold_long_enough_is_one_vitals_alarm(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    vitals = {"intervals": {"heart_rate": 0.2}, "rules": {"heart_rate_high": HR_HIGH}}
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch, vitals=vitals):
        # Shorter than the duration: no alarm.
        await beats(watch, 150, 0.5)
        await beats(watch, 80, 0.3)
        await wait_platform(
            platform,
            lambda p: any(e["data"].get("heart_rate") == 80 for e in vitals_of(p)),
            "the readings after the short burst",
        )
        assert not kinds(platform, "alarm.vitals")
        # Longer than the duration: one alarm, however long it lasts.
        await beats(watch, 150, 2.0)
        await beats(watch, 80, 0.3)
        await wait_platform(platform, lambda p: kinds(p, "alarm.vitals"), "the vitals alarm")
        await wait_platform(
            platform,
            lambda p: vitals_of(p)[-1]["data"].get("heart_rate") == 80,
            "the readings after the long burst",
        )
    (alarm,) = kinds(platform, "alarm.vitals")
    data = alarm["data"]
    assert (data["metric"], data["value"], data["threshold"], data["direction"]) == (
        "heart_rate",
        150,
        120,
        "above",
    )
    assert data["duration_s"] >= 1.0
    assert alarm["device"] == DEVICE


async def test_a_watch_away_is_offline_then_online_when_back(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    link = {"offline_after_s": 1.0}
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch, link=link):
        await wait_platform(platform, lambda p: len(kinds(p, "device.online")) == 1, "online")
        watch.in_range = False
        await wait_platform(platform, lambda p: kinds(p, "device.offline"), "offline")
        watch.in_range = True
        await wait_platform(platform, lambda p: len(kinds(p, "device.online")) == 2, "back")
    (offline,) = kinds(platform, "device.offline")
    assert offline["device"] == DEVICE
    assert offline["data"]["reason"] == "disconnected"
    assert offline["data"]["last_seen"] is not None
    assert [e["device"] for e in kinds(platform, "device.online")] == [DEVICE, DEVICE]


async def test_a_silent_link_is_torn_down_and_made_again(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    link = {"silent_after_s": 0.5}
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch, link=link) as (rig, _):
        fleet = rig.gateway.watches
        assert fleet is not None
        await beats(watch, 70, 0.3)
        before = watch.connections
        watch.stall()  # BlueZ stops answering; bleak sees no disconnection
        await wait_until(
            lambda: fleet.status()[0]["counters"].get("silent_link") == 1, TIMEOUT_S, "teardown"
        )
        watch.stall(False)
        await watch.wait_for(lambda w: w.connections > before, TIMEOUT_S, "a new connection")
        await watch.wait_subscribed(codec.HEART_RATE_MEASUREMENT, TIMEOUT_S)
        await wait_until(lambda: fleet.status()[0]["connected"], TIMEOUT_S, "connected again")
        await wait_platform(platform, lambda p: len(kinds(p, "device.online")) == 2, "online")
    # (The simulated watch sends nothing after that: it may fall silent again before the end.)
    offline = kinds(platform, "device.offline")[0]
    assert offline["data"]["reason"] == "silent_link"
    first, again = kinds(platform, "device.online")[:2]
    assert first["seq"] < offline["seq"] < again["seq"]


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_link_drops_in_a_row_leak_no_tasks_matches_connections_or_memory(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch) as (rig, bluez):
        fleet = rig.gateway.watches
        assert fleet is not None
        bus = bluez.bus_address

        async def drop_and_reconnect() -> None:
            count = watch.connections
            watch.drop_link()
            await watch.wait_for(lambda w: w.connections > count, TIMEOUT_S, "reconnection")
            await watch.wait_subscribed(codec.CARE_ALERT, TIMEOUT_S)
            await wait_until(lambda: fleet.status()[0]["connected"], TIMEOUT_S, "connected")

        async def settled() -> tuple[int, int, int]:
            gc.collect()
            await asyncio.sleep(0)
            return (
                len(asyncio.all_tasks()),
                await match_rule_count(bus),
                await connection_count(bus),
            )

        for _ in range(3):  # warm up: caches, the first back-off steps
            await drop_and_reconnect()
        tracemalloc.start()
        try:
            before = await settled()
            memory_before = tracemalloc.get_traced_memory()[0]
            for _ in range(LINK_DROPS):
                await drop_and_reconnect()
            after = await settled()
            memory_growth = tracemalloc.get_traced_memory()[0] - memory_before
        finally:
            tracemalloc.stop()
        assert after == before, f"tasks, match rules, bus connections: {before} -> {after}"
        assert memory_growth < 1_000_000, f"{memory_growth} bytes more after {LINK_DROPS} drops"
        assert fleet.status()[0]["counters"].get("link_crashed") is None


async def test_a_repeated_sos_after_a_gateway_restart_is_not_a_second_alarm(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with (
        private_system_bus(tmp_path / "dbus", monkeypatch) as bus,
        FakeBluez(bus, [watch]),
    ):
        # The gateway stores the alarm, but every confirm is lost with the link; then it stops.
        async with running_gateway(tmp_path, mosquitto, watch=FAST_LINK):
            await watch.wait_subscribed(codec.CARE_ALERT, TIMEOUT_S)
            watch.fail_next_confirms(1000)
            await watch.care_alert(CareEvent.SOS, 5)
            await wait_platform(platform, lambda p: kinds(p, "alarm.watch_sos"), "the alarm")
            await watch.wait_for(lambda w: w.connections >= 3, TIMEOUT_S, "repeats")
        watch.fail_next_confirms(0)
        # The next gateway hears the watch repeat the alert, confirms it, raises nothing new.
        async with running_gateway(tmp_path, mosquitto, watch=FAST_LINK) as rig:
            await watch.wait_confirmed(5, TIMEOUT_S)
            await rig.gateway.sink.emit("gateway.power", {"mains": True})
            await wait_platform(platform, lambda p: kinds(p, "gateway.power"), "the marker")
    assert len(kinds(platform, "alarm.watch_sos")) == 1
    assert watch.confirms == [(5, 0x01)]


def _alerts_listed(state_dir: Path) -> list[dict[str, Any]]:
    """The alerts ``watches.json`` holds for the watch (none when it was never written)."""
    try:
        content = json.loads((state_dir / "watches.json").read_text())
    except FileNotFoundError:
        return []
    return list(content["state"].get(ADDRESS, {}).get("alerts", []))


def _alarms_stored(state_dir: Path, kind: str) -> int:
    db = sqlite3.connect(f"file:{state_dir / 'outbox.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM events WHERE kind=?", (kind,)).fetchone()[0])
    finally:
        db.close()


async def test_a_daemon_killed_between_the_alarms_commit_and_the_0x01_raises_no_second_alarm(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 0x01 goes out as soon as the alarm is committed, before the watch list is written:
    a daemon killed in between forgets the alert, and the watch repeats it to the next one."""
    watch = WatchSim(ADDRESS)
    state = tmp_path / "state"
    daemon = GatewayProcess(
        gateway_config(tmp_path, mosquitto, watch=FAST_LINK), tmp_path / "daemon.log"
    )
    async with (
        private_system_bus(tmp_path / "dbus", monkeypatch) as bus,
        FakeBluez(bus, [watch]),
    ):
        try:
            daemon.start()
            await watch.wait_subscribed(codec.CARE_ALERT, 60.0)
            # Every 0x01 is lost with the link: the alarm is committed, the watch never hears
            # of it, and nothing has it written to the watch list when the daemon is killed.
            watch.fail_next_confirms(1000)
            await watch.care_alert(CareEvent.SOS, 5, watch_time=850_000_000)
            await wait_platform(platform, lambda p: kinds(p, "alarm.watch_sos"), "the alarm")
            await watch.wait_for(lambda w: w.connections >= 3, TIMEOUT_S, "repeats")
            daemon.kill()
            assert _alerts_listed(state) == []
            assert _alarms_stored(state, "alarm.watch_sos") == 1

            watch.fail_next_confirms(0)
            daemon.start()
            await watch.wait_confirmed(5, 60.0)
            # A second alarm would be on disk before its 0x01.
            assert _alarms_stored(state, "alarm.watch_sos") == 1
            assert watch.confirms == [(5, 0x01)]
            assert '"alarm_already_stored"' in daemon.log_text()
            # The watch took its 0x01: the watch list has the alert at once, for the 0x02.
            await wait_until(
                lambda: [a["told"] for a in _alerts_listed(state)] == [1],
                TIMEOUT_S,
                "the alert listed",
            )
            assert await asyncio.to_thread(daemon.terminate) == 0
        finally:
            daemon.close()
    assert len(kinds(platform, "alarm.watch_sos")) == 1


async def test_config_set_changes_a_watchs_interval_and_rules_while_it_runs(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch):  # heart rate: every 60 s
        await beats(watch, 70, 0.5)
        change = {
            "intervals": {"heart_rate": 0.3},
            "rules": {"heart_rate_high": {"threshold": 100, "min_duration_s": 0.5}},
        }
        platform.publish(
            "carebed/v1/gw-a/down/cmd",
            {"v": 1, "id": "set-1", "name": "config.set", "args": {"vitals": change}},
        )
        await wait_platform(platform, lambda p: kinds(p, "cmd.result"), "the result")
        # The open 60 s window ends by the new interval: its readings come at once.
        await wait_platform(platform, vitals_of, "vitals by the new interval")
        await beats(watch, 110, 1.0)
        await wait_platform(platform, lambda p: kinds(p, "alarm.vitals"), "the new rule trips")
    (result,) = kinds(platform, "cmd.result")
    assert result["data"]["ok"], result
    (alarm,) = kinds(platform, "alarm.vitals")
    assert (alarm["data"]["value"], alarm["data"]["threshold"]) == (110, 100)
    first = vitals_of(platform)[0]["data"]
    assert first["heart_rate"] == 70 and first["stats"]["heart_rate"]["n"] >= 5


async def test_a_stalled_bluez_while_a_confirm_is_due_is_a_lost_link(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    link = {"silent_after_s": 0.5}
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch, link=link) as (rig, _):
        fleet = rig.gateway.watches
        assert fleet is not None
        await watch.care_alert(CareEvent.SOS, 3)
        await watch.wait_confirmed(3, TIMEOUT_S)
        (alarm,) = await _alarms(platform, "alarm.watch_sos")
        before = watch.connections
        watch.stall()  # the 0x02 below cannot be written: the write hangs
        await _ack(platform, alarm["id"])
        await wait_until(
            lambda: (
                fleet.status()[0]["counters"].get("silent_link", 0)
                + fleet.status()[0]["counters"].get("confirm_failed", 0)
                >= 1
            ),
            TIMEOUT_S,
            "the stalled link given up",
        )
        watch.stall(False)
        await watch.wait_for(lambda w: w.connections > before, TIMEOUT_S, "a new connection")
        await watch.wait_for(lambda w: (3, 0x02) in w.confirms, TIMEOUT_S, "0x02 written after")
    assert watch.confirms == [(3, 0x01), (3, 0x02)]


async def test_a_new_alert_reusing_an_alert_seq_gets_its_own_confirms(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch rebooted and numbers its alerts from 1 again: the new SOS is a new alarm, it
    gets its 0x01, and the older alarm's acknowledgement is not shown for it."""
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch):
        await watch.care_alert(CareEvent.PUT_ON, 1)
        await watch.wait_confirmed(1, TIMEOUT_S)
        await watch.care_alert(CareEvent.FALL, 1, 1000)
        (fall,) = await _alarms(platform, "alarm.fall")
        await watch.wait_for(lambda w: len(w.confirms) == 2, TIMEOUT_S, "the fall's 0x01")
        await watch.care_alert(CareEvent.SOS, 1, 2000)  # same number again, after a reboot
        (sos,) = await _alarms(platform, "alarm.watch_sos")
        await watch.wait_for(lambda w: len(w.confirms) == 3, TIMEOUT_S, "the SOS's 0x01")
        await _ack(platform, fall["id"])  # the fall's: not the SOS's to show
        await _ack(platform, sos["id"])
        await watch.wait_for(lambda w: len(w.confirms) == 4, TIMEOUT_S, "the SOS's 0x02")
    assert watch.confirms == [(1, 0x01), (1, 0x01), (1, 0x01), (1, 0x02)]


async def test_an_acknowledgement_while_the_watch_is_away_is_shown_when_it_is_back(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch):
        await watch.care_alert(CareEvent.SOS, 4)
        await watch.wait_confirmed(4, TIMEOUT_S)
        (alarm,) = await _alarms(platform, "alarm.watch_sos")
        watch.in_range = False
        await watch.wait_disconnected(TIMEOUT_S)
        await _ack(platform, alarm["id"])
        watch.in_range = True
        await watch.wait_for(lambda w: len(w.confirms) == 2, TIMEOUT_S, "0x02 once back")
    assert watch.confirms == [(4, 0x01), (4, 0x02)]


async def test_a_watch_without_contact_detection_stays_off_once_taken_off(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    vitals = {"intervals": {"heart_rate": 0.2}}
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch, vitals=vitals) as (rig, _):
        await watch.care_alert(CareEvent.TAKEN_OFF, 1)
        await wait_platform(platform, lambda p: kinds(p, "device.not_worn"), "not worn")
        for _ in range(10):  # no contact bits at all: says nothing of being worn
            await watch.notify(codec.HEART_RATE_MEASUREMENT, encode_heart_rate(30, contact=None))
        fleet = rig.gateway.watches
        assert fleet is not None
        await wait_until(
            lambda: fleet.status()[0]["counters"].get("reading_not_worn", 0) >= 10,
            TIMEOUT_S,
            "the readings seen and set aside",
        )
    assert not kinds(platform, "device.worn")
    assert not vitals_of(platform)
    assert not kinds(platform, "alarm.vitals")


async def test_a_flapping_link_delays_help_is_on_the_way_but_never_cancels_it(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch):
        watch.fail_next_confirms(3)
        await watch.care_alert(CareEvent.SOS, 5)
        await watch.wait_confirmed(5, TIMEOUT_S)
        (alarm,) = await _alarms(platform, "alarm.watch_sos")
        watch.fail_next_confirms(6)  # the link drops during each of the next six writes
        await _ack(platform, alarm["id"])
        await watch.wait_for(lambda w: (5, 0x02) in w.confirms, TIMEOUT_S, "0x02 at last")
    assert watch.confirms == [(5, 0x01), (5, 0x02)]
    assert len(kinds(platform, "alarm.watch_sos")) == 1


async def test_an_sos_acknowledged_before_the_watch_heard_anything_is_still_one_alarm(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watch never got its 0x01 (every write lost with the link); the desk acknowledged
    meanwhile. When the watch repeats the alert it is the same alarm, and it hears 0x01, 0x02."""
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch):
        watch.fail_next_confirms(10_000)
        await watch.care_alert(CareEvent.SOS, 8, 5000)
        (alarm,) = await _alarms(platform, "alarm.watch_sos")
        await _ack(platform, alarm["id"])
        watch.fail_next_confirms(0)
        await watch.wait_for(lambda w: len(w.confirms) == 2, TIMEOUT_S, "0x01 and 0x02")
        await _alarms(platform, "audit.alarm_acknowledged")
    assert watch.confirms == [(8, 0x01), (8, 0x02)]
    assert len(kinds(platform, "alarm.watch_sos")) == 1


async def test_after_a_watch_reboot_an_old_status_is_not_shown_for_a_new_alert(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = WatchSim(ADDRESS)
    async with watch_gateway(tmp_path, mosquitto, monkeypatch, watch):
        await watch.care_alert(CareEvent.SOS, 1, 100)
        await watch.wait_confirmed(1, TIMEOUT_S)
        (first,) = await _alarms(platform, "alarm.watch_sos")
        watch.in_range = False
        await watch.wait_disconnected(TIMEOUT_S)
        await _ack(platform, first["id"])  # its 0x02 waits for the watch
        watch.in_range = True  # ...which rebooted, numbers from 1 again, and has a new SOS
        await watch.wait_subscribed(codec.CARE_ALERT, TIMEOUT_S)
        await watch.care_alert(CareEvent.SOS, 1, 200)
        second = (await _alarms(platform, "alarm.watch_sos", 2))[1]
        await watch.wait_for(lambda w: len(w.confirms) == 2, TIMEOUT_S, "the new SOS's 0x01")
        await _ack(platform, second["id"])
        await watch.wait_for(lambda w: len(w.confirms) == 3, TIMEOUT_S, "the new SOS's 0x02")
    # Never "help is on the way" for the new SOS before its own acknowledgement.
    assert watch.confirms == [(1, 0x01), (1, 0x01), (1, 0x02)]


async def test_a_connection_left_in_bluez_is_closed_so_the_watch_sees_a_new_one(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BlueZ still holds the watch connected (a gateway killed before it could disconnect):
    the gateway closes that connection and makes its own, so the watch repeats its alert."""
    watch = WatchSim(ADDRESS, paired=True)
    async with (
        private_system_bus(tmp_path / "dbus", monkeypatch) as bus,
        FakeBluez(bus, [watch]),
    ):
        leftover = BleakClient(ADDRESS)
        await leftover.connect()
        await watch.care_alert(CareEvent.SOS, 2)  # nobody listens: the watch keeps it
        assert watch.connections == 1
        async with running_gateway(tmp_path, mosquitto, watch=FAST_LINK):
            await watch.wait_confirmed(2, TIMEOUT_S)
            await _alarms(platform, "alarm.watch_sos")
        assert watch.connections == 2
        await leftover.disconnect()
    assert watch.confirms == [(2, 0x01)]


async def test_every_measurement_reaches_the_platform_in_its_units(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SpO2, blood pressure in kPa, temperature in degF and steps, as the platform's fields in
    mmHg and degC; a probe-off reading (NaN) and a bad payload are no reading."""
    watch = WatchSim(ADDRESS)
    every = dict.fromkeys(
        ("spo2", "pulse_rate", "systolic", "diastolic", "map", "temperature_c", "steps"), 0
    )
    async with watch_gateway(
        tmp_path, mosquitto, monkeypatch, watch, vitals={"intervals": every}
    ) as (rig, _):
        await watch.wait_subscribed(codec.STEPS, TIMEOUT_S)  # subscribed last
        await watch.spo2(None, None)  # probe off
        await watch.notify(codec.TEMPERATURE_MEASUREMENT, b"\x02\x6e")  # truncated
        await watch.spo2(97, 72)
        await watch.notify(
            codec.BLOOD_PRESSURE_MEASUREMENT, encode_blood_pressure(16, 10.6, 12.4, kpa=True)
        )
        await watch.notify(codec.TEMPERATURE_MEASUREMENT, encode_temperature(98.6, fahrenheit=True))
        await watch.send_steps(4321)
        await wait_platform(
            platform,
            lambda p: (
                {"spo2", "systolic", "temperature_c", "steps"}
                <= {key for e in vitals_of(p) for key in e["data"]}
            ),
            "every measurement",
        )
        fleet = rig.gateway.watches
        assert fleet is not None
        assert fleet.status()[0]["counters"]["bad_payload"] == 1
    merged: dict[str, Any] = {}
    for event in vitals_of(platform):
        merged.update({k: v for k, v in event["data"].items() if k != "stats"})
    assert merged["spo2"] == 97 and merged["pulse_rate"] == 72
    assert (merged["systolic"], merged["diastolic"], merged["map"]) == (120.0, 79.5, 93.0)
    assert merged["temperature_c"] == 37.0
    assert merged["steps"] == 4321
    assert [e["data"]["spo2"] for e in vitals_of(platform) if "spo2" in e["data"]] == [97]
