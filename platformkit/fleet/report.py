"""The fleet's figures from what the homes and the desk saw, and their text form."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from platformkit.fleet.completeness import count, subtract

if TYPE_CHECKING:
    from platformkit.fleet.brokers import FleetBroker
    from platformkit.fleet.desk import Desk
    from platformkit.fleet.run import FleetOptions

WORST_SHOWN = 5


def percentile(values: list[float], pct: float) -> float:
    """Nearest rank (no interpolation); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(pct / 100 * len(ordered))) - 1]


def _stats_ms(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else math.nan,
    }


def summarise(
    options: FleetOptions,
    *,
    broker: FleetBroker,
    desk: Desk,
    homes: list[dict[str, Any]],
    results: list[dict[str, Any]],
    onlines: list[dict[str, Any]],
    layout: dict[str, Any],
    stored: dict[str, Any] | None = None,
) -> dict[str, Any]:
    with desk.lock:
        alarms_seen = dict(desk.alarms)
        gateways = dict(desk.gateways)
        events = desk.events
        span = (desk.last_event_mono or 0.0) - (desk.first_event_mono or 0.0)
        kinds = dict(desk.kinds)
        errors = list(desk.errors)
        per_gateway = []
        for home in homes:
            seen = gateways.get(home["gw"])
            last = home["last_seq"]
            # What never arrived, once: the gaps are what no gateway.dropped explains of it.
            never = [(1, last)] if last else []
            missing = seen.ledger.missing(last) if seen is not None else never
            gaps = subtract(missing, seen.ledger.dropped) if seen is not None else missing
            # Events the gateway still held when it closed (its drain at shutdown is bounded):
            # not lost, they go with its next start. Counted apart from the gaps.
            held = min(count(gaps), sum((home["left_queued"] or {}).values()))
            per_gateway.append(
                {
                    "gw": home["gw"],
                    "last_seq": last,
                    "received": len(seen.ledger.seen) if seen else 0,
                    "duplicates": seen.ledger.duplicates if seen else 0,
                    "explained": count(missing) - count(gaps) if seen else 0,
                    "gaps": gaps,
                    "gap_seqs": count(gaps) - held,
                    "held_by_gateway": held,
                    "beyond_last": len([s for s in seen.ledger.seen if s > last]) if seen else 0,
                    "left_queued": home["left_queued"],
                    "connects": home["connects"],
                    "subscribe_refused": home["subscribe_refused"],
                    "wills": seen.lost if seen else 0,
                    "error": home["error"],
                }
            )
    raised = [(home["gw"], alarm) for home in homes for alarm in home["alarms"]]
    cuts: dict[str, list[float]] = {}
    for result in results:
        for outage in result["outages"]:
            cuts.setdefault(outage["gw"], []).append(outage["cut_mono"])
    steady_from = layout["steady_from"]
    latency_up, latency_down, latency_start, ack_rtt, ack_rtt_all = [], [], [], [], []
    undelivered, unacknowledged = [], []
    samples = []
    for gw, alarm in raised:
        seen_alarm = alarms_seen.get(alarm["id"])
        raised_at = alarm["raised_mono"]
        states = alarm["states"]
        samples.append(
            {
                "gw": gw,
                "id": alarm["id"],
                "link_down": alarm["link_down"],
                "raised_mono": raised_at,
                "stored_ms": (alarm["stored_mono"] - raised_at) * 1000,
                "delivered_ms": (states["delivered"] - raised_at) * 1000
                if "delivered" in states
                else None,
                "desk_ms": (seen_alarm.first_mono - raised_at) * 1000 if seen_alarm else None,
                "ack_sent_ms": (seen_alarm.ack_sent_mono - raised_at) * 1000
                if seen_alarm and seen_alarm.ack_sent_mono
                else None,
                "acknowledged_ms": (states["acknowledged"] - raised_at) * 1000
                if "acknowledged" in states
                else None,
                "arrivals": seen_alarm.arrivals if seen_alarm else 0,
            }
        )
        if seen_alarm is None:
            undelivered.append(alarm["id"])
            continue
        delay = seen_alarm.first_mono - raised_at
        # Down: raised while the gateway's link was down, or cut before the alarm got through.
        down = alarm["link_down"] or any(
            raised_at <= cut <= seen_alarm.first_mono for cut in cuts.get(gw, ())
        )
        samples[-1]["link_down"] = down
        if down:
            latency_down.append(delay)
        elif raised_at < steady_from:
            latency_start.append(delay)
        else:
            latency_up.append(delay)
        acknowledged = alarm["states"].get("acknowledged")
        if acknowledged is None:
            unacknowledged.append(alarm["id"])
        elif seen_alarm.ack_sent_mono is not None:
            rtt = acknowledged - seen_alarm.ack_sent_mono
            ack_rtt_all.append(rtt)
            if not down and raised_at >= steady_from:
                ack_rtt.append(rtt)
    ids_raised = {alarm["id"] for _, alarm in raised}
    foreign = [a for a in alarms_seen if a not in ids_raised]
    homes_n = len(homes)
    memory = []
    for result, online in zip(results, onlines, strict=True):
        n = len(result["homes"])
        base = result["baseline"]["VmRSS"]
        memory.append(
            {
                "homes": n,
                "baseline_rss_kib": base,
                "running_rss_kib": online["VmRSS"],
                "steady_rss_kib": result["steady"]["VmRSS"],
                "peak_rss_kib": result["end"]["VmHWM"],
                "threads": result["steady"]["Threads"],
                "cpu_percent": result["steady"]["cpu_percent"],
                "cpu_percent_per_gateway": result["steady"]["cpu_percent"] / n if n else math.nan,
                "fds": result["steady"]["fds"],
                "per_gateway_kib": (result["steady"]["VmRSS"] - base) / n if n else math.nan,
                "threads_per_gateway": result["steady"]["Threads"] / n if n else math.nan,
                "not_stopped": result["not_stopped"],
                "loop_lag": result.get("loop_lag", {}),
            }
        )
    total_gap = sum(g["gap_seqs"] for g in per_gateway)
    return {
        "options": dataclasses.asdict(options),
        "broker": {
            "kind": broker.kind,
            "host": broker.host,
            "port": broker.port,
            "protocol": broker.protocol,
        },
        "gateways": homes_n,
        "online_at_start": sum(o["online"] for o in onlines),
        "connects": sum(h["connects"] for h in homes),
        # Sessions whose SUBSCRIBE to their downlink the broker refused: no ack reaches them.
        "subscribe_refused": sum(h["subscribe_refused"] for h in homes),
        "home_errors": [h["error"] for h in homes if h["error"]],
        "events": events,
        "events_per_s": events / span if span > 0 else math.nan,
        "kinds": kinds,
        "alarms": {
            "raised": len(raised),
            "raised_link_down": sum(1 for sample in samples if sample["link_down"]),
            "raised_during_start": len(latency_start),
            "delivered": len(raised) - len(undelivered),
            "acknowledged": len(raised) - len(undelivered) - len(unacknowledged),
            "undelivered": undelivered,
            "unacknowledged": unacknowledged,
            "not_raised_by_fleet": foreign,
            # From PostgreSQL, the resends the ingest counted (the desk sees each alarm once).
            "resent_arrivals": int(stored["resends"])
            if stored is not None and desk.source == "postgres"
            else sum(a.arrivals - 1 for a in alarms_seen.values()),
            # After the stop, no new alarm, and the homes ran on until each was acknowledged
            # (bounded: worker.ANSWER_WAIT_S); the longest of the workers' waits.
            "answer_wait_s": max((r.get("answer_wait_s", 0.0) for r in results), default=0.0),
        },
        "alarm_latency_ms": _stats_ms(latency_up),
        "alarm_latency_link_down_ms": _stats_ms(latency_down),
        "alarm_latency_start_ms": _stats_ms(latency_start),
        "ack_round_trip_ms": _stats_ms(ack_rtt),
        "ack_round_trip_all_ms": _stats_ms(ack_rtt_all),
        "alarm_samples": samples,
        "completeness": {
            "gateways_complete": sum(1 for g in per_gateway if g["gap_seqs"] == 0),
            "gap_seqs": total_gap,
            "duplicates": sum(g["duplicates"] for g in per_gateway),
            "explained": sum(g["explained"] for g in per_gateway),
            "left_queued": sum(sum((g["left_queued"] or {}).values()) for g in per_gateway),
            "held_by_gateways": sum(g["held_by_gateway"] for g in per_gateway),
            "per_gateway": per_gateway,
        },
        "postgres": stored,
        "fault": layout.get("fault"),
        "desk_connects": desk.connects,
        # broker: the desk subscribed to the uplink; postgres: it read what the ingest stored
        "desk_source": desk.source,
        "outages": {
            "planned": len(layout["outages"]),
            "done": sum(len(r["outages"]) for r in results),
            "wills": sum(g["wills"] for g in per_gateway),
        },
        "memory": memory,
        "desk_errors": errors[:20],
        "ok": _stored_ok(stored, len(raised))
        and not (layout.get("fault") or {}).get("error")
        and not undelivered
        and not unacknowledged
        and total_gap == 0
        and not errors
        and not any(h["error"] for h in homes)
        and not any(r["not_stopped"] for r in results),  # a home that did not stop in time
    }


def _stored_ok(stored: dict[str, Any] | None, raised: int) -> bool:
    """PostgreSQL holds every seq and every alarm, each confirmed (none read: nothing to say)."""
    if stored is None:
        return True
    return bool(
        stored["gap_seqs"] == 0
        and stored["alarms_stored"] == raised
        and stored["alarms_confirmed"] == raised
        and stored["conflicts"] == 0
        and stored["rejected"] == 0
    )


def render(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    alarms = report["alarms"]
    lat, down, ack = (
        report["alarm_latency_ms"],
        report["alarm_latency_link_down_ms"],
        report["ack_round_trip_ms"],
    )
    start = report["alarm_latency_start_ms"]
    comp = report["completeness"]
    options = report["options"]
    broker = report["broker"]
    lines = [
        f"fleet: {report['gateways']} gateways on {broker['kind']} {broker['host']}:"
        f"{broker['port']} (MQTT {broker['protocol']}), {len(report['memory'])} process(es), "
        f"{options['duration_s']:g} s steady",
        f"connections: {report['online_at_start']}/{report['gateways']} online after the "
        f"staggered start, {report['connects']} connects in all; outages "
        f"{report['outages']['done']}/{report['outages']['planned']}, wills seen "
        f"{report['outages']['wills']}; SUBSCRIBE refused {report['subscribe_refused']} time(s)",
        f"events at the desk (from {report['desk_source']}): {report['events']} "
        f"({report['events_per_s']:.1f}/s)",
        f"alarms: {alarms['raised']} raised ({alarms['raised_link_down']} while the link was "
        f"down), {alarms['delivered']} delivered, {alarms['acknowledged']} acknowledged, "
        f"{alarms['resent_arrivals']} resends arrived; after the stop the homes ran on "
        f"{alarms['answer_wait_s']:.1f} s until every alarm was acknowledged",
        f"alarm latency raise → desk (steady, link up, {lat['n']}): p50 {lat['p50']:.1f} ms, "
        f"p99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms",
        f"  raised while the homes were starting ({start['n']}): p50 {start['p50']:.1f} ms, "
        f"p99 {start['p99']:.1f} ms",
        f"  raised while the link was down ({down['n']}): p50 {down['p50'] / 1000:.1f} s, "
        f"max {down['max'] / 1000:.1f} s",
        f"ack round trip desk → gateway's feedback (steady, link up, {ack['n']}): p50 "
        f"{ack['p50']:.1f} ms, p99 {ack['p99']:.1f} ms; every alarm's "
        f"({report['ack_round_trip_all_ms']['n']}): p99 "
        f"{report['ack_round_trip_all_ms']['p99']:.1f} ms",
        f"completeness: {comp['gateways_complete']}/{report['gateways']} gateways complete, "
        f"{comp['gap_seqs']} seqs missing unexplained, {comp['explained']} explained by "
        f"gateway.dropped, {comp['duplicates']} duplicates, {comp['held_by_gateways']} still "
        "held by their gateway at its stop",
    ]
    worst = sorted(comp["per_gateway"], key=lambda g: -g["gap_seqs"])[:WORST_SHOWN]
    lines += [
        f"  {g['gw']}: last seq {g['last_seq']}, gaps {g['gaps'][:5]}"
        for g in worst
        if g["gap_seqs"]
    ]
    for k, mem in enumerate(report["memory"]):
        lines.append(
            f"memory, worker {k}: {mem['homes']} homes, {mem['per_gateway_kib']:.0f} KiB RSS per "
            f"gateway ({mem['baseline_rss_kib'] / 1024:.0f} → {mem['steady_rss_kib'] / 1024:.0f} "
            f"MiB), {mem['threads_per_gateway']:.1f} threads and "
            f"{mem['cpu_percent_per_gateway']:.2f} % of a CPU per gateway; event loop lag p99 "
            f"{mem['loop_lag'].get('p99_ms', math.nan):.0f} ms, max "
            f"{mem['loop_lag'].get('max_ms', math.nan):.0f} ms"
        )
    stored = report.get("postgres")
    if stored:
        lines.append(
            f"PostgreSQL ({stored['workers']} ingest workers): {stored['events_stored']} events "
            f"stored, {stored['gateways_complete']}/{report['gateways']} gateways complete, "
            f"{stored['gap_seqs']} seqs missing unexplained ({stored['open_gaps_in_ingest']} gaps "
            f"open in the ingest), {stored['duplicates']} duplicates and {stored['resends']} "
            f"resends counted, alarms stored {stored['alarms_stored']}, confirmed "
            f"{stored['alarms_confirmed']}, rejected {stored['rejected']}"
        )
    fault = report.get("fault")
    if fault:
        began, ended = fault["began_mono"] or 0.0, fault["ended_mono"] or 0.0
        lines.append(
            f"fault: {fault['what']} for {ended - began:.1f} s"
            + (f" FAILED: {fault['error']}" if fault["error"] else "")
            + f"; the desk connected {report['desk_connects']} time(s)"
        )
    if report["home_errors"]:
        lines.append(f"home errors: {report['home_errors'][:3]}")
    if report["desk_errors"]:
        lines.append(f"desk errors: {report['desk_errors'][:3]}")
    lines.append("verdict: " + ("ok" if report["ok"] else "NOT OK"))
    return "\n".join(lines)
