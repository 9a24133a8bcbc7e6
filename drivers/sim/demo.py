"""``make demo``: the gateway with simulated devices, a local Mosquitto and a platform desk.

Nothing needs root or hardware: Mosquitto runs on a free port in a temporary directory, the
simulated watch sends heart rates, a simulated button receiver on a pseudo-terminal presses the
senior's button now and then (or when you press Enter), a simulated voice camera takes the call
each alarm asks for, and a small "platform desk" prints what
arrives and acknowledges each alarm after a few seconds. What the senior hears from the receiver
is printed too, so the whole alarm chain goes by on the screen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from drivers.button.codec import Indicate, Pattern
from drivers.button.pairing import PairingStore
from drivers.sim.camera import SimCamera
from drivers.sim.receiver import SimReceiver
from gateway import config, logs
from gateway.app import Gateway, StopRequest
from gateway.events import format_ts

GATEWAY_ID = "gw-demo"
DEMO_BUTTON = 0x00A1B2C3
SENIOR_HEARS = {
    Pattern.RECEIVED: "alarm received by the gateway",
    Pattern.ACKNOWLEDGED: "help is on the way",
    Pattern.NOT_DELIVERED: "not delivered yet, still trying",
    Pattern.CANCEL_ACCEPTED: "cancel accepted",
}
ACK_AFTER_S = 3.0


def _show(text: str) -> None:
    """One write per line: the platform desk prints from paho's thread, the rest from the loop."""
    sys.stdout.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
    sys.stdout.flush()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def local_mosquitto(workdir: Path) -> Iterator[int]:
    """A Mosquitto of our own on 127.0.0.1 and a free port (never the system broker)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"log_dest file {workdir / 'mosquitto.log'}\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"mosquitto did not start; see {workdir / 'mosquitto.log'}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class PlatformDesk:
    """Prints what the platform receives and acknowledges alarms like an operator would."""

    def __init__(self, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="demo-platform-desk")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("carebed/v1/+/up/#", qos=1)
        self.client.subscribe("carebed/v1/+/status", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        if msg.topic.endswith("/status"):
            _show(f"platform ← status {body['state']}")
            return
        for event in body["events"]:
            data = json.dumps(event["data"], separators=(",", ":"))
            _show(
                f"platform ← {event['kind']:<26} seq={event['seq']:<5} "
                f"attempt={event['attempt']} device={event['device']} {data}"
            )
            if event["kind"].startswith("alarm.") and event["kind"] != "alarm.cancelled":
                self.loop.call_soon_threadsafe(self._ack_later, body["gw"], event["id"])

    def _ack_later(self, gw: str, alarm_id: str) -> None:
        self.loop.call_later(ACK_AFTER_S, self._ack, gw, alarm_id)

    def _ack(self, gw: str, alarm_id: str) -> None:
        _show(f"platform → ack {alarm_id} (operator desk-1)")
        now = datetime.now(UTC)
        ack = {"v": 1, "ids": [alarm_id], "by": "desk-1", "ts": format_ts(now)}
        self.client.publish(f"carebed/v1/{gw}/down/ack", json.dumps(ack), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _senior(sim: SimReceiver) -> None:
    """Print what the receiver tells the senior, and press the button now and then."""
    shown = 0

    def more(seen: int) -> Callable[[SimReceiver], bool]:
        return lambda s: len(s.received) > seen

    while True:
        await sim.wait_for(more(shown), 3600, "a frame")
        for message in sim.received[shown:]:
            if isinstance(message, Indicate) and message.button_id == DEMO_BUTTON:
                hears = SENIOR_HEARS.get(Pattern(message.pattern), f"pattern {message.pattern}")
                _show(f"senior hears: {hears}")
        shown = len(sim.received)


async def _presses(sim: SimReceiver, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        _show("senior presses the button")
        await sim.press(DEMO_BUTTON)


def _press_on_enter(sim: SimReceiver, loop: asyncio.AbstractEventLoop) -> None:
    if not sys.stdin.isatty():
        return

    def on_line() -> None:
        sys.stdin.readline()
        _show("senior presses the button")
        loop.create_task(sim.press(DEMO_BUTTON))

    loop.add_reader(sys.stdin.fileno(), on_line)


async def _run(
    workdir: Path, state_dir: Path, port: int, args: argparse.Namespace, stop_request: StopRequest
) -> int:
    link = workdir / "carebed-button"
    PairingStore(state_dir / "buttons.json").add(DEMO_BUTTON)
    stop = stop_request.attach()
    loop = asyncio.get_running_loop()
    desk = PlatformDesk(port, loop)
    if args.seconds is not None:
        loop.call_later(args.seconds, stop.set)
    async with SimReceiver(link_path=link) as sim, SimCamera(call_duration_s=4.0) as camera:
        cfg = config.parse(
            {
                "gateway": {"id": GATEWAY_ID, "state_dir": str(state_dir), "heartbeat_s": 30},
                "mqtt": {"host": "127.0.0.1", "port": port, "plaintext": True},
                "button": {"enabled": True, "port": str(link)},
                "camera": {
                    "enabled": True,
                    "name": "living",
                    "url": camera.base_url,
                    "user": camera.user,
                    "password": camera.password,
                },
                "sim": {"enabled": True, "telemetry_interval_s": 2.0},
                "logging": {"format": "console"},
            },
            source="demo",
        )
        helpers = [
            loop.create_task(_senior(sim), name="demo.senior"),
            loop.create_task(_presses(sim, args.alarm_every), name="demo.presses"),
        ]
        _press_on_enter(sim, loop)
        try:
            return await Gateway(cfg).run(stop)
        finally:
            for task in helpers:
                task.cancel()
            desk.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drivers.sim.demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--state-dir", type=Path, default=None, help="keep the outbox here")
    parser.add_argument("--alarm-every", type=float, default=20.0, help="seconds between presses")
    args = parser.parse_args(argv)
    stop_request = StopRequest()
    logs.configure("info", "console")
    print(
        "carebed demo: simulated watch and button receiver, local broker, platform desk.\n"
        "Press Enter to press the senior's button; Ctrl-C stops."
    )
    with tempfile.TemporaryDirectory(prefix="carebed-demo-") as tmp:
        workdir = Path(tmp)
        state_dir = args.state_dir or workdir / "state"
        with local_mosquitto(workdir) as port:
            return asyncio.run(_run(workdir, state_dir, port, args, stop_request))


if __name__ == "__main__":
    raise SystemExit(main())
