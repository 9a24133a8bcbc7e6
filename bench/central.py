"""The watch's central as a child process of the watch bench: the real gateway, or plain bleak.

The simulated watch (``hil.sim.bluez.WatchSim``) and the fake BlueZ run in the bench's own
process; this process reaches them through ``DBUS_SYSTEM_BUS_ADDRESS``, as bleak on a gateway
reaches BlueZ, in an event loop (and on a CPU) of its own.

``--role gateway``: the real ``Gateway`` (outbox, uplink, supervisor and the ``[watch]`` link
to ``--address``), on a plain-TCP broker at 127.0.0.1:``--port``. Each Care Alert SOS becomes
``alarm.watch_sos``, stored with its fsync under the alert's key, then Alert Confirm 0x01 goes
back to the watch (the alert is written to ``watches.json`` after): what the bench times.

``--role bleak``: the baseline, the transport's own round trip. A plain ``BleakClient``
subscribes to Care Alert only and, in the notification callback, starts writing Alert Confirm
0x01 (with response) for the notified ``alert_seq`` at once: nothing is stored, parsed or sent on.

With ``--button-port`` the gateway's ``[button]`` receiver link is enabled too, on the pty of a
simulated receiver (``bench.presser``). With ``--idle-s`` the gateway, once linked, is left alone
for that long and reports its idle cost: CPU time and RSS over the idle window, and how long it
took to be online (uplink connected) and to have the watch linked, from ``--spawned-ns`` (when the
bench started the process) and from ``Gateway.run``.

Protocol: JSON lines on stdout; the logs go to ``--log`` (gateway) or stderr.

- out ``linked`` once the central is connected and subscribed to Care Alert;
- out ``idle`` (``--idle-s`` only) after the idle window;
- in any line (or end of file): stop (the gateway shuts down, the client disconnects);
- out ``result``: CPU time, what was written or counted.
"""

# ruff: noqa: E402 - the development-only packages are hidden before anything imports structlog
from __future__ import annotations

import sys

# The gateway's process holds the product's dependencies only (requirements.lock), as on a
# gateway. The development environment also has rich (for import-linter), which structlog
# imports whenever it is installed: 4-5 MiB of RSS that no gateway carries (docs/PERFORMANCE.md).
DEV_ONLY_MODULES = ("rich",)
for _name in DEV_ONLY_MODULES:
    sys.modules[_name] = None  # type: ignore[assignment]  # "import rich" raises ImportError

import argparse
import asyncio
import threading
from pathlib import Path
from typing import Any

from bleak import BleakClient, BleakScanner
from bleak.backends.characteristic import BleakGATTCharacteristic

from bench.common import (
    BOOT_ID,
    cpu_seconds,
    emit,
    gateway_config,
    now_ns,
    proc_status_kb,
    run_child,
)
from drivers.watch.codec import ALERT_CONFIRM, CARE_ALERT, AlertConfirmStatus
from gateway.app.daemon import Gateway
from gateway.app.sdnotify import SystemdNotifier
from gateway.core.clock import SystemClock

START_TIMEOUT_S = 60.0
POLL_S = 0.005
WRITE_TIMEOUT_S = 10.0
# No Alert Confirm 0x03 ("not delivered yet": no acknowledgement in time) during a run: the bench's
# platform does not acknowledge, and a 0x03 write would share the link with the 0x01 writes timed.
ACK_TIMEOUT_S = 3600.0


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Any line (or end of file) on stdin asks the central to stop."""
    sys.stdin.readline()
    loop.call_soon_threadsafe(stop.set)


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_watch_stdin, args=(loop, stop), daemon=True).start()
    return stop


async def run_gateway(args: argparse.Namespace) -> dict[str, Any]:
    cfg = gateway_config(
        gateway_id=args.gateway_id,
        state_dir=args.state_dir,
        port=args.port,
        watch_addresses=[args.address],
        button_port=args.button_port,
        overrides={"alarms": {"ack_timeout_s": ACK_TIMEOUT_S}},
    )
    gateway = Gateway(cfg, clock=SystemClock(), notifier=SystemdNotifier(None), boot_id=BOOT_ID)
    fleet = gateway.watches
    assert fleet is not None
    stop = _stop_event()
    cpu_before = cpu_seconds()
    run_ns = now_ns()
    task = asyncio.create_task(gateway.run(stop), name="gateway")
    async with asyncio.timeout(START_TIMEOUT_S):
        await gateway.started.wait()
        await gateway.uplink.connected.wait()
        online_ns = now_ns()
        # The fleet starts each watch's link in its own task, with no event to wait on: poll.
        address = args.address.upper()
        while address not in fleet.watches:
            if task.done():
                await task
            await asyncio.sleep(POLL_S)
        await fleet.watches[address].connected.wait()
    linked_ns = now_ns()
    emit({"event": "linked", "linked_ns": linked_ns})
    if args.idle_s:
        spawned_ns = args.spawned_ns or run_ns
        emit(await _idle(args.idle_s, spawned_ns, run_ns, online_ns, linked_ns))
    await task
    (status,) = [s for s in fleet.status() if s.get("address") == address] or [{}]
    return {
        "event": "result",
        "cpu_s": cpu_seconds() - cpu_before,
        "published_events": gateway.uplink.stats.published_events,
        "published_messages": gateway.uplink.stats.published_messages,
        "watch_counters": status.get("counters", {}),
        "vmhwm_kb": proc_status_kb("VmHWM"),
    }


async def _idle(
    seconds: float, spawned_ns: int, run_ns: int, online_ns: int, linked_ns: int
) -> dict[str, Any]:
    """The gateway's cost while nothing happens for ``seconds``: CPU (% of one core) and RSS;
    and how long it took to come online, from the process's start (interpreter and imports,
    as systemd sees it) and from ``Gateway.run``."""
    cpu_before, before_ns = cpu_seconds(), now_ns()
    await asyncio.sleep(seconds)
    window_s = (now_ns() - before_ns) / 1e9
    return {
        "event": "idle",
        "idle_s": window_s,
        "cpu_percent": (cpu_seconds() - cpu_before) / window_s * 100,
        "vmrss_kb": proc_status_kb("VmRSS"),
        "vmhwm_kb": proc_status_kb("VmHWM"),
        "start_to_online_s": (online_ns - spawned_ns) / 1e9,
        "start_to_linked_s": (linked_ns - spawned_ns) / 1e9,
        "run_to_online_s": (online_ns - run_ns) / 1e9,
    }


async def run_bleak(args: argparse.Namespace) -> dict[str, Any]:
    stop = _stop_event()
    cpu_before = cpu_seconds()
    device = await BleakScanner.find_device_by_address(args.address, timeout=START_TIMEOUT_S)
    if device is None:
        raise RuntimeError(f"{args.address} not found")
    client = BleakClient(device, timeout=START_TIMEOUT_S)
    await client.connect()
    loop = asyncio.get_running_loop()
    writes: set[asyncio.Task[None]] = set()
    counts = {"notified": 0, "written": 0, "failed": 0}

    async def confirm(alert_seq: int) -> None:
        try:
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await client.write_gatt_char(
                    ALERT_CONFIRM, bytes((alert_seq, AlertConfirmStatus.RECEIVED)), response=True
                )
        except Exception as exc:
            counts["failed"] += 1
            print(f"confirm of {alert_seq} failed: {exc!r}", file=sys.stderr, flush=True)
        else:
            counts["written"] += 1

    def on_alert(_char: BleakGATTCharacteristic, data: bytearray) -> None:
        counts["notified"] += 1
        task = loop.create_task(confirm(data[1]))
        writes.add(task)
        task.add_done_callback(writes.discard)

    try:
        await client.start_notify(CARE_ALERT, on_alert)
        emit({"event": "linked", "linked_ns": now_ns()})
        await stop.wait()
        await asyncio.gather(*writes)
    finally:
        await client.disconnect()
    return {
        "event": "result",
        "cpu_s": cpu_seconds() - cpu_before,
        **counts,
        "vmhwm_kb": proc_status_kb("VmHWM"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=("gateway", "bleak"), required=True)
    parser.add_argument("--address", required=True, help="the watch's BLE address")
    parser.add_argument("--port", type=int, help="the broker's port (gateway)")
    parser.add_argument("--state-dir", type=Path, help="the gateway's state directory")
    parser.add_argument("--gateway-id", help="a fresh gateway id for the run (gateway)")
    parser.add_argument("--log", type=Path, help="the gateway's JSON log lines")
    parser.add_argument("--button-port", help="enable the [button] receiver on this port")
    parser.add_argument("--idle-s", type=float, default=0.0, help="report the idle cost (gateway)")
    parser.add_argument(
        "--spawned-ns", type=int, default=0, help="CLOCK_MONOTONIC ns when the bench started this"
    )
    args = parser.parse_args()
    if args.role == "bleak":
        emit(asyncio.run(run_bleak(args)))
        return
    if args.port is None or args.state_dir is None or args.gateway_id is None or args.log is None:
        parser.error("--role gateway needs --port, --state-dir, --gateway-id and --log")
    run_child(run_gateway, args)


if __name__ == "__main__":
    main()
