"""The camera in the alarm chain: one call per alarm, its states at the platform, audit, privacy
of remote access, and isolation from the alarm path. Real HTTP to the camera simulator."""

from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import Any

import pytest

from drivers.camera.gpio import GpiodLine
from gateway.core.clock import ManualClock
from hil.sim.broker import Mosquitto
from hil.sim.camera import SimCamera
from hil.sim.gpio import SimLine
from hil.sim.platform import PlatformClient
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until

PRESS = {"press": "short", "battery": 80, "rssi": -50}
BUTTON = "btn-00A1B2C3"


def call_states(platform: PlatformClient) -> list[str]:
    return [e["data"]["state"] for e in kinds(platform, "camera.call")]


def camera(sim: SimCamera, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "name": "living",
        "url": sim.base_url,
        "user": sim.user,
        "password": sim.password,
        "poll_interval_s": 0.05,
        "total_budget_s": 2.0,
        **extra,
    }


def posts(sim: SimCamera) -> list[Any]:
    return [r for r in sim.requests if r.method == "POST" and r.authorized]


async def test_an_alarm_calls_once_and_the_platform_sees_the_call_and_the_audit(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    clock = ManualClock(wall=1_800_000_000.0)
    async with (
        SimCamera(connect_delay_s=0.05, call_duration_s=0.2) as sim,
        running_gateway(tmp_path, mosquitto, clock=clock, camera=camera(sim)) as rig,
    ):
        alarm_id = await rig.gateway.alarms.raise_alarm("alarm.button", PRESS, BUTTON)
        await wait_platform(
            platform, lambda p: call_states(p) == ["requested", "started", "ended"], "the call"
        )
        await wait_until(lambda: rig.gateway.store.resends_scheduled() > 0, 10, "delivered")
        clock.advance(31)  # no acknowledgement: the alarm is resent...
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 2, "the resend")
    assert [r.json for r in posts(sim)] == [
        {"reason": "alarm", "alarm_id": alarm_id, "callee": "platform"}
    ]  # ...and not called again
    assert {e["data"]["alarm_id"] for e in kinds(platform, "camera.call")} == {alarm_id}
    (audit,) = kinds(platform, "audit.camera_activated")
    assert audit["device"] == "cam-living"
    assert audit["data"] == {
        "who": "gateway",
        "what": "camera call",
        "why": "alarm.button",
        "alarm_id": alarm_id,
    }


async def test_privacy_mode_is_reported_and_respected(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with (
        SimCamera() as sim,
        running_gateway(tmp_path, mosquitto, camera=camera(sim)) as rig,
    ):
        sim.privacy_mode = True
        await rig.gateway.alarms.raise_alarm("alarm.fall", {}, "watch-AABBCCDDEEFF")
        await wait_platform(platform, lambda p: call_states(p) == ["failed"], "the failure")
    assert kinds(platform, "camera.call")[0]["data"]["error"] == "privacy_mode"
    assert len([r for r in sim.requests if r.method == "POST"]) <= 2  # one attempt (digest)


async def test_vitals_and_test_alarms_do_not_call(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with (
        SimCamera() as sim,
        running_gateway(tmp_path, mosquitto, camera=camera(sim)) as rig,
    ):
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "the uplink")
        vitals = {
            "metric": "heart_rate",
            "value": 150,
            "threshold": 130,
            "direction": "above",
            "duration_s": 60,
        }
        await rig.gateway.alarms.raise_alarm("alarm.vitals", vitals, "watch-AABBCCDDEEFF")
        platform.publish(
            "carebed/v1/gw-a/down/cmd", {"v": 1, "id": "t-1", "name": "test_alarm", "args": {}}
        )
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "test")
        await rig.gateway.alarms.raise_alarm("alarm.button", PRESS, BUTTON)  # a marker call
        await wait_platform(platform, lambda p: "requested" in call_states(p), "the marker")
    assert len(kinds(platform, "audit.camera_activated")) == 1


async def test_remote_camera_call_is_forbidden_unless_enabled(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    body = {
        "v": 1,
        "id": "c-1",
        "name": "camera.call",
        "args": {"alarm_id": None, "reason": "family asked to check"},
    }
    async with (
        SimCamera() as sim,
        running_gateway(tmp_path / "off", mosquitto, camera=camera(sim)) as rig,
    ):
        await wait_until(rig.gateway.uplink.subscribed.is_set, 10, "the downlink's SUBSCRIBE")
        platform.publish("carebed/v1/gw-a/down/cmd", body)
        await wait_platform(platform, lambda p: len(kinds(p, "cmd.result")) == 1, "refused")
    assert kinds(platform, "cmd.result")[0]["data"]["error"]["code"] == "forbidden"
    assert not sim.requests
    async with (
        SimCamera() as sim,
        running_gateway(tmp_path / "on", mosquitto, camera=camera(sim, remote_access=True)) as rig,
    ):
        await wait_until(rig.gateway.uplink.subscribed.is_set, 10, "the downlink's SUBSCRIBE")
        platform.publish("carebed/v1/gw-a/down/cmd", {**body, "id": "c-2"})
        await wait_platform(platform, lambda p: "requested" in call_states(p), "the call")
    assert kinds(platform, "cmd.result")[1]["data"]["ok"] is True
    audit = kinds(platform, "audit.camera_activated")[0]["data"]
    assert (audit["who"], audit["why"]) == ("platform", "family asked to check")
    assert posts(sim)[0].json == {"reason": "platform", "alarm_id": None, "callee": "platform"}


async def test_a_hanging_camera_does_not_slow_the_alarm(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with (
        SimCamera() as sim,
        running_gateway(
            tmp_path, mosquitto, camera=camera(sim, total_budget_s=60, request_timeout_s=60)
        ) as rig,
    ):
        sim.hang = True
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "the uplink")
        timings = []
        for n in range(5):
            began = time.monotonic()
            await rig.gateway.alarms.raise_alarm("alarm.button", PRESS, BUTTON)
            await wait_platform(
                platform, lambda p, n=n: len(kinds(p, "alarm.button")) == n + 1, f"alarm {n}"
            )
            timings.append(time.monotonic() - began)
        assert len([r for r in sim.requests if r.method == "POST"]) >= 1  # the camera was asked
    assert max(timings) < 0.5, timings  # idle alarm latency is ~2 ms; a hung camera adds nothing
    assert "ended" not in call_states(platform)


async def test_the_relay_pulses_its_line_for_the_configured_time(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    line = SimLine()
    relay = {"enabled": True, "trigger": "relay", "name": "hall", "relay_pulse_s": 0.2}
    async with running_gateway(tmp_path, mosquitto, camera=relay, relay_line=line) as rig:
        alarm_id = await rig.gateway.alarms.raise_alarm("alarm.button", PRESS, BUTTON)
        await wait_platform(platform, lambda p: call_states(p) == ["requested"], "requested")
        assert not line.active
    (pulse,) = line.pulses_s()
    assert 0.2 <= pulse < 0.4
    assert kinds(platform, "camera.call")[0]["data"]["alarm_id"] == alarm_id
    assert kinds(platform, "audit.camera_activated")[0]["device"] == "cam-hall"
    assert line.closed


@pytest.mark.skipif(not glob.glob("/dev/gpiochip*"), reason="no GPIO chip (nor gpio-sim) here")
def test_gpiod_line_drives_a_real_chip() -> None:
    chip = sorted(glob.glob("/dev/gpiochip*"))[0]
    line = GpiodLine(chip, 0)
    try:
        line.set_active(True)
        line.set_active(False)
    finally:
        line.close()


async def test_a_relay_that_cannot_be_opened_does_not_stop_the_gateway(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    relay = {
        "enabled": True,
        "trigger": "relay",
        "name": "hall",
        "relay_chip": str(tmp_path / "no-such-gpiochip"),
    }
    async with running_gateway(tmp_path, mosquitto, camera=relay) as rig:
        alarm_id = await rig.gateway.alarms.raise_alarm("alarm.button", PRESS, BUTTON)
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
        await wait_platform(platform, lambda p: call_states(p) == ["failed"], "the failure")
    (failed,) = kinds(platform, "camera.call")
    assert failed["data"] == {
        "state": "failed",
        "alarm_id": alarm_id,
        "error": "trigger_unavailable",
    }


async def test_a_call_that_rings_forever_is_given_up(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with (
        SimCamera(connect_delay_s=3600) as sim,
        running_gateway(tmp_path, mosquitto, camera=camera(sim, total_budget_s=0.5)) as rig,
    ):
        await rig.gateway.alarms.raise_alarm("alarm.button", PRESS, BUTTON)
        await wait_platform(
            platform, lambda p: call_states(p) == ["requested", "failed"], "given up"
        )
    assert kinds(platform, "camera.call")[-1]["data"]["error"] == "no_answer"
