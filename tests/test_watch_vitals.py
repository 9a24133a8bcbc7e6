"""The vitals aggregator: reporting windows, the telemetry.vitals data they give, and properties."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.watch.vitals import MAX_RR_VALUES, METRICS, VitalsAggregator

SCALAR_METRICS = tuple(metric for metric in METRICS if metric != "rr_ms")
INT_METRICS = ("heart_rate", "pulse_rate", "steps")


def intervals(default: float = 60.0, **overrides: float) -> dict[str, float]:
    result = dict.fromkeys(METRICS, default)
    result.update(overrides)
    return result


# --- Construction and validation ----------------------------------------------------------------


def test_metrics_are_the_platform_field_names() -> None:
    assert METRICS == (
        "heart_rate",
        "rr_ms",
        "spo2",
        "pulse_rate",
        "systolic",
        "diastolic",
        "map",
        "temperature_c",
        "steps",
    )


def test_every_metric_needs_an_interval() -> None:
    partial = intervals()
    del partial["temperature_c"]
    with pytest.raises(ValueError, match="'temperature_c'"):
        VitalsAggregator(partial)


def test_unknown_metric_interval_rejected() -> None:
    with pytest.raises(ValueError, match="'weight'"):
        VitalsAggregator({**intervals(), "weight": 60.0})


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_interval_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="'spo2'"):
        VitalsAggregator(intervals(spo2=bad))


def test_add_rejects_unknown_metric_and_non_readings() -> None:
    agg = VitalsAggregator(intervals())
    with pytest.raises(ValueError, match="'weight'"):
        agg.add("weight", 70.0, 0.0)
    with pytest.raises(ValueError, match="'spo2'"):
        agg.add("spo2", float("nan"), 0.0)
    with pytest.raises(TypeError, match="'spo2'"):
        agg.add("spo2", [97.0], 0.0)
    with pytest.raises(TypeError, match="'rr_ms'"):
        agg.add("rr_ms", 800.0, 0.0)
    with pytest.raises(ValueError, match="'rr_ms'"):
        agg.add("rr_ms", [800.0, float("inf")], 0.0)
    assert agg.next_due() is None
    assert agg.due(1e9) is None


# --- Windows ------------------------------------------------------------------------------------


def test_window_closes_interval_after_first_reading() -> None:
    agg = VitalsAggregator(intervals(heart_rate=60.0))
    for t in range(10, 70):  # 1 Hz from t=10 to t=69
        agg.add("heart_rate", 60 + t % 7, float(t))
        if t < 69:
            assert agg.due(float(t)) is None
    assert agg.next_due() == 70.0
    assert agg.due(69.999) is None
    data = agg.due(70.0)
    assert data == {
        "heart_rate": 66,
        "stats": {"heart_rate": {"min": 60, "max": 66, "mean": 63.1, "n": 60}},
    }
    assert agg.due(70.0) is None
    assert agg.next_due() is None


def test_next_window_opens_at_first_reading_after_report() -> None:
    agg = VitalsAggregator(intervals(spo2=30.0))
    agg.add("spo2", 97.0, 0.0)
    assert agg.due(30.0) == {
        "spo2": 97.0,
        "stats": {"spo2": {"min": 97.0, "max": 97.0, "mean": 97.0, "n": 1}},
    }
    agg.add("spo2", 95.0, 45.0)
    assert agg.next_due() == 75.0
    assert agg.due(74.0) is None
    assert agg.due(80.0) == {
        "spo2": 95.0,
        "stats": {"spo2": {"min": 95.0, "max": 95.0, "mean": 95.0, "n": 1}},
    }


def test_reading_added_before_the_late_report_belongs_to_that_window() -> None:
    agg = VitalsAggregator(intervals(heart_rate=10.0))
    agg.add("heart_rate", 70, 0.0)
    agg.add("heart_rate", 90, 12.0)  # the window was complete at 10, but not reported yet
    data = agg.due(12.0)
    assert data is not None
    assert data["heart_rate"] == 90
    assert data["stats"]["heart_rate"]["n"] == 2
    assert agg.next_due() is None


def test_last_value_and_stats() -> None:
    agg = VitalsAggregator(intervals(temperature_c=600.0))
    for t, value in enumerate([36.6, 37.2, 36.4, 36.9]):
        agg.add("temperature_c", value, float(t))
    assert agg.due(600.0) == {
        "temperature_c": 36.9,
        "stats": {"temperature_c": {"min": 36.4, "max": 37.2, "mean": 36.8, "n": 4}},
    }


def test_mean_rounded_to_one_decimal() -> None:
    agg = VitalsAggregator(intervals(heart_rate=5.0))
    for t, bpm in enumerate([70, 71, 71]):
        agg.add("heart_rate", bpm, float(t))
    data = agg.due(5.0)
    assert data is not None
    assert data["stats"]["heart_rate"]["mean"] == 70.7


def test_ints_stay_ints_and_pulse_rate_is_rounded() -> None:
    agg = VitalsAggregator(intervals(0.0))
    agg.add("heart_rate", 72, 0.0)
    agg.add("pulse_rate", 71.6, 0.0)
    agg.add("steps", 1234, 0.0)
    agg.add("spo2", 97, 0.0)
    data = agg.due(0.0)
    assert data is not None
    assert data["heart_rate"] == 72
    assert data["pulse_rate"] == 72
    assert data["steps"] == 1234
    for metric in INT_METRICS:
        assert type(data[metric]) is int
        assert type(data["stats"][metric]["min"]) is int
        assert type(data["stats"][metric]["max"]) is int
        assert type(data["stats"][metric]["n"]) is int
    assert type(data["spo2"]) is float
    assert data["spo2"] == 97.0


def test_rr_lists_are_concatenated_without_stats() -> None:
    agg = VitalsAggregator(intervals(rr_ms=10.0))
    agg.add("rr_ms", [1000.0, 781.25], 0.0)
    agg.add("rr_ms", [], 1.0)  # no RR in that notification
    agg.add("rr_ms", [812.5], 2.0)
    assert agg.due(10.0) == {"rr_ms": [1000.0, 781.25, 812.5]}


def test_empty_rr_list_opens_no_window() -> None:
    agg = VitalsAggregator(intervals(rr_ms=10.0))
    agg.add("rr_ms", [], 0.0)
    assert agg.next_due() is None
    assert agg.due(100.0) is None


def test_rr_capped_to_most_recent_values() -> None:
    agg = VitalsAggregator(intervals(rr_ms=60.0))
    values = [float(i) for i in range(MAX_RR_VALUES + 50)]
    for t, start in enumerate(range(0, len(values), 7)):
        agg.add("rr_ms", values[start : start + 7], float(t))
    data = agg.due(60.0)
    assert data is not None
    assert MAX_RR_VALUES == 300
    assert data["rr_ms"] == values[-300:]


def test_interval_zero_reports_at_next_due() -> None:
    agg = VitalsAggregator(intervals(heart_rate=0.0))
    agg.add("heart_rate", 72, 5.0)
    assert agg.next_due() == 5.0
    assert agg.due(5.0) == {
        "heart_rate": 72,
        "stats": {"heart_rate": {"min": 72, "max": 72, "mean": 72.0, "n": 1}},
    }
    agg.add("heart_rate", 73, 6.0)
    data = agg.due(6.0)
    assert data is not None
    assert data["heart_rate"] == 73


def test_metrics_due_together_share_one_dict_and_others_wait() -> None:
    agg = VitalsAggregator(intervals(300.0, heart_rate=60.0))
    agg.add("systolic", 120.0, 0.0)
    agg.add("diastolic", 80.0, 0.0)
    agg.add("map", 93.0, 0.0)
    agg.add("heart_rate", 72, 10.0)
    assert agg.next_due() == 70.0
    assert agg.due(70.0) == {
        "heart_rate": 72,
        "stats": {"heart_rate": {"min": 72, "max": 72, "mean": 72.0, "n": 1}},
    }
    assert agg.next_due() == 300.0
    assert agg.due(300.0) == {
        "systolic": 120.0,
        "diastolic": 80.0,
        "map": 93.0,
        "stats": {
            "systolic": {"min": 120.0, "max": 120.0, "mean": 120.0, "n": 1},
            "diastolic": {"min": 80.0, "max": 80.0, "mean": 80.0, "n": 1},
            "map": {"min": 93.0, "max": 93.0, "mean": 93.0, "n": 1},
        },
    }


def test_report_is_json_friendly() -> None:
    agg = VitalsAggregator(intervals(10.0))
    agg.add("heart_rate", 72, 0.0)
    agg.add("rr_ms", [1000, 781.25], 0.0)
    agg.add("spo2", 97, 0.0)
    agg.add("temperature_c", 36.6, 0.0)
    data = agg.due(10.0)
    assert data is not None
    assert json.loads(json.dumps(data)) == data
    assert data["rr_ms"] == [1000.0, 781.25]
    assert all(type(v) is float for v in data["rr_ms"])


def test_next_due_is_earliest_pending_window() -> None:
    agg = VitalsAggregator(intervals(60.0, spo2=300.0, steps=900.0))
    assert agg.next_due() is None
    agg.add("steps", 10, 0.0)
    assert agg.next_due() == 900.0
    agg.add("spo2", 97.0, 100.0)
    assert agg.next_due() == 400.0
    agg.add("heart_rate", 70, 500.0)
    assert agg.next_due() == 400.0
    assert agg.due(400.0) is not None
    assert agg.next_due() == 560.0


# --- Discard and live interval changes ----------------------------------------------------------


def test_discard_all() -> None:
    agg = VitalsAggregator(intervals(10.0))
    agg.add("heart_rate", 72, 0.0)
    agg.add("rr_ms", [800.0], 0.0)
    agg.add("spo2", 97.0, 0.0)
    agg.discard()
    assert agg.next_due() is None
    assert agg.due(100.0) is None
    agg.add("heart_rate", 80, 200.0)  # a fresh window, without the discarded reading
    assert agg.due(210.0) == {
        "heart_rate": 80,
        "stats": {"heart_rate": {"min": 80, "max": 80, "mean": 80.0, "n": 1}},
    }


def test_discard_some_metrics() -> None:
    agg = VitalsAggregator(intervals(10.0))
    agg.add("heart_rate", 72, 0.0)
    agg.add("rr_ms", [800.0], 0.0)
    agg.add("steps", 500, 0.0)
    agg.discard(["heart_rate", "rr_ms"])
    assert agg.due(10.0) == {
        "steps": 500,
        "stats": {"steps": {"min": 500, "max": 500, "mean": 500.0, "n": 1}},
    }


def test_discard_rejects_unknown_metric_and_bare_string() -> None:
    agg = VitalsAggregator(intervals(10.0))
    agg.add("heart_rate", 72, 0.0)
    with pytest.raises(ValueError, match="'weight'"):
        agg.discard(["heart_rate", "weight"])
    with pytest.raises(TypeError):
        agg.discard("heart_rate")
    assert agg.next_due() == 10.0  # nothing was dropped


def test_set_intervals_shorter_keeps_readings() -> None:
    agg = VitalsAggregator(intervals(300.0))
    agg.add("heart_rate", 70, 0.0)
    agg.add("heart_rate", 74, 20.0)
    agg.set_intervals({"heart_rate": 30.0})
    assert agg.next_due() == 30.0
    assert agg.due(30.0) == {
        "heart_rate": 74,
        "stats": {"heart_rate": {"min": 70, "max": 74, "mean": 72.0, "n": 2}},
    }


def test_set_intervals_already_past_is_due_at_once() -> None:
    agg = VitalsAggregator(intervals(300.0))
    agg.add("spo2", 96.0, 0.0)
    agg.set_intervals({"spo2": 10.0})
    data = agg.due(50.0)
    assert data is not None
    assert data["spo2"] == 96.0


def test_set_intervals_longer_delays_report() -> None:
    agg = VitalsAggregator(intervals(60.0))
    agg.add("spo2", 96.0, 0.0)
    agg.set_intervals({"spo2": 120.0})
    assert agg.due(60.0) is None
    assert agg.next_due() == 120.0
    agg.add("spo2", 98.0, 100.0)
    data = agg.due(120.0)
    assert data is not None
    assert data["spo2"] == 98.0
    assert data["stats"]["spo2"]["n"] == 2


def test_set_intervals_is_all_or_nothing() -> None:
    agg = VitalsAggregator(intervals(60.0))
    agg.add("spo2", 96.0, 0.0)
    with pytest.raises(ValueError, match="'heart_rate'"):
        agg.set_intervals({"spo2": 10.0, "heart_rate": -1.0})
    with pytest.raises(ValueError, match="'weight'"):
        agg.set_intervals({"weight": 10.0})
    assert agg.next_due() == 60.0


# --- Properties ---------------------------------------------------------------------------------

INTERVALS = st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 30.0])
STEPS_S = st.sampled_from([0.0, 0.25, 0.5, 1.0, 3.0, 10.0])
SCALAR_VALUES = st.floats(0.0, 250.0, allow_nan=False, allow_infinity=False)
RR_LISTS = st.lists(st.floats(250.0, 2000.0), max_size=120)


@dataclass
class _Pending:
    opened_at: float
    values: list[Any] = field(default_factory=list)


def _op() -> st.SearchStrategy[tuple[Any, ...]]:
    return st.one_of(
        st.tuples(st.just("add"), st.sampled_from(SCALAR_METRICS), SCALAR_VALUES, STEPS_S),
        st.tuples(st.just("add"), st.just("rr_ms"), RR_LISTS, STEPS_S),
        st.tuples(st.just("due"), STEPS_S),
    )


@given(
    interval_list=st.lists(INTERVALS, min_size=len(METRICS), max_size=len(METRICS)),
    ops=st.lists(_op(), max_size=80),
    live_changes=st.lists(st.tuples(st.sampled_from(METRICS), INTERVALS), max_size=3),
)
def test_reports_match_a_model_of_windows(
    interval_list: list[float],
    ops: list[tuple[Any, ...]],
    live_changes: list[tuple[str, float]],
) -> None:
    """Every reading is reported in exactly one window, with the window's last value, exact stats
    and RR list, and each window is reported by the first due() at or after it is complete."""
    current = dict(zip(METRICS, interval_list, strict=True))
    agg = VitalsAggregator(current)
    pending: dict[str, _Pending] = {}
    added = dict.fromkeys(METRICS, 0)
    reported = dict.fromkeys(METRICS, 0)
    now = 0.0

    def check_due(data: dict[str, Any] | None) -> None:
        expected = sorted(m for m, p in pending.items() if p.opened_at + current[m] <= now)
        reported_metrics = [] if data is None else sorted(k for k in data if k != "stats")
        assert reported_metrics == expected
        assert data is None or set(data.get("stats", {})) == set(expected) - {"rr_ms"}
        for metric in expected:
            assert data is not None
            window = pending.pop(metric)
            if metric == "rr_ms":
                flat = [v for values in window.values for v in values]
                assert data["rr_ms"] == flat[-MAX_RR_VALUES:]
                reported[metric] += len(window.values)
                continue
            assert data[metric] == window.values[-1]
            stats = data["stats"][metric]
            assert stats["n"] == len(window.values)
            assert stats["min"] == min(window.values)
            assert stats["max"] == max(window.values)
            assert stats["mean"] == pytest.approx(statistics.fmean(window.values), abs=0.051)
            reported[metric] += stats["n"]

    for index, op in enumerate(ops):
        if live_changes and index == len(ops) // 2:
            change = dict(live_changes)
            agg.set_intervals(change)
            current.update(change)
        now += op[-1]
        if op[0] == "due":
            check_due(agg.due(now))
        else:
            _, metric, value, _ = op
            agg.add(metric, value, now)
            if metric == "rr_ms" and not value:
                continue
            added[metric] += 1
            expected_value = round(value) if metric in INT_METRICS else value
            pending.setdefault(metric, _Pending(now)).values.append(expected_value)
        closes = [p.opened_at + current[m] for m, p in pending.items()]
        assert agg.next_due() == min(closes, default=None)

    now += 1000.0
    check_due(agg.due(now))
    assert agg.next_due() is None
    assert reported == added


@given(
    interval_s=st.sampled_from([0.5, 1.0, 5.0, 60.0]),
    readings=st.lists(st.tuples(STEPS_S, SCALAR_VALUES), min_size=1, max_size=100),
)
def test_never_reports_more_often_than_the_interval(
    interval_s: float, readings: list[tuple[float, float]]
) -> None:
    """A caller that calls due() after every reading and sleeps until next_due() gets reports of a
    metric at least the interval apart, and loses no reading."""
    agg = VitalsAggregator(intervals(interval_s))
    now = 0.0
    report_times: list[float] = []
    total_n = 0
    last_added = 0.0
    for step_s, value in readings:
        next_due = agg.next_due()
        if next_due is not None and next_due <= now + step_s:
            data = agg.due(next_due)
            assert data is not None
            assert data["spo2"] == last_added
            report_times.append(next_due)
            total_n += data["stats"]["spo2"]["n"]
        now += step_s
        agg.add("spo2", value, now)
        last_added = value
        data = agg.due(now)
        if data is not None:
            report_times.append(now)
            total_n += data["stats"]["spo2"]["n"]
            assert data["spo2"] == value
    final_due = agg.next_due()
    assert final_due is not None
    data = agg.due(final_due)
    assert data is not None
    assert data["spo2"] == last_added
    report_times.append(final_due)
    total_n += data["stats"]["spo2"]["n"]
    assert total_n == len(readings)
    gaps = [b - a for a, b in pairwise(report_times)]
    assert all(gap >= interval_s for gap in gaps)
