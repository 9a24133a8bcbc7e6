"""Builds a telemetry backlog in an outbox file, through the gateway's own EventFactory and Outbox.

Run once per bench; each drain run starts from a copy of the file (``copy_backlog``).
``build_large_backlog`` builds the 1M-event outbox the same way, faster: it stamps one event
with the factory and varies the copies, and commits in the store's largest transactions.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import time
from pathlib import Path

from bench.common import BOOT_ID, TELEMETRY_KIND, WATCH, CachedSyncClock, gateway_config, vitals
from gateway.app.daemon import Gateway
from gateway.app.sdnotify import SystemdNotifier
from gateway.core.events import new_event_id

OUTBOX_NAME = "outbox.sqlite3"
SIDE_FILES = ("", ".seqmark")
UNREACHABLE_PORT = 9  # the uplink never runs here; the port only has to be valid
LARGE_BATCH = 20_000  # events handed to the outbox per commit while building a large backlog
# A 1M-event outbox takes ≈300 MB, more than the default quota (256 MiB), which would evict.
LARGE_OUTBOX_MAX_BYTES = 2 * 1024**3


async def build_backlog(state_dir: Path, events: int) -> float:
    """Put ``events`` telemetry events into a fresh outbox in ``state_dir``; return the seconds.

    The clock's sync state is asked once (``CachedSyncClock``): with the system clock each event
    costs ~3 ms here, which would make a 100k backlog take minutes to build.
    """
    cfg = gateway_config(gateway_id="bench-backlog", state_dir=state_dir, port=UNREACHABLE_PORT)
    gateway = Gateway(cfg, clock=CachedSyncClock(), notifier=SystemdNotifier(None), boot_id=BOOT_ID)
    started = time.perf_counter()
    await gateway.outbox.open()
    try:
        for n in range(events):
            await gateway.sink.emit(TELEMETRY_KIND, vitals(n), WATCH)
    finally:
        await gateway.outbox.close()
    return time.perf_counter() - started


async def build_large_backlog(state_dir: Path, events: int) -> float:
    """Put ``events`` telemetry events into a fresh outbox with a quota of
    ``LARGE_OUTBOX_MAX_BYTES``, through ``Outbox.put`` in commits of ``LARGE_BATCH``; return the
    seconds. Each event is a copy of one the factory made, with its own id, data and monotonic
    stamp (the factory's per-event cost would make 1M events take minutes)."""
    cfg = gateway_config(
        gateway_id="bench-backlog",
        state_dir=state_dir,
        port=UNREACHABLE_PORT,
        overrides={"outbox": {"max_bytes": LARGE_OUTBOX_MAX_BYTES}},
    )
    gateway = Gateway(cfg, clock=CachedSyncClock(), notifier=SystemdNotifier(None), boot_id=BOOT_ID)
    gateway.outbox.max_buffered = LARGE_BATCH
    template = gateway.factory.make(TELEMETRY_KIND, vitals(0), WATCH)
    fields = list(json.loads(template.data_json))  # in the factory's order
    started = time.perf_counter()
    await gateway.outbox.open()
    try:
        for n in range(events):
            sample = vitals(n)
            data = json.dumps({key: sample[key] for key in fields}, separators=(",", ":"))
            await gateway.outbox.put(
                dataclasses.replace(
                    template, id=new_event_id(), data_json=data, mono_ns=template.mono_ns + n
                )
            )
    finally:
        await gateway.outbox.close()
    return time.perf_counter() - started


def copy_backlog(template_dir: Path, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    for suffix in SIDE_FILES:
        source = template_dir / (OUTBOX_NAME + suffix)
        if source.exists():
            shutil.copyfile(source, state_dir / (OUTBOX_NAME + suffix))
    spool = template_dir / (OUTBOX_NAME + ".spool")  # telemetry written at its window's end
    if spool.exists():
        shutil.copytree(spool, state_dir / (OUTBOX_NAME + ".spool"), dirs_exist_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    seconds = asyncio.run(build_backlog(args.state_dir, args.events))
    print(f"{args.events} events in {seconds:.1f} s")


if __name__ == "__main__":
    main()
