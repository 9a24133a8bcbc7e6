"""The bench's ingest part: reduced against a real Mosquitto and PostgreSQL (every event stored
exactly once, the figures present), and hypothesis properties of its pure pieces (the event
generator's validity and seqs, the saturation and bottleneck decisions)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import ingest
from bench.run import parse_args, summarise
from platformkit.ingest.contract import ContractValidator, parse_topic


@functools.cache
def validator() -> ContractValidator:
    return ContractValidator.exported()


# ------------------------------------------------------------------------------- the part, reduced


def test_ingest_part_reduced_stores_each_event_once(tmp_path: Path) -> None:
    args = parse_args(
        [
            *("--parts", "ingest", "--quick", "--ingest-events", "3000"),
            *("--ingest-gateways", "10", "--ingest-workers", "1,2"),
            *("--ingest-rates", "500,1500", "--ingest-step-s", "1"),
        ]
    )
    # About 15 s on a quiet machine, 35 s with both CPUs busy elsewhere; pytest's timeout
    # bounds it (a wall-clock assertion would fail with the machine's load, not the code's).
    # fsync off: the figures are not the point here, and the server's stop writes less.
    options = dataclasses.replace(ingest.options_from(args), durable=False)
    report = ingest.IngestBench(tmp_path / "ingest", options, print).run()
    report["rerun"] = ingest.rerun_command(args)

    assert [run["workers"] for run in report["drains"]] == [1, 2]
    for run in report["drains"]:
        check = run["check"]
        assert check["stored"] == check["events"] == 3000, check
        assert check["missing"] == check["doubled"] == check["unexpected"] == 0, check
        assert check["conflicts"] == check["rejected"] == check["open_gaps"] == 0, check
        assert check["alarms_stored"] == check["alarms_sent"], check
        assert check["duplicates_counted"] == check["duplicates_sent"], check
        assert ingest.resend_miscount(check) == 0, check
        assert run["exactly_once"], check
        assert run["events_per_s"] > 0
        assert run["publish_events_per_s"] > run["events_per_s"]  # the publisher is not the limit
    assert report["copy"]["events_per_s"] > 0
    steps = report["steps"]
    assert [s["offered_per_s"] for s in steps][:1] == [500.0]
    assert steps[-1]["exactly_once"], steps[-1]["check"]
    assert all(s["alarms"] > 0 and s["alarm_p99_ms"] > 0 for s in steps)

    summary = summarise(args, {"ingest": [report]})
    figures = summary["ingest"]
    for drain in figures["drains"]:
        for key in ("events_per_s", "copy_ratio", "worker_us_per_event", "postgres_us_per_event"):
            assert math.isfinite(drain[key]) and drain[key] > 0, (key, drain)
        assert drain["anomalies"] == 0
    # An event row with its indexes takes some hundreds of bytes, not nothing, not megabytes.
    assert 100 < figures["stored_bytes_per_event"] < 10_000, figures["stored_bytes_per_event"]
    ingest_targets = [t for t in summary["targets"] if t["name"].startswith("ingest")]
    assert len(ingest_targets) == 3 and all(t["ok"] for t in ingest_targets), ingest_targets
    lines = ingest.summary_lines(figures, {1: "ok", 2: "ok"})
    text = "\n".join(lines)
    assert "COPY" in text and "alarm p50" in text
    assert 'make bench BENCH_ARGS="--parts ingest --quick' in figures["rerun"]
    json.dumps(summary)  # the result file takes it


# ------------------------------------------------------------------------------- the generator

shares = st.floats(min_value=0.0, max_value=1.0)


@settings(max_examples=60, deadline=None)
@given(
    gateways=st.integers(1, 4),
    events=st.integers(1, 300),
    alarm_share=shares,
    duplicate_share=shares,
    resend_share=shares,
    per_message=st.integers(1, 60),
    seed=st.integers(0, 2**32),
    calls=st.integers(1, 3),
)
def test_traffic_is_valid_with_consecutive_seqs(  # noqa: PLR0917 - hypothesis passes each drawn value
    gateways: int,
    events: int,
    alarm_share: float,
    duplicate_share: float,
    resend_share: float,
    per_message: int,
    seed: int,
    calls: int,
) -> None:
    traffic = ingest.Traffic(
        ingest.gateway_ids(gateways),
        seed=seed,
        alarm_share=alarm_share,
        duplicate_share=duplicate_share,
        resend_share=resend_share,
        events_per_message=per_message,
    )
    first: dict[tuple[str, int], dict[str, Any]] = {}
    new_seqs: dict[str, list[int]] = defaultdict(list)
    copies = resends = 0
    for _ in range(calls):
        messages = traffic.messages(events)
        assert sum(m.new for m in messages) == events
        for message in messages:
            topic = parse_topic(message.topic)
            parsed = validator().events(topic, message.payload)  # ContractError if invalid
            body = json.loads(message.payload)
            assert len(body["events"]) == len(parsed) >= 1
            if topic.klass == "alarm":
                assert len(parsed) == 1
            if message.new:
                assert message.new == len(parsed)
                assert (message.alarm_id is not None) == (topic.klass == "alarm")
                for event in body["events"]:
                    assert (topic.gw, event["seq"]) not in first
                    first[(topic.gw, event["seq"])] = event
                    new_seqs[topic.gw].append(event["seq"])
                continue
            # Published again: the same events (a resend of an alarm has a higher attempt).
            for event in body["events"]:
                earlier = first[(topic.gw, event["seq"])]
                assert event["id"] == earlier["id"]
                if event["attempt"] > earlier["attempt"]:
                    resends += 1
                else:
                    assert event == earlier
                    copies += 1
    for gw, seqs in new_seqs.items():
        assert seqs == list(range(1, len(seqs) + 1))  # consecutive, in publish order
        assert traffic.last_seq[gw] == len(seqs)
    assert traffic.events == events * calls == len(first) == len(traffic.rows)
    assert {(row[0], row[1]) for row in traffic.rows} == set(first)
    assert copies == traffic.duplicate_events
    assert resends == traffic.resends
    assert traffic.alarms == sum(1 for e in first.values() if e["kind"].startswith("alarm"))
    # Evenly spread: no gateway more than one event per call ahead of another.
    counts = [traffic.last_seq.get(gw, 0) for gw in traffic.gateways]
    assert max(counts) - min(counts) <= calls


# ------------------------------------------------------------------------------- decisions

rates = st.floats(min_value=1.0, max_value=1e6)
samples = st.lists(
    st.tuples(st.floats(0, 100), st.integers(0, 10**7)), min_size=1, max_size=60
).map(sorted)


@given(samples=samples, rate=rates)
def test_saturated_means_more_than_the_limit_waits_at_the_end(
    samples: list[tuple[float, int]], rate: float
) -> None:
    tail = [w for _, w in samples[len(samples) - max(1, len(samples) // 3) :]]
    lag = ingest.lag_s(samples, rate)
    assert min(tail) / rate <= lag <= max(tail) / rate
    assert ingest.saturated(samples, rate) == (lag > ingest.LAG_LIMIT_S)
    if all(w <= rate * ingest.LAG_LIMIT_S for _, w in samples):
        assert not ingest.saturated(samples, rate)
    if all(w > rate * ingest.LAG_LIMIT_S for _, w in samples):
        assert ingest.saturated(samples, rate)


@given(rate=rates, lag_s=st.floats(0, 10), points=st.integers(1, 40))
def test_a_steady_lag_is_read_as_it_is(rate: float, lag_s: float, points: int) -> None:
    waiting = round(rate * lag_s)
    steady = [(float(t), waiting) for t in range(points)]
    assert ingest.lag_s(steady, rate) == pytest.approx(waiting / rate)


def test_no_samples_no_verdict() -> None:
    assert math.isnan(ingest.lag_s([], 100.0))
    assert not ingest.saturated([], 100.0)


cores = st.floats(min_value=0.0, max_value=2.0)


@given(
    workers=st.lists(cores, max_size=4),
    postgres=cores,
    broker=cores,
    machine=st.floats(0.0, 2.0),
    fsync=st.floats(0.0, 1.0),
)
def test_bottleneck_names_the_first_full_resource(
    workers: list[float], postgres: float, broker: float, machine: float, fsync: float
) -> None:
    verdict = ingest.bottleneck(
        workers,
        postgres_cores=postgres,
        broker_cores=broker,
        machine_cores=machine,
        fsync_share=fsync,
        cpus=2,
    )
    if max(workers, default=0.0) >= 0.85:
        assert verdict.startswith("worker CPU")
    elif machine >= 1.8:
        assert verdict.startswith("the machine's 2 CPUs")
    elif postgres >= 0.85:
        assert verdict.startswith("PostgreSQL CPU")
    elif fsync >= 0.5:
        assert verdict.startswith("PostgreSQL fsync")
    elif broker >= 0.85:
        assert verdict.startswith("the broker")
    else:
        assert verdict.startswith("none found")


@given(sent=st.integers(0, 1000), counted=st.integers(0, 5000), workers=st.integers(1, 4))
def test_resend_count_tolerates_one_count_per_worker(sent: int, counted: int, workers: int) -> None:
    check = {"resends_counted": counted, "resends_sent": sent, "workers": workers}
    assert (ingest.resend_miscount(check) == 0) == (sent <= counted <= sent * workers)
