"""Flash writes per telemetry event (a child process): a whole gateway, as a home runs it.

Runs the real ``Gateway`` (outbox, uplink, supervisor: everything ``gateway run`` starts) on a
state directory a gateway has run in before (copied by the bench), with its uplink connected to
the bench's Mosquitto (``--uplink up``) or pointed at a closed port (``--uplink down``: every
event must be kept). Once it is online it produces ``telemetry.vitals`` through its own sink at
``--rate`` events/s for ``--seconds``, then waits for a line on stdin (the bench sends it when
its subscriber has every event, or at once when the uplink is down), shuts the gateway down and
reports what this process wrote (``/proc/self/io``, all threads, exited ones included): the WAL,
checkpoints, the database and every sidecar file, as ``write_bytes`` and as net bytes
(``write_bytes`` - ``cancelled_write_bytes``: ``bench.common.net_write_bytes``). With ``--rate 0``
it produces nothing and waits ``--seconds``: an idle gateway, the per-boot cost the bench subtracts.

The outbox window (``outbox.group_commit_s``) is the shipped configuration's unless ``--window``.

The gateway's logs go to stderr, a pipe the bench copies to a file: in production they go to
journald, which writes them itself. The bench starts this child with ``PYTHONDONTWRITEBYTECODE``
so that no byte-code cache is written either.

Protocol: JSON lines on stdout.

- out ``online`` once the gateway has started (and, uplink up, is connected);
- out ``produced`` once every event was handed to the sink (uplink up: and acknowledged, none
  left in the outbox);
- in any line (or end of file): stop;
- out ``result``: bytes written and cancelled by the whole process (start → after the gateway
  closed everything), and apart at start-up (process start → online), while running (online →
  the stop line) and at close (the stop line → closed); the events, the size of one event's
  JSON, the window.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

from bench.common import (
    BOOT_ID,
    TELEMETRY_KIND,
    WATCH,
    cpu_seconds,
    emit,
    gateway_config,
    net_write_bytes,
    now_ns,
    proc_io,
    vitals,
)
from gateway.app import logs
from gateway.app.daemon import Gateway
from gateway.app.sdnotify import SystemdNotifier
from gateway.core.clock import SystemClock

UNREACHABLE_PORT = 9  # uplink down: connections are refused, the gateway keeps retrying
START_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 60.0
SETTLE_POLL_S = 0.1


def _watch_stdin(
    loop: asyncio.AbstractEventLoop, stopping: asyncio.Event, at_stop: dict[str, Any]
) -> None:
    """Any line (or end of file) on stdin asks the gateway to stop; ``at_stop`` gets the I/O
    counters and the time of that moment."""
    sys.stdin.readline()
    at_stop.update(io=proc_io(), ns=now_ns())
    loop.call_soon_threadsafe(stopping.set)


async def _flush_then_stop(
    gateway: Gateway, stopping: asyncio.Event, stop: asyncio.Event, at_stop: dict[str, Any]
) -> None:
    """At the stop line: write what the outbox holds in memory (the events' last writes, part
    of their cost), note the counters, then stop the gateway (its shutdown's writes, the
    checkpoint, the seq mark and the -shm file's removal, are a boot's, not the events')."""
    await stopping.wait()
    try:
        await gateway.outbox.flush()
    finally:
        at_stop["flushed"] = proc_io()
        stop.set()


def event_json_bytes(gateway: Gateway, seq: int) -> int:
    """The size of one telemetry event object as it goes on the wire (``wire_json``), made by
    the gateway's own factory from the bench's sample; ``seq`` as the run's last one."""
    event = gateway.factory.make(TELEMETRY_KIND, vitals(seq), WATCH)
    return len(event.stored(seq).wire_json().encode())


def _phase(name: str, before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Bytes written and cancelled between two ``proc_io`` samples ({} for process start)."""
    return {
        f"{name}_{key}": after[key] - before.get(key, 0)
        for key in ("write_bytes", "cancelled_write_bytes")
    }


async def _settled(gateway: Gateway) -> None:
    """Wait until no telemetry is buffered or queued: every event was published and its PUBACK
    applied (the gateway's stats are a read, they write nothing)."""
    async with asyncio.timeout(SETTLE_TIMEOUT_S):
        while True:  # the outbox has no event for "empty": poll it
            stats = await gateway.outbox.stats()
            if not gateway.outbox.buffered and not stats.queued.get("telemetry"):
                return
            await asyncio.sleep(SETTLE_POLL_S)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    up = args.uplink == "up"
    cfg = gateway_config(
        gateway_id=args.gateway_id,
        state_dir=args.state_dir,
        port=args.port if up else UNREACHABLE_PORT,
        group_commit_s=args.window,
    )
    gateway = Gateway(cfg, clock=SystemClock(), notifier=SystemdNotifier(None), boot_id=BOOT_ID)
    stop, stopping = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    at_stop: dict[str, Any] = {}
    threading.Thread(target=_watch_stdin, args=(loop, stopping, at_stop), daemon=True).start()
    flusher = asyncio.create_task(_flush_then_stop(gateway, stopping, stop, at_stop))

    start_ns = now_ns()
    task = asyncio.create_task(gateway.run(stop), name="gateway")
    async with asyncio.timeout(START_TIMEOUT_S):
        await gateway.started.wait()
        if up:
            await gateway.uplink.connected.wait()
    online, online_ns, cpu_online = proc_io(), now_ns(), cpu_seconds()
    emit({"event": "online", "start_ns": start_ns, "online_ns": online_ns})

    first = loop.time()
    if args.rate > 0:
        interval_s = 1.0 / args.rate
        count = max(1, round(args.rate * args.seconds))
        for n in range(count):
            delay = first + n * interval_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await gateway.sink.emit(TELEMETRY_KIND, vitals(n), WATCH)
    else:  # idle: as long as a run with events, none produced
        count = 0
        await asyncio.sleep(args.seconds)
    produced_s = loop.time() - first
    if up:  # as in a home, where the gateway runs on: what was acknowledged is settled
        await _settled(gateway)
    emit({"event": "produced", "events": count})
    await task
    await flusher
    end, end_ns = proc_io(), now_ns()
    stopped = at_stop.get("io", end)  # the stop line always comes first; end at worst
    flushed = at_stop.get("flushed", end)
    return {
        "event": "result",
        "uplink": args.uplink,
        "window_s": gateway.outbox.group_commit_s,
        "window_shipped": args.window is None,
        "events": count,
        "rate_target": args.rate,
        "rate_achieved": (count - 1) / produced_s if count > 1 and produced_s > 0 else 0.0,
        "online_s": (end_ns - online_ns) / 1e9,
        "running_s": (at_stop.get("ns", end_ns) - online_ns) / 1e9,
        "event_json_bytes": event_json_bytes(gateway, max(1, count)),
        # the whole process, start-up to closed: the -shm file's pages, dirtied at start-up, are
        # cancelled when it is unlinked at close, so no shorter span nets out alone
        "write_bytes": end["write_bytes"],
        "cancelled_write_bytes": end["cancelled_write_bytes"],
        "net_write_bytes": net_write_bytes(end),
        "online_net_write_bytes": net_write_bytes(end, online),  # online → closed
        **_phase("start", {}, online),  # process start → online
        **_phase("running", online, stopped),  # online → the stop line
        **_phase("flush", stopped, flushed),  # what was still in memory, written
        **_phase("close", stopped, end),  # the stop line → the gateway closed (flush included)
        # online → the last event written: what the events cost, with the idle gateway's own
        "events_net_write_bytes": net_write_bytes(flushed, online),
        "syscw": end["syscw"] - online["syscw"],
        "cpu_s": cpu_seconds() - cpu_online,
        "published_events": gateway.uplink.stats.published_events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uplink", choices=("up", "down"), required=True)
    parser.add_argument("--port", type=int, required=True, help="the bench broker's port")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--gateway-id", required=True)
    parser.add_argument(
        "--rate", type=float, required=True, help="events per second (0: idle, no events)"
    )
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument(
        "--window",
        type=float,
        help="outbox.group_commit_s, seconds (default: the shipped configuration's)",
    )
    args = parser.parse_args()
    logs.configure("info", "json", stream=sys.stderr)
    emit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
