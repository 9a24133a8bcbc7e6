"""``make demo``: the gateway with simulated devices, a local Mosquitto and a platform desk.

Nothing needs root or hardware: Mosquitto runs on a free port in a temporary directory, the
simulated watch sends heart rates, the simulated button raises an alarm now and then, and a small
"platform desk" prints what arrives and acknowledges each alarm after a few seconds, so the whole
alarm chain goes by on the screen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway import config, logs
from gateway.app import Gateway, StopRequest
from gateway.events import format_ts

GATEWAY_ID = "gw-demo"
ACK_AFTER_S = 3.0


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
        stamp = time.strftime("%H:%M:%S")
        if msg.topic.endswith("/status"):
            print(f"{stamp}  platform ← status {body['state']}", flush=True)
            return
        for event in body["events"]:
            data = json.dumps(event["data"], separators=(",", ":"))
            print(
                f"{stamp}  platform ← {event['kind']:<26} seq={event['seq']:<5} "
                f"attempt={event['attempt']} device={event['device']} {data}",
                flush=True,
            )
            if event["kind"].startswith("alarm.") and event["kind"] != "alarm.cancelled":
                self.loop.call_soon_threadsafe(self._ack_later, body["gw"], event["id"])

    def _ack_later(self, gw: str, alarm_id: str) -> None:
        self.loop.call_later(ACK_AFTER_S, self._ack, gw, alarm_id)

    def _ack(self, gw: str, alarm_id: str) -> None:
        print(f"{time.strftime('%H:%M:%S')}  platform → ack {alarm_id} (operator desk-1)")
        now = datetime.now(UTC)
        ack = {"v": 1, "ids": [alarm_id], "by": "desk-1", "ts": format_ts(now)}
        self.client.publish(f"carebed/v1/{gw}/down/ack", json.dumps(ack), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _run(
    state_dir: Path, port: int, args: argparse.Namespace, stop_request: StopRequest
) -> int:
    cfg = config.parse(
        {
            "gateway": {"id": GATEWAY_ID, "state_dir": str(state_dir), "heartbeat_s": 30},
            "mqtt": {"host": "127.0.0.1", "port": port, "plaintext": True},
            "sim": {
                "enabled": True,
                "telemetry_interval_s": 2.0,
                "alarm_interval_s": args.alarm_every,
            },
            "logging": {"format": "console"},
        },
        source="demo",
    )
    stop = stop_request.attach()
    desk = PlatformDesk(port, asyncio.get_running_loop())
    if args.seconds is not None:
        asyncio.get_running_loop().call_later(args.seconds, stop.set)
    try:
        return await Gateway(cfg).run(stop)
    finally:
        desk.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drivers.sim.demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--state-dir", type=Path, default=None, help="keep the outbox here")
    parser.add_argument("--alarm-every", type=float, default=12.0, help="seconds between alarms")
    args = parser.parse_args(argv)
    stop_request = StopRequest()
    logs.configure("info", "console")
    print("carebed demo: simulated watch and button, local broker, platform desk. Ctrl-C stops.")
    with tempfile.TemporaryDirectory(prefix="carebed-demo-") as tmp:
        workdir = Path(tmp)
        state_dir = args.state_dir or workdir / "state"
        with local_mosquitto(workdir) as port:
            return asyncio.run(_run(state_dir, port, args, stop_request))


if __name__ == "__main__":
    raise SystemExit(main())
