"""Builds a telemetry backlog in an outbox file, through the gateway's own EventFactory and Outbox.

Run once per bench; each drain run starts from a copy of the file (``copy_backlog``).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path

from bench.common import BOOT_ID, TELEMETRY_KIND, WATCH, CachedSyncClock, gateway_config, vitals
from gateway.app.daemon import Gateway
from gateway.app.sdnotify import SystemdNotifier

OUTBOX_NAME = "outbox.sqlite3"
SIDE_FILES = ("", ".seqmark")
UNREACHABLE_PORT = 9  # the uplink never runs here; the port only has to be valid


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


def copy_backlog(template_dir: Path, state_dir: Path) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    for suffix in SIDE_FILES:
        source = template_dir / (OUTBOX_NAME + suffix)
        if source.exists():
            shutil.copyfile(source, state_dir / (OUTBOX_NAME + suffix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    seconds = asyncio.run(build_backlog(args.state_dir, args.events))
    print(f"{args.events} events in {seconds:.1f} s")


if __name__ == "__main__":
    main()
