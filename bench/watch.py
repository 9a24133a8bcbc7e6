"""The health watch's alarm path against plain bleak, on one fake BlueZ: ``python -m bench.watch``.

Measures, as distributions (p50/p95/p99/max, ms):

1. SOS → Alert Confirm 0x01: from the simulated watch notifying a Care Alert SOS until the
   gateway's Alert Confirm 0x01 write arrives at the watch. In between the gateway stores
   ``alarm.watch_sos`` under the alert's key (SQLite, one fsync); the alert is written to
   ``watches.json`` after the 0x01.
   Also SOS → ``alarm.watch_sos`` at a platform subscriber on the local Mosquitto.
2. The baseline, on the same bus, fake BlueZ and watch: a plain ``BleakClient`` subscribed to
   Care Alert that writes Alert Confirm 0x01 (with response) as soon as a notification arrives:
   the transport's own round trip (D-Bus daemon, the fake BlueZ, bleak, dbus-fast), which the
   gateway's figure contains too. The ratios gateway ÷ baseline (p50, p99) are what to compare.

The watch (``hil.sim.bluez.WatchSim``), the fake BlueZ and the private D-Bus daemon run in
the bench's process; the gateway (``bench.central --role gateway``, the real ``Gateway`` with
``[watch]`` enabled) and the baseline (``bench.central --role bleak``) are child processes, so
that neither shares the simulator's event loop. Each round runs both on one fresh bus, in
alternating order (baseline first in odd rounds), so that drift hits both alike.

Pacing: one alert at a time. The next goes ``--spacing-ms`` after the previous one's 0x01 arrived
(never before). Each alert is new to the gateway: ``alert_seq`` runs 1..255 and wraps, and every
alert has its own non-zero ``watch_time``, so the store's repeat rule (same seq, event and watch
time) never takes one for a repeat. The first ``--warmup`` alerts of each run are not counted.
Stamps are CLOCK_MONOTONIC: after the notification was written to the bus, and when the
simulator handled the write (``WriteValue``); at the platform, when the subscriber got the alarm.

``python -m bench.run`` runs the same rounds as its ``watch`` part. See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.common import (
    REPO_ROOT,
    RESULTS_DIR,
    byte_compile,
    code_version,
    ensure_dir,
    median,
    now_ns,
    percentile,
)
from bench.subscriber import EventCounter
from drivers.watch.codec import ALERT_CONFIRM, CARE_ALERT, HEART_RATE_MEASUREMENT, CareEvent
from drivers.watch.store import MAX_ALERTS_PER_WATCH as MAX_ALERTS
from hil.sim.bluez import FakeBluez, WatchSim
from hil.sim.broker import Mosquitto
from hil.sim.dbus import PrivateSystemBus

ADDRESS = "C0:FF:EE:00:00:01"  # watch-C0FFEE000001 (bench.common.WATCH)
ROLES = ("baseline", "gateway")
SEQ_MODULUS = 255  # alert_seq 1..255: one byte, never 0
WATCH_TIME_BASE = 850_000_000  # seconds since 2000 by the watch's clock (2026-12); +1 per alert
ALERT_TIMEOUT_S = 10.0  # one alert's 0x01
CHILD_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
DESK_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 30
DEFAULT_ALERTS = 200
QUICK_ALERTS = 50
DEFAULT_ROUNDS = 3
DEFAULT_SPACING_MS = 20.0
DEFAULT_WARMUP = 5
STATS = ("p50", "p95", "p99", "max")
FEW_REMEMBERED = 16  # alerts in the gateway's watch list: "a quiet day"
TARGET_RATIO_P50 = 3.0  # SOS → 0x01, gateway ÷ plain bleak (issue 11)


class WatchBenchError(Exception):
    """A measurement could not be taken (a child failed, or what was sent did not arrive)."""


# ------------------------------------------------------------------------------- the watch


class StampingWatch(WatchSim):
    """The simulated watch, stamping when each Alert Confirm write reached it."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.confirm_ns: list[int] = []  # parallel to ``confirms``

    def _write(self, char_uuid: str, data: bytes) -> None:
        arrived = now_ns()
        super()._write(char_uuid, data)
        if char_uuid == ALERT_CONFIRM:
            self.confirm_ns.append(arrived)


# ------------------------------------------------------------------------------- the platform


class WatchDesk(EventCounter):
    """The platform's alarm desk for the watch: stamps the first arrival of each
    ``alarm.watch_sos`` by gateway id and event ``seq`` (the gateway raises them in the order
    the alerts came, one at a time, so the n-th seq is the n-th alert's)."""

    def __init__(self, host: str, port: int) -> None:
        self.sos_ns: dict[str, dict[int, int]] = {}
        super().__init__(host, port, "bench-watch-desk", "carebed/v1/+/up/alarm")

    def track_sos(self, gateway_id: str) -> None:
        with self._cond:
            self.sos_ns[gateway_id] = {}

    def wait_sos(self, gateway_id: str, count: int, timeout_s: float) -> dict[int, int]:
        """Block until ``count`` ``alarm.watch_sos`` of ``gateway_id`` arrived; seq → ns."""
        with self._cond:
            arrived = self.sos_ns[gateway_id]
            if not self._cond.wait_for(lambda: len(arrived) >= count, timeout_s):
                raise WatchBenchError(
                    f"{gateway_id}: {len(arrived)} of {count} alarm.watch_sos after {timeout_s} s"
                )
            return dict(arrived)

    def forget_sos(self, gateway_id: str) -> dict[int, int]:
        with self._cond:
            return self.sos_ns.pop(gateway_id, {})

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        stamp = now_ns()
        parts = msg.topic.split("/")
        if len(parts) != 5 or parts[4] != "alarm":
            return
        events = json.loads(bytes(msg.payload)).get("events", [])
        seqs = [int(e["seq"]) for e in events if e.get("kind") == "alarm.watch_sos"]
        with self._cond:
            arrived = self.sos_ns.get(parts[2])
            if arrived is None:
                self.strays += 1
                return
            for seq in seqs:
                arrived.setdefault(seq, stamp)
            self._cond.notify_all()


# ------------------------------------------------------------------------------- children


class AsyncChild:
    """A bench child speaking JSON lines on stdout, read from the simulator's event loop."""

    def __init__(self, module: str, log: Path) -> None:
        self.module = module
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, args: Sequence[str], env_extra: dict[str, str]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            env.pop(name, None)
        env.update(env_extra)
        with self.log.open("ab") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                *args,
                cwd=REPO_ROOT,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
            )

    async def read(self, event: str, timeout_s: float) -> dict[str, Any]:
        """The next JSON line, which must be ``event``."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                line = await self.proc.stdout.readline()
        except TimeoutError:
            raise WatchBenchError(
                f"{self.module}: no {event!r} within {timeout_s} s\n{self.tail()}"
            ) from None
        if not line:
            code = await self.proc.wait()
            raise WatchBenchError(f"{self.module} exited ({code}) before {event!r}\n{self.tail()}")
        record: dict[str, Any] = json.loads(line)
        if record.get("event") != event:
            raise WatchBenchError(f"{self.module}: expected {event!r}, got {record}")
        return record

    def stop(self) -> None:
        """Ask the child to stop (a line on stdin)."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stop\n")

    def close_stdin(self) -> None:
        """End of file on the child's stdin."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    async def wait(self) -> None:
        assert self.proc is not None
        async with asyncio.timeout(STOP_TIMEOUT_S):
            code = await self.proc.wait()
        if code != 0:
            raise WatchBenchError(f"{self.module} exited with {code}\n{self.tail()}")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            lines = self.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            return f"--- {self.log} ---\n" + "\n".join(lines)
        return ""


# ------------------------------------------------------------------------------- the bench


def _confirmed_after(index: int) -> Callable[[WatchSim], bool]:
    return lambda watch: len(watch.confirms) > index


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (nearest rank) and max."""
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else float("nan"),
    }


class WatchBench:
    """The watch figures, one round at a time (``round()``), against the broker at host:port."""

    def __init__(
        self,
        host: str,
        port: int,
        workdir: Path,
        *,
        alerts: int,
        spacing_ms: float,
        warmup: int = DEFAULT_WARMUP,
        say: Callable[[str], None] = print,
    ) -> None:
        self.port = port
        self.workdir = ensure_dir(workdir)
        self.alerts = alerts
        self.spacing_s = spacing_ms / 1000
        self.warmup = warmup
        self.say = say
        self.desk = WatchDesk(host, port)
        self.rounds = 0
        self._serial = 0
        self._alert_no = 0

    def close(self) -> None:
        self.desk.close()

    def round(self) -> dict[str, dict[str, Any]]:
        """One round: the baseline and the gateway on one fresh bus and fake BlueZ, baseline
        first in odd rounds, gateway first in even ones. Returns each one's run, by role."""
        self.rounds += 1
        order = ROLES if self.rounds % 2 else tuple(reversed(ROLES))
        return asyncio.run(self._round(order))

    async def _round(self, order: Sequence[str]) -> dict[str, dict[str, Any]]:
        folder = ensure_dir(self.workdir / f"round-{self.rounds}")
        watch = StampingWatch(ADDRESS)
        runs: dict[str, dict[str, Any]] = {}
        async with (
            PrivateSystemBus(folder / "dbus") as bus,
            FakeBluez(bus.address, [watch]),
        ):
            for role in order:
                runs[role] = await self._run(role, bus.address, watch)
        return runs

    def idle(self, seconds: float) -> dict[str, Any]:
        """The idle cost of a gateway with one watch and one button linked (``bench.central
        --idle-s``; the button's receiver is ``bench.presser``, which never presses here)."""
        return asyncio.run(self._idle(seconds))

    async def _idle(self, seconds: float) -> dict[str, Any]:
        gateway_id, folder = self._next("idle")
        watch = StampingWatch(ADDRESS)
        presser = AsyncChild("bench.presser", folder / "presser.log")
        central = AsyncChild("bench.central", folder / "child.log")
        async with (
            PrivateSystemBus(folder / "dbus") as bus,
            FakeBluez(bus.address, [watch]),
        ):
            try:
                await presser.start(["--link", str(folder / "button-port"), "--presses", "1"], {})
                port = (await presser.read("ready", CHILD_START_TIMEOUT_S))["port"]
                argv = [
                    *("--role", "gateway", "--address", ADDRESS, "--port", str(self.port)),
                    *("--state-dir", str(folder / "state"), "--gateway-id", gateway_id),
                    *("--log", str(folder / "gateway.log"), "--button-port", port),
                    *("--idle-s", str(seconds), "--spawned-ns", str(now_ns())),
                ]
                await central.start(argv, {"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
                await central.read("linked", CHILD_START_TIMEOUT_S)
                await presser.read("linked", CHILD_START_TIMEOUT_S)
                idle = await central.read("idle", seconds + CHILD_START_TIMEOUT_S)
                central.stop()
                await central.read("result", STOP_TIMEOUT_S)
                await central.wait()
                await watch.wait_disconnected(STOP_TIMEOUT_S)
                presser.close_stdin()  # end of file: no presses, exit
                await presser.read("result", STOP_TIMEOUT_S)
                await presser.wait()
            finally:
                await central.kill()
                await presser.kill()
        idle.pop("event")
        self.say(
            f"  idle gateway (1 watch, 1 button, {idle['idle_s']:.0f} s): CPU "
            f"{idle['cpu_percent']:.2f} % of a core, RSS {idle['vmrss_kb'] / 1024:.1f} MiB, "
            f"process start → online {idle['start_to_online_s']:.2f} s (Gateway.run → online "
            f"{idle['run_to_online_s']:.2f} s), → watch linked {idle['start_to_linked_s']:.2f} s"
        )
        return idle

    def _next(self, role: str) -> tuple[str, Path]:
        self._serial += 1
        name = f"bench-watch-{role}-{self._serial}"
        return name, ensure_dir(self.workdir / "runs" / name)

    async def _run(self, role: str, bus_address: str, watch: StampingWatch) -> dict[str, Any]:
        gateway_id, folder = self._next(role)
        argv = ["--role", "bleak" if role == "baseline" else "gateway", "--address", ADDRESS]
        if role == "gateway":
            argv += [
                *("--port", str(self.port), "--state-dir", str(folder / "state")),
                *("--gateway-id", gateway_id, "--log", str(folder / "gateway.log")),
            ]
            self.desk.track_sos(gateway_id)
        child = AsyncChild("bench.central", folder / "child.log")
        try:
            await child.start(argv, {"DBUS_SYSTEM_BUS_ADDRESS": bus_address})
            await child.read("linked", CHILD_START_TIMEOUT_S)
            await watch.wait_subscribed(CARE_ALERT, CHILD_START_TIMEOUT_S)
            if role == "gateway":  # it subscribes to Care Alert first, then to the rest
                await watch.wait_subscribed(HEART_RATE_MEASUREMENT, CHILD_START_TIMEOUT_S)
            alerts = await self._alerts(watch, self.warmup + self.alerts)
            child.stop()
            result = await child.read("result", STOP_TIMEOUT_S)
            await child.wait()
            await watch.wait_disconnected(STOP_TIMEOUT_S)
        finally:
            await child.kill()
        if watch.pending_alerts:
            raise WatchBenchError(f"{role}: alerts left unconfirmed: {watch.pending_alerts}")
        counted = alerts[self.warmup :]
        confirm_ms = [(confirmed - sent) / 1e6 for _, sent, confirmed in counted]
        # The n-th alert of a run finds min(n, 64) earlier alerts in the gateway's watch list.
        remembered = range(self.warmup, len(alerts))
        result.pop("event")
        run: dict[str, Any] = {
            "alerts": len(counted),
            "warmup": self.warmup,
            "confirm_ms": summary(confirm_ms),
            "confirm_samples_ms": [round(ms, 3) for ms in confirm_ms],
            "child": result,
        }
        if role == "gateway":
            run["confirm_ms_few_remembered"] = summary(
                [ms for n, ms in zip(remembered, confirm_ms, strict=True) if n < FEW_REMEMBERED]
            )
            run["confirm_ms_full_list"] = summary(
                [ms for n, ms in zip(remembered, confirm_ms, strict=True) if n >= MAX_ALERTS]
            )
            platform_ms = await self._platform(gateway_id, alerts)
            run["platform_ms"] = summary(platform_ms)
            run["platform_samples_ms"] = [round(ms, 3) for ms in platform_ms]
        line = (
            f"  watch {role:<8} SOS → 0x01 p50 {run['confirm_ms']['p50']:6.2f} ms  "
            f"p99 {run['confirm_ms']['p99']:6.2f} ms  max {run['confirm_ms']['max']:6.2f} ms"
        )
        line += f"  (over {len(counted)} alerts)"
        if role == "gateway":
            few, full = run["confirm_ms_few_remembered"], run["confirm_ms_full_list"]
            line += (
                f"\n                 SOS → platform p50 {run['platform_ms']['p50']:.2f} / "
                f"p99 {run['platform_ms']['p99']:.2f} ms; SOS → 0x01 p50 with < "
                f"{FEW_REMEMBERED} alerts in the watch list {few['p50']:.2f} ms, with "
                f"{MAX_ALERTS} (full) {full['p50']:.2f} ms"
            )
        self.say(line)
        return run

    async def _alerts(self, watch: StampingWatch, count: int) -> list[tuple[int, int, int]]:
        """``count`` SOS alerts, one at a time; (alert_seq, sent ns, 0x01 arrived ns) each."""
        done: list[tuple[int, int, int]] = []
        for _ in range(count):
            seq = self._alert_no % SEQ_MODULUS + 1
            watch_time = WATCH_TIME_BASE + self._alert_no
            self._alert_no += 1
            index = len(watch.confirms)
            if not await watch.care_alert(CareEvent.SOS, seq, watch_time):
                raise WatchBenchError(f"SOS {seq} not notified (link down or not subscribed)")
            sent = now_ns()
            await watch.wait_for(_confirmed_after(index), ALERT_TIMEOUT_S, f"no confirm of {seq}")
            if watch.confirms[index] != (seq, 0x01) or len(watch.confirms) != index + 1:
                raise WatchBenchError(
                    f"SOS {seq}: expected one confirm (seq, 0x01), got {watch.confirms[index:]}"
                )
            done.append((seq, sent, watch.confirm_ns[index]))
            # Pacing, not a wait for a condition: the next alert is due then.
            await asyncio.sleep(max(0.0, self.spacing_s - (now_ns() - done[-1][2]) / 1e9))
        return done

    async def _platform(self, gateway_id: str, alerts: list[tuple[int, int, int]]) -> list[float]:
        """SOS → alarm.watch_sos at the desk, ms, of the counted alerts (matched by event seq)."""
        try:
            arrived = await asyncio.to_thread(
                self.desk.wait_sos, gateway_id, len(alerts), DESK_TIMEOUT_S
            )
        finally:
            self.desk.forget_sos(gateway_id)
        if len(arrived) != len(alerts):
            raise WatchBenchError(f"{len(arrived)} alarm.watch_sos for {len(alerts)} alerts")
        stamps = [arrived[seq] for seq in sorted(arrived)]
        return [
            (stamp - sent) / 1e6
            for stamp, (_, sent, _) in list(zip(stamps, alerts, strict=True))[self.warmup :]
        ]


# ------------------------------------------------------------------------------- summary


def summarise(
    gateway_runs: Sequence[dict[str, Any]], baseline_runs: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Medians over the runs of each statistic, pooled figures, and gateway ÷ baseline."""
    if not gateway_runs or not baseline_runs:
        return {}
    out: dict[str, Any] = {}
    for name, runs in (("gateway", gateway_runs), ("baseline", baseline_runs)):
        pooled = [ms for run in runs for ms in run["confirm_samples_ms"]]
        out[name] = {
            "confirm_ms": {s: median([r["confirm_ms"][s] for r in runs]) for s in STATS},
            "confirm_ms_pooled": {"alerts": len(pooled), **summary(pooled)},
            "per_run_p50": [r["confirm_ms"]["p50"] for r in runs],
            "per_run_p99": [r["confirm_ms"]["p99"] for r in runs],
        }
    out["gateway"]["platform_ms"] = {
        s: median([r["platform_ms"][s] for r in gateway_runs]) for s in STATS
    }
    for key in ("few_remembered", "full_list"):
        out["gateway"][f"{key}_p50"] = median([r[f"confirm_ms_{key}"]["p50"] for r in gateway_runs])
    gateway, baseline = out["gateway"]["confirm_ms"], out["baseline"]["confirm_ms"]
    out["ratio_p50"] = gateway["p50"] / baseline["p50"]
    out["ratio_p99"] = gateway["p99"] / baseline["p99"]
    out["target_ratio_p50"] = TARGET_RATIO_P50
    out["meets_target"] = out["ratio_p50"] <= TARGET_RATIO_P50
    out["ratio_p50_per_round"] = [
        g["confirm_ms"]["p50"] / b["confirm_ms"]["p50"]
        for g, b in zip(gateway_runs, baseline_runs, strict=False)
    ]
    out["ratio_p99_per_round"] = [
        g["confirm_ms"]["p99"] / b["confirm_ms"]["p99"]
        for g, b in zip(gateway_runs, baseline_runs, strict=False)
    ]
    return out


def summary_line(watch: dict[str, Any]) -> str:
    gateway, baseline = watch["gateway"]["confirm_ms"], watch["baseline"]["confirm_ms"]
    platform = watch["gateway"]["platform_ms"]
    return (
        f"watch SOS → 0x01: gateway p50 {gateway['p50']:.2f} / p99 {gateway['p99']:.2f} ms   "
        f"plain bleak p50 {baseline['p50']:.2f} / p99 {baseline['p99']:.2f} ms   ratio p50 "
        f"{watch['ratio_p50']:.1f}x (target <= {TARGET_RATIO_P50:g}x: "
        f"{'ok' if watch['meets_target'] else 'MISSED'}), p99 {watch['ratio_p99']:.1f}x   "
        "SOS → platform p50 "
        f"{platform['p50']:.2f} / p99 {platform['p99']:.2f} ms"
    )


# ------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.watch",
        description="SOS → Alert Confirm 0x01, gateway against plain bleak (docs/PERFORMANCE.md).",
    )
    parser.add_argument(
        "--alerts", type=int, help=f"SOS alerts per run (default {DEFAULT_ALERTS}; quick 50)"
    )
    parser.add_argument("--rounds", type=int, help=f"default {DEFAULT_ROUNDS}; quick 1")
    parser.add_argument("--quick", action="store_true", help="50 alerts, 1 round")
    parser.add_argument(
        "--spacing-ms",
        type=float,
        default=DEFAULT_SPACING_MS,
        help="from one alert's 0x01 to the next alert",
    )
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="uncounted alerts")
    parser.add_argument("--out", type=Path, help="result JSON (default: bench/results/watch-…)")
    parser.add_argument("--workdir", type=Path, help="scratch directory (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.alerts is None:
        args.alerts = QUICK_ALERTS if args.quick else DEFAULT_ALERTS
    if args.rounds is None:
        args.rounds = 1 if args.quick else DEFAULT_ROUNDS
    if min(args.alerts, args.rounds) < 1 or args.warmup < 0:
        parser.error("--alerts and --rounds must be at least 1, --warmup at least 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.workdir is None
    workdir = ensure_dir(
        Path(tempfile.mkdtemp(prefix="carebed-bench-watch-")) if temporary else args.workdir
    )
    byte_compile()
    started = time.monotonic()
    runs: dict[str, list[dict[str, Any]]] = {role: [] for role in ROLES}
    try:
        with contextlib.ExitStack() as stack:
            broker = Mosquitto(workdir / "mosquitto", persistence=False)
            stack.callback(broker.close)
            broker.start()
            print(f"bench: Mosquitto on 127.0.0.1:{broker.port}, work dir {workdir}", flush=True)
            bench = WatchBench(
                broker.host,
                broker.port,
                workdir / "watch",
                alerts=args.alerts,
                spacing_ms=args.spacing_ms,
                warmup=args.warmup,
            )
            stack.callback(bench.close)
            for round_no in range(1, args.rounds + 1):
                print(f"round {round_no}/{args.rounds}", flush=True)
                for role, run in bench.round().items():
                    runs[role].append(run)
    except BaseException:
        print(f"bench failed; its logs are in {workdir}", file=sys.stderr)
        raise
    if temporary and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    result = summarise(runs["gateway"], runs["baseline"])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.out or ensure_dir(RESULTS_DIR) / (
        f"watch-{stamp}{'-quick' if args.quick else ''}.json"
    )
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "code": code_version(),
        "nproc": len(os.sched_getaffinity(0)),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "elapsed_s": time.monotonic() - started,
        "summary": result,
        "runs": runs,
    }
    output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(summary_line(result))
    print(f"results: {output} (took {report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
