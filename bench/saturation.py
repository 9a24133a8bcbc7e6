"""The bench's saturation part: where one broker node saturates, with light gateways.

For each broker kind (``platformkit.fleet.brokers``: Mosquitto, MQTT 5; a 3-node NATS cluster,
MQTT 3.1.1), a broker of the part's own, the fleet's desk (it acknowledges every alarm and keeps
every gateway's seq ledger) and light gateways (``platformkit.fleet.light``: one MQTT connection
each, the contract's traffic, no SQLite) in a child process, then steps of offered load:

a. connections: ``CONNECTION_STEPS`` gateways at a home's traffic (3.5 events a minute);
b. events/s: with every gateway of (a) connected, the offered rate doubled at each step until
   the desk gets less than 99 % of it, the alarm p99 passes 1 s, an alarm is lost, or the light
   gateways cannot offer it (the ``limit`` says which process ran out: broker, generator, desk,
   or the machine's CPUs);
c. NATS: a node SIGKILLed and started again during a step at a moderate rate.

After each step the offered load stops and the part waits (bounded) until the desk holds every
seq each gateway handed out and every alarm is acknowledged; then it counts the unexplained gaps.
Broker CPU is the sum of utime and stime of its process(es), from /proc/PID/stat, per node.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import machine_busy_ticks, percentile
from platformkit.fleet import brokers
from platformkit.fleet.desk import Desk
from platformkit.fleet.light import HOME_EVENTS_PER_MIN, LightProcess

KINDS = ("mosquitto", "nats")
CONNECTION_STEPS = {"mosquitto": (1000, 2000, 5000, 10000), "nats": (250, 500, 1000, 2000, 5000)}
QUICK_CONNECTION_STEPS = {"mosquitto": (200, 500), "nats": (100, 200)}
MEMORY_SHARE = 0.5  # of MemAvailable: the most a broker is let grow to in a connection step
# New connections a second while a step connects its gateways (a NATS node refuses SUBSCRIBEs
# in a faster storm: docs/SCALE.md).
CONNECTS_PER_S = {"mosquitto": 500.0, "nats": 100.0}
STEP_SECONDS = 20.0
QUICK_STEP_SECONDS = 8.0
RATE_START = 250.0  # events/s of the first rate step
QUICK_RATE_START = 200.0
RATE_FACTOR = 2.0
MAX_RATE_STEPS = 7
QUICK_MAX_RATE_STEPS = 3
ALARM_SHARE = 0.02  # of the offered events: enough alarms in a step for a p99
ACK_TIMEOUT_S = 10.0  # the light gateways' alarm resend (the contract's default is 30 s)
DRAIN_TIMEOUT_S = 45.0
FAULT_DRAIN_TIMEOUT_S = 120.0  # NATS redelivers an unacknowledged message after its ack wait
FAULT_DOWN_S = 10.0
FAULT_RATE = 500.0  # events/s offered while a NATS node is killed
PROBE_S = 0.5
SETTLE_MAX_S = 60.0
SETTLE_WINDOW_S = 2.0
SETTLE_FALL = 0.85  # settled once a window's broker CPU is above 85 % of the one before
SETTLE_QUIET_CORES = 0.02
DELIVERY_TARGET = 0.99  # delivered ÷ offered, at least, below saturation
ALARM_P99_TARGET_MS = 1000.0
CPU_SATURATED = 0.9  # of a core: a single-threaded process is at its ceiling
# Events a second that may be in flight at the window's two edges without counting as "short".
EDGE_SLACK_PER_S = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
GATEWAY_PREFIX = "sat"


class SaturationError(Exception):
    """The saturation part could not run a step."""


# ------------------------------------------------------------------------------ pure decisions


@dataclass(frozen=True, slots=True)
class StepLoad:
    """What a step's verdict is made of: rates, the alarm tail, and the busiest processes."""

    offered_per_s: float
    published_per_s: float
    delivered_per_s: float
    alarm_p99_ms: float
    alarms_lost: int  # raised in the step and never delivered or never acknowledged
    broker_cores: float  # the busiest broker process, in cores
    broker_threads: int  # 1: Mosquitto, a core is its ceiling; more: NATS
    generator_cores: float  # the busiest light-gateway process
    desk_cores: float
    machine_busy: float  # share of all the machine's CPUs busy, 0..1


def limit(load: StepLoad) -> str | None:
    """None while the step holds; otherwise what gave out first:

    - ``generator``: the light gateways did not offer the rate (published < 99 % of offered);
    - ``broker``/``desk``: less than 99 % delivered, an alarm p99 over 1 s or an alarm lost,
      and that process at a full core (a multi-threaded broker: over a core on a machine
      whose CPUs are all busy);
    - ``machine``: the same symptoms with every CPU busy and no single process at its ceiling;
    - ``unknown``: the symptoms without any of these.
    """
    offered_short = load.published_per_s < DELIVERY_TARGET * load.offered_per_s - EDGE_SLACK_PER_S
    delivered_short = (
        load.delivered_per_s < DELIVERY_TARGET * load.published_per_s - EDGE_SLACK_PER_S
        or load.alarm_p99_ms > ALARM_P99_TARGET_MS  # NaN (no alarm in the step) is not over
        or load.alarms_lost > 0
    )
    if not offered_short and not delivered_short:
        return None
    if offered_short and not delivered_short:
        return "generator"
    single = [("desk", load.desk_cores), ("generator", load.generator_cores)]
    if load.broker_threads <= 1:
        single.insert(0, ("broker", load.broker_cores))
    for name, cores in single:
        if cores >= CPU_SATURATED:
            return name
    if load.machine_busy >= CPU_SATURATED:
        return "broker" if load.broker_cores >= 1.0 else "machine"
    return "generator" if offered_short else "unknown"


def rate_steps(start: float, factor: float, steps: int) -> list[float]:
    """The offered rates of the event-rate steps: ``start`` multiplied by ``factor`` each step."""
    if start <= 0 or factor <= 1 or steps < 0:
        raise ValueError("rates start above 0 and grow")
    return [start * factor**n for n in range(steps)]


# ------------------------------------------------------------------------------ /proc


def child_pids_listening(ports: Sequence[int]) -> dict[int, int]:
    """``{port: pid}`` of this process's children that listen on ``ports`` (the brokers the
    part started), from /proc/net/tcp and each child's descriptors."""
    wanted = {f"{port:04X}" for port in ports}
    inodes: dict[str, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        port_hex = local.rsplit(":", 1)[1]
        if state == "0A" and port_hex in wanted:  # LISTEN
            inodes[f"socket:[{inode}]"] = int(port_hex, 16)
    out: dict[int, int] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != me:
                continue
            for fd in (entry / "fd").iterdir():
                port = inodes.get(os.readlink(fd))
                if port is not None:
                    out[port] = int(entry.name)
        except (OSError, ValueError, IndexError):
            continue
    return out


@dataclass(frozen=True, slots=True)
class ProcSample:
    pid: int
    cpu_s: float
    rss_kib: int
    threads: int


def proc_sample(pid: int) -> ProcSample | None:
    """utime + stime, VmRSS and threads of ``pid`` (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    rss = threads = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return ProcSample(pid, (int(stat[11]) + int(stat[12])) / CLK_TCK, rss, threads)


# ------------------------------------------------------------------------------ the run


@dataclass(slots=True)
class Options:
    # Per broker kind; ``connections`` (the command line's) for every kind.
    connection_steps: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: dict(CONNECTION_STEPS)
    )
    connections: tuple[int, ...] = ()
    step_s: float = STEP_SECONDS
    rate_start: float = RATE_START
    rate_steps: int = MAX_RATE_STEPS
    alarm_share: float = ALARM_SHARE
    connects_per_s: dict[str, float] = field(default_factory=lambda: dict(CONNECTS_PER_S))
    fault: bool = True  # on a cluster: a node killed during a step
    settle_max_s: float = SETTLE_MAX_S  # after connecting and after a fault

    def steps_of(self, kind: str) -> tuple[int, ...]:
        return self.connections or self.connection_steps.get(kind, (1000,))

    @classmethod
    def for_bench(cls, *, quick: bool) -> Options:
        if quick:
            return cls(
                dict(QUICK_CONNECTION_STEPS),
                step_s=QUICK_STEP_SECONDS,
                rate_start=QUICK_RATE_START,
                rate_steps=QUICK_MAX_RATE_STEPS,
            )
        return cls()


class Run:
    """One broker kind's steps: its broker, its desk, its light gateways."""

    def __init__(
        self, kind: str, workdir: Path, options: Options, say: Callable[[str], None], *, top: int
    ) -> None:
        self.kind = kind
        self.top = top
        self.workdir = workdir
        self.options = options
        self.say = say
        self.broker: brokers.FleetBroker | None = None
        self.desk: Desk | None = None
        self.gens: list[LightProcess] = []
        self.alarms: dict[str, list[Any]] = {}  # id -> [gw, seq, raised_mono]
        self.acks: dict[str, list[Any]] = {}  # id -> [received_mono, attempt]
        self.seqs: dict[str, int] = {}
        self.broker_base_rss_kib = 0
        self.steps: list[dict[str, Any]] = []

    # -- set-up ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def running(self) -> Iterator[Run]:
        with contextlib.ExitStack() as stack:
            broker = brokers.start(self.kind, self.workdir / "broker")
            stack.callback(brokers.close_quietly, broker)
            self.broker = broker
            self.desk = Desk(broker.host, broker.port, protocol=broker.protocol)
            stack.callback(self.desk.close)
            gen = LightProcess(
                host=broker.host,
                ports=broker.ports or [broker.port],
                protocol=broker.protocol,
                prefix=f"{GATEWAY_PREFIX}{os.getpid() % 10000:04d}{self.kind[0]}",
                indices=range(self.top),
                ack_timeout_s=ACK_TIMEOUT_S,
                log=self.workdir / "light.log",
            )
            stack.callback(gen.close)
            self.gens = [gen]
            self.broker_base_rss_kib = sum(s.rss_kib for s in self._broker_samples().values())
            yield self

    def broker_ports(self) -> list[int]:
        assert self.broker is not None
        return self.broker.ports or [self.broker.port]

    def _broker_samples(self) -> dict[int, ProcSample]:
        """``{port: sample}`` of every broker process (per node)."""
        out = {}
        for port, pid in child_pids_listening(self.broker_ports()).items():
            sample = proc_sample(pid)
            if sample is not None:
                out[port] = sample
        return out

    # -- steps -------------------------------------------------------------------------------

    def connection_step(self, total: int) -> dict[str, Any]:
        """Connect up to ``total`` gateways, let the broker settle, then a step at a home's
        traffic."""
        connected = self.connect(total)
        settle_s = self.settle()
        figures = self.step("connections", total * HOME_EVENTS_PER_MIN / 60)
        figures["connect_s"] = connected["connect_s"]
        figures["settle_s"] = settle_s
        return figures

    def settle(self) -> float:
        """Until the broker's CPU stops falling from one window to the next (bounded): what a
        connection storm or a node's restart left it to do is not counted in the next step."""
        started = time.monotonic()
        previous = math.inf
        while time.monotonic() - started < self.options.settle_max_s:
            before = self._broker_samples()
            time.sleep(SETTLE_WINDOW_S)
            after = self._broker_samples()
            cores = sum(
                (a.cpu_s - before[port].cpu_s) / SETTLE_WINDOW_S
                for port, a in after.items()
                if port in before and before[port].pid == a.pid
            )
            if cores >= previous * SETTLE_FALL or cores < SETTLE_QUIET_CORES:
                break
            previous = cores
        return time.monotonic() - started

    def connect(self, total: int) -> dict[str, Any]:
        online = sum(self._snapshot(g)["online"] for g in self.gens)
        more = total - online
        started = time.monotonic()
        if more > 0:
            per_s = self.options.connects_per_s.get(self.kind, 100.0)
            timeout_s = more / per_s + 120.0
            for gen in self.gens:
                gen.send(
                    {
                        "op": "connect",
                        "count": more,
                        "per_s": per_s,
                        "timeout_s": timeout_s,
                    }
                )
            for gen in self.gens:
                gen.answer("connected", timeout_s + 30.0)
        return {"connect_s": time.monotonic() - started}

    def _snapshot(self, gen: LightProcess, *, seqs: bool = False) -> dict[str, Any]:
        snap = gen.request({"op": "snapshot", "seqs": seqs}, "snapshot")
        for alarm in snap.pop("alarms"):
            self.alarms[alarm[0]] = alarm[1:]
        for ack in snap.pop("acks"):
            self.acks.setdefault(ack[0], ack[1:])
        if seqs:
            self.seqs.update(snap.pop("seqs"))
        return snap

    def _rate(self, events_per_s: float) -> None:
        for gen in self.gens:
            gen.request(
                {
                    "op": "rate",
                    "events_per_s": events_per_s / len(self.gens),
                    "alarm_share": self.options.alarm_share,
                },
                "rate",
            )

    def step(
        self, phase: str, rate: float, *, fault: Callable[[float], None] | None = None
    ) -> dict[str, Any]:
        """Offer ``rate`` events/s for a step, stop, wait until the desk has everything; the
        step's figures."""
        assert self.desk is not None
        desk = self.desk
        seconds = self.options.step_s * (2 if fault else 1)
        self._rate(rate)
        time.sleep(min(2.0, seconds / 4))  # the rate settles before the window opens
        before = self._sample()
        faulted: list[float] = []
        thread = None
        if fault is not None:

            def inject() -> None:
                begun = time.monotonic()
                fault(FAULT_DOWN_S)
                faulted.append(time.monotonic() - begun)

            thread = threading.Timer(seconds / 3, inject)
            thread.start()
        time.sleep(seconds)
        if thread is not None:
            thread.join(FAULT_DOWN_S + 120.0)
        after = self._sample()
        self._rate(0.0)
        drain_s, complete = self._drain(FAULT_DRAIN_TIMEOUT_S if fault else DRAIN_TIMEOUT_S)
        figures = self._figures(phase, rate, before, after, drain_s, complete)
        if fault is not None:
            figures["fault"] = {
                "name": self.broker.fault_name if self.broker else "",
                "down_s": faulted[0] if faulted else math.nan,
            }
        with desk.lock:
            figures["desk_errors"] = len(desk.errors)
        self.steps.append(figures)
        self.say(step_line(self.kind, figures))
        return figures

    def _sample(self) -> dict[str, Any]:
        assert self.desk is not None
        snaps = [self._snapshot(g) for g in self.gens]
        gen_procs = [proc_sample(g.pid) for g in self.gens]
        with self.desk.lock:
            desk_events = self.desk.events
        times = os.times()
        return {
            "mono": time.monotonic(),
            "snaps": snaps,
            "gen_cpu": [p.cpu_s if p else math.nan for p in gen_procs],
            "broker": self._broker_samples(),
            "desk_events": desk_events,
            "desk_cpu": times.user + times.system,
            "machine": machine_busy_ticks(),
        }

    def _drain(self, timeout_s: float) -> tuple[float, bool]:
        """Until every seq handed out is at the desk and every alarm acknowledged (bounded)."""
        assert self.desk is not None
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            pending = sum(self._snapshot(g, seqs=True)["pending_alarms"] for g in self.gens)
            with self.desk.lock:
                gateways = self.desk.gateways
                behind = sum(
                    1
                    for gw, last in self.seqs.items()
                    if last and (gw not in gateways or len(gateways[gw].ledger.seen) < last)
                )
            if pending == 0 and behind == 0:
                return time.monotonic() - started, True
            if time.monotonic() > deadline:
                return time.monotonic() - started, False
            time.sleep(PROBE_S)

    def _figures(  # noqa: PLR0917 - the step's terms, each once
        self,
        phase: str,
        rate: float,
        before: dict[str, Any],
        after: dict[str, Any],
        drain_s: float,
        complete: bool,
    ) -> dict[str, Any]:
        assert self.desk is not None
        dt = after["mono"] - before["mono"]
        # Each generator's count over its own clock readings (its answers may come late).
        gen_dt = max(
            a["mono"] - b["mono"] for a, b in zip(after["snaps"], before["snaps"], strict=True)
        )
        published = sum(a["published"] for a in after["snaps"]) - sum(
            b["published"] for b in before["snaps"]
        )
        delivered = after["desk_events"] - before["desk_events"]
        connections = sum(a["online"] for a in after["snaps"])
        # Alarms raised within the window: first arrival at the desk, and the gateway's ack.
        window = [
            (alarm_id, raised)
            for alarm_id, (_gw, _seq, raised) in self.alarms.items()
            if before["mono"] <= raised < after["mono"]
        ]
        latencies, round_trips, lost, resent = [], [], 0, 0
        with self.desk.lock:
            seen = {alarm_id: self.desk.alarms.get(alarm_id) for alarm_id, _ in window}
            gateways = self.desk.gateways
            gap_seqs = 0
            duplicates = 0
            for gw, last in self.seqs.items():
                ledger = gateways[gw].ledger if gw in gateways else None
                if ledger is None:
                    gap_seqs += last
                    continue
                duplicates += ledger.duplicates
                if len(ledger.seen) < last:
                    gap_seqs += sum(b - a + 1 for a, b in ledger.gaps(last))
        for alarm_id, raised in window:
            at_desk = seen[alarm_id]
            ack = self.acks.get(alarm_id)
            if at_desk is None or ack is None:
                lost += 1
                continue
            latencies.append((at_desk.first_mono - raised) * 1000)
            if at_desk.ack_sent_mono is not None:
                round_trips.append((ack[0] - at_desk.ack_sent_mono) * 1000)
            resent += ack[1] > 1
        broker = {}
        for port, end in after["broker"].items():
            start = before["broker"].get(port)
            # A node killed and started again within the step is a new process: not counted.
            same = start is not None and start.pid == end.pid
            cores = (end.cpu_s - start.cpu_s) / dt if start is not None and same else math.nan
            broker[str(port)] = {"cores": cores, "rss_kib": end.rss_kib, "threads": end.threads}
        broker_cpu_s = sum(v["cores"] for v in broker.values() if not math.isnan(v["cores"])) * dt
        broker_rss = sum(v["rss_kib"] for v in broker.values())
        gen_cores = [(a - b) / dt for a, b in zip(after["gen_cpu"], before["gen_cpu"], strict=True)]
        busy = after["machine"][0] - before["machine"][0]
        total = after["machine"][1] - before["machine"][1]
        load = StepLoad(
            offered_per_s=rate,
            published_per_s=published / gen_dt,
            delivered_per_s=delivered / dt,
            alarm_p99_ms=percentile(latencies, 99),
            alarms_lost=lost,
            broker_cores=max(
                (v["cores"] for v in broker.values() if not math.isnan(v["cores"])),
                default=math.nan,
            ),
            broker_threads=max((v["threads"] for v in broker.values()), default=1),
            generator_cores=max(gen_cores),
            desk_cores=(after["desk_cpu"] - before["desk_cpu"]) / dt,
            machine_busy=busy / total if total else math.nan,
        )
        snaps = after["snaps"]
        return {
            "phase": phase,
            "connections": connections,
            "offered_per_s": rate,
            "published_per_s": load.published_per_s,
            "delivered_per_s": load.delivered_per_s,
            # What the desk got of what the gateways published (alarm acks' audit events
            # included, so published may exceed offered by the alarm share).
            "delivered_ratio": delivered / published if published else math.nan,
            "published_ratio": load.published_per_s / rate if rate else math.nan,
            "seconds": dt,
            "alarms": len(window),
            "alarms_lost": lost,
            "alarms_resent": resent,
            "alarm_p50_ms": percentile(latencies, 50),
            "alarm_p99_ms": load.alarm_p99_ms,
            "ack_p50_ms": percentile(round_trips, 50),
            "ack_p99_ms": percentile(round_trips, 99),
            "drain_s": drain_s,
            "complete": complete,
            "gap_seqs": gap_seqs,
            "duplicates": duplicates,
            "broker_nodes": broker,
            "broker_cores": broker_cpu_s / dt,
            "broker_rss_kib": broker_rss,
            "broker_rss_kib_per_connection": (
                (broker_rss - self.broker_base_rss_kib) / connections if connections else math.nan
            ),
            "broker_cpu_us_per_event": broker_cpu_s / delivered * 1e6 if delivered else math.nan,
            "broker_cores_per_1000_connections": (
                broker_cpu_s / dt / connections * 1000 if connections else math.nan
            ),
            "generator_cores": load.generator_cores,
            "generator_rss_kib": sum(s["rss_kib"] for s in snaps),
            "generator_fds": sum(s["fds"] for s in snaps),
            "desk_cores": load.desk_cores,
            "machine_busy": load.machine_busy,
            "loadavg_1m": os.getloadavg()[0],
            "disconnects": sum(s["disconnects"] for s in snaps),
            "subscribe_refused": sum(s["subscribe_refused"] for s in snaps),
            "limit": limit(load),
        }


def run_kind(
    kind: str, workdir: Path, options: Options, say: Callable[[str], None]
) -> dict[str, Any]:
    """Every step on one broker kind; its report.

    The first connection step at a home's traffic; the event-rate steps with those gateways;
    on a cluster, a node killed at a rate that held; then the further connection steps, until
    one does not hold or the broker would take more memory than the machine should give it."""
    steps = options.steps_of(kind)
    run = Run(kind, workdir, options, say, top=max(steps))
    started = time.monotonic()
    stopped = ""
    with run.running():
        assert run.broker is not None
        say(f"saturation on {kind}: broker at {run.broker_ports()} ({run.broker.protocol})")
        held_rate = run.connection_step(steps[0])["delivered_per_s"]
        for rate in rate_steps(options.rate_start, RATE_FACTOR, options.rate_steps):
            figures = run.step("events", rate)
            if figures["limit"] is not None:
                break
            held_rate = rate
        if options.fault and run.broker.fault is not None and len(run.broker_ports()) > 1:
            run.step("fault", min(FAULT_RATE, held_rate / 2), fault=run.broker.fault)
            run.steps[-1]["settle_s"] = run.settle()
        for total in steps[1:]:
            last = run.steps[-1]
            need_kib = last["broker_rss_kib"] + (total - last["connections"]) * max(
                0.0, last["broker_rss_kib_per_connection"]
            )
            if need_kib > MEMORY_SHARE * mem_available_kib():
                stopped = (
                    f"{total} connections not tried: the broker would need about "
                    f"{need_kib / 1024:.0f} MiB, over {MEMORY_SHARE:.0%} of the memory available"
                )
                say(f"  {kind}: {stopped}")
                break
            figures = run.connection_step(total)
            if figures["limit"] is not None or figures["connections"] < total * DELIVERY_TARGET:
                break
    return {
        "kind": kind,
        "protocol": run.broker.protocol,
        "nodes": len(run.broker_ports()),
        "options": {
            "connection_steps": list(steps),
            "step_s": options.step_s,
            "alarm_share": options.alarm_share,
            "ack_timeout_s": ACK_TIMEOUT_S,
        },
        "broker_base_rss_kib": run.broker_base_rss_kib,
        "stopped": stopped,
        "elapsed_s": time.monotonic() - started,
        "steps": run.steps,
    }


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def run_saturation(
    *, workdir: Path, kinds: Sequence[str], options: Options, say: Callable[[str], None]
) -> dict[str, Any]:
    return {kind: run_kind(kind, workdir / kind, options, say) for kind in kinds}


# ------------------------------------------------------------------------------ figures


def below_saturation(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The steps before the first one with a limit (the fault step apart)."""
    out = []
    for step in steps:
        if step["phase"] == "fault":
            continue
        if step["limit"] is not None:
            break
        out.append(step)
    return out


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """Per kind: what holds below saturation, where it saturated and on what."""
    out: dict[str, Any] = {}
    for kind, run in report.items():
        steps = run["steps"]
        held = below_saturation(steps)
        saturated = next(
            (s for s in steps if s["phase"] != "fault" and s["limit"] is not None), None
        )
        fault = next((s for s in steps if s["phase"] == "fault"), None)
        best = max(held, key=lambda s: s["delivered_per_s"], default=None)
        alarms = sum(s["alarms"] for s in held)
        out[kind] = {
            "nodes": run["nodes"],
            "steps_held": len(held),
            "alarms_below": alarms,
            "alarms_ok_share": (
                sum(s["alarms"] - s["alarms_lost"] for s in held) / alarms if alarms else math.nan
            ),
            "gap_seqs_below": sum(s["gap_seqs"] for s in held) if held else math.nan,
            "max_connections": max((s["connections"] for s in steps), default=0),
            "max_events_per_s_held": best["delivered_per_s"] if best else math.nan,
            "saturated_at": (
                {k: saturated[k] for k in ("offered_per_s", "delivered_per_s", "limit")}
                if saturated
                else None
            ),
            "fault": (
                {
                    "alarms": fault["alarms"],
                    "alarms_ok_share": (
                        (fault["alarms"] - fault["alarms_lost"]) / fault["alarms"]
                        if fault["alarms"]
                        else math.nan
                    ),
                    "gap_seqs": fault["gap_seqs"],
                    "complete": fault["complete"],
                    "drain_s": fault["drain_s"],
                }
                if fault
                else None
            ),
        }
    return out


def _ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def step_line(kind: str, s: dict[str, Any]) -> str:
    return (
        f"  {kind} {s['phase']:<11} {s['connections']:6d} conn, offered {s['offered_per_s']:7.0f}"
        f" ev/s, published {s['published_per_s']:7.0f}, delivered {s['delivered_per_s']:7.0f} "
        f"({s['delivered_ratio']:.1%} of published); alarms "
        f"{s['alarms']} (lost {s['alarms_lost']}) p50/p99 {_ms(s['alarm_p50_ms'])}/"
        f"{_ms(s['alarm_p99_ms'])} ms, ack p50/p99 {_ms(s['ack_p50_ms'])}/{_ms(s['ack_p99_ms'])}"
        f" ms; gaps {s['gap_seqs']}; broker {s['broker_cores']:.2f} cores, "
        f"{s['broker_cpu_us_per_event']:.0f} µs/event, {s['broker_rss_kib'] / 1024:.0f} MiB; "
        f"generator {s['generator_cores']:.2f}, desk {s['desk_cores']:.2f} cores, machine "
        f"{s['machine_busy']:.0%}; limit: {s['limit'] or 'none'}"
    )


def table(report: dict[str, Any]) -> list[str]:
    """The steps as a Markdown table (docs/FLEET.md)."""
    lines = [
        "| broker | step | connections | offered ev/s | published | delivered (÷ published) "
        "| alarms (lost) | alarm p50 / p99 ms | ack RTT p50 / p99 ms | gaps | broker cores "
        "| broker µs/event | broker RSS MiB (KiB/conn) | generator cores | desk cores | machine "
        "| limit |",
        "|---" * 17 + "|",
    ]
    for kind, run in report.items():
        for s in run["steps"]:
            lines.append(
                f"| {kind} | {s['phase']} | {s['connections']} | {s['offered_per_s']:.0f} | "
                f"{s['published_per_s']:.0f} | "
                f"{s['delivered_per_s']:.0f} ({s['delivered_ratio']:.1%}) | {s['alarms']} "
                f"({s['alarms_lost']}) | {_ms(s['alarm_p50_ms'])} / {_ms(s['alarm_p99_ms'])} | "
                f"{_ms(s['ack_p50_ms'])} / {_ms(s['ack_p99_ms'])} | {s['gap_seqs']} | "
                f"{s['broker_cores']:.2f} | {s['broker_cpu_us_per_event']:.0f} | "
                f"{s['broker_rss_kib'] / 1024:.0f} ({s['broker_rss_kib_per_connection']:.1f}) | "
                f"{s['generator_cores']:.2f} | {s['desk_cores']:.2f} | "
                f"{s['machine_busy']:.0%} | {s['limit'] or '—'} |"
            )
    return lines


def summary_lines(figs: dict[str, Any], verdicts: dict[str, str]) -> list[str]:
    lines = []
    for kind, f in figs.items():
        sat = f["saturated_at"]
        where = (
            f"saturated at {sat['offered_per_s']:.0f} ev/s offered ({sat['delivered_per_s']:.0f} "
            f"delivered) on {sat['limit']}"
            if sat
            else "not saturated within the steps"
        )
        lines.append(
            f"saturation {kind} ({f['nodes']} node{'s' if f['nodes'] > 1 else ''}): up to "
            f"{f['max_connections']} connections, {f['max_events_per_s_held']:.0f} events/s held; "
            f"{where}; below it: alarms delivered and acknowledged {f['alarms_ok_share']:.1%} of "
            f"{f['alarms_below']} ({verdicts.get(f'{kind} alarms', '')}), unexplained gaps "
            f"{f['gap_seqs_below']} ({verdicts.get(f'{kind} gaps', '')})"
        )
        fault = f["fault"]
        if fault:
            lines.append(
                f"  {kind} node killed: alarms delivered and acknowledged "
                f"{fault['alarms_ok_share']:.1%} of {fault['alarms']} "
                f"({verdicts.get(f'{kind} fault alarms', '')}), gaps {fault['gap_seqs']} "
                f"({verdicts.get(f'{kind} fault gaps', '')}), complete after "
                f"{fault['drain_s']:.0f} s"
            )
    lines.append(
        '  rerun: make bench BENCH_ARGS="--parts saturation" (--saturation-brokers KIND,…; '
        "--quick for a small run)"
    )
    return lines
