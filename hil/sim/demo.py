"""``make demo``: the gateway with simulated devices, a local Mosquitto and a platform desk.

Nothing needs root or hardware: Mosquitto runs on a free port in a temporary directory, and so
does a private D-Bus bus with a fake BlueZ on it, through which the gateway's real BLE driver
(bleak) reaches a simulated health watch. The watch sends a heart rate every second and an SOS
now and then; a simulated button receiver on a pseudo-terminal presses the senior's button now
and then (or when you press Enter); a simulated voice camera takes the call each alarm asks for;
and a small "platform desk" prints what arrives and acknowledges each alarm after a few seconds.
What the senior hears from the receiver and feels or reads on the watch (its Alert Confirm
statuses) is printed too, so the whole alarm chain goes by on the screen.

With ``--web-desk`` the platform's reference ingest runs beside it (PostgreSQL in a temporary
directory, ``python -m platformkit.ingest run``) and its alarm desk is served at the URL printed,
with an operator ``demo`` whose password, made for the run, is printed beside it: alarms appear
there live, can be acknowledged there (``--ack-after`` gives the operator time
before the terminal desk does it), and commands can be sent to the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from paho.mqtt.enums import MQTTProtocolVersion

from drivers.button.codec import Indicate, Pattern
from drivers.button.pairing import PairingStore
from drivers.watch.codec import WATCH_EPOCH, AlertConfirmStatus, CareEvent
from gateway.app import config, logs
from gateway.app.daemon import Gateway, StopRequest
from hil.sim.bluez import FakeBluez, WatchSim
from hil.sim.broker import Mosquitto, MosquittoError, free_port
from hil.sim.camera import SimCamera
from hil.sim.dbus import DBUS_DAEMON, PrivateSystemBus
from hil.sim.platform import PlatformClient, Received
from hil.sim.receiver import SimReceiver

GATEWAY_ID = "gw-demo"
DEMO_BUTTON = 0x00A1B2C3
SENIOR_HEARS = {
    Pattern.RECEIVED: "alarm received by the gateway",
    Pattern.ACKNOWLEDGED: "help is on the way",
    Pattern.NOT_DELIVERED: "not delivered yet, still trying",
    Pattern.CANCEL_ACCEPTED: "cancel accepted",
}
DEMO_WATCH = "C0:FF:EE:00:00:01"
WATCH_TELLS: dict[int, str] = {
    AlertConfirmStatus.RECEIVED: "senior's watch vibrates: alarm received",
    AlertConfirmStatus.ACKNOWLEDGED: "senior's watch shows: help is on the way",
    AlertConfirmStatus.NOT_DELIVERED: "senior's watch shows: not delivered yet, still trying",
}
ACK_AFTER_S = 3.0
HEART_RATE_EVERY_S = 1.0
BLEAK_CLOSE_TIMEOUT_S = 5.0
WEB_DESK_START_TIMEOUT_S = 60.0
DESK_OPERATOR = "demo"  # the alarm desk's operator; a password is made for each run
IDLE_WAIT_S = 3600.0  # a helper waiting this long for the next frame or confirm just waits again


def _show(text: str) -> None:
    """One write per line: the platform desk prints from paho's thread, the rest from the loop."""
    sys.stdout.write(f"{time.strftime('%H:%M:%S')}  {text}\n")
    sys.stdout.flush()


class PlatformDesk:
    """Prints what the platform receives and acknowledges alarms like an operator would."""

    def __init__(
        self, broker: Mosquitto, loop: asyncio.AbstractEventLoop, ack_after_s: float = ACK_AFTER_S
    ) -> None:
        self.loop = loop
        self.ack_after_s = ack_after_s
        self.client = PlatformClient(
            broker,
            client_id="demo-platform-desk",
            protocol=MQTTProtocolVersion.MQTTv311,
            session_expiry_s=0,
            on_received=self._on_received,
        )

    def _on_received(self, msg: Received) -> None:
        body = msg.payload
        if body is None:
            return
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
        self.loop.call_later(self.ack_after_s, self._ack, gw, alarm_id)

    def _ack(self, gw: str, alarm_id: str) -> None:
        _show(f"platform → ack {alarm_id} (operator desk-1)")
        self.client.ack(gw, [alarm_id], "desk-1", wait=False)  # the loop must not block

    def close(self) -> None:
        self.client.close()


async def _senior(sim: SimReceiver) -> None:
    """Print what the receiver tells the senior, and press the button now and then."""
    shown = 0

    def more(seen: int) -> Callable[[SimReceiver], bool]:
        return lambda s: len(s.received) > seen

    while True:
        with contextlib.suppress(TimeoutError):  # nothing for IDLE_WAIT_S: wait again
            await sim.wait_for(more(shown), IDLE_WAIT_S, "a frame")
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


async def _wrist(watch: WatchSim) -> None:
    """Print what the watch tells the senior: each Alert Confirm the gateway writes to it."""
    shown = 0

    def more(seen: int) -> Callable[[WatchSim], bool]:
        return lambda w: len(w.confirms) > seen

    while True:
        with contextlib.suppress(TimeoutError):  # nothing for IDLE_WAIT_S: wait again
            await watch.wait_for(more(shown), IDLE_WAIT_S, "an alert confirm")
        for _alert_seq, status in watch.confirms[shown:]:
            _show(WATCH_TELLS.get(status, f"senior's watch: status {status:#04x}"))
        shown = len(watch.confirms)


async def _heart(watch: WatchSim) -> None:
    """A heart rate every second, wandering like a resting senior's (nothing is sent, and
    nothing is lost, while the gateway is not subscribed)."""
    rng = random.Random()
    bpm = 72
    while True:
        bpm = max(58, min(96, bpm + rng.randint(-2, 2)))
        await watch.heart_rate(bpm)
        await asyncio.sleep(HEART_RATE_EVERY_S)


async def _sos(watch: WatchSim, every_s: float) -> None:
    """The senior holds the watch's SOS key now and then: a new alert_seq each time, and the
    watch's clock set (seconds since 2000), as a real watch sends them."""
    alert_seq = 0
    while True:
        await asyncio.sleep(every_s)
        alert_seq = alert_seq % 0xFF + 1
        watch_time = int((datetime.now(UTC) - WATCH_EPOCH).total_seconds())
        _show("senior holds the watch's SOS key")
        await watch.care_alert(CareEvent.SOS, alert_seq, watch_time)


def _press_on_enter(sim: SimReceiver, loop: asyncio.AbstractEventLoop) -> None:
    if not sys.stdin.isatty():
        return

    def on_line() -> None:
        sys.stdin.readline()
        _show("senior presses the button")
        loop.create_task(sim.press(DEMO_BUTTON))

    loop.add_reader(sys.stdin.fileno(), on_line)


async def _run(
    workdir: Path,
    state_dir: Path,
    broker: Mosquitto,
    args: argparse.Namespace,
    stop_request: StopRequest,
) -> int:
    link = workdir / "carebed-button"
    PairingStore(state_dir / "buttons.json").add(DEMO_BUTTON)
    stop = stop_request.attach()
    loop = asyncio.get_running_loop()
    if args.seconds is not None:
        loop.call_later(args.seconds, stop.set)
    watch = WatchSim(DEMO_WATCH)
    async with PrivateSystemBus(workdir / "dbus") as bus:
        # bleak (in the gateway, this process) finds the fake BlueZ on the private bus
        previous_bus = os.environ.get("DBUS_SYSTEM_BUS_ADDRESS")
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
        try:
            async with (
                FakeBluez(bus.address, [watch]),
                SimReceiver(link_path=link) as sim,
                SimCamera(call_duration_s=4.0) as camera,
            ):
                return await _gateway(
                    args,
                    stop,
                    state_dir=state_dir,
                    broker=broker,
                    link=link,
                    camera=camera,
                    sim=sim,
                    watch=watch,
                )
        finally:
            if previous_bus is None:
                os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
            else:
                os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = previous_bus


async def _gateway(
    args: argparse.Namespace,
    stop: asyncio.Event,
    *,
    state_dir: Path,
    broker: Mosquitto,
    link: Path,
    camera: SimCamera,
    sim: SimReceiver,
    watch: WatchSim,
) -> int:
    loop = asyncio.get_running_loop()
    cfg = config.parse(
        {
            "gateway": {"id": GATEWAY_ID, "state_dir": str(state_dir), "heartbeat_s": 30},
            "mqtt": {"host": broker.host, "port": broker.port, "plaintext": True},
            "button": {"enabled": True, "port": str(link)},
            "camera": {
                "enabled": True,
                "name": "living",
                "url": camera.base_url,
                "user": camera.user,
                "password": camera.password,
            },
            "watch": {
                "enabled": True,
                "addresses": [DEMO_WATCH],
                "connect_timeout_s": 10.0,
                "reconnect_min_s": 0.5,
                "reconnect_cap_s": 5.0,
            },
            "vitals": {"intervals": {"heart_rate": 5.0}},
            "logging": {"format": "console"},
        },
        source="demo",
    )
    # returns once subscribed
    desk = await asyncio.to_thread(PlatformDesk, broker, loop, args.ack_after)
    helpers = [
        loop.create_task(_senior(sim), name="demo.senior"),
        loop.create_task(_presses(sim, args.alarm_every), name="demo.presses"),
        loop.create_task(_wrist(watch), name="demo.wrist"),
        loop.create_task(_heart(watch), name="demo.heart"),
        loop.create_task(_sos(watch, args.sos_every), name="demo.sos"),
    ]
    _press_on_enter(sim, loop)
    try:
        return await Gateway(cfg).run(stop)
    finally:
        if sys.stdin.isatty():
            loop.remove_reader(sys.stdin.fileno())
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        await _close_bleak_bus()
        desk.close()


async def _close_bleak_bus() -> None:
    """bleak keeps one BlueZ manager, with its own bus connection, per event loop: close it
    while the private bus still runs, so that nothing is left talking to a bus going away."""
    from bleak.backends.bluezdbus import manager as bluez_manager  # noqa: PLC0415

    instance = bluez_manager._global_instances.pop(asyncio.get_running_loop(), None)
    if instance is None or instance._bus is None:
        return
    instance._bus.disconnect()
    with contextlib.suppress(Exception):  # it raises what ended the connection, if anything
        async with asyncio.timeout(BLEAK_CLOSE_TIMEOUT_S):
            await instance._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    if instance._bus_watcher_task is not None:
        async with asyncio.timeout(BLEAK_CLOSE_TIMEOUT_S):
            await instance._bus_watcher_task


@contextlib.contextmanager
def _web_desk(workdir: Path, broker: Mosquitto, port: int) -> Iterator[None]:
    """PostgreSQL and the reference ingest with its desk, as child processes, for the demo."""
    from hil.sim.postgres import Postgres, PostgresError  # noqa: PLC0415 - only with --web-desk

    try:
        database = Postgres(durable=False)
        database.start()
    except PostgresError as exc:
        raise SystemExit(f"carebed demo: {exc}") from None
    if port == 0 or not _port_free(port):
        port = free_port()
    # One operator with a password made for this run, printed with the desk's address.
    operators, password = workdir / "desk-operators", secrets.token_urlsafe(9)
    added = subprocess.run(
        [
            *(sys.executable, "-m", "platformkit.ingest", "operator", "add", DESK_OPERATOR),
            *("--operators", str(operators)),
        ],
        input=f"{password}\n",
        capture_output=True,
        text=True,
        timeout=WEB_DESK_START_TIMEOUT_S,
        check=False,
    )
    if added.returncode != 0:
        database.close()
        raise SystemExit(f"carebed demo: no desk operator: {added.stderr.strip()}")
    log = (workdir / "ingest.log").open("ab")
    ingest = subprocess.Popen(
        [
            *(sys.executable, "-m", "platformkit.ingest", "--dsn", database.dsn),
            *("--broker", f"{broker.host}:{broker.port}", "--plaintext"),
            *("run", "--workers", "2", "--operators", str(operators)),
            *("--http-port", str(port), "--gap-grace-s", "10"),
        ],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    try:
        # The workers' sessions must exist before the gateway's first events, or those would
        # never reach them (and show as a gap).
        deadline = time.monotonic() + WEB_DESK_START_TIMEOUT_S
        subscribed = [
            f"platform-ingest-{n} 1 $share/carebed-ingest/carebed/v1/+/up/cmdres" for n in (1, 2)
        ]
        while not all(line in broker.log_text() for line in subscribed):
            if ingest.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"carebed demo: the ingest did not start: {workdir}/ingest.log")
            time.sleep(0.1)
        print(f"alarm desk: http://127.0.0.1:{port}/  (ingest log: {workdir / 'ingest.log'})")
        print(f"  log in as {DESK_OPERATOR}, password {password}")
        yield
    finally:
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(timeout=15)
        except subprocess.TimeoutExpired:
            ingest.kill()
            ingest.wait()
        log.close()
        database.close()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.sim.demo", description=__doc__)
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--state-dir", type=Path, default=None, help="keep the outbox here")
    parser.add_argument("--alarm-every", type=float, default=20.0, help="seconds between presses")
    parser.add_argument(
        "--sos-every", type=float, default=30.0, help="seconds between SOS alerts from the watch"
    )
    parser.add_argument(
        "--ack-after", type=float, default=ACK_AFTER_S, help="seconds before the desk acks"
    )
    parser.add_argument(
        "--web-desk", action="store_true", help="run the reference ingest and its alarm desk"
    )
    parser.add_argument("--web-port", type=int, default=8080, help="the alarm desk's port")
    args = parser.parse_args(argv)
    stop_request = StopRequest()
    logs.configure("info", "console")
    print(
        "carebed demo: simulated watch (over BLE) and button receiver, local broker, "
        "platform desk.\n"
        "Press Enter to press the senior's button; Ctrl-C stops."
    )
    if shutil.which(DBUS_DAEMON) is None:
        raise SystemExit(
            f"carebed demo: {DBUS_DAEMON} is missing (the simulated watch's private bus); "
            "install it: apt-get install dbus-daemon"
        )
    with tempfile.TemporaryDirectory(prefix="carebed-demo-") as tmp:
        workdir = Path(tmp)
        state_dir = args.state_dir or workdir / "state"
        broker = Mosquitto(workdir / "mosquitto", persistence=False)
        try:
            broker.start()
        except MosquittoError as exc:
            raise SystemExit(f"carebed demo: {exc}") from None
        try:
            with contextlib.ExitStack() as web:
                if args.web_desk:
                    web.enter_context(_web_desk(workdir, broker, args.web_port))
                return asyncio.run(_run(workdir, state_dir, broker, args, stop_request))
        finally:
            broker.close()


if __name__ == "__main__":
    raise SystemExit(main())
