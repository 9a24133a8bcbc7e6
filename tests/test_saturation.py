"""Light gateways and the saturation part: contract-valid traffic, every alarm acknowledged, no
gap, the figures present; the step verdict and planner as properties."""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from bench.run import parse_args, print_summary, summarise
from bench.saturation import (
    ALARM_P99_TARGET_MS,
    Options,
    StepLoad,
    figures,
    limit,
    rate_steps,
    run_kind,
    table,
)
from gateway.core.kinds import event_class
from hil.sim.broker import Mosquitto
from platformkit.fleet.desk import Desk
from platformkit.fleet.light import (
    KIND_WEIGHTS,
    LightProcess,
    event_body,
    gateway_id,
    message,
)
from platformkit.ingest.contract import ContractValidator, parse_topic

GATEWAYS = 200
WAIT_S = 30.0

# ------------------------------------------------------------------------------ pure parts


@pytest.fixture(scope="module")
def validator() -> ContractValidator:
    return ContractValidator.exported()


KINDS = [k for k, _ in KIND_WEIGHTS] + ["alarm.button", "gateway.started", "gateway.stopping"]


@given(
    index=st.integers(min_value=0, max_value=99_999),
    seq=st.integers(min_value=1, max_value=2**40),
    kind=st.sampled_from([*KINDS, "audit.alarm_acknowledged"]),
    attempt=st.integers(min_value=1, max_value=1000),
    uptime=st.floats(min_value=0, max_value=1e7, allow_nan=False),
)
def test_every_synthetic_event_is_valid_against_the_exported_schema(
    index: int, seq: int, kind: str, attempt: int, uptime: float
) -> None:
    validator = ContractValidator.exported()
    gw = gateway_id("sat0001m", index)
    device, data = event_body(kind, index, uptime, boot_id="b", by="desk", alarm_id="a1")
    payload = message(
        gw,
        seq,
        kind,
        "2026-12-07T10:00:00.123Z",
        device=device,
        data=data,
        event_id="e1",
        attempt=attempt,
    )
    (event,) = validator.events(
        parse_topic(f"carebed/v1/{gw}/up/{event_class(kind)}"), payload.encode()
    )
    assert (event.seq, event.kind, event.attempt) == (seq, kind, attempt)


finite = st.floats(min_value=0, max_value=1e6, allow_nan=False)
cores = st.floats(min_value=0, max_value=4, allow_nan=False)


@st.composite
def loads(draw: st.DrawFn) -> StepLoad:
    offered = draw(st.floats(min_value=1, max_value=1e5, allow_nan=False))
    return StepLoad(
        offered_per_s=offered,
        published_per_s=draw(st.floats(min_value=0, max_value=offered * 1.1)),
        delivered_per_s=draw(st.floats(min_value=0, max_value=offered * 1.1)),
        alarm_p99_ms=draw(st.one_of(st.just(math.nan), finite)),
        alarms_lost=draw(st.integers(min_value=0, max_value=5)),
        broker_cores=draw(cores),
        broker_threads=draw(st.integers(min_value=1, max_value=40)),
        generator_cores=draw(st.floats(min_value=0, max_value=1.1)),
        desk_cores=draw(st.floats(min_value=0, max_value=1.1)),
        machine_busy=draw(st.floats(min_value=0, max_value=1)),
    )


@given(load=loads())
def test_a_step_holds_exactly_when_everything_offered_arrives_in_time(load: StepLoad) -> None:
    verdict = limit(load)
    assert verdict in {None, "generator", "broker", "desk", "machine", "unknown"}
    if verdict is None:
        assert load.alarms_lost == 0
        assert not load.alarm_p99_ms > ALARM_P99_TARGET_MS
    full = StepLoad(
        **{
            **{f: getattr(load, f) for f in StepLoad.__slots__},
            "published_per_s": load.offered_per_s,
            "delivered_per_s": load.offered_per_s,
            "alarms_lost": 0,
            "alarm_p99_ms": min(load.alarm_p99_ms, ALARM_P99_TARGET_MS),
        }
    )
    assert limit(full) is None


@given(load=loads(), fewer=st.floats(min_value=0, max_value=1), lost=st.integers(0, 3))
def test_delivering_less_never_makes_a_saturated_step_hold(
    load: StepLoad, fewer: float, lost: int
) -> None:
    worse = StepLoad(
        **{
            **{f: getattr(load, f) for f in StepLoad.__slots__},
            "delivered_per_s": load.delivered_per_s * fewer,
            "alarms_lost": load.alarms_lost + lost,
        }
    )
    if limit(load) is not None:
        assert limit(worse) is not None


@given(load=loads())
def test_a_light_gateway_process_that_cannot_offer_the_rate_is_named(load: StepLoad) -> None:
    short = StepLoad(
        **{
            **{f: getattr(load, f) for f in StepLoad.__slots__},
            "published_per_s": load.offered_per_s * 0.5 - 10,
            "delivered_per_s": load.offered_per_s * 0.5 - 10,
            "alarms_lost": 0,
            "alarm_p99_ms": 1.0,
        }
    )
    assert limit(short) == "generator"


@given(
    start=st.floats(min_value=0.1, max_value=1e4),
    factor=st.floats(min_value=1.01, max_value=10),
    steps=st.integers(min_value=0, max_value=12),
)
def test_rate_steps_start_where_asked_and_grow_by_the_factor(
    start: float, factor: float, steps: int
) -> None:
    rates = rate_steps(start, factor, steps)
    assert len(rates) == steps
    if rates:
        assert rates[0] == start
    for a, b in itertools.pairwise(rates):
        assert b == pytest.approx(a * factor)


# ------------------------------------------------------------------------------ against brokers


class Recorder:
    """Every message on the gateways' topics, raw, for the contract check afterwards."""

    def __init__(self, host: str, port: int) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        self._ready = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id="sat-recorder",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_connect = lambda c, *_: c.subscribe(
            [("carebed/v1/+/up/#", 1), ("carebed/v1/+/status", 1), ("carebed/v1/+/down/#", 1)]
        )
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        assert self._ready.wait(10)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def shut_down(self) -> int:
        """Gateways whose shutdown status has arrived (a reconnect's extra "online" does not
        count towards it, as a count of status messages would)."""
        with self.lock:
            return len(
                {
                    topic
                    for topic, payload, _ in self.messages
                    if topic.endswith("/status") and b'"shutdown"' in payload
                }
            )

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.1)


def test_light_gateways_speak_the_contract_and_every_alarm_is_acknowledged(
    mosquitto: Mosquitto, tmp_path: Path, validator: ContractValidator
) -> None:
    recorder = Recorder(mosquitto.host, mosquitto.port)
    desk = Desk(mosquitto.host, mosquitto.port, protocol="5")
    gen = LightProcess(
        host=mosquitto.host,
        ports=[mosquitto.port],
        protocol="5",
        prefix="sat0001m",
        indices=range(GATEWAYS),
        ack_timeout_s=10.0,
        log=tmp_path / "light.log",
    )
    try:
        connected = gen.request(
            {"op": "connect", "count": GATEWAYS, "per_s": 500, "timeout_s": WAIT_S},
            "connected",
            WAIT_S + 5,
        )
        assert connected["online"] == GATEWAYS
        gen.request({"op": "rate", "events_per_s": 150, "alarm_share": 0.1}, "rate")
        time.sleep(3)
        gen.request({"op": "rate", "events_per_s": 0, "alarm_share": 0.1}, "rate")
        _wait(
            lambda: gen.request({"op": "snapshot"}, "snapshot")["pending_alarms"] == 0,
            WAIT_S,
            "every alarm acknowledged",
        )
        final = gen.close()
    finally:
        gen.close()
    assert final is not None
    seqs: dict[str, int] = final["seqs"]
    _wait(
        lambda: all(
            gw in desk.gateways and len(desk.gateways[gw].ledger.seen) >= last
            for gw, last in seqs.items()
        ),
        WAIT_S,
        "every seq at the desk",
    )
    _wait(
        lambda: recorder.shut_down() >= GATEWAYS,
        WAIT_S,
        "the shutdown status of every gateway",
    )
    recorder.close()
    desk.close()

    assert final["alarms_raised"] > 10
    assert final["acks_received"] == final["alarms_raised"]
    assert final["publish_errors"] == final["connect_errors"] == final["subscribe_refused"] == 0
    with desk.lock:
        assert not desk.errors
        for gw, last in seqs.items():
            assert desk.gateways[gw].ledger.gaps(last) == []
        assert len(desk.alarms) == final["alarms_raised"]
        assert all(a.ack_sent_mono is not None for a in desk.alarms.values())

    # Every message any gateway sent is valid; each gateway's seqs are consecutive from 1,
    # gateway.started first, and alarms are followed by their audit.alarm_acknowledged.
    by_gw: dict[str, list[int]] = {}
    kinds: dict[str, int] = {}
    statuses: dict[str, list[str]] = {}
    for topic, payload, _retained in recorder.messages:
        parsed = parse_topic(topic) if "/down/" not in topic else None
        if parsed is None:
            body = json.loads(payload)
            assert body["v"] == 1 and body["ids"] and body["by"]
            continue
        if parsed.kind == "status":
            status = validator.status(parsed, payload)
            statuses.setdefault(parsed.gw, []).append(status.reason or status.state)
            continue
        for event in validator.events(parsed, payload):
            by_gw.setdefault(event.gw, []).append(event.seq)
            kinds[event.kind] = kinds.get(event.kind, 0) + 1
            if event.seq == 1:
                assert event.kind == "gateway.started"
    assert set(by_gw) == set(seqs)
    for gw, got in by_gw.items():
        assert sorted(set(got)) == list(range(1, seqs[gw] + 1)), gw
    assert kinds["audit.alarm_acknowledged"] == final["acks_received"]
    assert kinds["gateway.stopping"] == GATEWAYS
    assert all(s[0] == "online" and s[-1] == "shutdown" for s in statuses.values())


def test_a_reduced_saturation_run_on_the_nats_cluster(tmp_path: Path) -> None:
    options = Options(
        connections=(60,),
        step_s=3.0,
        rate_start=60.0,
        rate_steps=1,
        alarm_share=0.1,
        fault=False,
        settle_max_s=0.0,
    )
    report = run_kind("nats", tmp_path, options, say=lambda _line: None)
    assert report["nodes"] == 3
    assert [s["phase"] for s in report["steps"]] == ["connections", "events"]
    for step in report["steps"]:
        assert step["connections"] == 60
        assert step["complete"] and step["gap_seqs"] == 0 and step["alarms_lost"] == 0
        assert len(step["broker_nodes"]) == 3
        assert step["broker_cores"] > 0 and step["broker_rss_kib"] > 0
        assert step["generator_cores"] > 0 and step["generator_fds"] >= 60
    assert report["steps"][-1]["alarms"] > 0
    assert not math.isnan(report["steps"][-1]["ack_p99_ms"])
    figs = figures({"nats": report})["nats"]
    assert figs["alarms_ok_share"] == 1.0 and figs["gap_seqs_below"] == 0
    assert len(table({"nats": report})) == 2 + len(report["steps"])


def _step(phase: str, *, limit: str | None = None, lost: int = 0, gaps: int = 0) -> dict[str, Any]:
    return {
        "phase": phase,
        "connections": 1000,
        "offered_per_s": 500.0,
        "delivered_per_s": 500.0,
        "alarms": 10,
        "alarms_lost": lost,
        "gap_seqs": gaps,
        "complete": not gaps,
        "drain_s": 1.0,
        "limit": limit,
    }


def test_the_bench_checks_and_prints_the_saturation_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = {
        "mosquitto": {
            "nodes": 1,
            "steps": [_step("connections"), _step("events", limit="machine")],
        },
        "nats": {
            "nodes": 3,
            "steps": [_step("connections"), _step("fault", lost=1, gaps=3)],
        },
    }
    summary = summarise(parse_args(["--parts", "saturation"]), {"saturation": [report]})
    verdicts = {t["name"]: t["ok"] for t in summary["targets"]}
    assert verdicts == {
        "saturation mosquitto alarms": True,
        "saturation mosquitto gaps": True,
        "saturation nats alarms": True,
        "saturation nats gaps": True,
        "saturation nats fault alarms": False,
        "saturation nats fault gaps": False,
    }
    print_summary({"date": "today", "nproc": 2, "cpu_model": "cpu"}, summary)
    out = capsys.readouterr().out
    assert "saturated at 500 ev/s offered (500 delivered) on machine" in out
    assert "nats node killed: alarms delivered and acknowledged 90.0% of 10" in out
    assert 'make bench BENCH_ARGS="--parts saturation"' in out
