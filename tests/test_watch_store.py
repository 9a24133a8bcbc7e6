"""The watch list and the care alerts already raised, kept across restarts."""

from __future__ import annotations

import time
from pathlib import Path

from drivers.watch.store import CONFIRMED_REPEAT_S, RaisedAlert, WatchStore

ADDRESS = "C0:FF:EE:00:00:01"


def test_pairing_survives_a_restart_and_addresses_are_upper_case(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches.json")
    assert store.add(ADDRESS.lower())
    assert not store.add(ADDRESS)
    assert WatchStore(tmp_path / "watches.json").addresses() == [ADDRESS]
    assert ADDRESS.lower() in store
    assert store.remove(ADDRESS)
    assert not store.remove(ADDRESS)
    assert WatchStore(tmp_path / "watches.json").addresses() == []


def test_a_repeat_of_a_raised_alert_is_found_after_a_restart(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches.json")
    store.add(ADDRESS)
    alert = RaisedAlert(seq=5, event=1, watch_time=0, event_id="alarm-1", at=time.time())
    store.raised(ADDRESS, alert)
    again = WatchStore(tmp_path / "watches.json")
    repeat = again.repeat_of(ADDRESS, 5, 1, 0)
    assert repeat is not None and repeat.event_id == "alarm-1"
    assert again.repeat_of(ADDRESS, 5, 2, 0) is None  # same number, other event: a new alert
    assert again.repeat_of(ADDRESS, 6, 1, 0) is None


def test_a_confirmed_alert_without_watch_time_stops_matching(tmp_path: Path) -> None:
    """The watch does not repeat a confirmed alert; a later one with its number is new."""
    store = WatchStore(tmp_path / "watches.json")
    long_ago = time.time() - 10 * CONFIRMED_REPEAT_S
    unset = RaisedAlert(5, 1, 0, "alarm-1", at=long_ago, confirmed_at=long_ago)
    timed = RaisedAlert(7, 2, 86400, "alarm-2", at=long_ago, confirmed_at=long_ago)
    store.raised(ADDRESS, unset)
    store.raised(ADDRESS, timed)
    assert store.repeat_of(ADDRESS, 5, 1, 0) is None
    assert store.repeat_of(ADDRESS, 7, 2, 86400) is not None  # the watch's clock tells it apart


def test_worn_state_is_kept(tmp_path: Path) -> None:
    store = WatchStore(tmp_path / "watches.json")
    assert store.worn(ADDRESS) is None
    store.set_worn(ADDRESS, False)
    assert WatchStore(tmp_path / "watches.json").worn(ADDRESS) is False


def test_a_damaged_list_is_restored_from_its_backup(tmp_path: Path) -> None:
    path = tmp_path / "watches.json"
    WatchStore(path).add(ADDRESS)
    path.write_text("{not json")
    assert WatchStore(path).addresses() == [ADDRESS]
    assert list(tmp_path.glob("watches.json.damaged-*"))
