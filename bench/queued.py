"""Put and claim cost per event on a large outbox (a child process), against an empty one.

Opens the outbox in ``--state-dir`` (a copy of the bench's 1M-event backlog, or none: an empty
outbox) with the quota the large backlog was built with, and times, on this process's event loop:

- put: ``--events`` ``telemetry.vitals`` handed to the gateway's ``OutboxSink`` as fast as it
  takes them (factory, buffer, group commits in the store's thread), then a flush, so that
  every event is committed when the clock stops;
- claim: ``Outbox.claim_wire`` of one message's worth (500 events) at a time until ``--events`` are
  claimed, as the drain claims. On the large outbox these are its oldest rows; on the empty one,
  the rows just put.

Before the clock starts, ``WARMUP_EVENTS`` are put and as many claimed, untimed. No uplink
runs. Prints one JSON line: microseconds per event of each, and the rows at the start.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.backlog import LARGE_OUTBOX_MAX_BYTES, OUTBOX_NAME, UNREACHABLE_PORT
from bench.common import (
    BOOT_ID,
    TELEMETRY_KIND,
    WATCH,
    CachedSyncClock,
    gateway_config,
    run_child,
    vitals,
)
from gateway.app.daemon import Gateway
from gateway.app.sdnotify import SystemdNotifier
from gateway.store.outbox import count_events
from gateway.store.spool import read_spool

CLAIM_EVENTS = 500  # one message's worth, as the drain claims
WARMUP_EVENTS = 1000


def count_rows(state_dir: Path) -> int:
    path = state_dir / OUTBOX_NAME
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (rows,) = db.execute("SELECT count(*) FROM events").fetchone()
    finally:
        db.close()
    return int(rows) + len(read_spool(path.with_name(path.name + ".spool")))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = count_rows(args.state_dir)
    cfg = gateway_config(
        gateway_id="bench-queued",
        state_dir=args.state_dir,
        port=UNREACHABLE_PORT,
        overrides={"outbox": {"max_bytes": LARGE_OUTBOX_MAX_BYTES}},
    )
    gateway = Gateway(cfg, clock=CachedSyncClock(), notifier=SystemdNotifier(None), boot_id=BOOT_ID)
    outbox = gateway.outbox
    await outbox.open()
    try:
        # Untimed: the first puts and claims of a process pay for warming its caches.
        for n in range(WARMUP_EVENTS):
            await gateway.sink.emit(TELEMETRY_KIND, vitals(n), WATCH)
        await outbox.flush()
        warm = 0
        while warm < WARMUP_EVENTS:
            events, _ = await outbox.claim_wire(CLAIM_EVENTS)
            warm += count_events(events)

        started = time.perf_counter()
        for n in range(args.events):
            await gateway.sink.emit(TELEMETRY_KIND, vitals(n), WATCH)
        await outbox.flush()
        put_s = time.perf_counter() - started

        claimed = 0
        started = time.perf_counter()
        while claimed < args.events:
            events, _ = await outbox.claim_wire(min(CLAIM_EVENTS, args.events - claimed))
            if not events:
                raise RuntimeError(f"the outbox ran dry after {claimed} claimed events")
            claimed += count_events(events)
        claim_s = time.perf_counter() - started
    finally:
        await outbox.close()
    return {
        "event": "result",
        "rows_before": rows,
        "events": args.events,
        "put_us_per_event": put_s / args.events * 1e6,
        "claim_us_per_event": claim_s / claimed * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    run_child(run, args)


if __name__ == "__main__":
    main()
