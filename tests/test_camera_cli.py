"""``carebed camera test [--call]`` with and without the daemon, against the camera simulator."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hil.sim.broker import Mosquitto
from hil.sim.camera import SimCamera
from hil.sim.platform import PlatformClient
from tests.support.daemon import GatewayProcess, gateway_config
from tests.test_button_cli import carebed


def camera_section(sim: SimCamera, password: str | None = None) -> dict[str, object]:
    return {
        "enabled": True,
        "name": "living",
        "url": sim.base_url,
        "user": sim.user,
        "password": password or sim.password,
        "poll_interval_s": 0.05,
    }


async def test_without_the_daemon_the_camera_is_asked_directly(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async with SimCamera() as sim:
        config = gateway_config(tmp_path, mosquitto, camera=camera_section(sim))
        status, out = await carebed(config, "camera", "test")
        assert status == 0, out
        assert "camera reachable: SimCam 1" in out and "privacy shutter open" in out
        sim.privacy_mode = True
        status, out = await carebed(config, "camera", "test")
        assert status == 1 and "CLOSED" in out
        status, out = await carebed(config, "camera", "test", "--call")
        assert status == 1 and "goes through the daemon" in out
        config = gateway_config(tmp_path, mosquitto, camera=camera_section(sim, "wrong"))
        status, out = await carebed(config, "camera", "test")
        assert status == 1 and "unauthorized" in out
    assert not [r for r in sim.requests if r.method == "POST"]


async def test_a_test_call_through_the_daemon_is_audited(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with SimCamera(connect_delay_s=0.05) as sim:
        config = gateway_config(tmp_path, mosquitto, camera=camera_section(sim))
        daemon = GatewayProcess(config, tmp_path / "gateway.log")
        daemon.start()
        try:
            await asyncio.to_thread(
                platform.wait_for,
                lambda p: any(e["kind"] == "gateway.started" for _, e in p.events()),
                20,
                "the daemon",
            )
            status, out = await carebed(config, "camera", "test", "--call")
            assert status == 0, out
            assert "camera reachable" in out and "test call placed on cam-living" in out
            await asyncio.to_thread(
                platform.wait_for,
                lambda p: any(
                    e["kind"] == "camera.call" and e["data"]["state"] == "started"
                    for _, e in p.events()
                ),
                20,
                "the test call",
            )
        finally:
            daemon.terminate()
    audits = [e for _, e in platform.events() if e["kind"] == "audit.camera_activated"]
    assert [(a["data"]["who"], a["data"]["why"]) for a in audits] == [
        ("installer", "installer test")
    ]
