"""The bench's fleet part: ``python -m platformkit.fleet`` as a child, its figures and targets.

The fleet starts its own broker (each of ``--fleet-brokers``: kinds of
``platformkit.fleet.brokers``), so that its hundreds of connections, wills and outages never
touch the broker of the other parts. Its homes run in worker processes of their own (docs/FLEET.md).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT

FLEET_GATEWAYS = 500
QUICK_FLEET_GATEWAYS = 100
FLEET_SECONDS = 120.0
QUICK_FLEET_SECONDS = 45.0
FLEET_ALARM_INTERVAL_S = 120.0  # per home, mean: ~1 alarm per home and 2 minutes, for the p99
FLEET_BACKOFF_CAP_S = 10.0  # so that a home cut for 20 s is back well before the stop
FLEET_TIMEOUT_MARGIN_S = 600.0
FLEET_INGEST_WORKERS = 2  # the reference ingest beside the desk: completeness in PostgreSQL
# The broker's fault during the run (platformkit.fleet.brokers: Mosquitto stopped and started
# again, a NATS cluster's node 1 SIGKILLed and restarted), a third into the steady part.
FLEET_FAULT_SHARE = 1 / 3
FLEET_FAULT_S = 10.0


class FleetBenchError(Exception):
    """The fleet child failed or left no report."""


def run_fleet(
    *,
    workdir: Path,
    gateways: int,
    seconds: float,
    broker_kind: str,
    ingest: int,
    log: Path,
) -> dict[str, Any]:
    """One fleet run; its report with the per-alarm and per-gateway detail trimmed."""
    report_path = workdir / "fleet.json"
    argv = [
        sys.executable,
        "-m",
        "platformkit.fleet",
        *("--gateways", str(gateways)),
        *("--duration", str(seconds)),
        *("--broker-kind", broker_kind),
        *("--alarm-interval", str(FLEET_ALARM_INTERVAL_S)),
        *("--backoff-cap", str(FLEET_BACKOFF_CAP_S)),
        *("--ingest", str(ingest)),
        *("--fault-at", f"{seconds * FLEET_FAULT_SHARE:g}"),
        *("--fault-seconds", f"{FLEET_FAULT_S:g}"),
        *("--json", str(report_path)),
        *("--workdir", str(workdir / "run")),
    ]
    with log.open("ab") as out:
        proc = subprocess.run(
            argv,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=seconds + FLEET_TIMEOUT_MARGIN_S,
            check=False,
        )
    if not report_path.exists():
        raise FleetBenchError(f"the fleet exited {proc.returncode} without a report; see {log}")
    report: dict[str, Any] = json.loads(report_path.read_text())
    report.pop("alarm_samples", None)
    completeness = report["completeness"]
    completeness["per_gateway"] = [
        g for g in completeness["per_gateway"] if g["gap_seqs"] or g["held_by_gateway"]
    ]
    stored = report.get("postgres")
    if stored:
        stored["per_gateway"] = stored["per_gateway"][:20]
    report["exit_code"] = proc.returncode
    return report


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the summary prints, from one fleet report."""
    alarms = report["alarms"]
    raised = alarms["raised"]
    memory = report["memory"]
    homes = sum(m["homes"] for m in memory)
    return {
        "gateways": report["gateways"],
        "broker": report["broker"]["kind"],
        "processes": len(memory),
        "online": report["online_at_start"],
        "connects": report["connects"],
        "subscribe_refused": report["subscribe_refused"],
        "events_per_s": report["events_per_s"],
        "alarms_raised": raised,
        "alarms_link_down": alarms["raised_link_down"],
        "delivered_share": alarms["delivered"] / raised if raised else math.nan,
        "acknowledged_share": alarms["acknowledged"] / raised if raised else math.nan,
        "gap_seqs": report["completeness"]["gap_seqs"],
        "held_by_gateways": report["completeness"]["held_by_gateways"],
        "duplicates": report["completeness"]["duplicates"],
        "outages": report["outages"]["done"],
        "alarm_p50_ms": report["alarm_latency_ms"]["p50"],
        "alarm_p99_ms": report["alarm_latency_ms"]["p99"],
        "alarm_samples": report["alarm_latency_ms"]["n"],
        "ack_p50_ms": report["ack_round_trip_ms"]["p50"],
        "ack_p99_ms": report["ack_round_trip_ms"]["p99"],
        "rss_kib_per_gateway": sum(m["per_gateway_kib"] * m["homes"] for m in memory) / homes,
        "cpu_percent_per_gateway": sum(m["cpu_percent"] for m in memory) / homes,
        "loop_lag_p99_ms": max(m["loop_lag"].get("p99_ms", math.nan) for m in memory),
        "postgres": _stored(report.get("postgres"), raised),
        "fault": _fault(report.get("fault")),
    }


def _fault(fault: dict[str, Any] | None) -> dict[str, Any] | None:
    if not fault:
        return None
    began, ended = fault.get("began_mono"), fault.get("ended_mono")
    return {
        "what": fault["what"],
        "seconds": ended - began if began is not None and ended is not None else math.nan,
        "error": fault.get("error"),
    }


def _stored(stored: dict[str, Any] | None, raised: int) -> dict[str, Any] | None:
    if not stored:
        return None
    return {
        "workers": stored["workers"],
        "events_stored": stored["events_stored"],
        "gap_seqs": stored["gap_seqs"],
        "open_gaps": stored["open_gaps_in_ingest"],
        "duplicates": stored["duplicates"],
        "stored_share": stored["alarms_stored"] / raised if raised else math.nan,
        "confirmed_share": stored["alarms_confirmed"] / raised if raised else math.nan,
    }


def summary_lines(fleet: dict[str, Any], verdicts: dict[str, str]) -> list[str]:
    stored = fleet.get("postgres")
    lines = []
    if stored:
        lines.append(
            f"  PostgreSQL ({stored['workers']} ingest workers): {stored['events_stored']} events, "
            f"unexplained gaps {stored['gap_seqs']} seqs ({verdicts['stored_gaps']}), alarms "
            f"stored {stored['stored_share']:.1%}, confirmed by the gateway "
            f"{stored['confirmed_share']:.1%} ({verdicts['confirmed']}), {stored['duplicates']} "
            "duplicates counted"
        )
    fault = fleet.get("fault")
    if fault:
        lines.insert(
            0,
            f"  during the run: {fault['what']}, {fault['seconds']:.1f} s"
            + (f" (FAILED: {fault['error']})" if fault["error"] else ""),
        )
    return [
        f"fleet: {fleet['gateways']} gateways on {fleet['broker']} in {fleet['processes']} "
        f"processes, {fleet['online']} online, {fleet['connects']} connects "
        f"({fleet['subscribe_refused']} SUBSCRIBE refused), "
        f"{fleet['outages']} outages, {fleet['events_per_s']:.0f} events/s at the desk",
        f"  alarms: {fleet['alarms_raised']} raised ({fleet['alarms_link_down']} with the link "
        f"down), delivered {fleet['delivered_share']:.1%} ({verdicts['delivered']}), "
        f"acknowledged {fleet['acknowledged_share']:.1%} ({verdicts['acknowledged']}); "
        f"unexplained gaps {fleet['gap_seqs']} seqs ({verdicts['gaps']}), "
        f"{fleet['held_by_gateways']} held by a gateway at its stop, "
        f"{fleet['duplicates']} duplicates",
        f"  alarm raise → desk p50 {fleet['alarm_p50_ms']:.1f} / p99 "
        f"{fleet['alarm_p99_ms']:.1f} ms over {fleet['alarm_samples']} (steady, link up); ack → "
        f"gateway's feedback p50 {fleet['ack_p50_ms']:.1f} / p99 {fleet['ack_p99_ms']:.1f} ms; "
        f"{fleet['rss_kib_per_gateway']:.0f} KiB and {fleet['cpu_percent_per_gateway']:.2f} % "
        f"CPU per gateway, loop lag p99 {fleet['loop_lag_p99_ms']:.0f} ms (information)",
        *lines,
    ]
