"""Pure aggregation of the watch's vital-sign readings into ``telemetry.vitals`` data (no I/O).

The watch notifies heart rate at about 1 Hz; the platform gets one report per metric per
reporting interval instead. Times are monotonic seconds passed in by the caller; nothing here reads
a clock, so the caller sleeps until ``next_due()`` and then calls ``due(now)``.

Choices:

- A metric's window opens at its first reading after its last report and is complete ``interval``
  seconds later. It is reported by the first ``due(now)`` at or after that time, and every reading
  added until that report belongs to it: each reading is reported in exactly one window, and two
  reports of one metric are at least ``interval`` apart. Interval 0 means the next ``due()``.
- A report carries the window's last value under the metric's own name and, for every metric but
  ``rr_ms``, ``stats[metric] = {"min", "max", "mean" (rounded to 0.1), "n"}``. ``heart_rate``,
  ``pulse_rate`` and ``steps`` are rounded to ints when added, so their values and min/max are ints;
  the other metrics are floats.
- ``rr_ms`` reports the concatenation of the window's RR lists, the most recent
  ``MAX_RR_VALUES``; an empty RR list is no reading and opens no window.
- Values must be finite numbers: the codec turns IEEE-11073 special values into ``None``, which is
  not a reading and is not added. Unknown metrics and bad values or intervals raise ``ValueError``
  (``TypeError`` for a value of the wrong shape) naming the metric.
- ``set_intervals()`` takes any subset of the metrics and applies all of it or nothing; a pending
  window keeps its readings and is complete ``new interval`` seconds after it opened (at once, if
  that is already past).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

METRICS: tuple[str, ...] = (
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
INT_METRICS: frozenset[str] = frozenset({"heart_rate", "pulse_rate", "steps"})
RR_METRIC = "rr_ms"
MAX_RR_VALUES = 300
MEAN_DECIMALS = 1


@dataclass(slots=True)
class _ScalarWindow:
    opened_at: float
    last: float
    minimum: float
    maximum: float
    total: float
    n: int = 1

    def add(self, value: float) -> None:
        self.last = value
        self.minimum = min(self.minimum, value)
        self.maximum = max(self.maximum, value)
        self.total += value
        self.n += 1

    def stats(self) -> dict[str, float]:
        return {
            "min": self.minimum,
            "max": self.maximum,
            "mean": round(self.total / self.n, MEAN_DECIMALS),
            "n": self.n,
        }


@dataclass(slots=True)
class _RrWindow:
    opened_at: float
    values: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_RR_VALUES))


class VitalsAggregator:
    """Readings in, at most one ``telemetry.vitals`` report per metric per interval out."""

    def __init__(self, intervals_s: Mapping[str, float]) -> None:
        missing = [metric for metric in METRICS if metric not in intervals_s]
        if missing:
            raise ValueError(f"no reporting interval for vitals metric {missing[0]!r}")
        self._intervals_s: dict[str, float] = _checked_intervals(intervals_s)
        self._scalars: dict[str, _ScalarWindow] = {}
        self._rr: _RrWindow | None = None

    def add(self, metric: str, value: float | Sequence[float], now: float) -> None:
        """Add one reading of ``metric`` taken at ``now``; opens the metric's window if none is."""
        if metric == RR_METRIC:
            self._add_rr(value, now)
            return
        if metric not in self._intervals_s:
            raise ValueError(f"unknown vitals metric {metric!r}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"vitals metric {metric!r} takes a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"vitals metric {metric!r}: {value!r} is not a reading")
        number: float = round(value) if metric in INT_METRICS else float(value)
        window = self._scalars.get(metric)
        if window is None:
            self._scalars[metric] = _ScalarWindow(now, number, number, number, number)
        else:
            window.add(number)

    def _add_rr(self, value: float | Sequence[float], now: float) -> None:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise TypeError(f"vitals metric {RR_METRIC!r} takes a list of numbers, got {value!r}")
        values: list[float] = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int | float):
                raise TypeError(f"vitals metric {RR_METRIC!r}: {item!r} is not a number")
            if not math.isfinite(item):
                raise ValueError(f"vitals metric {RR_METRIC!r}: {item!r} is not a reading")
            values.append(float(item))
        if not values:
            return
        if self._rr is None:
            self._rr = _RrWindow(now)
        self._rr.values.extend(values)

    def due(self, now: float) -> dict[str, Any] | None:
        """The ``telemetry.vitals`` data of every window complete at ``now``; None when none is.

        The reported windows are closed: the next reading of those metrics opens a new one.
        """
        data: dict[str, Any] = {}
        stats: dict[str, dict[str, float]] = {}
        for metric in METRICS:
            if metric == RR_METRIC:
                rr = self._rr
                if rr is not None and self._closes_at(metric, rr.opened_at) <= now:
                    data[metric] = list(rr.values)
                    self._rr = None
                continue
            window = self._scalars.get(metric)
            if window is not None and self._closes_at(metric, window.opened_at) <= now:
                data[metric] = window.last
                stats[metric] = window.stats()
                del self._scalars[metric]
        if not data:
            return None
        if stats:
            data["stats"] = stats
        return data

    def next_due(self) -> float | None:
        """When ``due()`` will next report something (possibly already past); None if nothing is
        pending."""
        closes = [self._closes_at(metric, w.opened_at) for metric, w in self._scalars.items()]
        if self._rr is not None:
            closes.append(self._closes_at(RR_METRIC, self._rr.opened_at))
        return min(closes, default=None)

    def discard(self, metrics: Iterable[str] | None = None) -> None:
        """Drop the pending readings of ``metrics`` (all metrics when None), unreported."""
        if isinstance(metrics, str):
            raise TypeError(f"discard() takes a collection of metric names, not {metrics!r}")
        names = METRICS if metrics is None else tuple(metrics)
        for metric in names:
            if metric not in self._intervals_s:
                raise ValueError(f"unknown vitals metric {metric!r}")
        for metric in names:
            if metric == RR_METRIC:
                self._rr = None
            else:
                self._scalars.pop(metric, None)

    def set_intervals(self, intervals_s: Mapping[str, float]) -> None:
        """Change the reporting interval of the given metrics; pending windows keep their readings
        and are complete by the new interval."""
        self._intervals_s.update(_checked_intervals(intervals_s))

    def _closes_at(self, metric: str, opened_at: float) -> float:
        return opened_at + self._intervals_s[metric]


def _checked_intervals(intervals_s: Mapping[str, float]) -> dict[str, float]:
    checked: dict[str, float] = {}
    for metric, interval_s in intervals_s.items():
        if metric not in METRICS:
            raise ValueError(f"unknown vitals metric {metric!r}")
        if (
            isinstance(interval_s, bool)
            or not isinstance(interval_s, int | float)
            or not math.isfinite(interval_s)
            or interval_s < 0
        ):
            raise ValueError(
                f"reporting interval of vitals metric {metric!r} must be a finite number of "
                f"seconds >= 0, got {interval_s!r}"
            )
        checked[metric] = float(interval_s)
    return checked
