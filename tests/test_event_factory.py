"""The event factory: a data-less kind is validated once, and what it makes is what it made."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.clock import ManualClock
from gateway.core.events import KIND_DATA, normalise_data
from gateway.store.sink import EventFactory


@given(kind=st.sampled_from(sorted(KIND_DATA)), times=st.integers(min_value=1, max_value=3))
def test_a_data_less_event_is_validated_as_before(kind: str, times: int) -> None:
    """Every kind, asked for without data: the same JSON as validating it each time, or the
    same error each time (a kind with required fields is never taken as valid)."""
    factory = EventFactory(ManualClock(), "boot")
    try:
        expected = normalise_data(kind, {})
    except ValueError:
        for _ in range(times):
            with pytest.raises(ValueError, match="validation error"):
                factory.make(kind, {})
        return
    made = [factory.make(kind, {}, "watch-C0FFEE000001") for _ in range(times)]
    assert [event.data_json for event in made] == [expected] * times
    assert len({event.id for event in made}) == times  # each its own event all the same


def test_data_is_validated_on_every_event() -> None:
    factory = EventFactory(ManualClock(), "boot")
    assert factory.make("alarm.watch_sos", {}).data_json == "{}"
    with pytest.raises(ValueError, match="extra"):
        factory.make("alarm.watch_sos", {"unexpected": 1})
    assert factory.make("device.battery", {"level": 80, "low": False}).data_json == (
        '{"level":80,"low":false}'
    )
