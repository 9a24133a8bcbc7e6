"""Bytes written per telemetry event (a child process): a steady producer into the real outbox.

Puts ``telemetry.vitals`` events through the gateway's ``OutboxSink`` (EventFactory + Outbox) at a
fixed rate for a fixed time, and divides this process's ``write_bytes`` (/proc/self/io) by the
number of events. Counted from after the outbox is open (schema and integrity check excluded)
to after it is closed, so the final WAL checkpoint, which a long run pays as it goes, is counted.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from bench.common import (
    BOOT_ID,
    TELEMETRY_KIND,
    WATCH,
    gateway_config,
    make_clock,
    proc_io,
    run_child,
    vitals,
)
from gateway.app.daemon import Gateway
from gateway.app.sdnotify import SystemdNotifier

UNREACHABLE_PORT = 9  # no uplink runs in this process


async def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = gateway_config(
        gateway_id="bench-disk",
        state_dir=args.state_dir,
        port=UNREACHABLE_PORT,
        group_commit_s=args.group_commit,
    )
    gateway = Gateway(
        cfg, clock=make_clock(args.clock), notifier=SystemdNotifier(None), boot_id=BOOT_ID
    )
    await gateway.outbox.open()
    loop = asyncio.get_running_loop()
    interval_s = 1.0 / args.rate
    count = int(args.rate * args.seconds)
    before = proc_io()
    first = loop.time()
    for n in range(count):
        delay = first + n * interval_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await gateway.sink.emit(TELEMETRY_KIND, vitals(n), WATCH)
    produced_s = loop.time() - first
    await gateway.outbox.close()
    after = proc_io()
    written = after["write_bytes"] - before["write_bytes"]
    return {
        "event": "result",
        "events": count,
        "group_commit_s": args.group_commit,
        "rate_target": args.rate,
        "rate_achieved": count / produced_s if produced_s > 0 else 0.0,
        "write_bytes": written,
        "bytes_per_event": written / count,
        "syscw": after["syscw"] - before["syscw"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--group-commit", type=float, required=True)
    parser.add_argument("--rate", type=float, required=True, help="events per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--clock", choices=("system", "cached"), default="cached")
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    run_child(run, args)


if __name__ == "__main__":
    main()
