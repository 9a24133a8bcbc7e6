"""The reference ingest's throughput and where it saturates (``--parts ingest``).

A Mosquitto and a PostgreSQL (fsync on) of the part's own. For each worker count K:

1. drain: the workers' persistent shared-subscription sessions are created (the ingest's own
   subscriptions, under the names the workers then connect with) and the workers stay stopped;
   a backlog of contract-valid events from G synthetic gateways (consecutive seqs, a share of
   alarms, telemetry messages published twice, alarms resent with a higher attempt) is
   published at QoS 1 with a full in-flight window and queued in those sessions; then K worker
   processes are started and timed until PostgreSQL holds every event once. A backlog, not an
   offered rate: the publisher is done before the clock starts, so it cannot be what limits
   the figure, and the figure is the most the ingest stores per second. Checked afterwards:
   every seq of every gateway stored once (counted per gateway against the seqs handed out),
   duplicates and resends counted as such, nothing rejected, and no open gap once the gap
   check has passed every gateway.
2. baseline: the same rows written into the same ``event`` table by one psycopg connection
   with ``COPY`` in one transaction: what PostgreSQL alone takes for them on this machine.
3. steady rate: K workers (``--ingest-step-workers``) running, events offered at a fixed rate,
   stepped up until the ingest's lag grows (``saturated``); at each step the end-to-end alarm
   latency, publish → the ``NOTIFY`` of the transaction that stored it (committed).

CPU per event and shares of a core come from ``/proc``: the workers (each process), PostgreSQL
(the postmaster, its live backends and its reaped children), Mosquitto, and the machine;
PostgreSQL's WAL fsyncs from ``pg_stat_wal`` (with ``track_wal_io_timing``; backends report
there at most once a second, so a short drain undercounts them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.common import ensure_dir, machine_busy_ticks, percentile
from gateway.core.events import new_event_id
from hil.sim.broker import Mosquitto
from hil.sim.postgres import Postgres
from platformkit.ingest.migrations import migrate
from platformkit.ingest.source import SHARED_CLASSES
from platformkit.rig import IngestProcesses

GATEWAYS = 50
QUICK_GATEWAYS = 20
EVENTS = 100_000
QUICK_EVENTS = 10_000
WORKERS = (1, 2, 4)
STEP_WORKERS = 2
STEP_RATES = (1000.0, 2000.0, 4000.0, 8000.0, 12000.0, 16000.0, 24000.0)
QUICK_STEP_RATES = (1000.0, 4000.0)
STEP_SECONDS = 8.0
QUICK_STEP_SECONDS = 3.0
EVENTS_PER_MESSAGE = 50  # telemetry events per message (a gateway sends up to 500)
ALARM_SHARE = 0.01  # of the events: alarms, one per message
# Of the telemetry messages: published a second time (a resend after a reconnect).
DUPLICATE_SHARE = 0.02
RESEND_SHARE = 0.25  # of the alarms: published again with attempt 2 (no ack in time)
SESSION_EXPIRY_S = 3600
PUBLISH_INFLIGHT = 100  # the rig's Mosquitto announces Receive Maximum 100
GAP_CHECK_S = 1.0  # the presence worker's gap check (shipped: 5 s), so the final one comes soon
GAP_GRACE_S = 30.0  # as shipped: a drain's passing holes are not reported
LAG_LIMIT_S = 1.0  # a step saturates the ingest when more than this much offered traffic waits
PUBLISHER_SLACK = 0.9  # a step whose publisher reached less than this share of its rate is void
SAMPLE_S = 0.25
DRAIN_TIMEOUT_MIN_S = 60.0
SETTLE_TIMEOUT_S = 30.0
STEP_TAIL_TIMEOUT_S = 30.0
WORKER_START_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 10.0
POLL_S = 0.05
# The figures measured before this part existed (a script outside the repository): 100 000
# events from 50 gateways in messages of 50, printed beside today's for comparison.
EARLIER_EVENTS_PER_S = {1: 6400.0, 2: 10800.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1


class IngestBenchError(Exception):
    """The ingest part could not take a figure (a part did not start, events went missing)."""


# ------------------------------------------------------------------------------- traffic


def ts_text(when: datetime) -> str:
    """A contract timestamp: UTC, milliseconds, ``Z``."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def gateway_ids(count: int) -> list[str]:
    return [f"bench-ingest-{n:05d}" for n in range(1, count + 1)]


@dataclass(frozen=True, slots=True)
class Message:
    """One uplink publication: ``new`` events not published before; ``alarm_id`` for the first
    publication of an alarm (its latency is measured)."""

    topic: str
    payload: bytes
    new: int
    alarm_id: str | None = None


@dataclass(slots=True)
class Traffic:
    """Synthetic gateways' uplink, continuing each gateway's seq from call to call."""

    gateways: list[str]
    seed: int = 1
    alarm_share: float = ALARM_SHARE
    duplicate_share: float = DUPLICATE_SHARE
    resend_share: float = RESEND_SHARE
    events_per_message: int = EVENTS_PER_MESSAGE
    last_seq: dict[str, int] = field(default_factory=dict)
    alarms: int = 0
    duplicate_events: int = 0
    resends: int = 0
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # every event once, as stored
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    @property
    def events(self) -> int:
        return sum(self.last_seq.values())

    def messages(self, events: int) -> list[Message]:
        """``events`` new events spread evenly over the gateways, as messages interleaved
        gateway by gateway (each gateway's in seq order), with the duplicates and resends."""
        per_gateway = [
            self._gateway_messages(
                gw, events // len(self.gateways) + (n < events % len(self.gateways))
            )
            for n, gw in enumerate(self.gateways)
        ]
        out: list[Message] = []
        for round_ in range(max((len(m) for m in per_gateway), default=0)):
            out += [m[round_] for m in per_gateway if round_ < len(m)]
        return out

    def _gateway_messages(self, gw: str, count: int) -> list[Message]:
        rng = self._rng
        out: list[Message] = []
        again: list[Message] = []  # published again a few messages later
        telemetry: list[dict[str, Any]] = []

        def flush() -> None:
            if telemetry:
                message = self._message(gw, "telemetry", telemetry, len(telemetry))
                out.append(message)
                if rng.random() < self.duplicate_share:
                    again.append(Message(message.topic, message.payload, 0))
                    self.duplicate_events += len(telemetry)
                telemetry.clear()

        for _ in range(count):
            seq = self.last_seq.get(gw, 0) + 1
            self.last_seq[gw] = seq
            if rng.random() < self.alarm_share:
                flush()
                alarm = self._event(gw, seq, "alarm.button")
                out.append(self._message(gw, "alarm", [alarm], 1, alarm_id=alarm["id"]))
                self.alarms += 1
                if rng.random() < self.resend_share:
                    again.append(self._message(gw, "alarm", [{**alarm, "attempt": 2}], 0))
                    self.resends += 1
            else:
                telemetry.append(self._event(gw, seq, "telemetry.vitals"))
                if len(telemetry) >= self.events_per_message:
                    flush()
            if again and rng.random() < 0.1:
                out.append(again.pop(0))
        flush()
        return out + again

    def _event(self, gw: str, seq: int, kind: str) -> dict[str, Any]:
        now = datetime.now(UTC)
        alarm = kind.startswith("alarm.")
        data: dict[str, Any] = (
            {"press": "short", "battery": 80, "rssi": -60}
            if alarm
            else {"heart_rate": 55 + seq % 60, "spo2": 95.0 + (seq % 5) / 2}
        )
        device = f"btn-{seq % 0xFFFF_FFFF:08X}" if alarm else "watch-C0FFEE000001"
        event = {
            "id": new_event_id(),
            "seq": seq,
            "kind": kind,
            "ts": ts_text(now),
            "ts_synced": True,
            "device": device,
            "data": data,
            "attempt": 1,
        }
        data_json = json.dumps(data, separators=(",", ":"))
        klass = "alarm" if alarm else "telemetry"
        self.rows.append((gw, seq, event["id"], kind, klass, now, True, device, data_json, 1))
        return event

    @staticmethod
    def _message(
        gw: str, klass: str, events: list[dict[str, Any]], new: int, alarm_id: str | None = None
    ) -> Message:
        body = {"v": 1, "gw": gw, "events": events}
        payload = json.dumps(body, separators=(",", ":")).encode()
        return Message(f"carebed/v1/{gw}/up/{klass}", payload, new, alarm_id)


# ------------------------------------------------------------------------------- decisions


def lag_s(samples: Sequence[tuple[float, int]], rate: float) -> float:
    """The ingest's lag at the end of a step, in seconds of the offered traffic: the median of
    the events waiting (published, not yet stored) over the last third of the samples, divided
    by the rate. ``samples``: (seconds into the step, events waiting)."""
    if not samples or rate <= 0:
        return math.nan
    tail = sorted(w for _, w in samples[len(samples) - max(1, len(samples) // 3) :])
    return tail[len(tail) // 2] / rate


def saturated(samples: Sequence[tuple[float, int]], rate: float) -> bool:
    """Whether the ingest fell behind the offered rate: more than ``LAG_LIMIT_S`` of it waits
    at the end of the step (a lag that does not grow stays near one batch's worth)."""
    lag = lag_s(samples, rate)
    return not math.isnan(lag) and lag > LAG_LIMIT_S


def bottleneck(
    worker_cores: Sequence[float],
    *,
    postgres_cores: float,
    broker_cores: float,
    machine_cores: float,
    fsync_share: float,
    cpus: int,
    other_cores: float = 0.0,
) -> str:
    """What limited a run, from its CPU use in cores (a core fully used is 1.0) and the share of
    the wall time PostgreSQL spent in WAL fsyncs."""
    busiest = max(worker_cores, default=0.0)
    if busiest >= 0.85:
        return f"worker CPU (the busiest worker at {busiest:.0%} of a core)"
    if machine_cores >= 0.9 * cpus:
        return (
            f"the machine's {cpus} CPUs ({machine_cores / cpus:.0%} busy: workers "
            f"{sum(worker_cores):.2f}, PostgreSQL {postgres_cores:.2f}, broker "
            f"{broker_cores:.2f}, other processes {other_cores:.2f} cores)"
        )
    if postgres_cores >= 0.85:
        return f"PostgreSQL CPU ({postgres_cores:.0%} of a core)"
    if fsync_share >= 0.5:
        return f"PostgreSQL fsync ({fsync_share:.0%} of the time in WAL fsyncs)"
    if broker_cores >= 0.85:
        return f"the broker's CPU ({broker_cores:.0%} of a core)"
    return "none found (no process at a full core; the wait is in round trips)"


# ------------------------------------------------------------------------------- /proc


def _proc_ticks(pid: int, children: bool = False) -> int:
    """utime + stime of ``pid`` (and of its reaped children), in clock ticks; 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def machine_busy_s() -> float:
    """CPU seconds the machine has spent not idle (all CPUs, since boot)."""
    return machine_busy_ticks()[0] / CLK_TCK


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    at: float
    postgres_s: float
    broker_s: float
    machine_s: float
    bench_s: float  # this process: the publisher and the probes
    workers_s: tuple[float, ...]


def cpu_snapshot(postgres_pid: int, broker_pid: int, worker_pids: Sequence[int]) -> CpuSnapshot:
    postgres = _proc_ticks(postgres_pid, children=True) + sum(
        _proc_ticks(pid) for pid in _children(postgres_pid)
    )
    return CpuSnapshot(
        at=time.monotonic(),
        postgres_s=postgres / CLK_TCK,
        broker_s=_proc_ticks(broker_pid) / CLK_TCK,
        machine_s=machine_busy_s(),
        bench_s=_proc_ticks(os.getpid()) / CLK_TCK,
        workers_s=tuple(_proc_ticks(pid) / CLK_TCK for pid in worker_pids),
    )


def cpu_figures(before: CpuSnapshot, after: CpuSnapshot, events: int) -> dict[str, Any]:
    """CPU per event (µs) and in cores over the interval; workers started within it count
    from zero (their start-up included)."""
    seconds = max(after.at - before.at, 1e-9)
    workers = [
        a - (before.workers_s[n] if n < len(before.workers_s) else 0.0)
        for n, a in enumerate(after.workers_s)
    ]
    postgres = after.postgres_s - before.postgres_s
    broker = after.broker_s - before.broker_s
    machine = after.machine_s - before.machine_s
    bench = after.bench_s - before.bench_s
    per_event = 1e6 / max(events, 1)
    return {
        "seconds": seconds,
        "worker_us_per_event": sum(workers) * per_event,
        "postgres_us_per_event": postgres * per_event,
        "broker_us_per_event": broker * per_event,
        "machine_us_per_event": machine * per_event,
        "worker_cores": [w / seconds for w in workers],
        "postgres_cores": postgres / seconds,
        "broker_cores": broker / seconds,
        "machine_cores": machine / seconds,
        "bench_cores": bench / seconds,
        "other_cores": max(0.0, machine - sum(workers) - postgres - broker - bench) / seconds,
    }


# ------------------------------------------------------------------------------- MQTT


def _connect(broker: Mosquitto, client_id: str) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.max_inflight_messages_set(PUBLISH_INFLIGHT)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = 0
    client.connect(broker.host, broker.port, 30, clean_start=True, properties=properties)
    client.loop_start()
    if not connected.wait(CONNECT_TIMEOUT_S):
        client.loop_stop()
        raise IngestBenchError(f"{client_id} could not connect to the broker")
    return client


def subscribed(broker: Mosquitto, name: str, group: str) -> bool:
    """Whether worker ``name`` has made its last shared subscription (the broker logs it)."""
    return f"{name} 1 $share/{group}/carebed/v1/+/up/{SHARED_CLASSES[-1]}" in broker.log_text()


def signal_all(pids: Sequence[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


class Publisher:
    """One paho client publishing at QoS 1 with a full in-flight window."""

    def __init__(self, broker: Mosquitto, client_id: str) -> None:
        self.client = _connect(broker, client_id)
        self.infos: list[mqtt.MQTTMessageInfo] = []

    def publish(self, message: Message) -> None:
        self.infos.append(self.client.publish(message.topic, message.payload, qos=1))

    def wait_acked(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for info in self.infos:
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                raise IngestBenchError(f"no PUBACK within {timeout_s:.0f} s")
        self.infos.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ------------------------------------------------------------------------------- PostgreSQL


def _migrate(dsn: str) -> None:
    """The ingest's schema, as ``python -m platformkit.ingest migrate`` makes it (the workers
    would make it at start as well; here it is there before them, and for COPY)."""

    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await migrate(conn)

    asyncio.run(run())


def _one(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def stored_events(conn: psycopg.Connection[Any]) -> int:
    """Events stored, from the per-gateway counters (cheap: one row per gateway)."""
    return int(_one(conn, "SELECT coalesce(sum(events), 0) FROM gateway"))


def wal_syncs(conn: psycopg.Connection[Any]) -> tuple[int, float]:
    """PostgreSQL's WAL fsyncs so far and the milliseconds spent in them."""
    row = conn.execute("SELECT wal_sync, wal_sync_time FROM pg_stat_wal").fetchone()
    assert row is not None
    return int(row[0]), float(row[1])


def verify(conn: psycopg.Connection[Any], traffic: Traffic, workers: int) -> dict[str, Any]:
    """Every seq of every gateway stored once; the counters as the traffic made them."""
    per_gw = {
        gw: (int(n), int(hi))
        for gw, n, hi in conn.execute("SELECT gw, count(*), max(seq) FROM event GROUP BY gw")
    }
    missing = unexpected = 0
    for gw, (n, hi) in per_gw.items():
        last = traffic.last_seq.get(gw, 0)
        unexpected += max(0, hi - last) if last else n
    for gw, last in traffic.last_seq.items():
        missing += max(0, last - per_gw.get(gw, (0, 0))[0])
    # (gw, seq) is the primary key: a double is one event id stored under two keys.
    doubled = int(_one(conn, "SELECT count(*) - count(DISTINCT id) FROM event"))
    row = conn.execute(
        "SELECT coalesce(sum(duplicates), 0), coalesce(sum(resends), 0),"
        " coalesce(sum(conflicts), 0), coalesce(sum(rejected), 0) FROM gateway"
    ).fetchone()
    assert row is not None
    duplicates, resends, conflicts, rejected = (int(v) for v in row)
    return {
        "events": traffic.events,
        "stored": int(_one(conn, "SELECT count(*) FROM event")),
        "missing": missing,
        "doubled": doubled,
        "unexpected": unexpected,
        "duplicates_counted": duplicates,
        "duplicates_sent": traffic.duplicate_events,
        "resends_counted": resends,
        "resends_sent": traffic.resends,
        "workers": workers,
        "conflicts": conflicts,
        "rejected": rejected,
        "alarms_stored": int(_one(conn, "SELECT count(*) FROM alarm")),
        "alarms_sent": traffic.alarms,
        "open_gaps": int(_one(conn, "SELECT count(*) FROM gap WHERE closed_at IS NULL")),
        # What the platform's disk holds per event: the event table with its indexes and TOAST.
        "event_table_bytes": int(_one(conn, "SELECT pg_total_relation_size('event')")),
    }


def resend_miscount(check: dict[str, Any]) -> int:
    """How far the ``resends`` counter is outside what the workers can make of the resends sent:
    every worker takes every alarm, and workers that store the same resend at once (or hold
    both attempts in one batch) each count it, so with K workers it is between the resends and
    K times them."""
    counted, sent = int(check["resends_counted"]), int(check["resends_sent"])
    return max(0, sent - counted) + max(0, counted - sent * int(check["workers"]))


def anomalies(check: dict[str, Any]) -> int:
    """How far a run is from exactly once: seqs missing, doubled or unexpected, conflicts,
    rejections, open gaps, and counters that differ from what was sent (0: exactly once)."""
    return int(
        check["missing"]
        + check["doubled"]
        + check["unexpected"]
        + check["conflicts"]
        + check["rejected"]
        + check["open_gaps"]
        + abs(check["stored"] - check["events"])
        + abs(check["alarms_stored"] - check["alarms_sent"])
        + abs(check["duplicates_counted"] - check["duplicates_sent"])
        + resend_miscount(check)
    )


def exactly_once(check: dict[str, Any]) -> bool:
    return anomalies(check) == 0


def wait_for(probe: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise IngestBenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def gaps_settled(conn: psycopg.Connection[Any], traffic: Traffic) -> bool:
    """The gap check has passed every gateway's last seq, and no gap is open."""
    rows = dict(conn.execute("SELECT gw, complete_to FROM gateway").fetchall())
    open_gaps = int(_one(conn, "SELECT count(*) FROM gap WHERE closed_at IS NULL"))
    return open_gaps == 0 and all(rows.get(gw) == s for gw, s in traffic.last_seq.items())


# ------------------------------------------------------------------------------- the part


@dataclass(frozen=True, slots=True)
class IngestOptions:
    gateways: int = GATEWAYS
    events: int = EVENTS
    workers: tuple[int, ...] = WORKERS
    step_workers: int = STEP_WORKERS
    rates: tuple[float, ...] = STEP_RATES
    step_seconds: float = STEP_SECONDS
    # PostgreSQL with fsync: always for a figure; off only where a test checks the mechanics.
    durable: bool = True


class IngestBench:
    def __init__(self, workdir: Path, options: IngestOptions, say: Callable[[str], None]) -> None:
        self.workdir = workdir
        self.options = options
        self.say = say
        self.postgres: Postgres | None = None
        self._serial = 0

    @property
    def pg(self) -> Postgres:
        assert self.postgres is not None
        return self.postgres

    def run(self) -> dict[str, Any]:
        with ExitStack() as stack:
            # In a temporary directory of its own, which the server's user can enter.
            self.postgres = Postgres(durable=self.options.durable)
            stack.callback(self.postgres.close)
            self.postgres.start()
            with psycopg.connect(self.pg.dsn, autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET track_wal_io_timing = on")
                conn.execute("SELECT pg_reload_conf()")
            drains = [self.drain(k) for k in self.options.workers]
            baseline = self.copy_baseline()
            steps = self.steps()
        return {
            "options": {
                "gateways": self.options.gateways,
                "events": self.options.events,
                "workers": list(self.options.workers),
                "step_workers": self.options.step_workers,
                "rates": list(self.options.rates),
                "step_seconds": self.options.step_seconds,
                "events_per_message": EVENTS_PER_MESSAGE,
                "alarm_share": ALARM_SHARE,
                "duplicate_share": DUPLICATE_SHARE,
                "resend_share": RESEND_SHARE,
            },
            "drains": drains,
            "copy": baseline,
            "steps": steps,
        }

    # -- helpers --------------------------------------------------------------------------------

    def _fresh(self, what: str) -> tuple[Path, str]:
        self._serial += 1
        name = f"{what}_{self._serial}"
        folder = self.workdir / name
        shutil.rmtree(folder, ignore_errors=True)  # an earlier run's logs would be read as ours
        return ensure_dir(folder), self.pg.create_database(name)

    @contextmanager
    def _rig(self, what: str) -> Iterator[tuple[Mosquitto, str, Path]]:
        """A broker and a migrated database of their own."""
        folder, dsn = self._fresh(what)
        broker = Mosquitto(folder / "mosquitto", persistence=False)
        ensure_dir(broker.workdir)
        broker.start()
        try:
            _migrate(dsn)
            yield broker, dsn, folder
        finally:
            broker.close()

    def _workers(self, broker: Mosquitto, dsn: str, folder: Path, group: str) -> IngestProcesses:
        return IngestProcesses(
            dsn,
            f"{broker.host}:{broker.port}",
            folder / "ingest",
            transport=("--plaintext",),  # the bench's own broker on loopback
            gap_grace_s=GAP_GRACE_S,
            gap_check_s=GAP_CHECK_S,
            presence_poll_s=1.0,
            extra_args=("--group", group, "--session-expiry-s", str(SESSION_EXPIRY_S)),
        )

    # -- 1. drain ---------------------------------------------------------------------------------

    def drain(self, workers: int) -> dict[str, Any]:
        names = [f"drain{workers}-{n}" for n in range(1, workers + 1)]
        group = f"drain{workers}"
        traffic = Traffic(gateway_ids(self.options.gateways), seed=workers)
        messages = traffic.messages(self.options.events)
        with (
            self._rig(group) as (broker, dsn, folder),
            psycopg.connect(dsn, autocommit=True) as conn,
            self._workers(broker, dsn, folder, group) as procs,
        ):
            for name in names:
                procs.start(name)
            for name in names:
                procs.wait_logged(name, "ingest_started", WORKER_START_TIMEOUT_S)
            wait_for(
                lambda: all(subscribed(broker, name, group) for name in names),
                WORKER_START_TIMEOUT_S,
                "the workers' shared subscriptions",
            )
            pids = [procs.procs[name].pid for name in names]
            try:
                # Stopped: the broker keeps their shares in their sessions.
                signal_all(pids, signal.SIGSTOP)
                publisher = Publisher(broker, "bench-ingest-publisher")
                started = time.monotonic()
                for message in messages:
                    publisher.publish(message)
                publisher.wait_acked(DRAIN_TIMEOUT_MIN_S)
                publish_s = time.monotonic() - started
                publisher.close()
                load = os.getloadavg()[0]
                syncs_before = wal_syncs(conn)
                before = cpu_snapshot(self._pg_pid(), self._pid(broker), pids)
                t0 = time.monotonic()
                signal_all(pids, signal.SIGCONT)
                timeout_s = max(DRAIN_TIMEOUT_MIN_S, traffic.events / 500)
                wait_for(lambda: stored_events(conn) >= traffic.events, timeout_s, "the drain")
                seconds = time.monotonic() - t0
                after = cpu_snapshot(self._pg_pid(), self._pid(broker), pids)
                syncs_after = wal_syncs(conn)
            finally:
                signal_all(pids, signal.SIGCONT)
            span = float(
                _one(
                    conn,
                    "SELECT extract(epoch FROM max(received_at) - min(received_at)) FROM event",
                )
            )
            wait_for(lambda: gaps_settled(conn, traffic), SETTLE_TIMEOUT_S, "the gap check")
            check = verify(conn, traffic, workers)
        cpu = cpu_figures(before, after, traffic.events)
        fsyncs = syncs_after[0] - syncs_before[0]
        fsync_share = (syncs_after[1] - syncs_before[1]) / 1000 / seconds
        run = {
            "workers": workers,
            "events": traffic.events,
            "messages": len(messages),
            "publish_s": publish_s,
            "publish_events_per_s": traffic.events / publish_s,
            "loadavg_1m": load,
            "seconds": seconds,
            "events_per_s": traffic.events / seconds,
            "first_to_last_commit_s": span,
            "events_per_s_stored": traffic.events / span if span > 0 else math.nan,
            "cpu": cpu,
            "wal_fsyncs": fsyncs,
            "fsync_share": fsync_share,
            "bottleneck": bottleneck(
                cpu["worker_cores"],
                postgres_cores=cpu["postgres_cores"],
                broker_cores=cpu["broker_cores"],
                machine_cores=cpu["machine_cores"],
                fsync_share=fsync_share,
                cpus=NPROC,
                other_cores=cpu["other_cores"],
            ),
            "check": check,
            "exactly_once": exactly_once(check),
        }
        self.say(
            f"  ingest drain, {workers} worker(s): {traffic.events} events in {seconds:.2f} s = "
            f"{run['events_per_s']:.0f}/s (publish {run['publish_events_per_s']:.0f}/s before), "
            f"{'exactly once' if run['exactly_once'] else 'NOT exactly once'}; {run['bottleneck']}"
        )
        return run

    def _pg_pid(self) -> int:
        pid = self.pg.pid
        if pid is None:
            raise IngestBenchError("PostgreSQL is not running")
        return pid

    @staticmethod
    def _pid(broker: Mosquitto) -> int:
        pid = broker.pid
        if pid is None:
            raise IngestBenchError("Mosquitto is not running")
        return pid

    # -- 2. COPY baseline --------------------------------------------------------------------------

    def copy_baseline(self) -> dict[str, Any]:
        """The drain's rows written by one connection with COPY, into the same table."""
        traffic = Traffic(gateway_ids(self.options.gateways), seed=1)
        traffic.messages(self.options.events)
        _, dsn = self._fresh("copy")
        _migrate(dsn)
        with psycopg.connect(dsn) as conn:
            before = cpu_snapshot(self._pg_pid(), os.getpid(), [])
            t0 = time.monotonic()
            with (
                conn.cursor() as cur,
                cur.copy(
                    "COPY event (gw, seq, id, kind, class, ts, ts_synced, device, data, attempt)"
                    " FROM STDIN"
                ) as copy,
            ):
                for row in traffic.rows:
                    copy.write_row(row)
            conn.commit()
            seconds = time.monotonic() - t0
            after = cpu_snapshot(self._pg_pid(), os.getpid(), [])
            stored = int(_one(conn, "SELECT count(*) FROM event"))
        if stored != traffic.events:
            raise IngestBenchError(f"COPY stored {stored} of {traffic.events} rows")
        cpu = cpu_figures(before, after, traffic.events)
        run = {
            "events": traffic.events,
            "seconds": seconds,
            "events_per_s": traffic.events / seconds,
            "postgres_us_per_event": cpu["postgres_us_per_event"],
            "client_us_per_event": (after.bench_s - before.bench_s) * 1e6 / traffic.events,
        }
        self.say(
            f"  COPY of the same {traffic.events} rows, one connection: {seconds:.2f} s = "
            f"{run['events_per_s']:.0f}/s"
        )
        return run

    # -- 3. steady rate ----------------------------------------------------------------------------

    def steps(self) -> list[dict[str, Any]]:
        workers = self.options.step_workers
        names = [f"steady-{n}" for n in range(1, workers + 1)]
        traffic = Traffic(gateway_ids(self.options.gateways), seed=99)
        out: list[dict[str, Any]] = []
        with self._rig("steady") as (broker, dsn, folder):
            procs = self._workers(broker, dsn, folder, "steady")
            with procs, psycopg.connect(dsn, autocommit=True) as conn:
                for name in names:
                    procs.start(name)
                for name in names:
                    procs.wait_logged(name, "ingest_started", WORKER_START_TIMEOUT_S)
                pids = [procs.procs[name].pid for name in names]
                listener = AlarmListener(dsn)
                try:
                    publisher = Publisher(broker, "bench-ingest-steady")
                    try:
                        for rate in self.options.rates:
                            step = self.step(
                                rate,
                                conn=conn,
                                publisher=publisher,
                                listener=listener,
                                traffic=traffic,
                                pids=pids,
                                broker=broker,
                            )
                            out.append(step)
                            if step["saturated"] or step["publisher_short"]:
                                break
                    finally:
                        publisher.close()
                finally:
                    listener.close()
                wait_for(lambda: gaps_settled(conn, traffic), SETTLE_TIMEOUT_S, "the gap check")
                check = verify(conn, traffic, workers)
        if out:
            out[-1]["check"] = check
            out[-1]["exactly_once"] = exactly_once(check)
        return out

    def step(
        self,
        rate: float,
        *,
        conn: psycopg.Connection[Any],
        publisher: Publisher,
        listener: AlarmListener,
        traffic: Traffic,
        pids: list[int],
        broker: Mosquitto,
    ) -> dict[str, Any]:
        seconds = self.options.step_seconds
        events = max(1, round(rate * seconds))
        messages = traffic.messages(events)
        stored_at_start = stored_events(conn)
        published = 0
        samples: list[tuple[float, int]] = []
        before = cpu_snapshot(self._pg_pid(), self._pid(broker), pids)
        t0 = time.monotonic()
        next_sample = t0
        for message in messages:
            due = t0 + published / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            if message.alarm_id is not None:
                listener.expect(message.alarm_id)
            publisher.publish(message)
            published += message.new
            if time.monotonic() >= next_sample:
                waiting = stored_at_start + published - stored_events(conn)
                samples.append((time.monotonic() - t0, waiting))
                next_sample += SAMPLE_S
        offered_s = time.monotonic() - t0
        waiting = stored_at_start + published - stored_events(conn)
        samples.append((offered_s, waiting))
        after = cpu_snapshot(self._pg_pid(), self._pid(broker), pids)
        with contextlib.suppress(IngestBenchError):  # if not, the figures say so
            wait_for(
                lambda: stored_events(conn) >= stored_at_start + published,
                STEP_TAIL_TIMEOUT_S,
                "the step's events",
            )
        tail_s = time.monotonic() - t0 - offered_s
        publisher.wait_acked(STEP_TAIL_TIMEOUT_S)
        latencies = listener.collect(timeout_s=STEP_TAIL_TIMEOUT_S)
        cpu = cpu_figures(before, after, published)
        lag = lag_s(samples, rate)
        run = {
            "offered_per_s": rate,
            "published_per_s": published / offered_s,
            "publisher_short": published / offered_s < PUBLISHER_SLACK * rate,
            "events": published,
            "lag_s": lag,
            "lag_samples": samples,
            "tail_s": tail_s,
            "saturated": saturated(samples, rate),
            "alarms": len(latencies),
            "alarm_p50_ms": percentile(latencies, 50),
            "alarm_p99_ms": percentile(latencies, 99),
            "cpu": cpu,
            "bottleneck": bottleneck(
                cpu["worker_cores"],
                postgres_cores=cpu["postgres_cores"],
                broker_cores=cpu["broker_cores"],
                machine_cores=cpu["machine_cores"],
                fsync_share=0.0,
                cpus=NPROC,
                other_cores=cpu["other_cores"],
            ),
        }
        self.say(
            f"  steady {rate:.0f}/s offered ({run['published_per_s']:.0f}/s published): lag "
            f"{lag:.2f} s, {'SATURATED' if run['saturated'] else 'keeps up'}, alarm p99 "
            f"{run['alarm_p99_ms']:.1f} ms over {len(latencies)}"
        )
        return run


class AlarmListener:
    """``LISTEN carebed_desk`` on a connection of its own: an alarm's latency is from its
    publication to the first notification after which PostgreSQL holds it (the workers notify
    in the transaction that stores it, so the notification comes with the commit)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("LISTEN carebed_desk")
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}
        self._latencies_ms: list[float] = []
        self._stop = threading.Event()
        self._probe = psycopg.connect(dsn, autocommit=True)
        self._thread = threading.Thread(target=self._run, name="bench-ingest-notify", daemon=True)
        self._thread.start()

    def expect(self, alarm_id: str) -> None:
        with self._lock:
            self._pending[alarm_id] = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in self.conn.notifies(timeout=0.2):
                at = time.monotonic()
                with self._lock:
                    pending = list(self._pending)
                if not pending:
                    continue
                found = self._probe.execute(
                    "SELECT id FROM alarm WHERE id = ANY(%s)", (pending,)
                ).fetchall()
                with self._lock:
                    for (alarm_id,) in found:
                        sent = self._pending.pop(alarm_id, None)
                        if sent is not None:
                            self._latencies_ms.append((at - sent) * 1000)

    def collect(self, timeout_s: float) -> list[float]:
        """The latencies since the last call, once every expected alarm is in."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if not self._pending or time.monotonic() > deadline:
                    out, self._latencies_ms = self._latencies_ms, []
                    self._pending.clear()
                    return out
            time.sleep(POLL_S)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.conn.close()
        self._probe.close()


# ------------------------------------------------------------------------------- bench.run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ingest-events",
        type=int,
        help=f"ingest part: backlog events per drain (default {EVENTS}; quick {QUICK_EVENTS})",
    )
    parser.add_argument(
        "--ingest-gateways",
        type=int,
        help=f"ingest part: synthetic gateways (default {GATEWAYS}; quick {QUICK_GATEWAYS})",
    )
    parser.add_argument(
        "--ingest-workers",
        default=",".join(str(k) for k in WORKERS),
        help="ingest part: worker counts of the drains, comma-separated",
    )
    parser.add_argument(
        "--ingest-step-workers",
        type=int,
        default=STEP_WORKERS,
        help="ingest part: workers of the steady-rate steps",
    )
    parser.add_argument(
        "--ingest-rates",
        help="ingest part: steady offered rates, events/s, comma-separated, stepped up until "
        f"saturated (default {','.join(f'{r:g}' for r in STEP_RATES)}; "
        f"quick {','.join(f'{r:g}' for r in QUICK_STEP_RATES)}); empty: no steps",
    )
    parser.add_argument(
        "--ingest-step-s",
        type=float,
        help=f"ingest part: seconds per rate step (default {STEP_SECONDS:g}; "
        f"quick {QUICK_STEP_SECONDS:g})",
    )


def options_from(args: argparse.Namespace) -> IngestOptions:
    quick = bool(args.quick)
    rates = args.ingest_rates
    rates_t: tuple[float, ...]
    if rates is None:
        rates_t = QUICK_STEP_RATES if quick else STEP_RATES
    else:
        rates_t = tuple(float(r) for r in str(rates).split(",") if r)
    options = IngestOptions(
        gateways=args.ingest_gateways or (QUICK_GATEWAYS if quick else GATEWAYS),
        events=args.ingest_events or (QUICK_EVENTS if quick else EVENTS),
        workers=tuple(int(k) for k in str(args.ingest_workers).split(",") if k),
        step_workers=args.ingest_step_workers,
        rates=rates_t,
        step_seconds=args.ingest_step_s or (QUICK_STEP_SECONDS if quick else STEP_SECONDS),
    )
    if (
        options.gateways < 1
        or options.events < options.gateways
        or not options.workers
        or min(options.workers) < 1
        or options.step_workers < 1
        or min(options.rates, default=1) <= 0
    ):
        raise IngestBenchError(
            "ingest part: --ingest-events at least --ingest-gateways, worker counts and rates "
            "above 0"
        )
    return options


def run_ingest(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    options = options_from(args)
    print(
        f"ingest: {options.events} events from {options.gateways} gateways, drained by "
        f"{', '.join(map(str, options.workers))} worker(s); steady steps with "
        f"{options.step_workers} (once per bench)",
        flush=True,
    )
    report = IngestBench(workdir, options, lambda text: print(text, flush=True)).run()
    report["rerun"] = rerun_command(args)
    return report


def rerun_command(args: argparse.Namespace) -> str:
    extra = []
    if args.quick:
        extra.append("--quick")
    for flag in ("ingest_events", "ingest_gateways", "ingest_rates", "ingest_step_s"):
        value = getattr(args, flag)
        if value is not None:
            extra.append(f"--{flag.replace('_', '-')} {value}")
    if str(args.ingest_workers) != ",".join(map(str, WORKERS)):
        extra.append(f"--ingest-workers {args.ingest_workers}")
    if args.ingest_step_workers != STEP_WORKERS:
        extra.append(f"--ingest-step-workers {args.ingest_step_workers}")
    return f'make bench BENCH_ARGS="--parts ingest{"".join(" " + e for e in extra)}"'


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The figures printed: per K, COPY's and the earlier figures beside; the steps."""
    copy_rate = report["copy"]["events_per_s"]
    drains = []
    for run in report["drains"]:
        cpu = run["cpu"]
        drains.append(
            {
                "workers": run["workers"],
                "events": run["events"],
                "events_per_s": run["events_per_s"],
                "events_per_s_stored": run["events_per_s_stored"],
                "copy_ratio": run["events_per_s"] / copy_rate,
                "earlier_events_per_s": EARLIER_EVENTS_PER_S.get(run["workers"]),
                "worker_us_per_event": cpu["worker_us_per_event"],
                "postgres_us_per_event": cpu["postgres_us_per_event"],
                "broker_us_per_event": cpu["broker_us_per_event"],
                # What one CPU fully given to the ingest (workers, PostgreSQL, broker) stores:
                # the figure that carries over to a machine of other load or size.
                "events_per_cpu_s": 1e6
                / (
                    cpu["worker_us_per_event"]
                    + cpu["postgres_us_per_event"]
                    + cpu["broker_us_per_event"]
                ),
                "worker_cores": cpu["worker_cores"],
                "postgres_cores": cpu["postgres_cores"],
                "broker_cores": cpu["broker_cores"],
                "machine_cores": cpu["machine_cores"],
                "other_cores": cpu["other_cores"],
                "loadavg_1m": run["loadavg_1m"],
                "wal_fsyncs_per_1k_events": 1000 * run["wal_fsyncs"] / run["events"],
                "fsync_share": run["fsync_share"],
                "publish_events_per_s": run["publish_events_per_s"],
                "bottleneck": run["bottleneck"],
                "exactly_once": run["exactly_once"],
                "anomalies": anomalies(run["check"]),
                "check": run["check"],
            }
        )
    steps = report["steps"]
    kept = [s for s in steps if not s["saturated"] and not s["publisher_short"]]
    sized = [d["check"] for d in drains if d["check"].get("stored")]
    return {
        "drains": drains,
        "stored_bytes_per_event": (
            sized[0]["event_table_bytes"] / sized[0]["stored"]
            if sized and "event_table_bytes" in sized[0]
            else math.nan
        ),
        "copy_events_per_s": copy_rate,
        "copy_postgres_us_per_event": report["copy"]["postgres_us_per_event"],
        "steps": steps,
        "carried_per_s": max((s["offered_per_s"] for s in kept), default=math.nan),
        "saturated_at_per_s": next((s["offered_per_s"] for s in steps if s["saturated"]), None),
        "steady_anomalies": anomalies(steps[-1]["check"]) if steps else 0,
        "options": report["options"],
        "rerun": report["rerun"],
    }


def summary_lines(figures: dict[str, Any], verdicts: dict[int, str]) -> list[str]:
    opts = figures["options"]
    lines = [
        f"ingest drain of {opts['events']} events from {opts['gateways']} gateways "
        f"(messages of {opts['events_per_message']}, {opts['alarm_share']:.0%} alarms, "
        f"{opts['duplicate_share']:.0%} of messages twice, {opts['resend_share']:.0%} of alarms "
        f"resent); PostgreSQL COPY of the same rows: {figures['copy_events_per_s']:.0f}/s "
        f"({figures['copy_postgres_us_per_event']:.1f} µs PostgreSQL CPU/event); stored: "
        f"{figures['stored_bytes_per_event']:.0f} bytes per event (table, indexes, TOAST)",
        "  workers  events/s  ÷COPY  earlier   µs CPU/event: workers  PG  broker  per CPU-s   "
        "cores: workers / PG / broker / others of / machine   fsyncs/1k (time)   exactly once",
    ]
    for d in figures["drains"]:
        earlier = d["earlier_events_per_s"]
        lines.append(
            f"  {d['workers']:7d}  {d['events_per_s']:8.0f}  {d['copy_ratio']:5.2f}  "
            f"{f'{earlier:.0f}' if earlier else '-':>7}   {d['worker_us_per_event']:20.1f} "
            f"{d['postgres_us_per_event']:4.0f} {d['broker_us_per_event']:6.1f}  "
            f"{d['events_per_cpu_s']:9.0f}   "
            f"{'+'.join(f'{c:.2f}' for c in d['worker_cores']):>14} / "
            f"{d['postgres_cores']:.2f} / {d['broker_cores']:.2f} / {d['other_cores']:.2f} of "
            f"{d['machine_cores']:.2f}   "
            f"{d['wal_fsyncs_per_1k_events']:8.1f} ({d['fsync_share']:4.0%})   "
            f"{verdicts[d['workers']]}"
        )
        lines.append(
            f"           limit: {d['bottleneck']}; load average before: {d['loadavg_1m']:.1f}"
        )
    steps = figures["steps"]
    if steps:
        lines.append("  steady rate (workers running), offered → lag, alarm publish → committed:")
        for s in steps:
            lines.append(
                f"    {s['offered_per_s']:7.0f}/s offered ({s['published_per_s']:.0f} published):"
                f" lag {s['lag_s']:.2f} s (limit {LAG_LIMIT_S:g} s), "
                f"{'SATURATED' if s['saturated'] else 'carried'}; alarm p50 "
                f"{s['alarm_p50_ms']:.1f} / p99 {s['alarm_p99_ms']:.1f} ms over {s['alarms']}; "
                f"cores: workers {'+'.join(f'{c:.2f}' for c in s['cpu']['worker_cores'])}, "
                f"PG {s['cpu']['postgres_cores']:.2f}, broker {s['cpu']['broker_cores']:.2f}, "
                f"publisher {s['cpu']['bench_cores']:.2f}, others {s['cpu']['other_cores']:.2f}"
                + (f"; limit: {s['bottleneck']}" if s["saturated"] else "")
            )
        saturated_at = figures["saturated_at_per_s"]
        lines.append(
            f"  carried: {figures['carried_per_s']:.0f} events/s; "
            + (
                f"saturated at {saturated_at:.0f}/s offered"
                if saturated_at
                else "not saturated at the highest rate offered"
            )
        )
    lines.append(f"  rerun: {figures['rerun']}")
    return lines
