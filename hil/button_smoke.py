"""Button scenario: a press reaches the platform and calls the camera; the acknowledgement
reaches the senior.

On the simulated rig it starts a local Mosquitto, a simulated receiver on a pseudo-terminal and
the daemon, and checks every step including the receiver's feedback. Against an installed gateway
(``--broker``) a technician presses the real button; the scenario plays the platform, checks the
alarm and acknowledges it, and asks the technician to confirm what the receiver said.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from drivers.button.codec import Pattern
from drivers.button.pairing import PairingStore
from hil import rig
from hil.sim.broker import Mosquitto
from hil.sim.camera import SimCamera
from hil.sim.platform import PlatformClient
from hil.sim.receiver import SimReceiver

BUTTON = 0x00A1B2C3
TIMEOUT_S = 30.0


def _alarms(platform: PlatformClient) -> list[dict[str, object]]:
    return [e for e in rig.events(platform) if e["kind"] == "alarm.button"]


async def _sim_step(sim: SimReceiver, what: str, pattern: int) -> None:
    began = time.monotonic()
    try:
        await sim.wait_for(lambda s: pattern in s.indications(BUTTON), TIMEOUT_S, what)
    except TimeoutError:
        raise SystemExit(f"FAIL {what}: nothing within {TIMEOUT_S:.0f} s") from None
    print(f"ok   {what} ({(time.monotonic() - began) * 1000:.0f} ms)", flush=True)


async def simulated(gw: str) -> None:
    with tempfile.TemporaryDirectory(prefix="carebed-hil-") as tmp:
        workdir = Path(tmp)
        link = workdir / "carebed-button"
        PairingStore(workdir / "state" / "buttons.json").add(BUTTON)
        config = workdir / "carebed.toml"
        with (
            Mosquitto(workdir / "mosquitto", persistence=False) as broker,
            rig.platform(broker, gw) as platform,
        ):
            port = broker.port
            async with SimReceiver(link_path=link) as sim, SimCamera() as camera:
                config.write_text(
                    f'[gateway]\nid = "{gw}"\nstate_dir = "{workdir / "state"}"\n'
                    f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nplaintext = true\n'
                    f'[button]\nenabled = true\nport = "{link}"\nreopen_interval_s = 0.1\n'
                    f'[camera]\nenabled = true\nname = "hil"\nurl = "{camera.base_url}"\n'
                    f'user = "{camera.user}"\npassword = "{camera.password}"\n'
                )
                log = (workdir / "gateway.log").open("wb")
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "gateway",
                    "run",
                    "--config",
                    str(config),
                    stdout=log,
                    stderr=log,
                )
                try:
                    await sim.wait_for(lambda s: bool(s.received), TIMEOUT_S, "port opened")
                    print("ok   the daemon opened the receiver", flush=True)
                    await sim.press(BUTTON)
                    await _sim_step(sim, "senior told: received", Pattern.RECEIVED)
                    await asyncio.to_thread(
                        rig.wait,
                        platform,
                        "alarm.button at the platform",
                        lambda: bool(_alarms(platform)),
                    )
                    await asyncio.to_thread(
                        rig.wait,
                        platform,
                        "the camera call started",
                        lambda: any(
                            e["kind"] == "camera.call" and e["data"]["state"] == "started"
                            for e in rig.events(platform)
                        ),
                    )
                    alarm_id = str(_alarms(platform)[0]["id"])
                    await asyncio.to_thread(platform.ack, gw, [alarm_id], "hil")
                    await _sim_step(sim, "senior told: help is on the way", Pattern.ACKNOWLEDGED)
                    await sim.cancel(BUTTON)
                    await _sim_step(sim, "senior told: cancel accepted", Pattern.CANCEL_ACCEPTED)
                finally:
                    proc.terminate()
                    await proc.wait()
                    log.close()


def hardware(args: argparse.Namespace) -> None:
    with rig.platform_for(args) as platform:
        print("Press the senior's emergency button now.", flush=True)
        rig.wait(platform, "alarm.button at the platform", lambda: bool(_alarms(platform)))
        alarm = _alarms(platform)[0]
        print(f"     {alarm['device']} {alarm['data']}", flush=True)
        platform.ack(args.gateway_id, [str(alarm["id"])], "hil")
        answer = input("Acknowledged. Did the receiver say 'help is on the way'? [y/n] ")
        if answer.strip().lower() != "y":
            raise SystemExit("FAIL the senior was not told that help is on the way")
        print("ok   senior told: help is on the way", flush=True)


def main(argv: list[str] | None = None) -> int:
    return rig.run_device_scenario("python -m hil.button_smoke", __doc__, argv, simulated, hardware)


if __name__ == "__main__":
    raise SystemExit(main())
