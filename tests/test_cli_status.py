"""``carebed status`` and ``carebed test-alarm`` against the real daemon, broker, receiver and
camera simulators."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.button.pairing import PairingStore
from gateway.app import diagnose
from gateway.app.alarms import AlarmTracker
from gateway.store.outbox import Outbox
from gateway.store.sink import OutboxSink
from hil.sim.broker import Mosquitto
from hil.sim.camera import SimCamera
from hil.sim.platform import PlatformClient
from hil.sim.receiver import SimReceiver
from tests.gateway_rig import kinds, running_gateway, wait_until
from tests.test_doctor import carebed
from tests.test_outbox import Rig

BUTTON = 0x00A1B2C3


async def test_status_through_the_daemon_and_without_it(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    link = tmp_path / "carebed-button"
    (tmp_path / "state").mkdir()
    PairingStore(tmp_path / "state" / "buttons.json").add(BUTTON)
    async with SimReceiver(link_path=link, retransmit_interval_s=0.2) as receiver:
        async with running_gateway(
            tmp_path, mosquitto, button={"enabled": True, "port": str(link)}
        ) as running:
            await wait_until(running.gateway.uplink.connected.is_set, 20, "the uplink")
            status, out = await carebed(tmp_path / "carebed.toml", "status")
            assert status == 0, out
            assert "Uplink: connected yes; refused messages 0" in out
            assert "Alarms held (not yet acknowledged by the platform): 0" in out
            assert f"rcv-gw-a: connected ({link})" in out
            # Paired, not heard since the daemon started: said so, not a time it was never heard.
            assert "btn-00A1B2C3: online, battery unknown, never heard since the start" in out
            assert running.gateway.button is not None
            await receiver.heartbeat(BUTTON)
            await wait_until(
                lambda: running.gateway.button.status()["buttons"][0]["heard"], 20, "the button"
            )
            status, out = await carebed(tmp_path / "carebed.toml", "status")
            assert "btn-00A1B2C3: online, battery ok, last heard 20" in out  # a date
            assert "UTC+0000" in out or "(UTC" in out  # local time, with its zone
        status, out = await carebed(tmp_path / "carebed.toml", "status")
        assert status == 1
        assert "the daemon is not running" in out and "systemctl start carebed" in out
        assert "Traceback" not in out


async def _ack_the_test_alarm(platform: PlatformClient) -> str:
    def wait_and_ack() -> str:
        platform.wait_for(
            lambda p: any(e["data"].get("test") for e in kinds(p, "alarm.button")),
            30,
            "the test alarm",
        )
        alarm = next(e for e in kinds(platform, "alarm.button") if e["data"].get("test"))
        platform.ack("gw-a", [alarm["id"]], "desk-7")
        return str(alarm["id"])

    return await asyncio.to_thread(wait_and_ack)


async def test_test_alarm_waits_for_the_platforms_acknowledgement(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with (
        SimCamera() as camera,
        running_gateway(
            tmp_path,
            mosquitto,
            camera={
                "enabled": True,
                "url": camera.base_url,
                "user": camera.user,
                "password": camera.password,
            },
        ) as running,
    ):
        await wait_until(running.gateway.uplink.connected.is_set, 20, "the uplink")
        acker = asyncio.create_task(_ack_the_test_alarm(platform))
        status, out = await carebed(tmp_path / "carebed.toml", "test-alarm", "--timeout", "30")
        alarm_id = await acker
        assert status == 0, out
        lines = out.splitlines()
        assert any(line.startswith("stored ") and alarm_id in line for line in lines), out
        assert any(line.startswith("published ") and "(+" in line for line in lines), out
        assert any(line.startswith("acknowledged ") for line in lines), out
        assert "The whole chain works" in out
        alarm = next(e for e in kinds(platform, "alarm.button") if e["id"] == alarm_id)
        assert alarm["device"] == "rcv-gw-a" and alarm["data"]["test"] is True
        assert not [r for r in camera.requests if r.method == "POST"]  # the camera not called

        # Nobody acknowledges: a clear timeout, not a hang.
        status, out = await carebed(tmp_path / "carebed.toml", "test-alarm", "--timeout", "2")
        assert status == 1, out
        assert "TIMEOUT: the platform did not acknowledge alarm" in out
        assert "nobody acknowledged it" in out
        platform.errors.clear()


async def test_test_alarm_acknowledged_before_its_puback_is_published_and_acknowledged(
    tmp_path: Path,
) -> None:
    """The platform's ack can be applied before the broker's PUBACK is handled (the alarm is
    then no longer held and its PUBACK tells nothing): the test alarm is published and
    acknowledged all the same, not a timeout."""
    rig = Rig(tmp_path / "outbox.sqlite3")
    outbox = Outbox(rig.store)
    await outbox.open()
    tracker = AlarmTracker(OutboxSink(outbox, rig.factory))
    control = diagnose.TestAlarm("gw-a", tracker, rig.clock)
    steps = control.control_test_alarm({"timeout_s": 5})
    try:
        stored = await anext(steps)
        assert stored["event"] == "stored"
        held = await outbox.held_alarms()
        assert [alarm.id for alarm in held] == [stored["alarm_id"]]
        tracker.acknowledged(held, "desk-1")  # before any PUBACK
        published = await anext(steps)
        acknowledged = await anext(steps)
    finally:
        await steps.aclose()
        await outbox.close()
    assert [published["event"], acknowledged["event"]] == ["published", "acknowledged"]
    assert published["at"] == acknowledged["at"]
