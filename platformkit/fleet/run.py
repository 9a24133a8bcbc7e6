"""The fleet's run: broker, desk, worker processes, outages; then the figures (``report``)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from platformkit.fleet import brokers
from platformkit.fleet.desk import OPERATOR, Desk
from platformkit.fleet.home import HomeSettings
from platformkit.fleet.report import summarise
from platformkit.fleet.traffic import TrafficSettings

if TYPE_CHECKING:
    from platformkit.fleet.ingest import FleetIngest, StoredAlarms

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_START_S = 60.0  # a worker imports the gateway and says "ready"
WORKER_EXIT_S = 10.0  # a worker that printed its result ends by itself
LEAD_S = 1.0  # from the last worker's "ready" to the first home's start
ONLINE_MARGIN_S = 30.0  # after the last start, homes not yet online are counted as such
STEADY_AFTER_S = 5.0  # from the last home's start: the start's disk and CPU storm is over
SETTLE_S = 15.0  # after the homes stopped, what the broker still delivers to the desk
RESULT_MARGIN_S = 120.0  # a worker's result, beyond its homes' stop
# paho's network loop waits with select(), which takes no descriptor above 1023 (FD_SETSIZE): a
# connection whose socket gets a higher number never sees its CONNACK. A home holds about 8
# (the outbox's database, WAL, shm, spool and seq mark, the control socket, the MQTT socket and
# paho's socket pair), 3 more through an outage relay, and a reconnection briefly holds two MQTT
# sockets: 100 homes measured 830-910 descriptors, so a process carries at most 80.
MAX_HOMES_PER_PROCESS = 80


class FleetError(Exception):
    """The fleet could not run (a worker failed, the broker or the desk could not start)."""


@dataclass(frozen=True, slots=True)
class FleetOptions:
    gateways: int = 20
    duration_s: float = 60.0  # steady running once the last home has started
    procs: int | None = None  # None: as few as MAX_HOMES_PER_PROCESS allows
    stagger_s: float | None = None  # None: 20 ms per gateway
    broker: str | None = None  # HOST:PORT of a broker the fleet does not start
    broker_kind: str = "mosquitto"
    protocol: str = "5"  # for a --broker only; a started broker says its own
    share: str | None = None  # the desk subscribes as $share/SHARE/…
    outages: float = 0.1  # share of the homes that lose their link once
    outage_s: float = 20.0
    seed: int = 1
    heartbeat_s: float = 60.0
    vitals_interval_s: float | None = None
    reading_s: float = 5.0
    button_supervision_s: float = 300.0
    alarm_interval_s: float = 600.0
    backoff_cap_s: float = 60.0
    ingest: int = 0  # ingest workers beside the desk, PostgreSQL's completeness (ingest.py)
    fault_at_s: float | None = None  # into the steady part: the broker's fault (brokers.py)
    fault_s: float = 10.0
    log_level: str = "warning"
    id_prefix: str = "fleet"

    @property
    def processes(self) -> int:
        if self.procs is not None:
            return max(1, min(self.procs, self.gateways))
        return max(1, math.ceil(self.gateways / MAX_HOMES_PER_PROCESS))

    @property
    def stagger(self) -> float:
        return self.stagger_s if self.stagger_s is not None else 0.02 * self.gateways


class _Worker:
    """One worker process and the JSON lines it prints."""

    def __init__(self, number: int, log: Path) -> None:
        self.number = number
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr = log.open("ab")
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
            ),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "platformkit.fleet.worker"],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO_ROOT,
        )
        self._reader = threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _pump(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                continue
        self.lines.put(None)

    def send(self, spec: dict[str, Any]) -> None:
        """The worker's spec, one JSON line on its stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()

    def read(self, event: str, deadline: float) -> dict[str, Any]:
        while True:
            try:
                record = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise FleetError(f"worker {self.number}: no {event!r} in time") from None
            if record is None:
                raise FleetError(
                    f"worker {self.number} exited ({self.proc.wait()}) before {event!r}"
                )
            if record.get("event") == event:
                return record

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=WORKER_EXIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=WORKER_EXIT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def plan(options: FleetOptions, ids: Sequence[str], start: float) -> dict[str, Any]:
    """When each home starts, which homes lose their link and when (monotonic seconds)."""
    rng = random.Random(options.seed)
    n = len(ids)
    step = options.stagger / n if n else 0.0
    last_start = start + step * max(0, n - 1)
    stop = last_start + options.duration_s
    homes = [
        {"index": i, "gw": gw, "start_mono": start + i * step, "seed": rng.randrange(2**32)}
        for i, gw in enumerate(ids)
    ]
    outages = []
    count = round(options.outages * n)
    if count and options.outage_s > 0:
        # Within the steady part, ending well before the stop so that the home reconnects and
        # delivers what it kept (the back-off may be at its cap by then).
        window_start = last_start + STEADY_AFTER_S
        window_end = stop - options.outage_s - min(options.backoff_cap_s, 30.0) - 5.0
        if window_end > window_start:
            for gw in rng.sample(list(ids), count):
                outages.append(
                    {
                        "gw": gw,
                        "at_mono": rng.uniform(window_start, window_end),
                        "seconds": options.outage_s,
                    }
                )
    return {
        "homes": homes,
        "outages": outages,
        "stop_mono": stop,
        "last_start": last_start,
        "steady_from": last_start + STEADY_AFTER_S,
    }


def run_fleet(options: FleetOptions, workdir: Path) -> dict[str, Any]:
    """Run the fleet once; the report (``report.summarise``) with its raw figures."""
    workdir.mkdir(parents=True, exist_ok=True)
    if options.broker is not None:
        broker = brokers.remote(options.broker, options.protocol)
    else:
        broker = brokers.start(options.broker_kind, workdir)
    workers: list[_Worker] = []
    desk: Desk | None = None
    ingest: FleetIngest | None = None
    follower: StoredAlarms | None = None
    try:
        if options.ingest > 0:
            from platformkit.fleet.ingest import FleetIngest  # noqa: PLC0415 - psycopg only here

            shares = broker.protocol == "5" and broker.shared_subscriptions
            if not shares and not broker.ingest_args:
                # The reference ingest shares the uplink with $share/ or the broker's own queue.
                raise FleetError(f"--ingest: no competing consumer known on {broker.kind}")

            ingest = FleetIngest(
                f"{broker.host}:{broker.port}",
                options.ingest,
                workdir / "ingest",
                extra_args=broker.ingest_args,
            )
        share = options.share if broker.shared_subscriptions else None
        # Beside the ingest, the desk reads the alarms from PostgreSQL as the platform's desk
        # does, and the ingest's workers are the uplink's only consumers (desk.py).
        desk = Desk(
            broker.host, broker.port, protocol=broker.protocol, share=share, uplink=ingest is None
        )
        if ingest is not None:
            follower = ingest.follow_alarms(desk.alarm_stored, OPERATOR)
        ids = [f"{options.id_prefix}-{i:05d}" for i in range(options.gateways)]
        home = HomeSettings(
            host=broker.host,
            port=broker.port,
            protocol=broker.protocol,
            heartbeat_s=options.heartbeat_s,
            backoff_cap_s=options.backoff_cap_s,
            vitals_interval_s=options.vitals_interval_s,
            traffic=TrafficSettings(
                reading_s=options.reading_s,
                button_supervision_s=options.button_supervision_s,
                alarm_interval_s=options.alarm_interval_s,
            ),
        )
        procs = options.processes
        if math.ceil(options.gateways / procs) > MAX_HOMES_PER_PROCESS:
            raise FleetError(
                f"{options.gateways} gateways in {procs} process(es) is more than "
                f"{MAX_HOMES_PER_PROCESS} per process (paho's select() loop): use --procs "
                f"{math.ceil(options.gateways / MAX_HOMES_PER_PROCESS)} or more"
            )
        for k in range(procs):
            workers.append(_Worker(k, workdir / f"worker-{k}.stderr"))
        # The plan's clock starts once every worker has imported the gateway ("ready").
        deadline = time.monotonic() + WORKER_START_S
        for worker in workers:
            worker.read("ready", deadline)
        start = time.monotonic() + LEAD_S
        layout = plan(options, ids, start)
        for entry in layout["homes"]:
            entry["port"] = broker.port_of(entry["index"])
        online_by = layout["last_start"] + ONLINE_MARGIN_S
        for k, worker in enumerate(workers):
            mine = layout["homes"][k::procs]
            names = {h["gw"] for h in mine}
            spec = {
                "home": dataclasses.asdict(home),
                "state_root": str(workdir / "homes"),
                "homes": mine,
                "outages": [o for o in layout["outages"] if o["gw"] in names],
                "online_by_mono": online_by,
                "stop_mono": layout["stop_mono"],
                "first_start_mono": start,
                "log": str(workdir / f"worker-{k}.log"),
                "log_level": options.log_level,
            }
            (workdir / f"worker-{k}.json").write_text(json.dumps(spec, indent=1))
            worker.send(spec)
        onlines = [w.read("online", online_by + 60.0) for w in workers]
        fault = _BrokerFault(broker, options, layout) if options.fault_at_s is not None else None
        # The steady part begins once every home is online and the start's storm is over.
        layout["steady_from"] = max(
            layout["steady_from"], *(o["mono"] + STEADY_AFTER_S for o in onlines)
        )
        end = layout["stop_mono"] + options.stagger + RESULT_MARGIN_S
        results = [w.read("result", end) for w in workers]
        if fault is not None:
            layout["fault"] = fault.result()
        homes = [h for r in results for h in r["homes"]]
        stored = None
        if ingest is None:
            _settle(desk, homes)
        else:
            ledgers = ingest.settle(homes, SETTLE_S)
            desk.adopt_stored(ledgers, *ingest.kinds_and_span())
            stored = ingest.figures(homes, ledgers)
            assert follower is not None
            desk.errors.extend(follower.errors)
        return summarise(
            options,
            broker=broker,
            desk=desk,
            homes=homes,
            results=results,
            onlines=onlines,
            layout=layout,
            stored=stored,
        )
    finally:
        if follower is not None:
            follower.close()
        if desk is not None:
            desk.close()
        for worker in workers:
            worker.close()
        if ingest is not None:
            ingest.close()
        brokers.close_quietly(broker)


class _BrokerFault:
    """The broker's fault, in a thread of the fleet's process, at its time in the steady part."""

    def __init__(self, broker: brokers.FleetBroker, options: FleetOptions, layout: dict[str, Any]):
        if broker.fault is None:
            raise FleetError(f"a {broker.kind} broker has no fault to inject")
        self.at = layout["steady_from"] + (options.fault_at_s or 0.0)
        if self.at + options.fault_s + options.backoff_cap_s + 5.0 > layout["stop_mono"]:
            raise FleetError("the broker's fault and the homes' back-off do not fit the duration")
        self.broker = broker
        self.down_s = options.fault_s
        self.began: float | None = None
        self.ended: float | None = None
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="fleet.fault", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        time.sleep(max(0.0, self.at - time.monotonic()))
        self.began = time.monotonic()
        try:
            assert self.broker.fault is not None
            self.broker.fault(self.down_s)
        except Exception as exc:  # noqa: BLE001 - reported with the figures
            self.error = repr(exc)
        self.ended = time.monotonic()

    def result(self) -> dict[str, Any]:
        self._thread.join(timeout=60)
        return {
            "what": self.broker.fault_name,
            "began_mono": self.began,
            "ended_mono": self.ended,
            "error": self.error,
        }


def _settle(desk: Desk, homes: list[dict[str, Any]]) -> None:
    """Wait (bounded) until the desk holds every seq the homes handed out."""
    deadline = time.monotonic() + SETTLE_S
    behind = homes  # a home caught up stays so (seqs only arrive): only the others are looked at
    while time.monotonic() < deadline:
        with desk.lock:
            behind = [
                h
                for h in behind
                if h["gw"] not in desk.gateways
                or len(desk.gateways[h["gw"]].ledger.gaps(h["last_seq"])) > 0
            ]
        if not behind:
            return
        time.sleep(0.2)
