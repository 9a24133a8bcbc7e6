"""Helpers shared by the bench's processes: clocks, /proc readers, configs, the child protocol."""

from __future__ import annotations

import argparse
import asyncio
import compileall
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Final

from gateway.app import config, logs
from gateway.core.clock import SystemClock

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"

TELEMETRY_KIND: Final = "telemetry.vitals"
WATCH = "watch-C0FFEE000001"
BUTTON = "btn-0000A11C"
ALARM_KIND: Final = "alarm.button"
ALARM_DATA: dict[str, Any] = {"press": "short", "battery": 80, "rssi": -60}
BOOT_ID = "bench-boot"
# The bench's emergency buttons: one paired button id per press, so that each alarm names its press.
BUTTON_ID_BASE = 0x0B00_0000


def vitals(n: int) -> dict[str, Any]:
    """A plausible watch sample, varied a little so that rows are not all identical."""
    return {
        "heart_rate": 55 + n % 60,
        "spo2": 95.0 + (n % 5) / 2,
        "contact": True,
        "steps": n,
    }


class CachedSyncClock(SystemClock):
    """The system clock with ``is_synced`` asked once, at construction.

    At commit ea9abfc ``SystemClock.is_synced`` cost ~3 ms per event where timesyncd's flag file
    is absent (``ctypes.util.find_library`` ran ``ldconfig`` on every call): too slow to build a
    100k backlog, and the ``diag`` figures compare alarm latency with and without that cost.
    Wall and monotonic time are the system's.
    """

    def __init__(self) -> None:
        super().__init__()
        self._synced_at_start = super().is_synced()

    def is_synced(self) -> bool:
        return self._synced_at_start


def make_clock(name: str) -> SystemClock:
    return CachedSyncClock() if name == "cached" else SystemClock()


def gateway_config(
    *,
    gateway_id: str,
    state_dir: Path,
    port: int,
    group_commit_s: float | None = 0.2,
    max_inflight: int | None = None,
    button_port: str | None = None,
    watch_addresses: Sequence[str] = (),
    overrides: dict[str, dict[str, Any]] | None = None,
) -> config.GatewayConfig:
    """The shipped defaults, except a plain-TCP lab broker on 127.0.0.1:``port``; with
    ``button_port``, the ``[button]`` receiver enabled on that serial port (a pty's slave); with
    ``watch_addresses``, ``[watch]`` enabled for those watches; ``overrides``: keys of other
    sections (``{"alarms": {"ack_timeout_s": 3600}}``)."""
    mqtt: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "plaintext": True,
        "backoff_min_s": 0.1,
        "backoff_cap_s": 1.0,
    }
    if max_inflight is not None:
        mqtt["max_inflight"] = max_inflight
    sections: dict[str, Any] = {
        "gateway": {"id": gateway_id, "state_dir": str(state_dir)},
        "mqtt": mqtt,
        "outbox": {} if group_commit_s is None else {"group_commit_s": group_commit_s},
        "logging": {"level": "info", "format": "json"},
    }
    if button_port is not None:
        sections["button"] = {"enabled": True, "port": button_port}
    if watch_addresses:
        sections["watch"] = {"enabled": True, "addresses": list(watch_addresses)}
    for name, values in (overrides or {}).items():
        sections.setdefault(name, {}).update(values)
    return config.parse(sections, source="<bench>")


# ------------------------------------------------------------------------------- /proc readers


def proc_io() -> dict[str, int]:
    """This process's I/O counters, all threads: ``write_bytes`` is what it sent to the disk."""
    fields: dict[str, int] = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = int(value)
    return fields


def net_write_bytes(after: dict[str, int], before: dict[str, int] | None = None) -> int:
    """Bytes written towards the disk between two ``proc_io`` samples (from process start when
    ``before`` is None), net of those cancelled: ``write_bytes`` - ``cancelled_write_bytes``.

    Linux's Documentation/filesystems/proc.rst (/proc/PID/io): ``write_bytes`` is counted "at
    page-dirtying time", before any writeback; ``cancelled_write_bytes`` is what the process
    "caused to not happen, by truncating pagecache": dirty pages of a file deleted or truncated
    before their writeback (SQLite's ``-shm`` file, unlinked at close), which never reach the
    device. Neither counts the filesystem's own journal and metadata writes (the kernel's).
    """
    start = before or {"write_bytes": 0, "cancelled_write_bytes": 0}
    written = after["write_bytes"] - start["write_bytes"]
    return written - (after["cancelled_write_bytes"] - start["cancelled_write_bytes"])


def proc_status_kb(key: str) -> int:
    """A ``kB`` figure of /proc/self/status, e.g. ``VmHWM`` (peak RSS) or ``VmRSS``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from the first line of /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    total = sum(fields[:8])
    return total - idle, total


def now_ns() -> int:
    """CLOCK_MONOTONIC: one clock for every process of this boot, so stamps compare across them."""
    return time.monotonic_ns()


# ------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation): p99 of 200 samples is the 198th smallest."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


# ------------------------------------------------------------------------------- child protocol
# Children print one JSON object per line on stdout; their logs go to a file.


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def run_child(
    main: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
    args: argparse.Namespace,
) -> None:
    """A bench child's body: the gateway's logs to ``args.log``, ``main``'s result on stdout."""
    with args.log.open("a") as log_stream:
        logs.configure("info", "json", stream=log_stream)
        emit(asyncio.run(main(args)))


# The packages the bench's children import from this checkout.
CHECKOUT_PACKAGES = ("gateway", "drivers", "bench", "hil")


def byte_compile() -> None:
    """Byte-compile this checkout's packages, as ``pip install`` does on a gateway.

    Without it a child run with ``PYTHONDONTWRITEBYTECODE`` (a development setting) compiles
    every module of the checkout from source at each start: slower, and 2-3 MiB of RSS that an
    installed gateway never carries. The ``__pycache__`` directories are git-ignored; a module
    edited later is compiled again from its source (its ``.pyc`` no longer matches)."""
    for name in CHECKOUT_PACKAGES:
        compileall.compile_dir(REPO_ROOT / name, quiet=1)


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def code_version() -> str:
    """The commit measured, and whether the gateway's code differs from it."""
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--", "gateway", "drivers")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{commit} (gateway/ or drivers/ modified)" if dirty else commit
