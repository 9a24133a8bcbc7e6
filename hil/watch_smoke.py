"""Watch scenario: heart rate reaches the platform; an SOS is one alarm, confirmed to the watch
and acknowledged; taking the watch off is reported.

On the simulated rig it starts a local Mosquitto, a private D-Bus bus with the fake BlueZ and a
simulated watch on it, and the daemon (its bleak finds the bus through
``DBUS_SYSTEM_BUS_ADDRESS``), and checks every step including the Alert Confirm statuses the
watch receives. Against an installed gateway (``--broker``) a technician wears a paired watch,
holds its SOS key and takes it off; the scenario plays the platform, checks the events and
acknowledges the alarm, and asks the technician to confirm what the watch showed.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from drivers.watch import codec
from drivers.watch.codec import WATCH_EPOCH, AlertConfirmStatus, CareEvent
from hil import rig
from hil.sim.bluez import FakeBluez, WatchSim
from hil.sim.broker import Mosquitto
from hil.sim.dbus import PrivateSystemBus
from hil.sim.platform import PlatformClient

ADDRESS = "C0:FF:EE:00:00:01"
DEVICE = codec.device_id(ADDRESS)
TIMEOUT_S = 30.0
HEART_RATE_EVERY_S = 0.5  # the simulated watch; a real one notifies about once a second
SOS_SEQ = 1
TAKEN_OFF_SEQ = 2
# On an installed gateway: telemetry.vitals come once per [vitals.intervals] heart_rate (60 s by
# default), and a person acts between the steps.
VITALS_WAIT_S = 150.0
PERSON_WAIT_S = 90.0


def _events(
    platform: PlatformClient, kind: str, device: str | None = None
) -> list[dict[str, object]]:
    """The events of ``kind`` (from ``device``, or from any watch) the platform received."""
    return [
        e
        for e in rig.events(platform)
        if e["kind"] == kind
        and (e["device"] == device if device else str(e["device"]).startswith("watch-"))
    ]


def _heart_rates(platform: PlatformClient, device: str | None = None) -> list[dict[str, object]]:
    return [
        e
        for e in _events(platform, "telemetry.vitals", device)
        if isinstance(e["data"], dict) and "heart_rate" in e["data"]
    ]


def _told(status: int) -> Callable[[WatchSim], bool]:
    return lambda w: (SOS_SEQ, status) in w.confirms


async def _sim_step(what: str, step: Awaitable[None]) -> None:
    began = time.monotonic()
    try:
        await step
    except TimeoutError:
        raise SystemExit(f"FAIL {what}: nothing within {TIMEOUT_S:.0f} s") from None
    print(f"ok   {what} ({(time.monotonic() - began) * 1000:.0f} ms)", flush=True)


async def _platform_step(platform: PlatformClient, what: str, check: Callable[[], bool]) -> None:
    """``rig.wait`` off the event loop: the fake BlueZ runs on it."""
    await asyncio.to_thread(rig.wait, platform, what, check)


async def _wear(watch: WatchSim) -> None:
    """A resting heart rate, as long as the watch is on the wrist."""
    for bpm in itertools.cycle((70, 72, 75, 73, 71)):
        await watch.heart_rate(bpm)
        await asyncio.sleep(HEART_RATE_EVERY_S)


def _config(workdir: Path, gw: str, port: int) -> Path:
    config = workdir / "carebed.toml"
    config.write_text(
        f'[gateway]\nid = "{gw}"\nstate_dir = "{workdir / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nplaintext = true\n'
        f'[watch]\nenabled = true\naddresses = ["{ADDRESS}"]\nconnect_timeout_s = 5.0\n'
        "reconnect_min_s = 0.2\nreconnect_cap_s = 1.0\n"
        "[vitals.intervals]\nheart_rate = 1.0\n"
    )
    return config


async def _scenario(watch: WatchSim, platform: PlatformClient, gw: str) -> None:
    await _sim_step(
        "the daemon connected to the watch",
        watch.wait_for(
            lambda w: (
                w.is_subscribed(codec.CARE_ALERT) and w.is_subscribed(codec.HEART_RATE_MEASUREMENT)
            ),
            TIMEOUT_S,
            "subscribed",
        ),
    )
    wearing = asyncio.create_task(_wear(watch), name="hil.watch.wear")
    try:
        await _platform_step(
            platform,
            "heart rate at the platform as telemetry.vitals",
            lambda: bool(_heart_rates(platform, DEVICE)),
        )
        watch_time = int((datetime.now(UTC) - WATCH_EPOCH).total_seconds())
        await watch.care_alert(CareEvent.SOS, SOS_SEQ, watch_time)
        await _platform_step(
            platform,
            "alarm.watch_sos at the platform",
            lambda: bool(_events(platform, "alarm.watch_sos", DEVICE)),
        )
        await _sim_step(
            "watch told: received (0x01)",
            watch.wait_for(_told(AlertConfirmStatus.RECEIVED), TIMEOUT_S, "0x01"),
        )
        alarm_id = str(_events(platform, "alarm.watch_sos", DEVICE)[0]["id"])
        await asyncio.to_thread(platform.ack, gw, [alarm_id], "hil")
        await _sim_step(
            "watch told: help is on the way (0x02)",
            watch.wait_for(_told(AlertConfirmStatus.ACKNOWLEDGED), TIMEOUT_S, "0x02"),
        )
    finally:
        wearing.cancel()
        await asyncio.gather(wearing, return_exceptions=True)
    await watch.care_alert(CareEvent.TAKEN_OFF, TAKEN_OFF_SEQ)
    await watch.heart_rate(0, contact=False)
    await _platform_step(
        platform,
        "device.not_worn at the platform",
        lambda: bool(_events(platform, "device.not_worn", DEVICE)),
    )
    # device.not_worn came after the SOS: a second alarm for it would have been raised before.
    _one_alarm(platform, DEVICE)


def _one_alarm(platform: PlatformClient, device: str) -> None:
    alarms = _events(platform, "alarm.watch_sos", device)
    if len(alarms) != 1:
        raise SystemExit(f"FAIL one SOS gave {len(alarms)} alarm.watch_sos")
    print("ok   one alarm.watch_sos for one SOS", flush=True)


async def simulated(gw: str) -> None:
    with tempfile.TemporaryDirectory(prefix="carebed-hil-") as tmp:
        workdir = Path(tmp)
        with (
            Mosquitto(workdir / "mosquitto", persistence=False) as broker,
            rig.platform(broker, gw) as platform,
        ):
            watch = WatchSim(ADDRESS)
            async with (
                PrivateSystemBus(workdir / "dbus") as bus,
                FakeBluez(bus.address, [watch]),
            ):
                config = _config(workdir, gw, broker.port)
                log_path = workdir / "gateway.log"
                log = log_path.open("wb")
                proc = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "gateway",
                    "run",
                    "--config",
                    str(config),
                    stdout=log,
                    stderr=log,
                    env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": bus.address},
                )
                try:
                    await _scenario(watch, platform, gw)
                except SystemExit:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    print(f"---- the daemon's log (end)\n{tail}", file=sys.stderr)
                    raise
                finally:
                    proc.terminate()
                    await proc.wait()
                    log.close()


def _confirm(question: str, failure: str) -> None:
    if input(f"{question} [y/n] ").strip().lower() != "y":
        raise SystemExit(f"FAIL {failure}")


def hardware(args: argparse.Namespace) -> None:
    with rig.platform_for(args) as platform:
        print(
            "Wear the paired watch (or put it on the senior's wrist) within a few metres of the "
            f"gateway. Its heart rate should reach the platform within {VITALS_WAIT_S:.0f} s.",
            flush=True,
        )
        rig.wait(
            platform,
            "heart rate at the platform as telemetry.vitals",
            lambda: bool(_heart_rates(platform)),
            VITALS_WAIT_S,
        )
        device = str(_heart_rates(platform)[0]["device"])
        print(f"     {device}", flush=True)
        print("Hold the SOS key on the watch now.", flush=True)
        rig.wait(
            platform,
            "alarm.watch_sos at the platform",
            lambda: bool(_events(platform, "alarm.watch_sos", device)),
            PERSON_WAIT_S,
        )
        alarm = _events(platform, "alarm.watch_sos", device)[0]
        print(f"     {alarm['device']} {alarm['data']}", flush=True)
        _confirm("Did the watch vibrate (alarm received)?", "the watch did not confirm the SOS")
        print("ok   watch told: received", flush=True)
        platform.ack(args.gateway_id, [str(alarm["id"])], "hil")
        _confirm(
            "Acknowledged. Does the watch show 'help is on the way'?",
            "the wearer was not told that help is on the way",
        )
        print("ok   watch told: help is on the way", flush=True)
        print("Take the watch off the wrist now.", flush=True)
        rig.wait(
            platform,
            "device.not_worn at the platform",
            lambda: bool(_events(platform, "device.not_worn", device)),
            PERSON_WAIT_S,
        )
        _one_alarm(platform, device)
        print("Done: put the watch back on.", flush=True)


def main(argv: list[str] | None = None) -> int:
    return rig.run_device_scenario("python -m hil.watch_smoke", __doc__, argv, simulated, hardware)


if __name__ == "__main__":
    raise SystemExit(main())
