"""The vitals rule engine: runs, trips, latch and hysteresis, pauses, live updates, properties."""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.watch.rules import RULE_METRIC, Rule, RuleEngine, Trip

HR_HIGH = Rule("heart_rate_high", threshold=120.0, min_duration_s=10.0, hysteresis=5.0)
SPO2_LOW = Rule("spo2_low", threshold=90.0, min_duration_s=0.0, hysteresis=2.0)


def feed(engine: RuleEngine, metric: str, readings: list[tuple[float, float | None]]) -> list[Trip]:
    trips: list[Trip] = []
    for now, value in readings:
        trips.extend(engine.observe(metric, value, now))
    return trips


# --- Rules --------------------------------------------------------------------------------------


def test_rule_metric_and_direction_come_from_the_table() -> None:
    assert (HR_HIGH.metric, HR_HIGH.direction) == ("heart_rate", "above")
    assert (SPO2_LOW.metric, SPO2_LOW.direction) == ("spo2", "below")
    assert RULE_METRIC["temperature_high"] == ("temperature_c", "above")
    assert set(RULE_METRIC) == {
        "heart_rate_high",
        "heart_rate_low",
        "spo2_low",
        "temperature_high",
        "systolic_high",
        "diastolic_high",
    }


def test_rule_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        RULE_METRIC["steps_high"] = ("steps", "above")  # type: ignore[index]


def test_unknown_rule_rejected() -> None:
    with pytest.raises(ValueError, match="'steps_high'"):
        Rule("steps_high", 10_000.0, 0.0, 0.0)


def test_negative_duration_rejected() -> None:
    with pytest.raises(ValueError, match=r"'spo2_low'.*min_duration_s"):
        Rule("spo2_low", 90.0, -1.0, 0.0)


def test_negative_hysteresis_rejected() -> None:
    with pytest.raises(ValueError, match=r"'spo2_low'.*hysteresis"):
        Rule("spo2_low", 90.0, 0.0, -0.5)


def test_non_finite_threshold_rejected() -> None:
    with pytest.raises(ValueError, match=r"'systolic_high'.*threshold"):
        Rule("systolic_high", float("nan"), 0.0, 0.0)


def test_rule_given_twice_rejected() -> None:
    with pytest.raises(ValueError, match="'heart_rate_high'"):
        RuleEngine([HR_HIGH, Rule("heart_rate_high", 130.0, 0.0, 0.0)])


# --- Runs and trips -----------------------------------------------------------------------------


def test_trips_once_the_run_lasted_min_duration() -> None:
    engine = RuleEngine([HR_HIGH])
    assert engine.observe("heart_rate", 125, 100.0) == []
    assert engine.observe("heart_rate", 130, 105.0) == []
    assert engine.observe("heart_rate", 128, 109.9) == []
    trips = engine.observe("heart_rate", 127, 110.0)
    assert trips == [Trip("heart_rate_high", "heart_rate", 127, 120.0, "above", 10.0)]
    assert trips[0].data() == {
        "metric": "heart_rate",
        "value": 127,
        "threshold": 120.0,
        "direction": "above",
        "duration_s": 10.0,
    }


def test_no_trip_when_run_shorter_than_min_duration() -> None:
    engine = RuleEngine([HR_HIGH])
    # Beyond for 9 s, back within at 9 (120 is not strictly above), beyond again from 12.
    trips = feed(engine, "heart_rate", [(0, 125), (5, 125), (9, 120), (12, 125), (21, 125)])
    assert trips == []
    trips = engine.observe("heart_rate", 126, 22.0)
    assert [(t.value, t.duration_s) for t in trips] == [(126, 10.0)]


def test_threshold_itself_is_not_beyond() -> None:
    engine = RuleEngine([SPO2_LOW])
    assert engine.observe("spo2", 90.0, 0.0) == []
    assert engine.observe("spo2", 89.9, 1.0) != []


def test_zero_duration_trips_on_first_reading_beyond() -> None:
    engine = RuleEngine([SPO2_LOW])
    trips = engine.observe("spo2", 88.0, 42.0)
    assert trips == [Trip("spo2_low", "spo2", 88.0, 90.0, "below", 0.0)]
    assert trips[0].data()["direction"] == "below"


def test_latched_until_back_past_hysteresis_above() -> None:
    engine = RuleEngine([HR_HIGH])
    assert len(feed(engine, "heart_rate", [(0, 125), (10, 125)])) == 1
    # Still high for a long time: latched, no second trip.
    assert feed(engine, "heart_rate", [(t, 130) for t in range(11, 100)]) == []
    # Back within but not by the hysteresis (120 - 5 = 115): still latched.
    assert feed(engine, "heart_rate", [(100, 116), (101, 125), (200, 125)]) == []
    # 115 re-arms; a new run of 10 s trips again.
    assert feed(engine, "heart_rate", [(201, 115), (202, 125)]) == []
    trips = engine.observe("heart_rate", 124, 212.0)
    assert [(t.rule, t.duration_s) for t in trips] == [("heart_rate_high", 10.0)]


def test_latched_until_back_past_hysteresis_below() -> None:
    engine = RuleEngine([SPO2_LOW])
    assert len(engine.observe("spo2", 88.0, 0.0)) == 1
    assert feed(engine, "spo2", [(1, 87.0), (2, 91.9), (3, 85.0)]) == []
    assert feed(engine, "spo2", [(4, 92.0)]) == []  # 90 + 2: re-armed
    assert [t.value for t in engine.observe("spo2", 89.0, 5.0)] == [89.0]


def test_zero_hysteresis_rearms_at_threshold() -> None:
    engine = RuleEngine([Rule("temperature_high", 38.0, 0.0, 0.0)])
    assert len(engine.observe("temperature_c", 38.5, 0.0)) == 1
    assert engine.observe("temperature_c", 38.1, 1.0) == []
    assert engine.observe("temperature_c", 38.0, 2.0) == []
    assert len(engine.observe("temperature_c", 38.2, 3.0)) == 1


def test_none_ends_the_run() -> None:
    engine = RuleEngine([HR_HIGH])
    assert feed(engine, "heart_rate", [(0, 125), (5, None), (6, 125), (15, 125)]) == []
    trips = engine.observe("heart_rate", 125, 16.0)
    assert [t.duration_s for t in trips] == [10.0]


def test_nan_is_no_reading() -> None:
    engine = RuleEngine([HR_HIGH])
    assert feed(engine, "heart_rate", [(0, 125), (5, float("nan")), (10, 125)]) == []
    assert engine.observe("spo2", float("inf"), 0.0) == []


def test_none_does_not_rearm() -> None:
    engine = RuleEngine([SPO2_LOW])
    assert len(engine.observe("spo2", 85.0, 0.0)) == 1
    assert feed(engine, "spo2", [(1, None), (2, None), (3, 85.0)]) == []


def test_pause_ends_runs_but_does_not_rearm() -> None:
    engine = RuleEngine([HR_HIGH, SPO2_LOW])
    assert feed(engine, "heart_rate", [(0, 125), (8, 125)]) == []
    assert len(engine.observe("spo2", 85.0, 8.0)) == 1
    engine.pause()
    assert feed(engine, "heart_rate", [(9, 125), (18, 125)]) == []  # run restarted at 9
    assert len(engine.observe("heart_rate", 125, 19.0)) == 1
    assert engine.observe("spo2", 85.0, 20.0) == []  # still latched


def test_disabled_rule_never_trips() -> None:
    engine = RuleEngine([Rule("spo2_low", 90.0, 0.0, 2.0, enabled=False)])
    assert feed(engine, "spo2", [(float(t), 70.0) for t in range(100)]) == []


def test_other_metrics_do_not_touch_a_rule() -> None:
    engine = RuleEngine([HR_HIGH])
    assert engine.observe("heart_rate", 125, 0.0) == []
    assert engine.observe("spo2", None, 5.0) == []
    assert engine.observe("steps", 10_000, 6.0) == []
    assert len(engine.observe("heart_rate", 125, 10.0)) == 1


def test_high_and_low_rules_on_one_metric() -> None:
    engine = RuleEngine([HR_HIGH, Rule("heart_rate_low", 40.0, 0.0, 5.0)])
    assert [t.rule for t in engine.observe("heart_rate", 35, 0.0)] == ["heart_rate_low"]
    assert feed(engine, "heart_rate", [(1, 125)]) == []  # re-arms the low rule, starts a run
    trips = engine.observe("heart_rate", 125, 11.0)
    assert [t.rule for t in trips] == ["heart_rate_high"]
    assert [t.rule for t in engine.observe("heart_rate", 30, 12.0)] == ["heart_rate_low"]


def test_several_rules_trip_on_one_reading_in_rule_order() -> None:
    engine = RuleEngine(
        [Rule("diastolic_high", 90.0, 0.0, 0.0), Rule("systolic_high", 140.0, 0.0, 0.0)]
    )
    assert engine.observe("systolic", 150.0, 0.0)[0].rule == "systolic_high"
    assert engine.observe("diastolic", 95.0, 0.0)[0].rule == "diastolic_high"


def test_trip_data_rounds_duration_and_is_json_friendly() -> None:
    engine = RuleEngine([Rule("temperature_high", 38.0, 60.0, 0.3)])
    feed(engine, "temperature_c", [(1000.0, 38.4)])
    trips = engine.observe("temperature_c", 38.6, 1060.04)
    assert len(trips) == 1
    assert trips[0].duration_s == pytest.approx(60.04)
    data = trips[0].data()
    assert data["duration_s"] == 60.0
    assert json.loads(json.dumps(data)) == data


# --- Live updates -------------------------------------------------------------------------------


def test_update_keeps_state_of_unchanged_rules() -> None:
    engine = RuleEngine([HR_HIGH, SPO2_LOW])
    engine.observe("heart_rate", 125, 0.0)
    assert len(engine.observe("spo2", 85.0, 0.0)) == 1
    engine.update([Rule("heart_rate_high", 120.0, 10.0, 5.0), Rule("spo2_low", 90.0, 0.0, 2.0)])
    assert engine.observe("spo2", 85.0, 5.0) == []  # still latched
    trips = engine.observe("heart_rate", 125, 10.0)  # the run from 0 went on
    assert [t.duration_s for t in trips] == [10.0]


def test_update_changed_rule_restarts_run_and_rearms() -> None:
    engine = RuleEngine([HR_HIGH, SPO2_LOW])
    engine.observe("heart_rate", 125, 0.0)
    assert len(engine.observe("spo2", 85.0, 0.0)) == 1
    engine.update([Rule("heart_rate_high", 122.0, 10.0, 5.0), Rule("spo2_low", 88.0, 0.0, 2.0)])
    assert engine.observe("heart_rate", 125, 10.0) == []  # run restarted at 10
    assert len(engine.observe("heart_rate", 125, 20.0)) == 1
    trips = engine.observe("spo2", 85.0, 20.0)  # re-armed
    assert [(t.rule, t.threshold) for t in trips] == [("spo2_low", 88.0)]


@pytest.mark.parametrize(
    "changed",
    [
        Rule("spo2_low", 90.0, 1.0, 2.0),
        Rule("spo2_low", 90.0, 0.0, 3.0),
    ],
)
def test_update_duration_or_hysteresis_change_rearms(changed: Rule) -> None:
    engine = RuleEngine([SPO2_LOW])
    assert len(engine.observe("spo2", 85.0, 0.0)) == 1
    engine.update([changed])
    # Re-armed: a new run starts at 1 and trips once it lasted the (new) duration.
    trips = feed(engine, "spo2", [(1.0, 85.0), (2.0, 85.0), (3.0, 85.0)])
    assert [t.duration_s for t in trips] == [changed.min_duration_s]


def test_update_disable_then_enable_starts_armed() -> None:
    engine = RuleEngine([SPO2_LOW])
    assert len(engine.observe("spo2", 85.0, 0.0)) == 1
    engine.update([Rule("spo2_low", 90.0, 0.0, 2.0, enabled=False)])
    assert engine.observe("spo2", 85.0, 1.0) == []
    engine.update([SPO2_LOW])
    assert len(engine.observe("spo2", 85.0, 2.0)) == 1


def test_update_removes_and_adds_rules() -> None:
    engine = RuleEngine([SPO2_LOW])
    engine.update([Rule("temperature_high", 38.0, 0.0, 0.5)])
    assert engine.observe("spo2", 70.0, 0.0) == []
    assert len(engine.observe("temperature_c", 39.0, 0.0)) == 1


def test_rejected_update_changes_nothing() -> None:
    engine = RuleEngine([HR_HIGH])
    engine.observe("heart_rate", 125, 0.0)
    with pytest.raises(ValueError, match="'heart_rate_high'"):
        engine.update([Rule("heart_rate_high", 100.0, 0.0, 0.0), HR_HIGH])
    assert len(engine.observe("heart_rate", 125, 10.0)) == 1


# --- Properties ---------------------------------------------------------------------------------
# Small integer thresholds and readings make crossings, exact thresholds and hysteresis edges
# frequent; steps of 0 put several readings at one instant.

RULE_NAMES = tuple(RULE_METRIC)
RULES = st.builds(
    Rule,
    name=st.sampled_from(RULE_NAMES),
    threshold=st.integers(3, 7).map(float),
    min_duration_s=st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]),
    hysteresis=st.sampled_from([0.0, 1.0, 2.0]),
    enabled=st.sampled_from([True, True, True, False]),
)
RULE_LISTS = st.lists(RULES, min_size=1, max_size=6, unique_by=lambda rule: rule.name)
STEPS_S = st.sampled_from([0.0, 0.5, 1.0, 2.0])


@dataclass(frozen=True)
class _Event:
    now: float
    metric: str  # or "pause"
    value: float | None


@st.composite
def _timelines(draw: st.DrawFn, rules: list[Rule]) -> list[_Event]:
    """Readings of the rules' metrics (and of "steps", which no rule watches) in stretches of one
    repeated value, so that runs last, with values on and next to each threshold and hysteresis
    edge; some None readings and pauses."""
    metrics = [*sorted({rule.metric for rule in rules}), "steps"]
    edges: dict[str, list[float]] = {metric: [0.0, 10.0] for metric in metrics}
    for rule in rules:
        for edge in (rule.threshold - rule.hysteresis, rule.threshold + rule.hysteresis):
            edges[rule.metric] += [edge - 1.0, edge, edge + 1.0]
    events: list[_Event] = []
    now = 0.0
    for _ in range(draw(st.integers(0, 15))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            now += draw(STEPS_S)
            events.append(_Event(now, "pause", None))
            continue
        metric = draw(st.sampled_from(metrics))
        value = None if kind == 1 else draw(st.sampled_from(edges[metric]))
        for _ in range(draw(st.integers(1, 6))):
            now += draw(STEPS_S)
            events.append(_Event(now, metric, value))
    return events


def _run(rules: list[Rule], events: list[_Event]) -> list[tuple[int, Trip]]:
    engine = RuleEngine(rules)
    trips: list[tuple[int, Trip]] = []
    for index, event in enumerate(events):
        if event.metric == "pause":
            engine.pause()
        else:
            trips.extend(
                (index, trip) for trip in engine.observe(event.metric, event.value, event.now)
            )
    return trips


def _expected_trips(rule: Rule, events: list[_Event]) -> list[tuple[int, float]]:
    """(index, duration_s) of each trip, found by scanning the timeline backwards from each
    reading for the stretch of consecutive readings beyond the threshold it ends."""
    if not rule.enabled:
        return []
    mine = [(index, e) for index, e in enumerate(events) if e.metric in {"pause", rule.metric}]

    def beyond(e: _Event) -> bool:
        return e.metric != "pause" and e.value is not None and rule.beyond(e.value)

    def rearms(e: _Event) -> bool:
        return e.metric != "pause" and e.value is not None and rule.rearms(e.value)

    expected: list[tuple[int, float]] = []
    armed_from = 0  # position in `mine` where the armed period starts
    position = 0
    while position < len(mine):
        index, event = mine[position]
        if beyond(event):
            start = position
            while start > armed_from and beyond(mine[start - 1][1]):
                start -= 1
            duration_s = event.now - mine[start][1].now
            if duration_s >= rule.min_duration_s:
                expected.append((index, duration_s))
                later = range(position + 1, len(mine))
                rearm = next((p for p in later if rearms(mine[p][1])), None)
                if rearm is None:
                    break
                armed_from = rearm + 1
                position = rearm + 1
                continue
        position += 1
    return expected


@settings(max_examples=400)
@given(data=st.data(), rules=RULE_LISTS)
def test_trips_match_a_scan_of_the_timeline(data: st.DataObject, rules: list[Rule]) -> None:
    events = data.draw(_timelines(rules))
    trips = _run(rules, events)
    for rule in rules:
        got = [(index, trip.duration_s) for index, trip in trips if trip.rule == rule.name]
        assert got == _expected_trips(rule, events)


@given(data=st.data(), rules=RULE_LISTS)
def test_every_trip_is_beyond_long_enough_and_once_per_latch(
    data: st.DataObject, rules: list[Rule]
) -> None:
    by_name = {rule.name: rule for rule in rules}
    events = data.draw(_timelines(rules))
    trips = _run(rules, events)
    for index, trip in trips:
        rule = by_name[trip.rule]
        assert rule.enabled
        assert (trip.metric, trip.direction, trip.threshold) == (
            rule.metric,
            rule.direction,
            rule.threshold,
        )
        assert trip.duration_s >= rule.min_duration_s
        assert rule.beyond(trip.value)
        assert events[index].value == trip.value
    for rule in rules:
        indexes = [index for index, trip in trips if trip.rule == rule.name]
        for first, second in pairwise(indexes):
            between = events[first + 1 : second]
            assert any(
                e.metric == rule.metric and e.value is not None and rule.rearms(e.value)
                for e in between
            ), "tripped twice without being re-armed"


@given(
    rules=RULE_LISTS,
    steps=st.lists(st.tuples(STEPS_S, st.sampled_from(RULE_NAMES)), max_size=60),
)
def test_never_trips_on_none_only_streams(
    rules: list[Rule], steps: list[tuple[float, str]]
) -> None:
    engine = RuleEngine(rules)
    now = 0.0
    for step_s, name in steps:
        now += step_s
        assert engine.observe(RULE_METRIC[name][0], None, now) == []


@given(
    rule=RULES,
    steps=st.lists(st.tuples(STEPS_S, st.integers(0, 10)), max_size=60),
)
def test_never_trips_within_threshold(rule: Rule, steps: list[tuple[float, int]]) -> None:
    engine = RuleEngine([rule])
    now = 0.0
    for step_s, offset in steps:
        now += step_s
        value = rule.threshold - offset if rule.direction == "above" else rule.threshold + offset
        assert engine.observe(rule.metric, value, now) == []
