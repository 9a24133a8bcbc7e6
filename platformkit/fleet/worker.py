"""A worker process of the fleet: runs its share of the homes in one event loop.

``python -m platformkit.fleet.worker``: the spec, one JSON line on stdin (from
``platformkit.fleet.run``) once the worker said ``ready``, names the homes, when each starts,
the outages and when everything stops, on CLOCK_MONOTONIC (one clock for every process of this
boot). One JSON object per line on stdout: ``ready`` once imported, ``online`` once every home
has connected (or the start window is over), ``result`` after the last home stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

from gateway.app import logs
from platformkit.fleet.home import Home, HomeSettings
from platformkit.fleet.outage import OutageRelay
from platformkit.fleet.traffic import TrafficSettings

LAG_PROBE_S = 0.1
STOP_GRACE_S = 30.0  # every home's orderly shutdown (the daemon's drain is 3 s) fits in this
# At the stop no home raises another alarm, and the homes run on (bounded) until each alarm
# raised so far was acknowledged: one pressed a moment before the stop is not cut short.
ANSWER_WAIT_S = 30.0


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (kB), Threads and open file descriptors of this process."""
    out: dict[str, int] = {"fds": len(os.listdir("/proc/self/fd"))}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def settings_from(spec: dict[str, Any]) -> HomeSettings:
    raw = dict(spec["home"])
    raw["traffic"] = TrafficSettings(**raw["traffic"])
    return HomeSettings(**raw)


async def _sleep_until(mono: float) -> None:
    await asyncio.sleep(max(0.0, mono - time.monotonic()))


async def _outage(home: Home, relay: OutageRelay, at: float, seconds: float) -> dict[str, Any]:
    await _sleep_until(at)
    await relay.cut(home.gateway_id)
    if home.traffic is not None:
        home.traffic.link_down = True
    cut = time.monotonic()
    await asyncio.sleep(seconds / 2)
    pressed = await home.press()  # the senior presses while the internet is down
    await _sleep_until(cut + seconds)
    if home.traffic is not None:
        home.traffic.link_down = False
    await relay.restore(home.gateway_id)
    return {
        "gw": home.gateway_id,
        "cut_mono": cut,
        "restored_mono": time.monotonic(),
        "alarm": pressed,
    }


class LoopLag:
    """How late the worker's event loop wakes a task that sleeps ``LAG_PROBE_S``: when the homes
    share too little CPU, every figure measured by this process is this late too."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PROBE_S)
            self.samples.append(time.monotonic() - before - LAG_PROBE_S)

    def figures(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        if not ordered:
            return {}
        return {
            "p50_ms": ordered[len(ordered) // 2] * 1000,
            "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
            "max_ms": ordered[-1] * 1000,
        }


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    settings = settings_from(spec)
    lag = LoopLag()
    lag_task = asyncio.create_task(lag.run(), name="fleet.loop_lag")
    root = Path(spec["state_root"])
    baseline = proc_status()
    outages = {o["gw"]: o for o in spec["outages"]}
    relay = OutageRelay(settings.host) if outages else None
    homes: list[tuple[Home, float]] = []
    for entry in spec["homes"]:
        home = Home(entry["index"], entry["gw"], root / entry["gw"], settings, entry["seed"])
        home.port = entry["port"]
        if relay is not None and home.gateway_id in outages:
            home.port = await relay.add(home.gateway_id, entry["port"])
        homes.append((home, entry["start_mono"]))
    stops: list[asyncio.Event] = []

    async def start(home: Home, at: float, stop: asyncio.Event) -> None:
        await _sleep_until(at)
        await home.run(stop)

    tasks = []
    for home, at in homes:
        stops.append(asyncio.Event())
        tasks.append(
            asyncio.create_task(start(home, at, stops[-1]), name=f"home[{home.gateway_id}]")
        )
    cuts = [
        asyncio.create_task(
            _outage(h, relay, outages[h.gateway_id]["at_mono"], outages[h.gateway_id]["seconds"])
        )
        for h, _ in homes
        if relay is not None and h.gateway_id in outages
    ]
    online_by = spec["online_by_mono"]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, online_by - time.monotonic())):
            await asyncio.gather(*(home.online.wait() for home, _ in homes))
    running = proc_status()
    start_lag = lag.figures()
    lag.samples.clear()  # from here on: the steady part
    cpu_online = cpu_seconds()
    online_mono = time.monotonic()
    emit(
        {
            "event": "online",
            "online": sum(1 for h, _ in homes if h.online_mono),
            "mono": time.monotonic(),
            **running,
        }
    )
    await _sleep_until(spec["stop_mono"])
    steady: dict[str, Any] = {**proc_status()}
    steady_lag = lag.figures()
    steady["cpu_percent"] = round(
        100 * (cpu_seconds() - cpu_online) / max(1e-3, time.monotonic() - online_mono), 1
    )
    outage_log = []
    for cut in cuts:
        if cut.done() and not cut.cancelled() and cut.exception() is None:
            outage_log.append(cut.result())
        else:
            cut.cancel()
    for home, _ in homes:
        home.pause_alarms()
    answer_wait = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ANSWER_WAIT_S):
            await asyncio.gather(*(h.alarms_answered() for h, _ in homes))
    answer_wait = time.monotonic() - answer_wait
    # The homes stop as they started, staggered: a city's gateways do not all stop at one instant.
    stop_base = time.monotonic()
    for (_, at), stop in zip(homes, stops, strict=True):
        await _sleep_until(stop_base + at - spec["first_start_mono"])
        stop.set()
    _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
    for task in pending:
        task.cancel()
    with contextlib.suppress(Exception):
        await asyncio.gather(*pending, return_exceptions=True)
    if relay is not None:
        relay.close()
    lag_task.cancel()
    return {
        "event": "result",
        "homes": [h.result() for h, _ in homes],
        "not_stopped": len(pending),
        "answer_wait_s": answer_wait,
        "outages": outage_log,
        "relay": relay.stats() if relay is not None else {},
        "baseline": baseline,
        "running": running,
        "steady": steady,
        "end": proc_status(),
        "loop_lag": steady_lag,
        "loop_lag_start": start_lag,
    }


def main() -> int:
    emit({"event": "ready", "pid": os.getpid()})
    line = sys.stdin.readline()
    if not line:
        return 1
    spec = json.loads(line)
    with Path(spec["log"]).open("a") as log_stream:
        logs.configure(spec.get("log_level", "warning"), "json", stream=log_stream)
        emit(asyncio.run(run(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
