"""The watch list and the care alerts already raised, kept across restarts."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.watch.store import CONFIRMED_REPEAT_S, RaisedAlert, WatchStore

ADDRESS = "C0:FF:EE:00:00:01"


def test_pairing_survives_a_restart_and_addresses_are_upper_case(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches.json")
    assert store.add(ADDRESS.lower())
    assert not store.add(ADDRESS)
    store.save()
    assert WatchStore(tmp_path / "watches.json").addresses() == [ADDRESS]
    assert ADDRESS.lower() in store
    assert store.remove(ADDRESS)
    assert not store.remove(ADDRESS)
    store.save()
    assert WatchStore(tmp_path / "watches.json").addresses() == []


async def test_a_repeat_of_a_raised_alert_is_found_after_a_restart(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches.json")
    alert = RaisedAlert(seq=5, event=1, watch_time=0, event_id="alarm-1", at=time.time())
    store.raised(ADDRESS, alert)
    await store.flush()
    again = WatchStore(tmp_path / "watches.json")
    assert again.addresses() == []  # a configured watch's alerts are kept, it is not "paired"
    repeat = again.repeat_of(ADDRESS, 5, 1, 0)
    assert repeat is not None and repeat.event_id == "alarm-1"
    assert again.repeat_of(ADDRESS, 5, 2, 0) is None  # same number, other event: a new alert
    assert again.repeat_of(ADDRESS, 6, 1, 0) is None


def test_only_an_alert_the_watch_could_still_repeat_matches(tmp_path: Path) -> None:
    """Confirmed long ago, or acknowledged by the platform: a new alert with that number is new
    (the watch rebooted, or the number wrapped). When in doubt, a second alarm, never none."""
    store = WatchStore(tmp_path / "watches.json")
    now = time.time()
    long_ago = now - 10 * CONFIRMED_REPEAT_S
    store.raised(ADDRESS, RaisedAlert(5, 1, 0, "a-1", at=long_ago, told=1, told_at=long_ago))
    store.raised(ADDRESS, RaisedAlert(6, 1, 0, "a-2", at=long_ago, acknowledged=True))
    store.raised(ADDRESS, RaisedAlert(7, 1, 0, "a-3", at=now, told=1, told_at=now))
    store.raised(ADDRESS, RaisedAlert(8, 1, 0, "a-4", at=now - 25 * 3600))
    assert store.repeat_of(ADDRESS, 5, 1, 0) is None
    assert store.repeat_of(ADDRESS, 6, 1, 0) is None
    assert store.repeat_of(ADDRESS, 7, 1, 0) is not None  # the confirm's answer may be lost
    assert store.repeat_of(ADDRESS, 8, 1, 0) is None


async def test_what_the_watch_still_has_to_hear_is_kept(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches.json")
    alert = RaisedAlert(9, 2, 86400, "a-9", at=time.time(), told=1, told_at=time.time())
    store.raised(ADDRESS, alert)
    alert.due.append(2)
    store.changed()
    store.set_worn(ADDRESS, False)
    await store.flush()
    again = WatchStore(tmp_path / "watches.json")
    (kept,) = again.state(ADDRESS).alerts
    assert (kept.told, kept.due) == (1, [2])
    assert again.worn(ADDRESS) is False
    assert again.latest(ADDRESS, 2) == kept


def test_a_damaged_list_is_restored_from_its_backup(tmp_path: Path) -> None:
    path = tmp_path / "watches.json"
    store = WatchStore(path)
    store.add(ADDRESS)
    store.save()
    path.write_text("{not json")
    assert WatchStore(path).addresses() == [ADDRESS]
    assert list(tmp_path.glob("watches.json.damaged-*"))


def test_a_damaged_list_without_a_backup_starts_empty_and_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "watches.json"
    path.write_text('{"paired": 3}')
    assert WatchStore(path).addresses() == []
    assert list(tmp_path.glob("watches.json.damaged-*"))


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.one_of(
        st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
            lambda children: (
                st.lists(children, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["paired", "state", "alerts", "worn", ADDRESS, "seq"]),
                    children,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(json.dumps),
    )
)
def test_any_file_content_loads_or_is_set_aside_never_a_crash(tmp_path: Path, content: str) -> None:
    path = tmp_path / f"watches-{abs(hash(content))}.json"
    path.write_text(content)
    store = WatchStore(path)
    assert isinstance(store.addresses(), list)
    assert isinstance(store.state(ADDRESS).alerts, list)


def test_settled_alerts_are_dropped_open_ones_kept(tmp_path: Path) -> None:
    """The file stays small (it is written before every confirm): what can still come of an
    alert is kept, what cannot is dropped."""
    store = WatchStore(tmp_path / "watches.json")
    then = time.time() - 10 * CONFIRMED_REPEAT_S
    kept = [
        RaisedAlert(1, 1, 0, "open-sos", at=then, told=1, told_at=then),  # awaits the ack
        RaisedAlert(2, 2, 0, "ack-due", at=then, told=1, told_at=then, due=[2], acknowledged=True),
        RaisedAlert(3, 4, 0, "worn-new", at=time.time(), told=1, told_at=time.time()),
    ]
    dropped = [
        RaisedAlert(4, 1, 0, "acked", at=then, told=2, told_at=then, acknowledged=True),
        RaisedAlert(5, 4, 0, "worn-old", at=then, told=1, told_at=then),
    ]
    for alert in dropped + kept:
        store.raised(ADDRESS, alert)
    newest = RaisedAlert(6, 1, 0, "newest", at=time.time())
    store.raised(ADDRESS, newest)
    assert [a.event_id for a in store.state(ADDRESS).alerts] == [
        *(a.event_id for a in kept),
        "newest",
    ]


@pytest.mark.parametrize(
    "bad",
    [{"at": "yesterday"}, {"seq": 300}, {"due": [7]}, {"told": 9}, {"event_id": 5}, {"seq": True}],
)
def test_an_alert_with_impossible_values_sets_the_file_aside(
    tmp_path: Path, bad: dict[str, object]
) -> None:
    good = {"seq": 1, "event": 1, "watch_time": 0, "event_id": "a", "at": 1.0}
    path = tmp_path / "watches.json"
    path.write_text(json.dumps({"paired": {}, "state": {ADDRESS: {"alerts": [{**good, **bad}]}}}))
    assert WatchStore(path).state(ADDRESS).alerts == []
    assert list(tmp_path.glob("watches.json.damaged-*"))
