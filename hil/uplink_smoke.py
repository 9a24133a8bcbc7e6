"""Uplink smoke scenario: status, gateway.started, ping and a test alarm, end to end.

On the simulated rig it starts a local Mosquitto and the daemon with simulated devices; against
an installed gateway it only plays the platform (``--broker``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from hil.sim.demo import local_mosquitto

STEP_TIMEOUT_S = 30.0


class Platform:
    """The platform's side: records what the gateway sends, sends commands."""

    def __init__(self, host: str, port: int, gw: str, tls: ssl.SSLContext | None) -> None:
        self.gw = gw
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hil-platform-{gw}")
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.on_message = self._on_message
        self.client.connect(host, port)
        self.client.subscribe(f"carebed/v1/{gw}/up/#", qos=1)
        self.client.subscribe(f"carebed/v1/{gw}/status", qos=1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, json.loads(msg.payload)))
            self._cond.notify_all()

    def events(self) -> list[dict[str, Any]]:
        with self._cond:
            return [e for topic, body in self.messages if "/up/" in topic for e in body["events"]]

    def wait(
        self, what: str, check: Callable[[], bool], timeout_s: float = STEP_TIMEOUT_S
    ) -> float:
        began = time.monotonic()
        with self._cond:
            if not self._cond.wait_for(check, timeout_s):
                raise SystemExit(f"FAIL {what}: nothing within {timeout_s:.0f} s")
        took = time.monotonic() - began
        print(f"ok   {what} ({took * 1000:.0f} ms)", flush=True)
        return took

    def command(self, name: str) -> None:
        body = {"v": 1, "id": f"hil-{name}-{time.time_ns()}", "name": name, "args": {}}
        self.client.publish(f"carebed/v1/{self.gw}/down/cmd", json.dumps(body), qos=1)

    def ack(self, alarm_id: object) -> None:
        """Acknowledge an alarm, as the platform's alarm desk does."""
        body = {"v": 1, "ids": [alarm_id], "by": "hil", "ts": None}
        self.client.publish(f"carebed/v1/{self.gw}/down/ack", json.dumps(body), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def simulated_gateway(workdir: Path, port: int, gw: str) -> Iterator[None]:
    config = workdir / "carebed.toml"
    config.write_text(
        f'[gateway]\nid = "{gw}"\nstate_dir = "{workdir / "state"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nplaintext = true\n'
        "[sim]\nenabled = true\ntelemetry_interval_s = 1.0\nalarm_interval_s = 2.0\n"
    )
    log = (workdir / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)], stdout=log, stderr=log
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        log.close()


def scenario(platform: Platform) -> None:
    def online() -> bool:
        return any(
            t.endswith("/status") and b.get("state") == "online" for t, b in platform.messages
        )

    platform.wait("status online", online)
    platform.command("ping")
    platform.wait(
        "ping answered",
        lambda: any(
            e["kind"] == "cmd.result" and e["data"]["result"] == {"pong": True}
            for e in platform.events()
        ),
    )
    platform.wait(
        "an alarm arrives", lambda: any(e["kind"].startswith("alarm.") for e in platform.events())
    )


def parse_args(prog: str, doc: str | None, argv: list[str] | None) -> argparse.Namespace:
    """The options every scenario takes: simulated rig by default, a real broker with --broker."""
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--broker", help="HOST:PORT of the broker an installed gateway uses")
    parser.add_argument("--gateway-id", default="gw-hil")
    parser.add_argument("--ca", type=Path, help="the platform CA certificate")
    parser.add_argument("--cert", type=Path, help="a platform-side client certificate")
    parser.add_argument("--key", type=Path, help="its key")
    return parser.parse_args(argv)


def platform_for(args: argparse.Namespace) -> Platform:
    """The platform's side on the broker that ``--broker`` names."""
    host, _, port = args.broker.rpartition(":")
    tls = None
    if args.ca:
        tls = ssl.create_default_context(cafile=str(args.ca))
        if args.cert:
            tls.load_cert_chain(str(args.cert), str(args.key) if args.key else None)
    return Platform(host, int(port), args.gateway_id, tls)


def run_device_scenario(
    prog: str,
    doc: str | None,
    argv: list[str] | None,
    simulated: Callable[[str], Coroutine[Any, Any, None]],
    hardware: Callable[[argparse.Namespace], None],
) -> int:
    """A device scenario's command line: on the simulated rig, or with a person at a real
    gateway when ``--broker`` is given."""
    args = parse_args(prog, doc, argv)
    if args.broker:
        hardware(args)
    else:
        asyncio.run(simulated(args.gateway_id))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args("python -m hil.uplink_smoke", __doc__, argv)
    if args.broker:
        platform = platform_for(args)
        try:
            scenario(platform)
        finally:
            platform.close()
        return 0
    with tempfile.TemporaryDirectory(prefix="carebed-hil-") as tmp:
        workdir = Path(tmp)
        with local_mosquitto(workdir) as port:
            platform = Platform("127.0.0.1", port, args.gateway_id, None)
            try:
                with simulated_gateway(workdir, port, args.gateway_id):
                    scenario(platform)
            finally:
                platform.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
