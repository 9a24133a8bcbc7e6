"""The simulated rig of ``carebed hil run``: a local Mosquitto, the button receiver on a pty,
the voice camera, a watch behind the fake BlueZ, and the real daemon run against them.

Only the source tree has it (``hil.sim`` is never shipped); ``hil.runner`` imports it when a rig
description says ``simulated = true``. Broken parts on request (``fault``): a receiver that never
gets INDICATE, a watch that never receives Alert Confirm.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from pathlib import Path

from drivers.button.codec import Indicate, Message
from drivers.button.pairing import PairingStore
from drivers.watch import codec
from drivers.watch.codec import CareEvent
from hil.rigfile import Rig
from hil.sim.bluez import FakeBluez, WatchSim
from hil.sim.broker import Mosquitto
from hil.sim.camera import SimCamera
from hil.sim.dbus import PrivateSystemBus
from hil.sim.receiver import SimReceiver
from hil.sim.service import SimService

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
HEART_RATE_EVERY_S = 0.5
RESTING_BPM = (70, 72, 75, 73, 71)
NEVER = 1 << 30


class DeafReceiver(SimReceiver):
    """A receiver whose link to the buttons is broken: INDICATE frames never reach it."""

    def _handle(self, message: Message) -> None:
        if isinstance(message, Indicate):
            self.received.remove(message)
            return
        super()._handle(message)


class SimWearer:
    """The senior wearing the simulated watch: a resting heart rate while it is on the wrist."""

    def __init__(self, watch: WatchSim) -> None:
        self.watch = watch
        self._task: asyncio.Task[None] | None = None

    def put_on(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._beat(), name="hil.sim.watch.wear")

    async def take_off(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _beat(self) -> None:
        for bpm in itertools.cycle(RESTING_BPM):
            await self.watch.heart_rate(bpm)
            await asyncio.sleep(HEART_RATE_EVERY_S)


class SimParts(SimService):
    """Every simulated part of ``rig``, started on entering ``async with`` (the gateway last,
    once its devices are there), stopped on leaving it."""

    def __init__(self, rig: Rig, workdir: Path) -> None:
        self.rig = rig
        self.workdir = workdir
        self.broker = Mosquitto(workdir / "mosquitto", persistence=True)
        self.receiver: SimReceiver | None = None
        self.camera: SimCamera | None = None
        self.watch: WatchSim | None = None
        self.wearer: SimWearer | None = None
        self.log_path = workdir / "gateway.log"
        self._bus: PrivateSystemBus | None = None
        self._bluez: FakeBluez | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._stack = contextlib.AsyncExitStack()
        self._alert_seq = 0
        self._config = workdir / "carebed.toml"
        self._env: dict[str, str] = {}

    @property
    def gateway_id(self) -> str:
        return self.rig.gateway.id

    @property
    def config_path(self) -> Path:
        """The daemon's configuration (its control socket is under its state directory)."""
        return self._config

    def receiver_firmware(self) -> str | None:
        if self.receiver is None:
            return None
        major, minor = self.receiver.fw
        return f"{major}.{minor}"

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise

    async def close(self) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        rig = self.rig
        self.workdir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.broker.start)
        self._stack.callback(self.broker.close)
        state = self.workdir / "state"
        config = [
            f'[gateway]\nid = "{rig.gateway.id}"\nstate_dir = "{state}"\n',
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\nplaintext = true\n',
        ]
        if rig.receiver is not None:
            receiver_class = DeafReceiver if rig.receiver.fault == "no_indicate" else SimReceiver
            link = self.workdir / "carebed-button"
            self.receiver = await self._stack.enter_async_context(receiver_class(link_path=link))
            pairing = PairingStore(state / "buttons.json")
            for button in rig.receiver.button_ids():
                pairing.add(button)
            config.append(
                f'[button]\nenabled = true\nport = "{link}"\nreopen_interval_s = 0.1\n'
                f"supervision_window_s = {rig.gateway.supervision_window_s}\n"
                "supervision_check_s = 0.5\n"
            )
        else:
            config.append("[button]\nenabled = false\n")
        if rig.camera is not None:
            self.camera = await self._stack.enter_async_context(SimCamera())
            config.append(
                f'[camera]\nenabled = true\nname = "{rig.camera.name}"\n'
                f'url = "{self.camera.base_url}"\nuser = "{self.camera.user}"\n'
                f'password = "{self.camera.password}"\n'
            )
        env = dict(os.environ)
        if rig.watch is not None:
            self.watch = WatchSim(rig.watch.address)
            if rig.watch.fault == "no_confirm":
                self.watch.fail_next_confirms(NEVER)
            self._bus = await self._stack.enter_async_context(
                PrivateSystemBus(self.workdir / "dbus")
            )
            self._bluez = await self._stack.enter_async_context(
                FakeBluez(self._bus.address, [self.watch])
            )
            env["DBUS_SYSTEM_BUS_ADDRESS"] = self._bus.address
            self.wearer = SimWearer(self.watch)
            self._stack.push_async_callback(self.wearer.take_off)
            config.append(
                f'[watch]\nenabled = true\naddresses = ["{rig.watch.address}"]\n'
                "connect_timeout_s = 5.0\nreconnect_min_s = 0.2\nreconnect_cap_s = 1.0\n"
                "[vitals.intervals]\nheart_rate = 1.0\n"
            )
        else:
            config.append("[watch]\nenabled = false\n")
        self._config.write_text("".join(config), encoding="utf-8")
        self._env = env
        self._stack.push_async_callback(self.stop_gateway)
        await self.start_gateway()
        if self.watch is not None and self.wearer is not None:
            watch = self.watch
            await watch.wait_for(
                lambda w: (
                    w.is_subscribed(codec.CARE_ALERT)
                    and w.is_subscribed(codec.HEART_RATE_MEASUREMENT)
                ),
                START_TIMEOUT_S,
                "the daemon subscribed to the watch",
            )
            self.wearer.put_on()

    # -- the gateway -------------------------------------------------------------------------

    async def start_gateway(self) -> None:
        log = self.log_path.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "run",
                "--config",
                str(self._config),
                stdout=log,
                stderr=log,
                env=self._env,
            )
        finally:
            log.close()
        if self.receiver is not None:
            opened = len(self.receiver.received)
            await self.receiver.wait_for(
                lambda r: len(r.received) > opened, START_TIMEOUT_S, "the daemon opened the port"
            )

    async def stop_gateway(self, *, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def restart_gateway(self) -> None:
        """A crash and a restart: SIGKILL, then the daemon again on the same state."""
        await self.stop_gateway(kill=True)
        await self.start_gateway()

    def gateway_log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- the uplink --------------------------------------------------------------------------

    async def cut_uplink(self) -> None:
        """The broker goes away (orderly: it keeps the suite's session for its return)."""
        await asyncio.to_thread(self.broker.stop)

    async def restore_uplink(self) -> None:
        await asyncio.to_thread(self.broker.start)

    # -- the watch ---------------------------------------------------------------------------

    async def watch_take_off(self) -> None:
        assert self.watch is not None
        assert self.wearer is not None
        await self.wearer.take_off()
        await self.watch.care_alert(CareEvent.TAKEN_OFF, self._next_alert())
        await self.watch.heart_rate(0, contact=False)

    async def watch_put_on(self) -> None:
        assert self.watch is not None
        assert self.wearer is not None
        await self.watch.care_alert(CareEvent.PUT_ON, self._next_alert())
        self.wearer.put_on()

    def _next_alert(self) -> int:
        self._alert_seq += 1
        return self._alert_seq

    async def watch_alert(self, event: CareEvent, watch_time: int) -> int:
        """An SOS or a fall; returns its alert sequence number."""
        assert self.watch is not None
        seq = self._next_alert()
        await self.watch.care_alert(event, seq, watch_time)
        return seq
