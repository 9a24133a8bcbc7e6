"""The emergency button under damage: a lost pairing list, failing device events, a missing port."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from drivers.button.codec import Ack, ButtonEventCode, Pattern, device_id, encode_button_event
from gateway.app import config, control
from gateway.core.clock import ManualClock
from gateway.core.errors import StoreError
from gateway.core.ports import EventSink
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from hil.sim.receiver import SimReceiver
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until
from tests.support.daemon import GatewayProcess, gateway_config
from tests.support.reliability import record, scaled
from tests.test_button import BUTTON, DEVICE, STRANGER, button_rig
from tests.test_button_cli import carebed
from tests.test_button_codec import hostile_noise

# --- A damaged pairing list: the real daemon, the pty receiver, the platform ------------------

DAMAGE: dict[str, tuple[bytes | None, bytes | None]] = {  # buttons.json, buttons.json.bak
    "garbage": (b"\x00\xff{\x8b garbage", None),
    "wrong shape": (b'{"buttons": ["00A1B2C3"]}', None),
    "both copies bad": (b'{"buttons": {"00A1B2C3": 17', b"[]"),
    "backup missing": (b"", None),
}


def heartbeat_faults(platform: PlatformClient) -> list[list[dict[str, Any]]]:
    """The ``faults`` of each heartbeat, in order (empty when the heartbeat had none)."""
    return [e["data"].get("faults", []) for e in kinds(platform, "gateway.heartbeat")]


def command_result(platform: PlatformClient, cmd_id: str) -> dict[str, Any] | None:
    for event in kinds(platform, "cmd.result"):
        if event["data"]["cmd_id"] == cmd_id:
            return dict(event["data"])
    return None


@asynccontextmanager
async def damaged_daemon(
    tmp_path: Path, broker: Mosquitto, damage: str
) -> AsyncIterator[tuple[SimReceiver, Path]]:
    """The daemon started over a damaged pairing file, with the receiver on a pty."""
    main, backup = DAMAGE[damage]
    state = tmp_path / "state"
    state.mkdir()
    if main is not None:
        (state / "buttons.json").write_bytes(main)
    if backup is not None:
        (state / "buttons.json.bak").write_bytes(backup)
    async with daemon_with_receiver(tmp_path, broker) as started:
        yield started


@asynccontextmanager
async def daemon_with_receiver(
    tmp_path: Path, broker: Mosquitto
) -> AsyncIterator[tuple[SimReceiver, Path]]:
    """The daemon over the state directory as it is, with the receiver on a pty."""
    link = tmp_path / "carebed-button"
    button = {"enabled": True, "port": str(link), "supervision_check_s": 0.1}
    path = gateway_config(tmp_path, broker, button=button)
    async with SimReceiver(link_path=link, retransmit_interval_s=0.3) as sim:
        daemon = GatewayProcess(path, tmp_path / "gateway.log")
        daemon.start()
        try:
            await sim.wait_for(lambda s: s.received != [], 20, "the daemon to open the port")
            yield sim, path
        finally:
            assert daemon.terminate() == 0, daemon.log_text()[-3000:]


async def pair_through_the_platform(
    sim: SimReceiver, platform: PlatformClient, bid: int, cmd_id: str
) -> None:
    paired = len(kinds(platform, "device.paired"))
    platform.publish(
        "carebed/v1/gw-a/down/cmd",
        {"v": 1, "id": cmd_id, "name": "button.pair", "args": {"duration_s": 1}},
    )
    await sim.wait_for(lambda s: s.pairing_open, 10, "pairing open")
    await sim.pair_button(bid)
    await wait_platform(platform, lambda p: len(kinds(p, "device.paired")) > paired, "paired")
    await sim.wait_for(lambda s: not s.pairing_open, 10, "pairing closed")


async def press_until_acked(sim: SimReceiver, bid: int) -> int:
    seq = await sim.press(bid)
    await sim.wait_for(lambda s: s.acked(seq), 10, f"the ACK of {bid:08X}'s press")
    return seq


@pytest.mark.reliability
@pytest.mark.parametrize("damage", DAMAGE)
async def test_a_press_raises_an_alarm_while_the_pairing_list_is_damaged(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, damage: str
) -> None:
    async with damaged_daemon(tmp_path, mosquitto, damage) as (sim, path):
        # the platform hears of the damage at once (not after heartbeat_s, an hour here)
        await wait_platform(platform, lambda p: any(heartbeat_faults(p)), "the fault")
        (fault,) = heartbeat_faults(platform)[0]
        assert (fault["code"], fault["device"]) == ("pairing_unreadable", "rcv-gw-a")
        assert "buttons.json" in fault["message"]
        # a press of a button that cannot be checked raises an alarm, marked, with 0x01
        await press_until_acked(sim, BUTTON)
        await sim.wait_for(lambda s: Pattern.RECEIVED in s.indications(BUTTON), 10, "0x01")
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
        (alarm,) = kinds(platform, "alarm.button")
        assert alarm["device"] == DEVICE
        assert alarm["data"]["unchecked"] is True
        # the status command and `carebed button list` (button.list) say so
        platform.publish("carebed/v1/gw-a/down/cmd", {"v": 1, "id": "s-1", "name": "status"})
        await wait_platform(platform, lambda p: command_result(p, "s-1") is not None, "status")
        status = command_result(platform, "s-1")
        assert status is not None and status["ok"], status
        assert [f["code"] for f in status["result"]["faults"]] == ["pairing_unreadable"]
        pairing = status["result"]["devices"][0]["pairing"]
        assert pairing["damage"] and pairing["unchecked_buttons"] == [DEVICE]
        socket = config.load(path).control_socket
        (listed,) = await control.ask(socket, "button.list", {})
        assert [f["code"] for f in listed["faults"]] == ["pairing_unreadable"]
        # the installer pairs the button again and confirms the list: checking resumes, the
        # platform sees the fault end
        await pair_through_the_platform(sim, platform, BUTTON, "p-1")
        (confirmed,) = await control.ask(socket, "button.confirm", {})
        assert confirmed == {"confirmed": True, "buttons": [DEVICE]}
        await wait_platform(
            platform, lambda p: heartbeat_faults(p)[-1:] == [[]], "a heartbeat without fault"
        )
        await press_until_acked(sim, STRANGER)  # a neighbour's: no alarm any more
        await press_until_acked(sim, BUTTON)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 2, "the alarm")
    alarms = kinds(platform, "alarm.button")
    assert [a["device"] for a in alarms] == [DEVICE, DEVICE]
    assert "unchecked" not in alarms[1]["data"]
    record(
        "button",
        f"pairing file damaged ({damage}), no good copy",
        count=1,
        lost=0,
        outcome="press raised an alarm marked unchecked with INDICATE 0x01; fault in heartbeat, "
        "status and button.list; checking resumed after pairing and the installer's confirmation",
    )


def alarm_sources(platform: PlatformClient) -> list[tuple[str, bool]]:
    """Each ``alarm.button``'s device and whether it was marked unchecked, in order."""
    return [(a["device"], "unchecked" in a["data"]) for a in kinds(platform, "alarm.button")]


@pytest.mark.reliability
async def test_pairing_one_button_of_a_damaged_list_leaves_the_others_alarming(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    other = device_id(STRANGER)  # a button of the home, lost with the damaged file
    async with damaged_daemon(tmp_path, mosquitto, "garbage") as (sim, path):
        await wait_platform(platform, lambda p: any(heartbeat_faults(p)), "the fault")
        await pair_through_the_platform(sim, platform, BUTTON, "p-1")
        await press_until_acked(sim, STRANGER)
        await wait_platform(platform, lambda p: len(alarm_sources(p)) == 1, "the other's alarm")
        (listed,) = await control.ask(config.load(path).control_socket, "button.list", {})
        assert [f["code"] for f in listed["faults"]] == ["pairing_unreadable"]
        assert "1 button(s) paired since" in listed["faults"][0]["message"]
        await wait_platform(  # the platform is told at once
            platform,
            lambda p: "1 button(s) paired since" in str(heartbeat_faults(p)[-1]),
            "the fault with the button paired",
        )
        before = len(heartbeat_faults(platform))
    async with daemon_with_receiver(tmp_path, mosquitto) as (sim, path):  # a restart
        await wait_platform(
            platform,
            lambda p: len(heartbeat_faults(p)) > before and all(heartbeat_faults(p)),
            "the fault after the restart",
        )
        await press_until_acked(sim, STRANGER)
        await wait_platform(platform, lambda p: len(alarm_sources(p)) == 2, "the other's alarm")
        status, out = await carebed(path, "button", "list")
        assert status == 0 and "PAIRING LIST DAMAGED" in out and DEVICE in out, out
        status, out = await carebed(path, "button", "confirm")  # the installer: list complete
        assert status == 0, out
        assert "pairing list confirmed: 1 button(s)" in out and DEVICE in out
        await wait_platform(
            platform, lambda p: heartbeat_faults(p)[-1:] == [[]], "a heartbeat without fault"
        )
        await press_until_acked(sim, STRANGER)  # no longer taken for the home's
        await press_until_acked(sim, BUTTON)
        await wait_platform(platform, lambda p: len(alarm_sources(p)) == 3, "the paired alarm")
    assert alarm_sources(platform) == [(other, True), (other, True), (DEVICE, False)]
    record(
        "button",
        "a button paired while the pairing list is damaged, then a restart",
        count=2,
        lost=0,
        outcome="presses of the home's other buttons still raised unchecked alarms, also after "
        "the restart; checking resumed only on the installer's confirmation",
    )


async def test_a_pairing_file_repaired_by_hand_ends_the_fault(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with damaged_daemon(tmp_path, mosquitto, "garbage") as (sim, _path):
        await wait_platform(platform, lambda p: any(heartbeat_faults(p)), "the fault")
        good = json.dumps({"buttons": {f"{BUTTON:08X}": 1_800_000_000.0}})
        (tmp_path / "state" / "buttons.json").write_text(good)
        await wait_platform(
            platform, lambda p: heartbeat_faults(p)[-1:] == [[]], "a heartbeat without fault"
        )
        await press_until_acked(sim, STRANGER)
        await press_until_acked(sim, BUTTON)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
    (alarm,) = kinds(platform, "alarm.button")
    assert alarm["device"] == DEVICE
    assert "unchecked" not in alarm["data"]
    state = tmp_path / "state"
    assert json.loads((state / "buttons.json.bak").read_text()) == json.loads(good)
    assert (state / "buttons.json.bak").read_text() == (state / "buttons.json").read_text()


# --- One press, one alarm: the device events that go with it fail to store ---------------------


class FailingDeviceEvents:
    """The link's sink, except that events of ``failing`` kinds raise, as the real outbox's
    ``put`` does once it is closed (and as any ``EventSink`` may): after the alarm was stored."""

    def __init__(self, sink: EventSink, failing: tuple[str, ...]) -> None:
        self.sink = sink
        self.failing = failing
        self.failed = 0

    async def emit(self, kind: str, data: dict[str, Any], device: str | None = None) -> str:
        if kind in self.failing:
            self.failed += 1
            raise StoreError("the outbox is closed")
        return await self.sink.emit(kind, data, device)


@pytest.mark.reliability
@pytest.mark.parametrize(
    "failing", [("device.battery",), ("device.online", "device.battery")], ids=["battery", "both"]
)
async def test_one_press_is_one_alarm_when_its_device_events_cannot_be_stored(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, failing: tuple[str, ...]
) -> None:
    async with button_rig(tmp_path, mosquitto) as (rig, sim):
        link = rig.gateway.button
        assert link is not None
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "the uplink")  # else 0x03
        sink = FailingDeviceEvents(link.sink, failing)
        link.sink = sink
        seq = await sim.press(BUTTON, battery=10)  # low: device.battery follows the alarm
        await sim.wait_for(lambda s: s.acked(seq), 10, "the ACK")
        await sim.wait_for(lambda s: seq not in s.pending_seqs, 10, "the receiver satisfied")
        marker = await sim.tamper(BUTTON)  # handled after anything the press could cause
        await sim.wait_for(lambda s: s.acked(marker), 10, "the marker's ACK")
        await wait_platform(platform, lambda p: len(kinds(p, "device.tamper")) == 1, "marker")
        assert sink.failed >= len(failing)
        assert link.counters["handling_failed"] >= 1  # device.battery raised after the alarm
        alarm_ids = {a["id"] for a in kinds(platform, "alarm.button")}
        assert len(alarm_ids) == 1
        acks = [m for m in sim.received if isinstance(m, Ack) and m.acked_seq == seq]
        assert len(acks) == sim.transmissions(seq)  # every transmission ACKed, the first too
        assert sim.indications(BUTTON)[:1] == [Pattern.RECEIVED]
        assert Pattern.NOT_DELIVERED not in sim.indications(BUTTON)
        # the store works again: the battery change was not noted, the next frame reports it
        sink.failing = ()
        heartbeat = await sim.heartbeat(BUTTON, battery=10)
        await sim.wait_for(lambda s: s.acked(heartbeat), 10, "the heartbeat's ACK")
        await wait_platform(
            platform,
            lambda p: {"level": 10, "low": True} in [e["data"] for e in kinds(p, "device.battery")],
            "the battery event",
        )
        online = [e for e in kinds(platform, "device.online") if e["device"] == DEVICE]
        online_lost = int("device.online" in failing)  # no ACK stands for it: logged, counted
        assert len(online) == 1 - online_lost
        assert link.counters["events_lost"] == online_lost
    record(
        "button",
        f"{' and '.join(failing)} fail to store after the press's alarm",
        count=1,
        lost=0,
        outcome="one alarm id, the frame ACKed, INDICATE 0x01; the battery level reported by "
        "the next frame",
    )


# --- A serial port that does not exist -----------------------------------------------------------


def port_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == "button_port_missing"]


@pytest.mark.reliability
async def test_a_missing_port_is_logged_at_once_with_the_fix_then_quietly_retried(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    clock = ManualClock(wall=1_800_000_000.0)
    port = tmp_path / "carebed-button"
    button = {"enabled": True, "port": str(port), "reopen_interval_s": 0.01}
    with capture_logs() as logs:
        async with running_gateway(tmp_path, mosquitto, clock=clock, button=button) as rig:
            link = rig.gateway.button
            assert link is not None
            await wait_until(lambda: len(port_warnings(logs)) == 1, 5, "the warning")
            (warning,) = port_warnings(logs)
            assert warning["log_level"] == "warning"
            assert warning["port"] == str(port)
            assert "button.port" in warning["fix"] and "udev" in warning["fix"]
            tries = link.counters["port_missing"]
            await wait_until(lambda: link.counters["port_missing"] >= tries + 50, 10, "retries")
            assert len(port_warnings(logs)) == 1  # retried quietly
            assert link.status()["receiver"]["port_problem"]["what"] == "missing"
            clock.advance(301)  # still missing minutes later: said again, once
            await wait_until(lambda: len(port_warnings(logs)) == 2, 5, "the reminder")
            assert port_warnings(logs)[1]["for_s"] >= 300
            async with SimReceiver(link_path=port, retransmit_interval_s=0.2):
                await wait_until(link.connected.is_set, 10, "the port to be opened")
                assert link.status()["receiver"]["port_problem"] is None
            await wait_until(lambda: len(port_warnings(logs)) == 3, 5, "missing again")
            retries = link.counters["port_missing"]
    record(
        "serial",
        "the configured serial port does not exist",
        count=retries,
        lost=0,
        outcome="one warning at once with port and fix, again every 5 min or on change; "
        "retried quietly, opened when it appeared",
    )


async def test_a_port_that_cannot_be_opened_is_logged_with_the_error(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    port = tmp_path / "carebed-button"
    port.write_text("")  # exists, but is no serial port
    button = {"enabled": True, "port": str(port), "reopen_interval_s": 0.01}
    with capture_logs() as logs:
        async with running_gateway(tmp_path, mosquitto, button=button) as rig:
            link = rig.gateway.button
            assert link is not None
            await wait_until(lambda: link.counters["open_failed"] >= 20, 10, "retries")
            await asyncio.sleep(0)
    failed = [entry for entry in logs if entry["event"] == "button_port_open_failed"]
    assert len(failed) == 1
    assert failed[0]["port"] == str(port) and failed[0]["error"]
    assert failed[0]["log_level"] == "warning" and "dialout" in failed[0]["fix"]


# --- Presses hidden in hostile line noise, through the pty -----------------------------------


@pytest.mark.reliability
async def test_every_press_hidden_in_hostile_noise_on_the_line_becomes_one_alarm(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    rng = random.Random(20261207)
    presses = scaled(40, 300)
    gap_bytes = scaled(64 * 1024, 1024 * 1024) // presses
    stream = bytearray()
    for n in range(presses):  # SEQ and RSSI vary: no press is a repeat of another
        gap = bytearray()
        while len(gap) < gap_bytes:
            gap += hostile_noise(rng)
        stream += gap
        stream += encode_button_event(n % 256, BUTTON, ButtonEventCode.SHORT_PRESS, 50, -(n % 100))
    async with button_rig(tmp_path, mosquitto) as (rig, sim):
        for offset in range(0, len(stream), 4096):
            await sim.send_raw(bytes(stream[offset : offset + 4096]))
        await wait_platform(
            platform, lambda p: len(kinds(p, "alarm.button")) >= presses, "every press", 60
        )
        link = rig.gateway.button
        assert link is not None
        damaged = link.decoder.bad_crc + link.decoder.bad_length
    alarms = [a for a in kinds(platform, "alarm.button") if a["device"] == DEVICE]
    rssis = sorted(a["data"]["rssi"] for a in alarms)
    assert rssis == sorted(-(n % 100) for n in range(presses))  # each once, none lost
    record(
        "serial",
        "presses among random bytes, sync words, bad LEN, damaged and truncated frames (pty)",
        count=len(stream),
        lost=presses - len(alarms),
        outcome=f"all {presses} presses became one alarm each; {damaged} damaged frames dropped",
    )
