"""One gateway as a child process of the bench: drain a backlog, raise alarms, report figures.

Runs the real ``Gateway`` (outbox, uplink, supervisor: everything ``gateway run`` starts) on the
outbox in ``--state-dir`` (copied from a backlog by the bench, or empty) until a line arrives on
stdin, then shuts it down and prints one JSON line with its timings (CLOCK_MONOTONIC ns, which
the bench's subscriber shares), the alarms it raised, its CPU time, the bytes it wrote and its
peak RSS (VmHWM), which is the gateway's own since nothing else runs in this process.

With ``--button-port`` the gateway's ``[button]`` receiver link is enabled on that serial port: the
pty of a simulated receiver that runs in another process (``bench.presser``), so that the two do
not share an event loop. The result then carries the link's counters.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import (
    ALARM_DATA,
    ALARM_KIND,
    BOOT_ID,
    BUTTON,
    cpu_seconds,
    emit,
    gateway_config,
    make_clock,
    now_ns,
    proc_io,
    proc_status_kb,
    run_child,
)
from gateway.app.daemon import Gateway
from gateway.app.sdnotify import SystemdNotifier
from gateway.core.ports import AlarmState

START_TIMEOUT_S = 30.0
POLL_S = 0.001


class DeliveryStamps:
    """An ``AlarmListener`` that stamps when the gateway learnt each alarm was delivered: the
    broker's PUBACK, after the outbox recorded it (gateway side of the latency)."""

    def __init__(self) -> None:
        self.delivered_ns: dict[str, int] = {}

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None:
        if state is AlarmState.DELIVERED:
            self.delivered_ns.setdefault(alarm_id, now_ns())


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Any line (or end of file) on stdin asks the gateway to stop."""
    sys.stdin.readline()
    loop.call_soon_threadsafe(stop.set)


async def _raise_alarms(
    gateway: Gateway,
    count: int,
    spacing_s: float,
    after_events: int,
    given_up: Callable[[], bool],
) -> list[tuple[str, int, int]]:
    """Raise ``count`` alarms ``spacing_s`` apart once the uplink has published ``after_events``.

    Each alarm is its own task, started on schedule whether or not the previous one is stored
    yet, as alarms from independent devices would be. Returns (alarm id, ns before
    ``raise_alarm``, ns when it returned) for each; none if ``given_up()`` before the start.
    """
    # The uplink keeps a plain counter, with no event to wait on: poll it.
    while gateway.uplink.stats.published_events < after_events:
        if given_up():
            return []
        await asyncio.sleep(POLL_S)
    loop = asyncio.get_running_loop()
    first = loop.time()

    async def one(n: int) -> tuple[str, int, int]:
        await asyncio.sleep(max(0.0, first + n * spacing_s - loop.time()))
        before = now_ns()
        alarm_id = await gateway.alarms.raise_alarm(ALARM_KIND, ALARM_DATA, BUTTON)
        return alarm_id, before, now_ns()

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(n), name=f"bench.alarm[{n}]") for n in range(count)]
    return [task.result() for task in tasks]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = gateway_config(
        gateway_id=args.gateway_id,
        state_dir=args.state_dir,
        port=args.port,
        max_inflight=args.max_inflight,
        button_port=args.button_port,
        overrides=(
            {"outbox": {"max_bytes": args.outbox_max_bytes}} if args.outbox_max_bytes else None
        ),
    )
    gateway = Gateway(
        cfg, clock=make_clock(args.clock), notifier=SystemdNotifier(None), boot_id=BOOT_ID
    )
    stamps = DeliveryStamps()
    gateway.alarms.subscribe(stamps)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_watch_stdin, args=(loop, stop), daemon=True).start()

    io_before, cpu_before = proc_io(), cpu_seconds()
    start_ns = now_ns()
    task = asyncio.create_task(gateway.run(stop), name="gateway")
    async with asyncio.timeout(START_TIMEOUT_S):
        await gateway.started.wait()
        await gateway.uplink.connected.wait()
    connected_ns = now_ns()
    emit({"event": "connected", "start_ns": start_ns, "connected_ns": connected_ns})

    raised: list[tuple[str, int, int]] = []
    if args.alarms > 0:
        raised = await _raise_alarms(
            gateway,
            args.alarms,
            args.alarm_spacing_ms / 1000,
            args.alarms_after_events,
            given_up=lambda: stop.is_set() or task.done(),
        )
        emit({"event": "alarms_raised", "count": len(raised)})
    await task
    io_after, cpu_after = proc_io(), cpu_seconds()
    button = gateway.button
    return {
        "event": "result",
        "start_ns": start_ns,
        "connected_ns": connected_ns,
        "alarms": [
            (alarm_id, before, after, stamps.delivered_ns.get(alarm_id))
            for alarm_id, before, after in raised
        ],
        "published_events": gateway.uplink.stats.published_events,
        "published_messages": gateway.uplink.stats.published_messages,
        "rejected_messages": gateway.uplink.stats.rejected_messages,
        "cpu_s": cpu_after - cpu_before,
        "write_bytes": io_after["write_bytes"] - io_before["write_bytes"],
        "vmhwm_kb": proc_status_kb("VmHWM"),
        "vmrss_kb": proc_status_kb("VmRSS"),
        "button_counters": None if button is None else dict(button.counters),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--gateway-id", required=True)
    parser.add_argument("--log", type=Path, required=True, help="the gateway's JSON log lines")
    parser.add_argument("--clock", choices=("system", "cached"), default="system")
    parser.add_argument("--max-inflight", type=int, default=None, help="default: the config's")
    parser.add_argument("--alarms", type=int, default=0)
    parser.add_argument("--alarm-spacing-ms", type=float, default=5.0)
    parser.add_argument("--alarms-after-events", type=int, default=0)
    parser.add_argument(
        "--button-port", default=None, help="enable the [button] receiver on this serial port"
    )
    parser.add_argument(
        "--outbox-max-bytes",
        type=int,
        default=None,
        help="the outbox quota (default: the config's)",
    )
    args = parser.parse_args()
    run_child(run, args)


if __name__ == "__main__":
    main()
