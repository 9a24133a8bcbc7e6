"""The emergency button end to end: simulated receiver on a real pty → gateway → real broker."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from drivers.button.codec import (
    Ack,
    ButtonEventCode,
    Indicate,
    PairMode,
    Pattern,
    StatusRequest,
    encode_button_event,
    encode_receiver_status,
)
from drivers.button.pairing import PairingStore
from gateway.core.clock import ManualClock
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from hil.sim.receiver import SimReceiver
from tests.gateway_rig import RunningGateway, kinds, running_gateway, wait_platform, wait_until
from tests.support.reliability import record

BUTTON = 0x00A1B2C3
DEVICE = "btn-00A1B2C3"
STRANGER = 0x0BADF00D


@asynccontextmanager
async def button_rig(
    tmp_path: Path,
    broker: Mosquitto,
    *,
    paired: tuple[int, ...] = (BUTTON,),
    clock: ManualClock | None = None,
    link_name: str = "carebed-button",
    port_pattern: str | None = None,
    **button: Any,
) -> AsyncIterator[tuple[RunningGateway, SimReceiver]]:
    pairing = tmp_path / "state" / "buttons.json"
    store = PairingStore(pairing)
    for bid in paired:
        store.add(bid)
    sim = SimReceiver(link_path=tmp_path / link_name, retransmit_interval_s=0.2)
    await sim.start()
    settings = {
        "enabled": True,
        "port": str(tmp_path / (port_pattern or link_name)),
        "reopen_interval_s": 0.05,
        **button,
    }
    try:
        async with running_gateway(tmp_path, broker, clock=clock, button=settings) as rig:
            link = rig.gateway.button
            assert link is not None
            await wait_until(link.connected.is_set, 10, "the receiver to be opened")
            await sim.wait_for(
                lambda s: any(isinstance(m, StatusRequest) for m in s.received),
                10,
                "STATUS_REQUEST on open",
            )
            # Its answer handled: the receiver is known to be there (an unplug is reported).
            await wait_until(
                lambda: link.status()["receiver"]["mains"] is not None, 10, "RECEIVER_STATUS"
            )
            yield rig, sim
    finally:
        await sim.close()


async def test_a_press_reaches_the_platform_once_and_the_senior_hears_received(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto) as (_rig, sim):
        seq = await sim.press(BUTTON)
        await sim.wait_for(lambda s: s.acked(seq), 10, "the ACK")
        await sim.wait_for(lambda s: Pattern.RECEIVED in s.indications(BUTTON), 10, "INDICATE 1")
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
    (alarm,) = kinds(platform, "alarm.button")
    assert alarm["device"] == DEVICE
    assert alarm["data"] == {"press": "short", "battery": 87, "rssi": -61}
    # the ACK came before INDICATE 0x01: the alarm was stored before the frame was acknowledged
    order = [m for m in sim.received if isinstance(m, Ack | Indicate)]
    ack_at = next(i for i, m in enumerate(order) if isinstance(m, Ack) and m.acked_seq == seq)
    assert isinstance(order[ack_at + 1], Indicate)


async def test_a_retransmitted_frame_gives_one_alarm(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto) as (rig, sim):
        sim.withhold_acks = True
        seq = await sim.press(BUTTON, long=True)
        await sim.wait_for(
            lambda s: sum(isinstance(m, Ack) and m.acked_seq == seq for m in s.received) >= 3,
            10,
            "three ACKs of the retransmissions",
        )
        sim.withhold_acks = False
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
        await sim.wait_for(lambda s: s.acked(seq), 10, "the last ACK")
        assert rig.gateway.button is not None
        await wait_until(lambda: rig.gateway.button.counters["duplicates"] >= 2, 5, "counted")
        # a later event proves nothing more was coming from the retransmissions
        tamper_seq = await sim.tamper(BUTTON)
        await sim.wait_for(lambda s: s.acked(tamper_seq), 10, "the tamper ACK")
        await wait_platform(platform, lambda p: len(kinds(p, "device.tamper")) == 1, "tamper")
    assert len(kinds(platform, "alarm.button")) == 1
    assert kinds(platform, "alarm.button")[0]["data"]["press"] == "long"


async def test_an_unpaired_button_raises_no_alarm(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto) as (rig, sim):
        seq = await sim.press(STRANGER)
        await sim.wait_for(lambda s: s.acked(seq), 10, "the ACK")
        marker = await sim.press(BUTTON)
        await sim.wait_for(lambda s: s.acked(marker), 10, "the marker's ACK")
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the marker")
        assert rig.gateway.button is not None
        assert rig.gateway.button.counters["unpaired"] == 1
    assert [a["device"] for a in kinds(platform, "alarm.button")] == [DEVICE]
    assert not sim.indications(STRANGER)


async def test_platform_ack_says_help_is_on_the_way_and_cancel_is_confirmed(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto) as (_rig, sim):
        await sim.press(BUTTON)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
        alarm_id = kinds(platform, "alarm.button")[0]["id"]
        platform.publish("carebed/v1/gw-a/down/ack", {"v": 1, "ids": [alarm_id], "by": "desk"})
        await sim.wait_for(
            lambda s: Pattern.ACKNOWLEDGED in s.indications(BUTTON), 10, "INDICATE 0x02"
        )
        await sim.cancel(BUTTON)
        await sim.wait_for(
            lambda s: Pattern.CANCEL_ACCEPTED in s.indications(BUTTON), 10, "INDICATE 0x04"
        )
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.cancelled")) == 1, "cancel")
    assert kinds(platform, "alarm.cancelled")[0]["data"] == {"alarm_id": alarm_id}
    assert sim.indications(BUTTON)[:2] == [Pattern.RECEIVED, Pattern.ACKNOWLEDGED]


async def test_with_the_broker_down_the_senior_hears_not_delivered_and_the_alarm_goes_later(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto) as (rig, sim):
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "the uplink")
        await asyncio.to_thread(mosquitto.stop)
        await wait_until(lambda: not rig.gateway.uplink.connected.is_set(), 20, "the link down")
        await sim.press(BUTTON)
        await sim.wait_for(
            lambda s: s.indications(BUTTON)[:2] == [Pattern.RECEIVED, Pattern.NOT_DELIVERED],
            10,
            "INDICATE 0x01 then 0x03",
        )
        await asyncio.to_thread(mosquitto.start)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")


@pytest.mark.slow
async def test_unplug_and_replug_ten_times_without_losing_a_press(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto) as (rig, sim):
        link = rig.gateway.button
        assert link is not None
        for n in range(10):
            await sim.unplug()
            await wait_until(lambda: not link.connected.is_set(), 10, f"unplug {n} noticed")
            await sim.replug()
            seq = await sim.press(BUTTON)  # just after the replug
            await sim.wait_for(lambda s, seq=seq: s.acked(seq), 10, f"press {n} acknowledged")
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 10, "10 alarms")
        await wait_platform(
            platform,
            lambda p: (
                len([e for e in kinds(p, "device.offline") if e["device"] == "rcv-gw-a"]) == 10
            ),
            "the receiver reported offline 10 times",
        )


async def test_supervision_reports_a_silent_button_offline_and_back_online(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    clock = ManualClock(wall=1_800_000_000.0)
    async with button_rig(tmp_path, mosquitto, clock=clock, supervision_check_s=0.02) as (rig, sim):
        await sim.heartbeat(BUTTON)
        await wait_until(
            lambda: rig.gateway.button is not None and DEVICE in str(rig.gateway.button.status()),
            5,
            "status",
        )
        clock.advance(3 * 3600 - 10)
        marker = await sim.heartbeat(BUTTON)  # heard just in time: stays online
        await sim.wait_for(lambda s: s.acked(marker), 10, "the heartbeat ACK")
        clock.advance(3 * 3600 + 1)

        def of_button(p: PlatformClient, kind: str) -> list[dict[str, Any]]:
            return [e for e in kinds(p, kind) if e["device"] == DEVICE]

        await wait_platform(platform, lambda p: len(of_button(p, "device.offline")) == 1, "offline")
        (offline,) = of_button(platform, "device.offline")
        assert offline["data"]["reason"] == "supervision_timeout"
        assert offline["data"]["last_seen"] is not None
        online_before = len(of_button(platform, "device.online"))  # first heard after start
        await sim.heartbeat(BUTTON, battery=10)
        await wait_platform(
            platform, lambda p: len(of_button(p, "device.online")) == online_before + 1, "online"
        )
        await wait_platform(platform, lambda p: len(kinds(p, "device.battery")) >= 1, "battery")
    assert kinds(platform, "device.battery")[-1]["data"] == {"level": 10, "low": True}


async def test_pairing_by_platform_command_and_unpairing(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto, paired=()) as (rig, sim):
        await wait_until(rig.gateway.uplink.subscribed.is_set, 10, "the downlink's SUBSCRIBE")
        platform.publish(
            "carebed/v1/gw-a/down/cmd",
            {"v": 1, "id": "p-1", "name": "button.pair", "args": {"duration_s": 30}},
        )
        await sim.wait_for(
            lambda s: any(isinstance(m, PairMode) and m.duration_s == 30 for m in s.received),
            10,
            "PAIR_MODE",
        )
        await sim.pair_button(BUTTON)
        await wait_platform(platform, lambda p: len(kinds(p, "device.paired")) == 1, "paired")
        seq = await sim.press(BUTTON)
        await sim.wait_for(lambda s: s.acked(seq), 10, "the ACK")
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "alarm")
        platform.publish(
            "carebed/v1/gw-a/down/cmd",
            {"v": 1, "id": "p-2", "name": "button.unpair", "args": {"device": DEVICE}},
        )
        await wait_platform(platform, lambda p: len(kinds(p, "device.unpaired")) == 1, "unpaired")
    results = {r["data"]["cmd_id"]: r["data"] for r in kinds(platform, "cmd.result")}
    assert results["p-1"]["ok"] and results["p-2"]["result"] == {"unpaired": True}
    assert PairingStore(tmp_path / "state" / "buttons.json").buttons() == []


async def test_mains_loss_low_battery_and_tamper_are_reported(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto) as (_rig, sim):
        await sim.set_flags(mains_lost=True)
        await wait_platform(
            platform,
            lambda p: {"mains": False} in [e["data"] for e in kinds(p, "gateway.power")],
            "mains lost",
        )
        await sim.low_battery(BUTTON, battery=None)
        await sim.tamper(BUTTON)
        await wait_platform(platform, lambda p: len(kinds(p, "device.tamper")) == 1, "tamper")
        await wait_platform(
            platform,
            lambda p: (
                {"level": None, "low": True} in [e["data"] for e in kinds(p, "device.battery")]
            ),
            "low battery",
        )


@pytest.mark.reliability
async def test_garbage_between_frames_is_skipped_and_the_press_found(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    noise = b"\x00\xff\xa5\x5a\x40noise\xa5" * 20
    async with button_rig(tmp_path, mosquitto) as (rig, sim):
        await sim.send_garbage(noise)
        seq = await sim.press(BUTTON)
        await sim.wait_for(lambda s: s.acked(seq), 10, "the ACK")
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
        assert rig.gateway.button is not None
        assert rig.gateway.button.decoder.garbage_bytes > 0
    record(
        "serial",
        "line noise with sync words and LEN 64 before a press, through the pty",
        count=len(noise),
        lost=0,
        outcome="noise dropped, the press ACKed and delivered once",
    )


async def test_no_acknowledgement_in_time_says_not_delivered_at_each_resend(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    clock = ManualClock(wall=1_800_000_000.0)
    async with button_rig(tmp_path, mosquitto, clock=clock) as (rig, sim):
        store = rig.gateway.store

        def delivered() -> bool:  # PUBACK recorded: its resend is scheduled
            return store.resends_scheduled() > 0

        await sim.press(BUTTON)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
        await sim.wait_for(lambda s: s.indications(BUTTON) == [Pattern.RECEIVED], 10, "0x01")
        await wait_until(delivered, 10, "the PUBACK")
        clock.advance(31)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 2, "resend 1")
        await sim.wait_for(
            lambda s: s.indications(BUTTON) == [Pattern.RECEIVED, Pattern.NOT_DELIVERED],
            10,
            "0x03 at the first resend",
        )
        await wait_until(delivered, 10, "the PUBACK of the resend")
        clock.advance(61)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 3, "resend 2")
        await sim.wait_for(
            lambda s: s.indications(BUTTON).count(Pattern.NOT_DELIVERED) == 2, 10, "0x03 again"
        )
    assert [a["attempt"] for a in kinds(platform, "alarm.button")] == [1, 2, 3]


async def test_test_alarm_command_runs_the_chain_without_telling_a_button(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto) as (rig, sim):
        await wait_until(rig.gateway.uplink.subscribed.is_set, 10, "the downlink's SUBSCRIBE")
        platform.publish(
            "carebed/v1/gw-a/down/cmd", {"v": 1, "id": "t-1", "name": "test_alarm", "args": {}}
        )
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
        (alarm,) = kinds(platform, "alarm.button")
        assert alarm["device"] == "rcv-gw-a"
        assert alarm["data"]["test"] is True
        platform.publish("carebed/v1/gw-a/down/ack", {"v": 1, "ids": [alarm["id"]], "by": "d"})
        await wait_platform(
            platform, lambda p: len(kinds(p, "audit.alarm_acknowledged")) == 1, "the audit"
        )
    assert not [m for m in sim.received if isinstance(m, Indicate)]


async def test_a_receiver_that_comes_back_under_another_name_is_found_by_glob(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    store = PairingStore(tmp_path / "state" / "buttons.json")
    store.add(BUTTON)
    first = SimReceiver(link_path=tmp_path / "ttySIM0", retransmit_interval_s=0.2)
    await first.start()
    button = {"enabled": True, "port": str(tmp_path / "ttySIM*"), "reopen_interval_s": 0.05}
    async with running_gateway(tmp_path, mosquitto, button=button) as rig:
        link = rig.gateway.button
        assert link is not None
        await wait_until(link.connected.is_set, 10, "the first receiver")
        await first.close()
        await wait_until(lambda: not link.connected.is_set(), 10, "the unplug")
        async with SimReceiver(link_path=tmp_path / "ttySIM1", retransmit_interval_s=0.2) as again:
            seq = await again.press(BUTTON)
            await again.wait_for(lambda s: s.acked(seq), 10, "the press under the new name")
            await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "alarm")
            assert link.port_path == str(tmp_path / "ttySIM1")


async def test_a_restarted_receiver_reusing_a_seq_is_not_taken_for_a_repeat(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto) as (_rig, sim):
        await sim.send_raw(encode_receiver_status(40, 1, 4, 3600, 0))
        press = encode_button_event(41, BUTTON, ButtonEventCode.SHORT_PRESS, 87, -61)
        await sim.send_raw(press)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "press 1")
        # power cut on the receiver: it starts again and numbers its frames the same way
        await sim.send_raw(encode_receiver_status(40, 1, 4, 1, 0))
        await sim.send_raw(press)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 2, "press 2")


async def test_a_glob_skips_a_port_that_does_not_answer(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    master, slave = os.openpty()  # a serial device that is not the receiver: it never answers
    try:
        (tmp_path / "ttySIM0").symlink_to(os.ttyname(slave))
        async with button_rig(
            tmp_path,
            mosquitto,
            link_name="ttySIM1",
            port_pattern="ttySIM*",
            receiver_answer_s=0.3,
        ) as (rig, sim):
            seq = await sim.press(BUTTON)
            await sim.wait_for(lambda s: s.acked(seq), 10, "the press on the second port")
            assert rig.gateway.button is not None
            assert rig.gateway.button.counters["no_answer"] >= 1
    finally:
        os.close(master)
        os.close(slave)


async def test_feedback_missed_while_unplugged_is_given_after_the_replug(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with button_rig(tmp_path, mosquitto) as (rig, sim):
        link = rig.gateway.button
        assert link is not None
        await sim.press(BUTTON)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
        await sim.unplug()
        await wait_until(lambda: not link.connected.is_set(), 10, "the unplug")
        alarm_id = kinds(platform, "alarm.button")[0]["id"]
        platform.publish("carebed/v1/gw-a/down/ack", {"v": 1, "ids": [alarm_id], "by": "desk"})
        await wait_platform(
            platform, lambda p: len(kinds(p, "audit.alarm_acknowledged")) == 1, "the ack"
        )
        await sim.replug()
        await sim.wait_for(
            lambda s: Pattern.ACKNOWLEDGED in s.indications(BUTTON), 10, "0x02 after the replug"
        )
