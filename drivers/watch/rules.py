"""Pure edge rules on the watch's vital signs, giving the ``alarm.vitals`` trips (no I/O).

A rule watches one metric against a threshold (``RULE_METRIC`` fixes which metric and which
direction). Times are monotonic seconds passed in by the caller; nothing here reads a clock.

Choices:

- A run starts at the first reading strictly beyond the threshold; the rule trips once, at the
  first reading at least ``min_duration_s`` after the run started while every reading since stayed
  beyond (``min_duration_s`` 0: the first reading beyond trips). A reading back within ends the run.
- A tripped rule is latched until a reading is back past the threshold by ``hysteresis`` (above:
  value <= threshold - hysteresis; below: value >= threshold + hysteresis); that re-arms it.
- We only alarm on continuously observed values: ``None`` (an IEEE-11073 special value; a
  non-finite float counts the same) and ``pause()`` (watch not worn) end the run in progress but
  never re-arm a latched rule.
- A disabled rule never trips and keeps no state: enabled again, it starts armed with no run.
- ``update()`` keeps the state of rules that did not change; a rule whose threshold, duration,
  hysteresis or enabled flag changed starts over (armed, no run), and a removed rule is forgotten.
- Invalid rules (unknown name, non-finite numbers, negative duration or hysteresis, a name given
  twice) raise ``ValueError`` naming the rule (``TypeError`` for a non-number); an engine update
  is applied whole or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

Direction = Literal["above", "below"]

RULE_METRIC: Mapping[str, tuple[str, Direction]] = MappingProxyType(
    {
        "heart_rate_high": ("heart_rate", "above"),
        "heart_rate_low": ("heart_rate", "below"),
        "spo2_low": ("spo2", "below"),
        "temperature_high": ("temperature_c", "above"),
        "systolic_high": ("systolic", "above"),
        "diastolic_high": ("diastolic", "above"),
    }
)
DURATION_DECIMALS = 1


@dataclass(frozen=True, slots=True)
class Rule:
    """One threshold rule; its metric and direction come from ``RULE_METRIC[name]``."""

    name: str
    threshold: float
    min_duration_s: float
    hysteresis: float
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.name not in RULE_METRIC:
            raise ValueError(
                f"unknown vitals rule {self.name!r}; known rules: {', '.join(RULE_METRIC)}"
            )
        for what, value in (
            ("threshold", self.threshold),
            ("min_duration_s", self.min_duration_s),
            ("hysteresis", self.hysteresis),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"vitals rule {self.name!r}: {what} must be a number")
            if not math.isfinite(value):
                raise ValueError(f"vitals rule {self.name!r}: {what} must be finite, got {value}")
        if self.min_duration_s < 0:
            raise ValueError(
                f"vitals rule {self.name!r}: min_duration_s must be >= 0, got {self.min_duration_s}"
            )
        if self.hysteresis < 0:
            raise ValueError(
                f"vitals rule {self.name!r}: hysteresis must be >= 0, got {self.hysteresis}"
            )

    @property
    def metric(self) -> str:
        return RULE_METRIC[self.name][0]

    @property
    def direction(self) -> Direction:
        return RULE_METRIC[self.name][1]

    def beyond(self, value: float) -> bool:
        """Whether ``value`` is strictly beyond the threshold."""
        if self.direction == "above":
            return value > self.threshold
        return value < self.threshold

    def rearms(self, value: float) -> bool:
        """Whether ``value`` is back past the threshold by the hysteresis."""
        if self.direction == "above":
            return value <= self.threshold - self.hysteresis
        return value >= self.threshold + self.hysteresis


@dataclass(frozen=True, slots=True)
class Trip:
    """A rule that tripped: the reading that tripped it and how long its run had lasted."""

    rule: str
    metric: str
    value: float
    threshold: float
    direction: Direction
    duration_s: float

    def data(self) -> dict[str, Any]:
        """The ``alarm.vitals`` event data."""
        return {
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "direction": self.direction,
            "duration_s": round(self.duration_s, DURATION_DECIMALS),
        }


@dataclass(slots=True)
class _RuleState:
    run_start: float | None = None
    latched: bool = False


class RuleEngine:
    """Readings in, trips out: each rule trips once per excursion, then waits to be re-armed."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._rules: dict[str, Rule] = {}
        self._states: dict[str, _RuleState] = {}
        self.update(rules)

    def observe(self, metric: str, value: float | None, now: float) -> list[Trip]:
        """Feed one reading of ``metric`` taken at ``now`` (None: no valid reading); return the
        rules it trips, in the order the rules were given."""
        reading = None if value is None or not math.isfinite(value) else value
        trips: list[Trip] = []
        for rule in self._rules.values():
            if not rule.enabled or rule.metric != metric:
                continue
            state = self._states[rule.name]
            if reading is None:
                state.run_start = None
                continue
            if state.latched:
                if not rule.rearms(reading):
                    continue
                state.latched = False
            if not rule.beyond(reading):
                state.run_start = None
                continue
            if state.run_start is None:
                state.run_start = now
            duration_s = now - state.run_start
            if duration_s >= rule.min_duration_s:
                trips.append(
                    Trip(rule.name, metric, reading, rule.threshold, rule.direction, duration_s)
                )
                state.run_start = None
                state.latched = True
        return trips

    def pause(self) -> None:
        """The watch is not worn: forget every run in progress (latched rules stay latched)."""
        for state in self._states.values():
            state.run_start = None

    def update(self, rules: Iterable[Rule]) -> None:
        """Replace the rules; unchanged rules keep their run and latch, changed ones start over."""
        new_rules: dict[str, Rule] = {}
        for rule in rules:
            if rule.name in new_rules:
                raise ValueError(f"vitals rule {rule.name!r} given twice")
            new_rules[rule.name] = rule
        new_states: dict[str, _RuleState] = {}
        for name, rule in new_rules.items():
            keep = rule.enabled and self._rules.get(name) == rule
            new_states[name] = self._states[name] if keep else _RuleState()
        self._rules = new_rules
        self._states = new_states
