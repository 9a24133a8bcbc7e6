"""The bench: one local Mosquitto, the gateway against plain paho, alarm latency, disk, memory.

``python -m bench.run`` (``make bench``) starts its own Mosquitto on a free 127.0.0.1 port and a
subscriber standing in for the platform, then measures, in rounds so that drift hits every figure
alike:

1. drain: a backlog of ``--events`` telemetry events, built through the gateway's EventFactory and
   Outbox before the gateway starts, until the subscriber has every one (events/s), against the
   baseline: the same events published by plain paho, one per QoS 1 message, until every PUBACK,
   at each ``--inflight`` window (the best counts);
2. alarm latency, ``raise_alarm`` → subscriber, with the broker idle and while a backlog drains;
3. bytes written per telemetry event by a steady producer, group commit against one
   transaction per event;
4. the gateway process's peak RSS (VmHWM) during the drain;
5. button press → platform: the last byte of a press frame written to a simulated receiver's pty
   → ``alarm.button`` at the alarm desk, with the broker idle and while a backlog drains;
6. watch: a Care Alert SOS of the simulated watch (behind a fake BlueZ on a private D-Bus bus)
   → the gateway's Alert Confirm 0x01 at the watch, and → ``alarm.watch_sos`` at a subscriber,
   against the baseline: a plain bleak client that confirms at once (``bench.watch``);
7. million: put and claim cost per event on a ``--queued``-event outbox (1M; quick 200k)
   against an empty one, and the drain of that whole backlog against plain paho;

once per bench, after the rounds:

8. flash: the net bytes a whole gateway process writes per telemetry event, produced through
   its sink at each ``--flash-rates`` rate, with its uplink up and down (``bench.flash``), beyond
   what an idle gateway beside it writes, divided by the event's JSON size;
9. idle: CPU, RSS and start → online of an idle gateway with one watch and one button;
10. fleet: ``--fleet-gateways`` simulated homes (500; quick 100), each a whole gateway, against
    each of ``--fleet-brokers`` (Mosquitto, then a 3-node NATS cluster), a broker of their own
    with injected outages and the broker's fault (a NATS node killed), with the reference ingest
    (``bench.fleet``, docs/FLEET.md): every alarm delivered and acknowledged, no unexplained gap
    in any gateway's seqs, at the desk and in PostgreSQL;
11. saturation: light gateways (one MQTT connection each, no SQLite) stepped up in connections
    and events/s against Mosquitto and a 3-node NATS cluster until one of them, or the load
    generator, gives out, and a NATS node killed during a step (``bench.saturation``).

Every figure with a target is printed beside it; ``--strict`` exits 1 when any is missed.
Every gateway, baseline publisher, producer, simulated receiver and watch central is a child
process (``bench.drain``, ``bench.baseline``, ``bench.disk``, ``bench.flash``, ``bench.queued``,
``bench.presser``, ``bench.central``), so CPU, bytes written and RSS are each one's own, and no
two share an event loop (the simulated watch runs in the bench's process).
Results go to ``bench/results/`` as JSON and a summary to stdout; see docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import queue
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import paho.mqtt

from bench import ingest as ingest_part
from bench.backlog import (
    LARGE_OUTBOX_MAX_BYTES,
    OUTBOX_NAME,
    build_backlog,
    build_large_backlog,
    copy_backlog,
)
from bench.common import (
    BUTTON_ID_BASE,
    REPO_ROOT,
    RESULTS_DIR,
    byte_compile,
    code_version,
    ensure_dir,
    median,
    percentile,
)
from bench.fleet import (
    FLEET_GATEWAYS,
    FLEET_INGEST_WORKERS,
    FLEET_SECONDS,
    QUICK_FLEET_GATEWAYS,
    QUICK_FLEET_SECONDS,
    run_fleet,
)
from bench.fleet import figures as fleet_figures
from bench.fleet import summary_lines as fleet_lines
from bench.saturation import KINDS as SATURATION_KINDS
from bench.saturation import Options as SaturationOptions
from bench.saturation import figures as saturation_figures
from bench.saturation import run_saturation
from bench.saturation import summary_lines as saturation_lines
from bench.subscriber import EventCounter, Tally
from bench.watch import QUICK_ALERTS, TARGET_RATIO_P50, WatchBench, summary_line
from bench.watch import summarise as summarise_watch
from drivers.button.codec import device_id
from drivers.button.pairing import PairingStore
from gateway.app import logs
from hil.sim.broker import Mosquitto, mosquitto_binary

PARTS = (
    *("drain", "alarms", "button", "disk", "diag", "watch", "flash", "million", "idle"),
    "fleet",
    "ingest",
    "saturation",
)
BACKLOG_PARTS = {"drain", "alarms", "button", "diag"}
# Targets, each printed beside its figure and checked by --strict (docs/PERFORMANCE.md).
DRAIN_TARGET_RATIO = 3.0  # drain ÷ plain paho, at least
ALARM_TARGET_RATIO = 2.0  # p99 draining ÷ idle, raise_alarm → platform and button → platform
BUTTON_TARGET_P99_MS = 20.0  # press → platform, broker idle (the target on this machine)
FLASH_TARGET_RATIO = {"up": 1.0, "down": 2.0}  # bytes written per event ÷ the event's JSON
FLASH_UPLINKS = ("up", "down")
# An idle flash run's figures kept beside each run's, prefixed "idle_" (the subtraction's terms).
FLASH_IDLE_FIGURES = (
    *("online_s", "running_s", "write_bytes", "cancelled_write_bytes", "net_write_bytes"),
    *("online_net_write_bytes", "events_net_write_bytes", "bytes_per_hour"),
)
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")  # /proc/PID/io counts whole pages: a run resolves one
# Home runs last whole minutes, and the shipped window and heartbeat end on whole minutes from
# online: runs side by side are stopped this long after their last boundary, so that its commit
# and checkpoint are done in every one of them and none races its stop.
FLASH_STOP_MARGIN_S = 5.0
QUEUED_TARGET_RATIO = 1.5  # put and claim cost per event, 1M-event outbox ÷ empty outbox
MILLION_DRAIN_TARGET_RATIO = 15.0  # drain of the 1M backlog ÷ plain paho, at least
# Idle cost before issue 11 (one watch, one button), printed beside today's for information.
IDLE_BEFORE = {"cpu_percent": 0.4, "vmrss_mib": 51.0, "start_to_online_s": 0.5}
MILLION = 1_000_000
QUICK_QUEUED = 200_000
HOME_RATE_MAX = 50.0  # flash runs below this rate (events/s) run side by side: they idle
CHILD_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 30
DISK_MIN_EVENTS = 200  # so that the closing checkpoint weighs little at a low rate
# Latency samples per figure: a p99 is the nearest rank (bench.common.percentile), so it needs
# a few hundred samples to be more than the maximum (p99 of 200 is the 3rd largest; of 40, the
# largest). A backlog drains in a second or less, which counts ~40 alarms or presses (5 ms
# apart) in a quick run: the draining figures take as many gateways as it takes to count them.
QUICK_PRESSES = 200
DRAIN_RUNS = 8  # at most this many draining gateways per figure and repeat


class BenchError(Exception):
    """A measurement could not be taken (a child failed, or what it sent did not arrive)."""


# ------------------------------------------------------------------------------- options


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Gateway benchmarks against a local Mosquitto (see docs/PERFORMANCE.md).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=(
            "a fast sanity run: 20k events, 1 repeat, short disk runs, 200 button presses, "
            f"{QUICK_ALERTS} watch alerts (explicit options win)"
        ),
    )
    parser.add_argument("--events", type=int, help="backlog size (default 100000; quick 20000)")
    parser.add_argument(
        "--alarms",
        type=int,
        default=200,
        help=(
            "alarms counted per latency figure and repeat: raised by one idle gateway, or while "
            "draining, by as many draining gateways as it takes (at most --alarm-drain-runs)"
        ),
    )
    parser.add_argument(
        "--alarm-drain-runs",
        type=int,
        default=DRAIN_RUNS,
        help=f"at most this many draining gateways to count --alarms (default {DRAIN_RUNS})",
    )
    parser.add_argument("--repeats", type=int, help="runs of each figure (default 3; quick 1)")
    parser.add_argument(
        "--inflight",
        default="20,100",
        help="baseline max_inflight values, comma-separated (the best is the baseline)",
    )
    parser.add_argument("--alarm-spacing-ms", type=float, default=5.0)
    parser.add_argument(
        "--presses",
        type=int,
        help=(
            "button presses counted per figure and repeat, idle and draining "
            f"(default 500; quick {QUICK_PRESSES})"
        ),
    )
    parser.add_argument(
        "--press-spacing-ms",
        type=float,
        default=5.0,
        help="from one press to the next (never before the previous one is ACKed)",
    )
    parser.add_argument(
        "--button-drain-runs",
        type=int,
        help=f"at most this many draining gateways to count --presses (default {DRAIN_RUNS})",
    )
    parser.add_argument(
        "--watch-alerts",
        type=int,
        help=f"watch SOS alerts per run, gateway and baseline (default 200; quick {QUICK_ALERTS})",
    )
    parser.add_argument(
        "--watch-spacing-ms",
        type=float,
        default=20.0,
        help="from one SOS's Alert Confirm 0x01 to the next SOS",
    )
    parser.add_argument(
        "--disk-rates", default="500,20", help="steady producer rates, events/s, comma-separated"
    )
    parser.add_argument(
        "--disk-seconds",
        type=float,
        help=f"per disk run, stretched to reach {DISK_MIN_EVENTS} events (default 3; quick 1.5)",
    )
    parser.add_argument(
        "--flash-rates",
        default="0.2,2,500",
        help="flash-write runs: producer rates, events/s, comma-separated (uplink up and down)",
    )
    parser.add_argument(
        "--flash-events",
        type=int,
        help=(
            "flash-write runs: at least this many events per run (default 60; quick 12); "
            f"runs below {HOME_RATE_MAX:g}/s all last as long as the longest of them"
        ),
    )
    parser.add_argument(
        "--flash-min-seconds",
        type=float,
        help="flash-write runs: at least this long, seconds (default 10; quick 3)",
    )
    parser.add_argument(
        "--queued",
        type=int,
        help=f"events in the large outbox (default {MILLION}; quick {QUICK_QUEUED})",
    )
    parser.add_argument(
        "--million", action="store_true", help=f"the large outbox holds {MILLION} even if quick"
    )
    parser.add_argument(
        "--queued-probe",
        type=int,
        default=20_000,
        help="events put and claimed to time put and claim, on the large and the empty outbox",
    )
    parser.add_argument(
        "--idle-seconds", type=float, help="idle-cost window (default 20; quick 10)"
    )
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"which figures, comma-separated, of: {', '.join(PARTS)}",
    )
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--output", type=Path, help="result JSON (default: bench/results/…)")
    parser.add_argument("--note", default="", help="free text kept in the result JSON")
    parser.add_argument(
        "--fleet-gateways",
        type=int,
        help=f"simulated gateways of the fleet part (default {FLEET_GATEWAYS}; "
        f"quick {QUICK_FLEET_GATEWAYS})",
    )
    parser.add_argument(
        "--fleet-seconds",
        type=float,
        help=f"steady seconds of the fleet (default {FLEET_SECONDS:g}; "
        f"quick {QUICK_FLEET_SECONDS:g})",
    )
    parser.add_argument(
        "--fleet-ingest",
        type=int,
        default=FLEET_INGEST_WORKERS,
        help="reference ingest workers (PostgreSQL) beside the fleet's desk, on the brokers "
        "with MQTT 5 shared subscriptions (Mosquitto); 0: none",
    )
    parser.add_argument(
        "--fleet-brokers",
        default="mosquitto,nats",
        help="the broker kinds the fleet runs against, one after the other, comma-separated "
        "(platformkit.fleet.brokers.KINDS)",
    )
    parser.add_argument(
        "--saturation-brokers",
        default=",".join(SATURATION_KINDS),
        help="the broker kinds the saturation part steps up, comma-separated (default: "
        f"{','.join(SATURATION_KINDS)})",
    )
    parser.add_argument(
        "--saturation-connections",
        help="its connection steps for every broker, comma-separated (default: Mosquitto "
        "1000,2000,5000,10000, NATS 250,500,1000,2000,5000; quick 200,500 and 100,200)",
    )
    parser.add_argument(
        "--saturation-seconds", type=float, help="seconds per step (default 20; quick 8)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when any printed target is missed, naming each",
    )
    ingest_part.add_arguments(parser)
    if argv is None:  # `make bench BENCH_ARGS=--quick` passes options through the environment
        argv = [*sys.argv[1:], *shlex.split(os.environ.get("BENCH_ARGS", ""))]
    args = parser.parse_args(argv)
    if args.events is None:
        args.events = 20_000 if args.quick else 100_000
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.disk_seconds is None:
        args.disk_seconds = 1.5 if args.quick else 3.0
    if args.presses is None:
        args.presses = QUICK_PRESSES if args.quick else 500
    if args.button_drain_runs is None:
        args.button_drain_runs = DRAIN_RUNS
    if args.watch_alerts is None:
        args.watch_alerts = QUICK_ALERTS if args.quick else 200
    if args.flash_events is None:
        args.flash_events = 12 if args.quick else 60
    if args.flash_min_seconds is None:
        args.flash_min_seconds = 3.0 if args.quick else 10.0
    if args.million:
        args.queued = MILLION
    elif args.queued is None:
        args.queued = QUICK_QUEUED if args.quick else MILLION
    if args.idle_seconds is None:
        args.idle_seconds = 10.0 if args.quick else 20.0
    if args.fleet_gateways is None:
        args.fleet_gateways = QUICK_FLEET_GATEWAYS if args.quick else FLEET_GATEWAYS
    if args.fleet_seconds is None:
        args.fleet_seconds = QUICK_FLEET_SECONDS if args.quick else FLEET_SECONDS
    args.inflight = [int(v) for v in str(args.inflight).split(",") if v]
    args.disk_rates = [float(v) for v in str(args.disk_rates).split(",") if v]
    args.flash_rates = [float(v) for v in str(args.flash_rates).split(",") if v]
    args.parts = [p for p in str(args.parts).split(",") if p]
    args.saturation_brokers = [k for k in str(args.saturation_brokers).split(",") if k]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts: {', '.join(sorted(unknown))}")
    if (
        min(args.events, args.alarms, args.alarm_drain_runs, args.repeats, args.presses) < 1
        or args.button_drain_runs < 1
        or min(args.watch_alerts, args.flash_events, args.queued, args.queued_probe) < 1
        or min(args.flash_rates, default=1) <= 0
    ):
        parser.error(
            "--events, --alarms, --alarm-drain-runs, --repeats, --presses, --button-drain-runs, "
            "--watch-alerts, "
            "--flash-events, --queued and --queued-probe must be at least 1, rates above 0"
        )
    return args


# ------------------------------------------------------------------------------- machine


def machine_info(workdir: Path) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mosquitto = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [mosquitto_binary(), "-h"], capture_output=True, text=True, timeout=10, check=False
        )
        mosquitto = (out.stdout or out.stderr).splitlines()[0].strip()
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": code_version(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "paho_mqtt": paho.mqtt.__version__,
        "mosquitto": mosquitto,
        "workdir_fs": _filesystem_of(workdir),
    }


def _filesystem_of(path: Path) -> str:
    best = ("", "unknown", "unknown")
    with contextlib.suppress(OSError):
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, device, fstype)
    return f"{best[2]} on {best[1]} (mounted at {best[0]})"


# ------------------------------------------------------------------------------- children


class Child:
    """A bench child process speaking JSON lines on stdout; its stderr goes to ``log``."""

    def __init__(
        self,
        module: str,
        args: Sequence[str],
        log: Path,
        *,
        env_extra: dict[str, str] | None = None,
        pipe_stderr: bool = False,
    ) -> None:
        """``pipe_stderr``: the child's stderr is a pipe that this process copies to ``log``, so
        that the child's own write counters do not include its logs."""
        self.module = module
        self.log = log
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        env.update(env_extra or {})
        with log.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if pipe_stderr else stderr,
                text=True,
                env=env,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()
        if pipe_stderr:
            assert self.proc.stderr is not None
            threading.Thread(target=self._copy_log, args=(self.proc.stderr,), daemon=True).start()

    def _copy_log(self, stream: IO[str]) -> None:
        with self.log.open("a") as out:
            for line in stream:
                out.write(line)

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def read(self, event: str, timeout_s: float) -> dict[str, Any]:
        """The next JSON line, which must be ``event``."""
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise BenchError(
                f"{self.module}: no {event!r} within {timeout_s} s\n{self.tail()}"
            ) from None
        if line is None:
            code = self.proc.wait()
            raise BenchError(f"{self.module} exited ({code}) before {event!r}\n{self.tail()}")
        record: dict[str, Any] = json.loads(line)
        if record.get("event") != event:
            raise BenchError(f"{self.module}: expected {event!r}, got {record}")
        return record

    def stop(self) -> None:
        """Ask the child to stop (a line on stdin)."""
        self.send("stop")

    def send(self, command: str) -> None:
        """A command line on the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def wait(self) -> None:
        code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        if code != 0:
            raise BenchError(f"{self.module} exited with {code}\n{self.tail()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = self.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            return f"--- {self.log} ---\n" + "\n".join(lines)
        return ""


@contextlib.contextmanager
def child(module: str, args: Sequence[str], log: Path, **options: Any) -> Iterator[Child]:
    proc = Child(module, args, log, **options)
    try:
        yield proc
    finally:
        proc.kill()


# ------------------------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.broker: Mosquitto | None = None
        self.subscriber: EventCounter | None = None
        # The platform's alarm desk consumes up/alarm on a connection of its own, as a platform
        # with shared subscriptions does; alarm latency is measured there.
        self.desk: EventCounter | None = None
        self.backlog_dir = workdir / "backlog"
        self.runs: dict[str, list[dict[str, Any]]] = {}
        self._serial = 0
        self.wait_s = max(60.0, args.events / 1000)
        self.pairing_template = workdir / "buttons.json"
        self.watch_bench: WatchBench | None = None
        self.large_dir = workdir / "large-backlog"
        self.flash_template = workdir / "flash-state"

    # -- helpers ---------------------------------------------------------------------------

    def _next(self, what: str) -> tuple[str, Path]:
        """A fresh gateway id and scratch directory for one run."""
        self._serial += 1
        name = f"bench-{what}-{self._serial}"
        return name, ensure_dir(self.workdir / "runs" / name)

    def _record(self, figure: str, run: dict[str, Any]) -> dict[str, Any]:
        self.runs.setdefault(figure, []).append(run)
        return run

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    @property
    def sub(self) -> EventCounter:
        assert self.subscriber is not None
        return self.subscriber

    @property
    def alarm_desk(self) -> EventCounter:
        assert self.desk is not None
        return self.desk

    def say(self, text: str) -> None:
        print(text, flush=True)

    # -- set-up ------------------------------------------------------------------------------

    def build_backlog(self) -> None:
        seconds = asyncio.run(build_backlog(self.backlog_dir, self.args.events))
        size = (self.backlog_dir / OUTBOX_NAME).stat().st_size
        self.say(
            f"backlog: {self.args.events} telemetry events built in {seconds:.1f} s "
            f"({size / 1e6:.1f} MB outbox)"
        )

    # -- 1. baseline and drain --------------------------------------------------------------

    def baseline(self, inflight: int, backlog: Path | None = None) -> dict[str, Any]:
        """Plain paho, ``--events`` events of the backlog (or of ``backlog``) one per message."""
        events = self.args.events
        gateway_id, folder = self._next(f"baseline{inflight}")
        self.sub.track(gateway_id, telemetry=events)
        argv = [
            "--port",
            str(self.port),
            "--backlog",
            str((backlog or self.backlog_dir) / OUTBOX_NAME),
            "--gateway-id",
            gateway_id,
            "--events",
            str(events),
            "--max-inflight",
            str(inflight),
            "--timeout",
            str(self.wait_s),
        ]
        with child("bench.baseline", argv, folder / "child.log") as proc:
            proc.read("ready", CHILD_START_TIMEOUT_S)
            result = proc.read("result", self.wait_s + CHILD_START_TIMEOUT_S)
            proc.wait()
        received_ns = self.sub.wait(gateway_id, "telemetry", self.wait_s)
        first = result["first_publish_ns"]
        puback_s = (result["last_puback_ns"] - first) / 1e9
        run = {
            "max_inflight": inflight,
            "events": events,
            "seconds_to_last_puback": puback_s,
            "events_per_s": events / puback_s,
            "events_per_s_to_subscriber": events / ((received_ns - first) / 1e9),
            "refused": result["refused"],
            "cpu_s": result["cpu_s"],
            "duplicates": self.sub.snapshot(gateway_id).duplicates("telemetry"),
        }
        self.sub.forget(gateway_id)
        self.say(
            f"  baseline max_inflight={inflight:<4} {run['events_per_s']:9.0f} events/s "
            f"(to subscriber {run['events_per_s_to_subscriber']:.0f}/s, "
            f"publisher CPU {run['cpu_s']:.1f} s)"
        )
        return self._record(f"baseline_inflight_{inflight}", run)

    def gateway_run(
        self,
        what: str,
        *,
        backlog: bool,
        alarms: int,
        clock: str = "system",
        large: bool = False,
    ) -> dict[str, Any]:
        """One gateway child: drain the backlog (if any) and/or raise alarms; all measured.
        ``large``: the backlog is the large outbox (``--queued`` events, its own quota)."""
        events = (self.args.queued if large else self.args.events) if backlog else 0
        wait_s = max(self.wait_s, events / 1000)
        gateway_id, folder = self._next(what)
        state = folder / "state"
        if backlog:
            copy_backlog(self.large_dir if large else self.backlog_dir, state)
        targets: dict[str, int] = {}
        if events:
            targets["telemetry"] = events
        if alarms:
            targets["alarm"] = alarms
        self.sub.track(gateway_id, **targets)
        assert self.desk is not None
        if alarms:
            self.desk.track(gateway_id, alarm=alarms)
        argv = [
            "--port",
            str(self.port),
            "--state-dir",
            str(state),
            "--gateway-id",
            gateway_id,
            "--log",
            str(folder / "gateway.log"),
            "--clock",
            clock,
            "--alarms",
            str(alarms),
            "--alarm-spacing-ms",
            str(self.args.alarm_spacing_ms),
            # While draining, the first alarm goes once the first batch is out.
            "--alarms-after-events",
            "1" if backlog else "0",
        ]
        if large:
            argv += ["--outbox-max-bytes", str(LARGE_OUTBOX_MAX_BYTES)]
        with child("bench.drain", argv, folder / "child.log") as proc:
            started = proc.read("connected", CHILD_START_TIMEOUT_S)
            if alarms:
                proc.read("alarms_raised", wait_s)
            done_ns = {klass: self.sub.wait(gateway_id, klass, wait_s) for klass in targets}
            if alarms:
                self.desk.wait(gateway_id, "alarm", wait_s)
            proc.stop()
            result = proc.read("result", STOP_TIMEOUT_S)
            proc.wait()
        tally = self.sub.snapshot(gateway_id)
        run: dict[str, Any] = {
            "clock": clock,
            "events": events,
            "cpu_s": result["cpu_s"],
            "write_bytes": result["write_bytes"],
            "vmhwm_kb": result["vmhwm_kb"],
            "published_messages": result["published_messages"],
            "rejected_messages": result["rejected_messages"],
            "duplicates": tally.duplicates("telemetry"),
        }
        drained_ns = done_ns.get("telemetry")
        if drained_ns is not None:
            drain_s = (drained_ns - started["start_ns"]) / 1e9
            run["seconds_to_subscriber"] = drain_s
            run["events_per_s"] = events / drain_s
            run["events_per_s_from_connected"] = events / (
                (drained_ns - started["connected_ns"]) / 1e9
            )
            run["write_bytes_per_event"] = result["write_bytes"] / events
        if alarms:
            desk = self.desk.snapshot(gateway_id)
            run["alarms"] = _alarm_figures(result["alarms"], desk.alarm_first_ns, drained_ns)
            self.desk.forget(gateway_id)
        self.sub.forget(gateway_id)
        return run

    def drain(self) -> dict[str, Any]:
        run = self.gateway_run("drain", backlog=True, alarms=0)
        self.say(
            f"  gateway drain            {run['events_per_s']:9.0f} events/s "
            f"({run['seconds_to_subscriber']:.2f} s, {run['published_messages']} messages, "
            f"CPU {run['cpu_s']:.1f} s, VmHWM {run['vmhwm_kb'] / 1024:.1f} MiB)"
        )
        return self._record("drain", run)

    # -- 2. alarms -------------------------------------------------------------------------

    def alarms(self, *, draining: bool, clock: str = "system") -> dict[str, Any]:
        figure = ("alarms_draining" if draining else "alarms_idle") + (
            "" if clock == "system" else f"_{clock}_clock"
        )
        runs: list[dict[str, Any]] = []
        counted = 0
        while counted < self.args.alarms and len(runs) < (
            self.args.alarm_drain_runs if draining else 1
        ):
            runs.append(
                self.gateway_run(
                    figure.replace("_", "-"), backlog=draining, alarms=self.args.alarms, clock=clock
                )
            )
            counted += runs[-1]["alarms"]["counted"]
        figures = _pooled_alarm_figures([run["alarms"] for run in runs])
        record: dict[str, Any] = {
            "gateway_runs": runs,
            "alarms": figures,
            "vmhwm_kb": max(run["vmhwm_kb"] for run in runs),
        }
        latency = figures["latency_ms"]
        self.say(
            f"  alarms {'draining' if draining else 'idle':<8} clock={clock:<6} "
            f"p50 {latency['p50']:6.2f} ms  p99 {latency['p99']:7.2f} ms  "
            f"(over {figures['counted']} alarms on {len(runs)} gateway(s); "
            f"stored p50 {figures['stored_ms']['p50']:.2f} / "
            f"p99 {figures['stored_ms']['p99']:.2f} ms, "
            f"PUBACK p99 {figures['delivered_ms']['p99']:.2f} ms)"
        )
        return self._record(figure, record)

    # -- 3. disk ---------------------------------------------------------------------------

    def disk(self, group_commit_s: float, rate: float) -> dict[str, Any]:
        _, folder = self._next("disk")
        seconds = max(self.args.disk_seconds, DISK_MIN_EVENTS / rate)
        argv = [
            "--state-dir",
            str(folder / "state"),
            "--group-commit",
            str(group_commit_s),
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
            "--log",
            str(folder / "gateway.log"),
        ]
        with child("bench.disk", argv, folder / "child.log") as proc:
            result = proc.read("result", seconds * 20 + CHILD_START_TIMEOUT_S)
            proc.wait()
        result.pop("event")
        self.say(
            f"  disk group_commit={group_commit_s:<4} rate={rate:5.0f}/s "
            f"{result['bytes_per_event']:9.0f} B/event "
            f"(achieved {result['rate_achieved']:.0f}/s over {result['events']} events)"
        )
        return self._record(f"disk_gc{group_commit_s}_rate{rate:g}", result)

    # -- 7. flash writes per telemetry event, whole gateway, uplink up and down ---------------

    def flash(self) -> None:
        """Every ``--flash-rates`` rate with the uplink up and down, each beside an idle gateway
        (no events; same configuration, uplink and duration): what a run writes beyond the idle
        one is what its events cost, the idle one's bytes are what a boot costs. Runs below
        ``HOME_RATE_MAX`` events/s all last as long as the longest of them, so that the slowest
        spans its windows, and go side by side (their processes idle between events; bytes are
        each one's own); faster ones one rate and uplink at a time."""
        if not self.flash_template.exists():  # a state directory a gateway has run in
            asyncio.run(build_backlog(self.flash_template, 0))
        home = [rate for rate in self.args.flash_rates if rate < HOME_RATE_MAX]
        if home:
            specs = [(rate, uplink) for rate in home for uplink in FLASH_UPLINKS]
            self._flash_runs(specs, self.flash_home_seconds())
        for rate in self.args.flash_rates:
            if rate >= HOME_RATE_MAX:
                for uplink in FLASH_UPLINKS:
                    self._flash_runs([(rate, uplink)], self.flash_seconds(rate))

    def flash_seconds(self, rate: float) -> float:
        """At least ``--flash-min-seconds`` and at least ``--flash-events`` events."""
        least_s: float = self.args.flash_min_seconds
        events: int = self.args.flash_events
        return max(least_s, events / rate)

    def flash_home_seconds(self) -> float:
        """How long every run below ``HOME_RATE_MAX`` lasts: the longest of them."""
        home = [rate for rate in self.args.flash_rates if rate < HOME_RATE_MAX]
        return max((self.flash_seconds(rate) for rate in home), default=0.0)

    def _flash_child(
        self, stack: contextlib.ExitStack, rate: float, uplink: str, seconds: float
    ) -> tuple[str, Child]:
        gateway_id, folder = self._next(f"flash-{uplink}" if rate else f"flash-idle-{uplink}")
        copy_backlog(self.flash_template, folder / "state")
        argv = [
            *("--uplink", uplink, "--port", str(self.port), "--gateway-id", gateway_id),
            *("--state-dir", str(folder / "state"), "--rate", str(rate)),
            *("--seconds", str(seconds)),
        ]
        if uplink == "up" and rate:
            self.sub.track(gateway_id, telemetry=round(rate * seconds))
        proc = stack.enter_context(
            child(
                "bench.flash",
                argv,
                folder / "gateway.log",
                env_extra={"PYTHONDONTWRITEBYTECODE": "1"},
                pipe_stderr=True,
            )
        )
        return gateway_id, proc

    def _flash_runs(self, specs: list[tuple[float, str]], seconds: float) -> None:
        """``specs`` (rate, uplink) for ``seconds``, side by side with an idle gateway for each
        uplink among them; all are stopped together once every one has produced (uplink up: and
        the subscriber has every event), so that all are online for as long."""
        with contextlib.ExitStack() as stack:
            uplinks = dict.fromkeys(uplink for _, uplink in specs)
            idle = {uplink: self._flash_child(stack, 0.0, uplink, seconds) for uplink in uplinks}
            runs = [
                (rate, uplink, *self._flash_child(stack, rate, uplink, seconds))
                for rate, uplink in specs
            ]
            everyone = [proc for _, proc in idle.values()] + [proc for *_, proc in runs]
            online_ns = max(
                proc.read("online", CHILD_START_TIMEOUT_S)["online_ns"] for proc in everyone
            )
            for proc in everyone:
                proc.read("produced", seconds * 2 + CHILD_START_TIMEOUT_S)
            for _, uplink, gateway_id, _ in runs:
                if uplink == "up":
                    self.sub.wait(gateway_id, "telemetry", self.wait_s)
            stop_at_ns = online_ns + int((seconds + FLASH_STOP_MARGIN_S) * 1e9)
            time.sleep(max(0.0, (stop_at_ns - time.monotonic_ns()) / 1e9))
            for proc in everyone:
                proc.stop()
            results: dict[str, dict[str, Any]] = {}
            for uplink, (gateway_id, proc) in idle.items():
                results[gateway_id] = self._flash_idle_result(uplink, seconds, proc)
            for rate, uplink, gateway_id, proc in runs:
                result = proc.read("result", STOP_TIMEOUT_S)
                proc.wait()
                if uplink == "up":
                    result["duplicates"] = self.sub.snapshot(gateway_id).duplicates("telemetry")
                    self.sub.forget(gateway_id)
                result.pop("event")
                base = results[idle[uplink][0]]
                result.update({f"idle_{key}": base[key] for key in FLASH_IDLE_FIGURES})
                result["raw_bytes_per_event"] = result["net_write_bytes"] / result["events"]
                # online → the final flush in both: start-up comes before any event, and the
                # shutdown (checkpoint, seq mark, -shm) is a boot's; both vary by pages
                beyond_idle = result["events_net_write_bytes"] - base["events_net_write_bytes"]
                result["bytes_per_event"] = beyond_idle / result["events"]
                result["page_per_event"] = PAGE_BYTES / result["events"]
                result["ratio"] = result["bytes_per_event"] / result["event_json_bytes"]
                self.say(
                    f"  flash uplink {uplink:<4} rate={rate:5g}/s {result['bytes_per_event']:8.0f}"
                    f" B/event = {result['ratio']:6.1f}x the event's {result['event_json_bytes']}"
                    f" B JSON (net, beyond the idle gateway's; {result['events']} events over"
                    f" {result['online_s']:.0f} s, one page {result['page_per_event']:.0f} B/event;"
                    f" window {result['window_s']:g} s"
                    f"{', shipped' if result['window_shipped'] else ''}); without subtracting:"
                    f" {result['raw_bytes_per_event']:.0f} B/event"
                )
                self._record(f"flash_{uplink}_rate{rate:g}", result)

    def _flash_idle_result(self, uplink: str, seconds: float, proc: Child) -> dict[str, Any]:
        result = proc.read("result", STOP_TIMEOUT_S)
        proc.wait()
        result.pop("event")
        running = result["running_write_bytes"] - result["running_cancelled_write_bytes"]
        result["bytes_per_hour"] = running / result["running_s"] * 3600
        self.say(
            f"  flash idle gateway, uplink {uplink:<4} {result['net_write_bytes'] / 1000:6.1f} kB"
            f" net, start-up to close = written: start-up {result['start_write_bytes'] / 1000:.1f}"
            f" kB, {result['running_s']:.0f} s running {result['running_write_bytes'] / 1000:.1f}"
            f" kB ({result['bytes_per_hour'] / 1000:.0f} kB/h), close"
            f" {result['close_write_bytes'] / 1000:.1f} kB; less cancelled"
            f" {result['cancelled_write_bytes'] / 1000:.1f} kB (truncated before writeback)"
        )
        return self._record(f"flash_idle_{uplink}_{seconds:g}s", result)

    # -- 8. 1M events queued -------------------------------------------------------------------

    def build_large_backlog(self) -> None:
        seconds = asyncio.run(build_large_backlog(self.large_dir, self.args.queued))
        size = (self.large_dir / OUTBOX_NAME).stat().st_size
        self.say(
            f"large backlog: {self.args.queued} telemetry events built in {seconds:.1f} s "
            f"({size / 1e6:.0f} MB outbox)"
        )

    def queued(self, *, large: bool) -> dict[str, Any]:
        """Put and claim cost per event on a copy of the large outbox, or on an empty one."""
        _, folder = self._next("queued-large" if large else "queued-empty")
        state = ensure_dir(folder / "state")
        if large:
            copy_backlog(self.large_dir, state)
        argv = [
            *("--state-dir", str(state), "--events", str(self.args.queued_probe)),
            *("--log", str(folder / "gateway.log")),
        ]
        with child("bench.queued", argv, folder / "child.log") as proc:
            result = proc.read("result", self.wait_s + CHILD_START_TIMEOUT_S)
            proc.wait()
        result.pop("event")
        self.say(
            f"  outbox of {result['rows_before']:7d} events: put {result['put_us_per_event']:6.1f}"
            f" µs/event, claim {result['claim_us_per_event']:6.1f} µs/event "
            f"(over {result['events']} events)"
        )
        return self._record("queued_large" if large else "queued_empty", result)

    def million(self) -> None:
        """One round of the large-outbox figures: put and claim, empty, large, large and
        empty, then the drain of the whole large backlog (with plain paho's baseline if the
        drain part did not run it)."""
        for large in (False, True, True, False):  # ABBA: drift hits both alike
            self.queued(large=large)
        if "drain" not in self.args.parts:
            for inflight in self.args.inflight:
                self.baseline(inflight, backlog=self.large_dir)
        run = self.gateway_run("drain-large", backlog=True, alarms=0, large=True)
        self.say(
            f"  gateway drain of {run['events']}  {run['events_per_s']:9.0f} events/s "
            f"({run['seconds_to_subscriber']:.2f} s, CPU {run['cpu_s']:.1f} s, "
            f"VmHWM {run['vmhwm_kb'] / 1024:.1f} MiB)"
        )
        self._record("drain_large", run)

    def fleet(self) -> None:
        """A fleet of whole gateways against each broker kind, one after the other, each a
        broker of its own (``bench.fleet``)."""
        for kind in [k.strip() for k in self.args.fleet_brokers.split(",") if k.strip()]:
            folder = ensure_dir(self.workdir / f"fleet-{kind}")
            self.say(
                f"fleet: {self.args.fleet_gateways} gateways on {kind}, "
                f"{self.args.fleet_seconds:g} s steady (once per bench)"
            )
            report = run_fleet(
                workdir=folder,
                gateways=self.args.fleet_gateways,
                seconds=self.args.fleet_seconds,
                broker_kind=kind,
                ingest=self.args.fleet_ingest,
                log=folder / "fleet.log",
            )
            self._record("fleet", report)

    def saturation(self) -> None:
        """Light gateways stepped up against each broker kind (``bench.saturation``)."""
        options = SaturationOptions.for_bench(quick=self.args.quick)
        if self.args.saturation_connections:
            options.connections = tuple(
                int(v) for v in str(self.args.saturation_connections).split(",") if v
            )
        if self.args.saturation_seconds:
            options.step_s = self.args.saturation_seconds
        self.say(
            f"saturation: {', '.join(self.args.saturation_brokers)}, connections "
            + "; ".join(
                f"{kind} {'/'.join(str(n) for n in options.steps_of(kind))}"
                for kind in self.args.saturation_brokers
            )
            + f", {options.step_s:g} s a step"
        )
        report = run_saturation(
            workdir=ensure_dir(self.workdir / "saturation"),
            kinds=self.args.saturation_brokers,
            options=options,
            say=self.say,
        )
        self._record("saturation", report)

    def idle(self) -> None:
        """The idle cost of a gateway with one watch and one button (``WatchBench.idle``)."""
        self._record("idle", self._watch_bench().idle(self.args.idle_seconds))

    # -- 5. button press → platform -----------------------------------------------------------

    def pair_buttons(self) -> None:
        """One paired button per press, through the gateway's own PairingStore; each button run
        starts from a copy of the file."""
        started = time.monotonic()
        store = PairingStore(self.pairing_template)
        for n in range(self.args.presses):
            store.add(BUTTON_ID_BASE + n)
        self.say(
            f"buttons: {self.args.presses} paired in {time.monotonic() - started:.1f} s "
            f"({device_id(BUTTON_ID_BASE)} …)"
        )

    def button_run(self, what: str, *, draining: bool) -> dict[str, Any]:
        """One gateway child with its [button] link on the pty of a simulated receiver in another
        child; presses until ``--presses``, or, while draining, until the backlog is out."""
        events = self.args.events if draining else 0
        gateway_id, folder = self._next(what)
        state = ensure_dir(folder / "state")
        if draining:
            copy_backlog(self.backlog_dir, state)
        shutil.copyfile(self.pairing_template, state / "buttons.json")
        self.sub.track(gateway_id, **({"telemetry": events} if draining else {}))
        self.alarm_desk.track(gateway_id)
        presser_argv = [
            "--link",
            str(folder / "button-port"),
            "--presses",
            str(self.args.presses),
            "--spacing-ms",
            str(self.args.press_spacing_ms),
        ]
        with child("bench.presser", presser_argv, folder / "presser.log") as presser:
            port = presser.read("ready", CHILD_START_TIMEOUT_S)["port"]
            argv = [
                "--port",
                str(self.port),
                "--state-dir",
                str(state),
                "--gateway-id",
                gateway_id,
                "--log",
                str(folder / "gateway.log"),
                "--button-port",
                port,
            ]
            with child("bench.drain", argv, folder / "child.log") as gateway:
                started = gateway.read("connected", CHILD_START_TIMEOUT_S)
                presser.read("linked", CHILD_START_TIMEOUT_S)
                if draining:  # the first press goes once the first batch is out
                    self.sub.wait_first(gateway_id, "telemetry", self.wait_s)
                presser.send("go")
                drained_ns: int | None = None
                if draining:
                    drained_ns = self.sub.wait(gateway_id, "telemetry", self.wait_s)
                    presser.send("stop")
                pressed = presser.read("result", self.wait_s)
                devices = [device_id(row[0]) for row in pressed["presses"]]
                self.alarm_desk.wait_buttons(gateway_id, devices, self.wait_s)
                gateway.stop()
                result = gateway.read("result", STOP_TIMEOUT_S)
                gateway.wait()
            presser.send("exit")
            presser.wait()
        desk = self.alarm_desk.snapshot(gateway_id)
        self.alarm_desk.forget(gateway_id)
        self.sub.forget(gateway_id)
        run: dict[str, Any] = {
            "events": events,
            "start_ns": started["start_ns"],
            "cpu_s": result["cpu_s"],
            "published_messages": result["published_messages"],
            "button_counters": result["button_counters"],
            "sent_frames": pressed["sent_frames"],
            "received_frames": pressed["received_frames"],
        }
        if drained_ns is not None:
            run["seconds_to_subscriber"] = (drained_ns - started["start_ns"]) / 1e9
        run["presses"] = _press_figures(pressed["presses"], desk, drained_ns, started["start_ns"])
        return run

    def button(self, *, draining: bool) -> dict[str, Any]:
        """One figure: ``--presses`` presses on one idle gateway, or, while draining, presses
        on as many draining gateways (each from a fresh backlog copy) as it takes to count
        ``--presses`` (at most ``--button-drain-runs``)."""
        figure = "button_draining" if draining else "button_idle"
        runs: list[dict[str, Any]] = []
        counted = 0
        while counted < self.args.presses and len(runs) < (
            self.args.button_drain_runs if draining else 1
        ):
            runs.append(self.button_run(figure.replace("_", "-"), draining=draining))
            counted += runs[-1]["presses"]["counted"]
        samples = [ms for run in runs for ms in run["presses"]["samples_ms"]]
        acks = [ms for run in runs for ms in run["presses"]["ack_samples_ms"]]
        record: dict[str, Any] = {
            "gateway_runs": runs,
            "counted": len(samples),
            "retransmitted": sum(run["presses"]["retransmitted"] for run in runs),
            "latency_ms": _summary(samples),
            "ack_ms": _summary(acks),
        }
        latency = record["latency_ms"]
        retransmitted = record["retransmitted"]
        self.say(
            f"  button {'draining' if draining else 'idle':<8} "
            f"p50 {latency['p50']:6.2f} ms  p99 {latency['p99']:7.2f} ms  "
            f"(over {len(samples)} presses on {len(runs)} gateway(s); press → ACK p50 "
            f"{record['ack_ms']['p50']:.2f} / p99 {record['ack_ms']['p99']:.2f} ms, max "
            f"{latency['max']:.2f} ms"
            + (f"; {retransmitted} RETRANSMITTED" if retransmitted else "")
            + ")"
        )
        return self._record(figure, record)

    # -- 6. watch SOS → Alert Confirm ----------------------------------------------------------

    def watch(self) -> None:
        """One watch round (``bench.watch``): the plain bleak baseline and the gateway on one
        fake BlueZ, in alternating order."""
        for role, run in self._watch_bench().round().items():
            self._record(f"watch_{role}", run)

    def _watch_bench(self) -> WatchBench:
        if self.watch_bench is None:
            assert self.broker is not None
            self.watch_bench = WatchBench(
                self.broker.host,
                self.broker.port,
                self.workdir / "watch",
                alerts=self.args.watch_alerts,
                spacing_ms=self.args.watch_spacing_ms,
                say=self.say,
            )
        return self.watch_bench

    def close(self) -> None:
        if self.watch_bench is not None:
            self.watch_bench.close()


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
    }


def _press_figures(
    presses: list[list[int]], desk: Tally, drained_ns: int | None, start_ns: int
) -> dict[str, Any]:
    """Latencies in ms of the presses that count: all, or, while draining, those written to the
    pty before the subscriber had the whole backlog. Each press is of its own button, so its
    alarm is the desk's ``alarm.button`` of that device: an exact match. ``pressed_at_ms``: when
    each was written, from the gateway child's start (to place the slow ones)."""
    by_device = {device_id(row[0]): row for row in presses}
    doubled = {d: len(ids) for d, ids in desk.button_alarm_ids.items() if len(ids) != 1}
    strangers = sorted(set(desk.button_first_ns) - set(by_device))
    if doubled or strangers:
        raise BenchError(f"alarms that match no single press: {doubled or strangers}")
    missing = [device for device in by_device if device not in desk.button_first_ns]
    if missing:
        raise BenchError(f"{len(missing)} presses never reached the alarm desk")
    counted = [
        (desk.button_first_ns[device], written, acked)
        for device, (_, _, written, acked, _) in by_device.items()
        if drained_ns is None or written < drained_ns
    ]
    return {
        "pressed": len(presses),
        "counted": len(counted),
        "retransmitted": sum(1 for row in presses if row[4] > 1),
        "latency_ms": _summary([(received - written) / 1e6 for received, written, _ in counted]),
        "ack_ms": _summary([(acked - written) / 1e6 for _, written, acked in counted]),
        "samples_ms": [round((received - written) / 1e6, 3) for received, written, _ in counted],
        "ack_samples_ms": [round((acked - written) / 1e6, 3) for _, written, acked in counted],
        "pressed_at_ms": [round((written - start_ns) / 1e6, 1) for _, written, _ in counted],
    }


def _alarm_figures(
    raised: list[list[Any]], received: dict[str, int], drained_ns: int | None
) -> dict[str, Any]:
    """Latencies in ms of the alarms that count: all, or, while draining, those raised before the
    subscriber had the whole backlog."""
    counted = [row for row in raised if drained_ns is None or row[1] < drained_ns]
    missing = [row[0] for row in counted if row[0] not in received]
    if missing:
        raise BenchError(f"{len(missing)} alarms never reached the subscriber")
    return {
        "raised": len(raised),
        "counted": len(counted),
        "latency_ms": _summary([(received[a] - before) / 1e6 for a, before, *_ in counted]),
        "stored_ms": _summary([(after - before) / 1e6 for _, before, after, _ in counted]),
        "delivered_ms": _summary(
            [(delivered - before) / 1e6 for _, before, _, delivered in counted if delivered]
        ),
        "samples_ms": [round((received[a] - before) / 1e6, 3) for a, before, *_ in counted],
        "stored_samples_ms": [round((after - before) / 1e6, 3) for _, before, after, _ in counted],
        "delivered_samples_ms": [
            round((delivered - before) / 1e6, 3) for _, before, _, delivered in counted if delivered
        ],
    }


def _pooled_alarm_figures(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The alarm figures of several gateway runs (``_alarm_figures`` each), over all their
    counted alarms together."""
    latency = [ms for run in runs for ms in run["samples_ms"]]
    stored = [ms for run in runs for ms in run["stored_samples_ms"]]
    delivered = [ms for run in runs for ms in run["delivered_samples_ms"]]
    return {
        "raised": sum(run["raised"] for run in runs),
        "counted": len(latency),
        "latency_ms": _summary(latency),
        "stored_ms": _summary(stored),
        "delivered_ms": _summary(delivered),
        "samples_ms": latency,
    }


# ------------------------------------------------------------------------------- summary


def _target(
    targets: list[dict[str, Any]],
    name: str,
    value: float,
    limit: float,
    *,
    unit: str = "x",
    at_least: bool = False,
) -> bool:
    """Record ``value`` against its target (at most ``limit``, or at least); a figure that could
    not be computed (NaN) misses it."""
    ok = value >= limit if at_least else value <= limit
    targets.append(
        {
            "name": name,
            "value": value,
            "target": f"{'>=' if at_least else '<='} {limit:g}{unit}",
            "ok": ok,
        }
    )
    return ok


def summarise(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the runs, and ``targets``: every figure with a target, met or not (the
    lines printed and ``--strict`` read them from there)."""
    out: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []

    def med(figure: str, *path: str) -> float:
        values = []
        for run in runs.get(figure, []):
            value: Any = run
            for key in path:
                value = value[key]
            values.append(float(value))
        return median(values)

    baselines = {n: med(f"baseline_inflight_{n}", "events_per_s") for n in args.inflight}
    baselines = {n: v for n, v in baselines.items() if not math.isnan(v)}
    best = max(baselines, key=lambda n: baselines[n]) if baselines else None
    if best is not None and runs.get("drain"):
        drain_rate = med("drain", "events_per_s")
        out["drain"] = {
            "events": args.events,
            "gateway_events_per_s": drain_rate,
            "gateway_events_per_s_from_connected": med("drain", "events_per_s_from_connected"),
            "baseline_events_per_s": baselines,
            "baseline_best_inflight": best,
            "ratio": drain_rate / baselines[best],
            "target_ratio": DRAIN_TARGET_RATIO,
            "gateway_cpu_s": med("drain", "cpu_s"),
            "gateway_write_bytes_per_event": med("drain", "write_bytes_per_event"),
        }
        out["drain"]["meets_target"] = _target(
            targets, "drain", out["drain"]["ratio"], DRAIN_TARGET_RATIO, at_least=True
        )
        out["rss"] = {
            "drain_vmhwm_mib": med("drain", "vmhwm_kb") / 1024,
            "drain_vmhwm_mib_max": max(r["vmhwm_kb"] for r in runs["drain"]) / 1024,
        }
        if runs.get("alarms_idle"):
            out["rss"]["idle_gateway_vmhwm_mib"] = med("alarms_idle", "vmhwm_kb") / 1024
    for clock_suffix in ("", "_cached_clock"):
        idle, draining = f"alarms_idle{clock_suffix}", f"alarms_draining{clock_suffix}"
        if not runs.get(idle) or not runs.get(draining):
            continue
        figures: dict[str, Any] = {}
        for name, figure in (("idle", idle), ("draining", draining)):
            figures[name] = {
                stat: med(figure, "alarms", "latency_ms", stat) for stat in ("p50", "p99")
            }
            figures[name]["stored_p50"] = med(figure, "alarms", "stored_ms", "p50")
            figures[name]["stored_p99"] = med(figure, "alarms", "stored_ms", "p99")
            figures[name]["delivered_p99"] = med(figure, "alarms", "delivered_ms", "p99")
            figures[name]["counted_per_run"] = [r["alarms"]["counted"] for r in runs[figure]]
            figures[name]["gateways_per_run"] = [
                len(r.get("gateway_runs", [r])) for r in runs[figure]
            ]
        figures["ratio_p50"] = figures["draining"]["p50"] / figures["idle"]["p50"]
        figures["ratio_p99"] = figures["draining"]["p99"] / figures["idle"]["p99"]
        figures["target_ratio"] = ALARM_TARGET_RATIO
        if clock_suffix:  # a diagnostic: no target of its own
            figures["meets_target"] = figures["ratio_p99"] <= ALARM_TARGET_RATIO
        else:
            figures["meets_target"] = _target(
                targets, "alarm p99 draining/idle", figures["ratio_p99"], ALARM_TARGET_RATIO
            )
        out["alarms" + clock_suffix] = figures
    if runs.get("button_idle") and runs.get("button_draining"):
        button: dict[str, Any] = {}
        for name in ("idle", "draining"):
            figure = f"button_{name}"
            button[name] = {stat: med(figure, "latency_ms", stat) for stat in ("p50", "p99", "max")}
            button[name]["ack_p50"] = med(figure, "ack_ms", "p50")
            button[name]["ack_p99"] = med(figure, "ack_ms", "p99")
            button[name]["counted_per_run"] = [r["counted"] for r in runs[figure]]
            button[name]["gateways_per_run"] = [len(r["gateway_runs"]) for r in runs[figure]]
            pooled = [
                ms
                for r in runs[figure]
                for gateway_run in r["gateway_runs"]
                for ms in gateway_run["presses"]["samples_ms"]
            ]
            button[name]["pooled"] = {"presses": len(pooled), **_summary(pooled)}
        button["ratio_p50"] = button["draining"]["p50"] / button["idle"]["p50"]
        button["ratio_p99"] = button["draining"]["p99"] / button["idle"]["p99"]
        button["target_idle_p99_ms"] = BUTTON_TARGET_P99_MS
        button["target_ratio"] = ALARM_TARGET_RATIO
        idle_ok = _target(
            targets, "button idle p99", button["idle"]["p99"], BUTTON_TARGET_P99_MS, unit=" ms"
        )
        ratio_ok = _target(
            targets, "button p99 draining/idle", button["ratio_p99"], ALARM_TARGET_RATIO
        )
        button["meets_target"] = idle_ok and ratio_ok
        out["button"] = button
    disk: dict[str, Any] = {}
    for rate in args.disk_rates:
        grouped = med(f"disk_gc0.2_rate{rate:g}", "bytes_per_event")
        single = med(f"disk_gc0.0_rate{rate:g}", "bytes_per_event")
        if not (math.isnan(grouped) or math.isnan(single)):
            disk[f"{rate:g}/s"] = {
                "group_commit_0.2_bytes_per_event": grouped,
                "group_commit_0_bytes_per_event": single,
                "ratio": single / grouped,
            }
    if disk:
        out["disk"] = disk
    flash: dict[str, Any] = {}
    for rate in args.flash_rates:
        for uplink, limit in FLASH_TARGET_RATIO.items():
            figure = f"flash_{uplink}_rate{rate:g}"
            if not runs.get(figure):
                continue
            row = {
                "events": med(figure, "events"),
                "seconds": med(figure, "online_s"),
                "window_s": med(figure, "window_s"),
                "window_shipped": all(run.get("window_shipped") for run in runs[figure]),
                # net bytes (written - cancelled), online → the final flush, beyond the idle
                # gateway's
                "bytes_per_event": med(figure, "bytes_per_event"),
                "event_json_bytes": med(figure, "event_json_bytes"),
                "ratio": med(figure, "ratio"),
                "target_ratio": limit,
                "raw_bytes_per_event": med(figure, "raw_bytes_per_event"),
                "write_bytes": med(figure, "write_bytes"),
                "cancelled_write_bytes": med(figure, "cancelled_write_bytes"),
                "net_write_bytes": med(figure, "net_write_bytes"),
                "online_net_write_bytes": med(figure, "online_net_write_bytes"),
                "events_net_write_bytes": med(figure, "events_net_write_bytes"),
                "page_per_event": med(figure, "page_per_event"),
                **{f"idle_{key}": med(figure, f"idle_{key}") for key in FLASH_IDLE_FIGURES},
            }
            row["meets_target"] = _target(
                targets, f"flash writes, uplink {uplink}, {rate:g}/s", row["ratio"], limit
            )
            flash[f"{uplink} {rate:g}/s"] = row
    if flash:
        out["flash"] = flash
    if runs.get("queued_empty") and runs.get("queued_large"):
        queued: dict[str, Any] = {
            "events": args.queued,
            "million": args.queued >= MILLION,
            "target_ratio": QUEUED_TARGET_RATIO,
        }
        for op in ("put", "claim"):
            empty = med("queued_empty", f"{op}_us_per_event")
            large = med("queued_large", f"{op}_us_per_event")
            queued[op] = {"empty_us": empty, "large_us": large, "ratio": large / empty}
            queued[op]["meets_target"] = _target(
                targets,
                f"{op} cost, {args.queued} queued/empty",
                large / empty,
                QUEUED_TARGET_RATIO,
            )
        if runs.get("drain_large") and best is not None:
            rate = med("drain_large", "events_per_s")
            queued["drain"] = {
                "gateway_events_per_s": rate,
                "baseline_events_per_s": baselines[best],
                "baseline_best_inflight": best,
                "ratio": rate / baselines[best],
                "target_ratio": MILLION_DRAIN_TARGET_RATIO,
            }
            queued["drain"]["meets_target"] = _target(
                targets,
                f"drain of {args.queued} queued",
                rate / baselines[best],
                MILLION_DRAIN_TARGET_RATIO,
                at_least=True,
            )
        out["queued"] = queued
    watch = summarise_watch(runs.get("watch_gateway", []), runs.get("watch_baseline", []))
    if watch:
        _target(targets, "watch SOS → 0x01 p50 gateway/bleak", watch["ratio_p50"], TARGET_RATIO_P50)
        out["watch"] = watch
    if runs.get("idle"):
        out["idle"] = {
            "cpu_percent": med("idle", "cpu_percent"),
            "vmrss_mib": med("idle", "vmrss_kb") / 1024,
            "start_to_online_s": med("idle", "start_to_online_s"),
            "run_to_online_s": med("idle", "run_to_online_s"),
            "start_to_linked_s": med("idle", "start_to_linked_s"),
            "seconds": med("idle", "idle_s"),
            "before": IDLE_BEFORE,
        }
    if runs.get("fleet"):
        out["fleet"] = fleets = {}
        for report in runs["fleet"]:
            fleet = fleet_figures(report)
            kind = fleet["broker"]
            fleet["meets_target"] = all(
                (
                    _target(
                        targets,
                        f"fleet {kind} alarms delivered",
                        fleet["delivered_share"],
                        1.0,
                        unit="",
                        at_least=True,
                    ),
                    _target(
                        targets,
                        f"fleet {kind} alarms acknowledged",
                        fleet["acknowledged_share"],
                        1.0,
                        unit="",
                        at_least=True,
                    ),
                    _target(
                        targets,
                        f"fleet {kind} unexplained gaps",
                        fleet["gap_seqs"],
                        0,
                        unit=" seqs",
                    ),
                )
            )
            stored = fleet["postgres"]
            if stored:
                fleet["meets_target"] &= _target(
                    targets, f"fleet {kind} gaps in PostgreSQL", stored["gap_seqs"], 0, unit=" seqs"
                )
                fleet["meets_target"] &= _target(
                    targets,
                    f"fleet {kind} alarms confirmed in PostgreSQL",
                    stored["confirmed_share"],
                    1.0,
                    unit="",
                    at_least=True,
                )
            fleets[kind] = fleet
    if runs.get("ingest"):
        ingest = out["ingest"] = ingest_part.summarise(runs["ingest"][0])
        for drain in ingest["drains"]:
            name = f"ingest exactly once, {drain['workers']} worker(s)"
            _target(targets, name, drain["anomalies"], 0, unit="")
        if ingest["steps"]:
            _target(targets, "ingest exactly once, steady", ingest["steady_anomalies"], 0, unit="")
    if runs.get("saturation"):
        saturation = saturation_figures(runs["saturation"][-1])
        for kind, figs in saturation.items():
            ok = _target(
                targets,
                f"saturation {kind} alarms",
                figs["alarms_ok_share"],
                1.0,
                unit="",
                at_least=True,
            )
            ok &= _target(
                targets, f"saturation {kind} gaps", figs["gap_seqs_below"], 0, unit=" seqs"
            )
            if figs["fault"]:
                ok &= _target(
                    targets,
                    f"saturation {kind} fault alarms",
                    figs["fault"]["alarms_ok_share"],
                    1.0,
                    unit="",
                    at_least=True,
                )
                ok &= _target(
                    targets,
                    f"saturation {kind} fault gaps",
                    figs["fault"]["gap_seqs"],
                    0,
                    unit=" seqs",
                )
            figs["meets_target"] = ok
        out["saturation"] = saturation
    out["targets"] = targets
    return out


def _verdict(summary: dict[str, Any], name: str) -> str:
    """``target <= 2x: ok`` for the figure ``name`` (as ``summarise`` recorded it)."""
    (target,) = [t for t in summary["targets"] if t["name"] == name]
    return f"target {target['target']}: {'ok' if target['ok'] else 'MISSED'}"


def _samples_line(figures: dict[str, Any]) -> str:
    """How many samples each p99 is taken over (the fewest of the repeats), and which rank."""
    parts = []
    for name in ("idle", "draining"):
        count = min(figures[name]["counted_per_run"])
        gateways = max(figures[name].get("gateways_per_run", [1]))
        rank = count - max(1, math.ceil(0.99 * count)) + 1 if count else 0
        which = "the largest" if rank == 1 else f"the {_ordinal(rank)} largest"
        parts.append(f"{name} {count} on {gateways} gateway(s) (p99: {which})")
    return "  samples per repeat: " + ", ".join(parts)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def print_summary(info: dict[str, Any], summary: dict[str, Any]) -> None:
    print()
    print(f"== carebed bench, {info['date']}: {info['nproc']} CPUs, {info['cpu_model']}")
    drain = summary.get("drain")
    if drain:
        base = drain["baseline_events_per_s"]
        best = drain["baseline_best_inflight"]
        print(
            f"drain of {drain['events']} events   gateway {drain['gateway_events_per_s']:8.0f}/s"
            f"   plain paho (inflight {best}) {base[best]:8.0f}/s   ratio "
            f"{drain['ratio']:.1f}x ({_verdict(summary, 'drain')})"
        )
        others = ", ".join(f"inflight {n}: {v:.0f}/s" for n, v in base.items())
        print(f"  baseline runs: {others}")
    for key in ("alarms", "alarms_cached_clock"):
        alarms = summary.get(key)
        if not alarms:
            continue
        label = "alarm latency" if key == "alarms" else "alarm latency, is_synced cached"
        verdict = _verdict(summary, "alarm p99 draining/idle") if key == "alarms" else "diagnostic"
        print(
            f"{label}: idle p50 {alarms['idle']['p50']:.2f} / p99 {alarms['idle']['p99']:.2f} ms"
            f"   draining p50 {alarms['draining']['p50']:.2f} / p99 "
            f"{alarms['draining']['p99']:.2f} ms   ratio p50 {alarms['ratio_p50']:.1f}x, "
            f"p99 {alarms['ratio_p99']:.1f}x ({verdict})"
        )
        print(_samples_line(alarms))
    button = summary.get("button")
    if button:
        print(
            f"button press → platform: idle p50 {button['idle']['p50']:.2f} / p99 "
            f"{button['idle']['p99']:.2f} ms ({_verdict(summary, 'button idle p99')})   "
            f"draining p50 {button['draining']['p50']:.2f} / p99 "
            f"{button['draining']['p99']:.2f} ms   ratio p50 {button['ratio_p50']:.1f}x, "
            f"p99 {button['ratio_p99']:.1f}x ({_verdict(summary, 'button p99 draining/idle')})"
        )
        print(_samples_line(button))
    watch = summary.get("watch")
    if watch:
        print(summary_line(watch))
    for rate, disk in summary.get("disk", {}).items():
        print(
            f"disk per telemetry event at {rate}: group commit 0.2 s "
            f"{disk['group_commit_0.2_bytes_per_event']:.0f} B, one transaction each "
            f"{disk['group_commit_0_bytes_per_event']:.0f} B, ratio {disk['ratio']:.1f}x"
        )
    for key, row in summary.get("flash", {}).items():
        uplink, rate = key.split(" ")
        print(
            f"flash writes per event, uplink {uplink:<4} at {rate:>7}: "
            f"{row['bytes_per_event']:7.0f} B = {row['ratio']:5.1f}x the event's "
            f"{row['event_json_bytes']:.0f} B JSON "
            f"({_verdict(summary, f'flash writes, uplink {uplink}, {rate}')}; "
            f"{row['events']:.0f} events over {row['seconds']:.0f} s, one page "
            f"{row['page_per_event']:.0f} B/event, window {row['window_s']:g} s"
            f"{' (shipped)' if row['window_shipped'] else ''}; net bytes "
            f"beyond an idle gateway's, {row['raw_bytes_per_event']:.0f} B/event without "
            "subtracting)\n"
            f"  beside it, an idle gateway: {row['idle_net_write_bytes'] / 1000:.1f} kB per boot "
            f"(start-up to close), {row['idle_bytes_per_hour'] / 1000:.0f} kB/h while running "
            "(information)"
        )
    queued = summary.get("queued")
    if queued:
        size = queued["events"]
        note = (
            ""
            if queued["million"]
            else f" (not 1M: {'--quick' if size == QUICK_QUEUED else '--queued'})"
        )
        for op in ("put", "claim"):
            row = queued[op]
            print(
                f"{op} with {size} queued{note}: {row['large_us']:.1f} µs/event, empty outbox "
                f"{row['empty_us']:.1f} µs/event, ratio {row['ratio']:.2f}x "
                f"({_verdict(summary, f'{op} cost, {size} queued/empty')})"
            )
        drain_large = queued.get("drain")
        if drain_large:
            print(
                f"drain of {size} queued{note}: gateway {drain_large['gateway_events_per_s']:.0f}/s"
                f"   plain paho (inflight {drain_large['baseline_best_inflight']}) "
                f"{drain_large['baseline_events_per_s']:.0f}/s   ratio {drain_large['ratio']:.1f}x "
                f"({_verdict(summary, f'drain of {size} queued')})"
            )
    rss = summary.get("rss")
    if rss:
        idle_rss = rss.get("idle_gateway_vmhwm_mib")
        print(
            f"gateway peak RSS (VmHWM) during the drain: {rss['drain_vmhwm_mib']:.1f} MiB"
            + (f" (idle gateway: {idle_rss:.1f} MiB)" if idle_rss else "")
        )
    idle = summary.get("idle")
    if idle:
        before = idle["before"]
        print(
            f"idle gateway, 1 watch + 1 button, {idle['seconds']:.0f} s: CPU "
            f"{idle['cpu_percent']:.2f} % of a core (before: ~{before['cpu_percent']:g} %), RSS "
            f"{idle['vmrss_mib']:.1f} MiB (~{before['vmrss_mib']:g}), start → online "
            f"{idle['start_to_online_s']:.2f} s (~{before['start_to_online_s']:g}; "
            f"Gateway.run → online {idle['run_to_online_s']:.2f} s): information, no target"
        )
    for kind, fleet in (summary.get("fleet") or {}).items():
        verdicts = {
            "delivered": _verdict(summary, f"fleet {kind} alarms delivered"),
            "acknowledged": _verdict(summary, f"fleet {kind} alarms acknowledged"),
            "gaps": _verdict(summary, f"fleet {kind} unexplained gaps"),
        }
        if fleet.get("postgres"):
            verdicts["stored_gaps"] = _verdict(summary, f"fleet {kind} gaps in PostgreSQL")
            verdicts["confirmed"] = _verdict(
                summary, f"fleet {kind} alarms confirmed in PostgreSQL"
            )
        for line in fleet_lines(fleet, verdicts):
            print(line)
    ingest = summary.get("ingest")
    if ingest:
        ingest_verdicts = {
            d["workers"]: _verdict(summary, f"ingest exactly once, {d['workers']} worker(s)")
            for d in ingest["drains"]
        }
        for line in ingest_part.summary_lines(ingest, ingest_verdicts):
            print(line)
    saturation = summary.get("saturation")
    if saturation:
        names = [
            f"{kind} {what}" for kind in saturation for what in ("alarms", "gaps", "fault alarms")
        ] + [f"{kind} fault gaps" for kind in saturation]
        verdicts = {
            name: _verdict(summary, f"saturation {name}")
            for name in names
            if any(t["name"] == f"saturation {name}" for t in summary["targets"])
        }
        for line in saturation_lines(saturation, verdicts):
            print(line)
    targets = summary["targets"]
    missed = [t["name"] for t in targets if not t["ok"]]
    print(
        f"targets: {len(targets) - len(missed)} of {len(targets)} met"
        + (f"; MISSED: {'; '.join(missed)}" if missed else "")
    )


# ------------------------------------------------------------------------------- main


def run_bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    info = machine_info(workdir)
    byte_compile()
    bench = Bench(args, workdir)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        log_stream = stack.enter_context((workdir / "bench.log").open("a"))
        logs.configure("info", "json", stream=log_stream)
        broker = Mosquitto(workdir / "mosquitto", persistence=False)
        stack.callback(broker.close)
        broker.start()
        bench.broker = broker
        bench.subscriber = EventCounter(broker.host, broker.port)
        stack.callback(bench.subscriber.close)
        bench.desk = EventCounter(
            broker.host, broker.port, "bench-alarm-desk", "carebed/v1/+/up/alarm"
        )
        stack.callback(bench.desk.close)
        stack.callback(bench.close)
        print(f"bench: Mosquitto on 127.0.0.1:{broker.port}, work dir {workdir}", flush=True)
        parts = set(args.parts)
        if parts & BACKLOG_PARTS:
            bench.build_backlog()
        if "button" in parts:
            bench.pair_buttons()
        if "million" in parts:
            bench.build_large_backlog()
        for round_no in range(1, args.repeats + 1):
            print(f"round {round_no}/{args.repeats}", flush=True)
            if "drain" in parts:
                for inflight in args.inflight:
                    bench.baseline(inflight)
                bench.drain()
            if "alarms" in parts:
                bench.alarms(draining=False)
                bench.alarms(draining=True)
            if "button" in parts:
                bench.button(draining=False)
                bench.button(draining=True)
            if "disk" in parts:
                for rate in args.disk_rates:
                    for group_commit_s in (0.2, 0.0):
                        bench.disk(group_commit_s, rate)
            if "watch" in parts:
                bench.watch()
            if "million" in parts:
                bench.million()
        if "flash" in parts:
            print("flash writes per telemetry event, whole gateway (once per bench)", flush=True)
            bench.flash()
        if "idle" in parts:
            bench.idle()
        if "fleet" in parts:
            bench.fleet()
        if "ingest" in parts:
            bench._record("ingest", ingest_part.run_ingest(args, workdir / "ingest"))
        if "saturation" in parts:
            bench.saturation()
        if "diag" in parts:
            print("diagnostic: the same alarms with SystemClock.is_synced cached", flush=True)
            bench.alarms(draining=False, clock="cached")
            bench.alarms(draining=True, clock="cached")
    return {
        "machine": info,
        "options": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
        },
        "elapsed_s": time.monotonic() - started,
        "summary": summarise(args, bench.runs),
        "runs": bench.runs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.workdir is None
    workdir = ensure_dir(
        Path(tempfile.mkdtemp(prefix="carebed-bench-")) if temporary else args.workdir
    )
    try:
        report = run_bench(args, workdir)
    except BaseException:
        print(f"bench failed; its logs are in {workdir}", file=sys.stderr)
        raise
    if temporary and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = (
        args.output
        or ensure_dir(RESULTS_DIR) / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    )
    output.write_text(json.dumps(report, indent=2) + "\n")
    shutil.copyfile(output, ensure_dir(RESULTS_DIR) / "latest.json")
    print_summary(report["machine"], report["summary"])
    print(f"results: {output} (took {report['elapsed_s']:.0f} s)")
    missed = [target for target in report["summary"]["targets"] if not target["ok"]]
    if args.strict and missed:
        for target in missed:
            print(
                f"strict: {target['name']} missed its target: {target['value']:.3g} "
                f"(target {target['target']})",
                file=sys.stderr,
            )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
