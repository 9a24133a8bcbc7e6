"""The durable outbox against real SQLite files."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.watch.store import ALERT_MEMORY_S
from gateway.app.config import OutboxSection
from gateway.core.clock import ManualClock
from gateway.core.errors import StoreCorruptError, StoreError, StoreVersionError
from gateway.core.events import NewEvent, StoredEvent, WireRun
from gateway.store import outbox as outbox_module
from gateway.store.alarms import ALARM_KEY_KEPT_S, AlarmTiming, HeldAlarm
from gateway.store.disk import DiskBudget
from gateway.store.outbox import CLAIM_ROWS_PER_STEP, Outbox, _ClaimedAlarms
from gateway.store.sink import EventFactory
from gateway.store.spool import read_spool
from gateway.store.sqlite import ACK_STEP_ROWS, SqliteStore, merge_ranges, seq_ranges
from gateway.store.worker import (
    BACKLOG_RANK,
    CHECKPOINT_HOLD_MAX_S,
    CHECKPOINT_INTERVAL_S,
    CHECKPOINT_SPACING_S,
    Checkpointer,
    StoreWorker,
)
from tests.gateway_rig import wait_until

BOOT = "boot-1"


class Rig:
    def __init__(self, path: Path, *, max_bytes: int = 10**9, clock: ManualClock | None = None):
        self.clock = clock or ManualClock()
        self.factory = EventFactory(self.clock, BOOT)
        self.path = path
        self.store = SqliteStore(
            path,
            max_bytes=max_bytes,
            timing=AlarmTiming(ack_timeout_s=30, resend_interval_s=60, give_up_after_s=3600),
            make_dropped=lambda count, ranges, reason: self.factory.make(
                "gateway.dropped", {"count": count, "seq_ranges": ranges, "reason": reason}
            ),
            now=self.clock.wall,
            monotonic_ns=self.clock.monotonic_ns,
            boot_id=BOOT,
            clock_synced=self.clock.is_synced,
        )

    def telemetry(self, hr: int = 70) -> NewEvent:
        return self.factory.make("telemetry.vitals", {"heart_rate": hr}, "watch-AABBCCDDEEFF")

    def alarm(self) -> NewEvent:
        return self.factory.make(
            "alarm.button", {"press": "short", "battery": 80, "rssi": -50}, "btn-00000001"
        )


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    r = Rig(tmp_path / "outbox.sqlite3")
    r.store.open()
    return r


def test_seq_is_gapless_and_survives_reopen(tmp_path: Path) -> None:
    first = Rig(tmp_path / "o.sqlite3")
    first.store.open()
    assert first.store.insert([first.telemetry() for _ in range(3)]) == [1, 2, 3]
    first.store.close()
    second = Rig(tmp_path / "o.sqlite3")
    second.store.open()
    assert second.store.insert([second.alarm()]) == [4]
    second.store.ack(second.store.insert([second.telemetry()]))
    assert second.store.insert([second.telemetry()]) == [6]


def test_alarms_are_claimed_before_the_backlog(rig: Rig) -> None:
    rig.store.insert([rig.telemetry() for _ in range(10)])
    rig.store.insert([rig.alarm()])
    claimed = rig.store.claim(5)
    assert claimed[0].kind == "alarm.button"
    assert [e.seq for e in claimed[1:]] == [1, 2, 3, 4]


def test_events_stay_until_acknowledged_and_come_back_after_link_loss(rig: Rig) -> None:
    rig.store.insert([rig.telemetry() for _ in range(4)])
    assert [e.seq for e in rig.store.claim(2)] == [1, 2]
    assert [e.seq for e in rig.store.claim(10)] == [3, 4]
    assert rig.store.claim(10) == []
    rig.store.ack([1])
    rig.store.release_all()
    assert [e.seq for e in rig.store.claim(10)] == [2, 3, 4]


def test_rejected_events_wait_for_their_retry_time(rig: Rig) -> None:
    rig.store.insert([rig.telemetry() for _ in range(3)])
    rig.store.claim(10)
    rig.store.release([2], retry_at=rig.store.mono() + 10)
    rig.store.ack([1, 3])
    assert rig.store.claim(10) == []
    rig.clock.advance(11)
    assert [e.seq for e in rig.store.claim(10)] == [2]
    assert rig.store.stats().queued == {"telemetry": 1}


def test_alarm_resend_after_ack_timeout_then_every_interval(rig: Rig) -> None:
    (seq,) = rig.store.insert([rig.alarm()])
    (claimed,) = rig.store.claim(10)
    assert claimed.attempt == 1
    delivered = rig.store.ack([seq])
    assert [a.seq for a in delivered] == [seq]
    assert rig.store.claim(10) == []  # delivered: waits for the platform
    rig.clock.advance(29)
    assert rig.store.promote_due_alarms() == ([], [])
    rig.clock.advance(2)
    (promoted,), _ = rig.store.promote_due_alarms()
    assert promoted.attempt == 2
    (again,) = rig.store.claim(10)
    assert (again.id, again.seq, again.attempt) == (claimed.id, seq, 2)
    rig.store.ack([seq])
    rig.clock.advance(59)
    assert rig.store.promote_due_alarms() == ([], [])
    rig.clock.advance(2)
    assert [a.attempt for a in rig.store.promote_due_alarms()[0]] == [3]


def test_acknowledged_alarm_is_forgotten_and_unknown_ids_ignored(rig: Rig) -> None:
    event = rig.alarm()
    rig.store.insert([event])
    found = rig.store.acknowledge_alarms([event.id, "no-such-id"])
    assert [a.id for a in found] == [event.id]
    assert rig.store.held_alarms() == []
    assert rig.store.acknowledge_alarms([event.id]) == []


def test_alarm_given_up_after_its_window(rig: Rig) -> None:
    (seq,) = rig.store.insert([rig.alarm()])
    rig.store.claim(1)
    rig.store.ack([seq])
    rig.clock.advance(3601)
    promoted, given_up = rig.store.promote_due_alarms()
    assert promoted == []
    assert [a.seq for a in given_up] == [seq]
    assert rig.store.held_alarms() == []
    assert rig.store.stats().stored_bytes == 0


def test_a_clock_step_neither_gives_up_nor_delays_an_alarm(rig: Rig) -> None:
    (seq,) = rig.store.insert([rig.alarm()])
    rig.store.claim(1)
    rig.store.ack([seq])
    rig.clock.set_wall(rig.clock.wall() + 3 * 86400)  # NTP steps a day-old clock forward
    assert rig.store.promote_due_alarms() == ([], [])
    rig.clock.advance(31)
    promoted, given_up = rig.store.promote_due_alarms()
    assert ([a.seq for a in promoted], given_up) == ([seq], [])
    rig.store.claim(1)
    rig.store.ack([seq])
    rig.clock.set_wall(rig.clock.wall() - 7 * 86400)  # ...or backwards
    rig.clock.advance(61)
    assert [a.seq for a in rig.store.promote_due_alarms()[0]] == [seq]


def test_a_rejected_alarm_waits_for_its_retry_time(rig: Rig) -> None:
    (seq,) = rig.store.insert([rig.alarm()])
    assert [e.seq for e in rig.store.claim(10)] == [seq]
    rig.store.release([seq], retry_at=rig.store.mono() + 15)
    assert rig.store.claim(10) == []
    rig.clock.advance(16)
    assert [e.seq for e in rig.store.claim(10)] == [seq]
    assert rig.store.claim(10) == []  # in flight: not claimed twice


MiB = 1024 * 1024


def fill_with_alarms(rig: Rig, count: int = 6000) -> None:
    """Alarms (never evicted) enough to take a 1 MiB quota past its limit by themselves."""
    for _ in range(0, count, 1000):
        rig.store.insert([rig.alarm() for _ in range(1000)])


def test_quota_evicts_oldest_telemetry_never_alarms_and_explains_every_gap(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "q.sqlite3", max_bytes=MiB)
    rig.store.open()
    alarms = []
    power = 0
    for i in range(600):
        if i % 50 == 0:
            event = rig.alarm()
            alarms.append(event.id)
            rig.store.insert([event])
        elif i % 3 == 0:
            rig.store.insert([rig.factory.make("gateway.power", {"mains": i % 2 == 0})])
            power += 1
        else:
            rig.store.insert([rig.telemetry(60 + (i + n) % 40) for n in range(20)])
    last_seq = rig.store.stats().last_seq
    assert rig.store.stats().stored_bytes <= MiB
    rows = rig.store.claim(100_000)
    telemetry = [e.seq for e in rows if e.kind == "telemetry.vitals"]
    assert telemetry, "the quota evicted every event: the test cannot tell the order"
    assert sum(e.kind == "gateway.power" for e in rows) == power, "evicted before telemetry"
    kept = {e.seq for e in rows}
    assert {e.id for e in rows if e.kind == "alarm.button"} == set(alarms)
    covered: set[int] = set()
    for event in rows:
        if event.kind == "gateway.dropped":
            data = json.loads(event.data_json)
            span = {s for first, last in data["seq_ranges"] for s in range(first, last + 1)}
            assert data["count"] == len(span)
            assert not span & covered
            covered |= span
    assert covered, "nothing was evicted: the quota did not act"
    assert kept | covered == set(range(1, last_seq + 1))
    assert not kept & covered
    assert max(covered) < min(telemetry), "not the oldest telemetry evicted"


def test_quota_never_evicts_events_in_flight(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "q.sqlite3", max_bytes=MiB)
    rig.store.open()
    rig.store.insert([rig.telemetry() for _ in range(20)])
    in_flight = {e.seq for e in rig.store.claim(20)}
    for _ in range(100):
        rig.store.insert([rig.telemetry() for _ in range(100)])
    rig.store.release_all()
    still = {e.seq for e in rig.store.claim(100_000)}
    assert in_flight <= still
    assert min(still - in_flight) > 1000, "the quota did not act"


def test_a_deleted_database_does_not_make_seqs_start_again(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    rig = Rig(path)
    rig.store.open()
    rig.store.insert([rig.telemetry() for _ in range(3)])
    rig.store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    again = Rig(path)
    report = again.store.open()
    assert report.loss_reason == "store_missing"
    assert report.lost_ranges and report.lost_ranges[-1][1] >= 3
    (seq,) = again.store.insert([again.telemetry()])
    assert seq > report.lost_ranges[-1][1]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(StoreVersionError, match="newer"):
        Rig(path).store.open()


def test_damaged_store_is_moved_aside_and_seq_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    rig = Rig(path)
    rig.store.open()
    rig.store.insert([rig.telemetry() for _ in range(5)])
    rig.store.close()
    with path.open("r+b") as handle:
        handle.seek(0)
        handle.write(b"this is not a database" * 100)
    again = Rig(path)
    report = again.store.open()
    assert report.loss_reason == "store_corrupt"
    assert report.moved_aside is not None
    assert report.moved_aside.exists()
    assert report.lost_ranges and report.lost_ranges[0][0] == 1
    (seq,) = again.store.insert([again.telemetry()])
    assert seq > report.lost_ranges[-1][1] >= 5


def test_clock_correction_rewrites_only_this_boots_unsynced_events(tmp_path: Path) -> None:
    clock = ManualClock(wall=1_000_000.0, synced=False)
    rig = Rig(tmp_path / "c.sqlite3", clock=clock)
    rig.store.open()
    rig.store.insert([rig.telemetry()])
    other_boot = EventFactory(clock, "boot-0").make("telemetry.vitals", {"heart_rate": 1})
    rig.store.insert([other_boot])
    clock.advance(10)
    clock.set_wall(1_700_000_000.0)  # NTP steps the clock
    clock.synced = True
    assert rig.store.correct_timestamps(BOOT, clock.wall(), clock.monotonic_ns()) == 1
    by_seq = {e.seq: e for e in rig.store.claim(10)}
    assert by_seq[1].ts_synced
    assert by_seq[1].ts == "2023-11-14T22:13:10.000Z"  # 10 s before the synced now
    assert not by_seq[2].ts_synced


@given(st.sets(st.integers(min_value=1, max_value=500)))
def test_seq_ranges_cover_exactly_the_input(seqs: set[int]) -> None:
    ranges = seq_ranges(seqs)
    assert {s for a, b in ranges for s in range(a, b + 1)} == seqs
    assert all(a <= b for a, b in ranges)
    assert all(ranges[i][1] + 1 < ranges[i + 1][0] for i in range(len(ranges) - 1))


async def test_alarm_is_on_disk_when_put_returns_and_telemetry_within_the_window(
    rig: Rig,
) -> None:
    outbox = Outbox(rig.store, group_commit_s=0.5)
    reader = sqlite3.connect(rig.path)

    def count() -> int:
        rows = int(reader.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return rows + len(read_spool(_spool_dir(rig.path)))

    await outbox.put(rig.telemetry())
    assert count() == 0  # buffered in the group-commit window
    await outbox.put(rig.alarm())
    assert count() == 1  # the alarm alone, at once; the telemetry keeps its window
    await outbox.put(rig.telemetry())
    async with asyncio.timeout(5):
        await outbox.changed.wait()
        while count() < 3:
            outbox.changed.clear()
            await outbox.changed.wait()
    await outbox.close()
    reader.close()


async def test_close_flushes_the_buffer(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "o.sqlite3")
    outbox = Outbox(rig.store, group_commit_s=1.0)
    await outbox.open()
    for _ in range(10):
        await outbox.put(rig.telemetry())
    await outbox.close()
    again = Rig(tmp_path / "o.sqlite3")
    again.store.open()
    assert again.store.stats().queued == {"telemetry": 10}


async def test_a_cancelled_put_neither_loses_nor_doubles_the_alarm(rig: Rig) -> None:
    outbox = Outbox(rig.store, group_commit_s=0.5)
    await outbox.put(rig.telemetry())
    first = rig.alarm()
    task = asyncio.create_task(outbox.put(first))
    await asyncio.sleep(0)  # one turn of the loop: the put has handed its insert to the store
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await outbox.put(rig.alarm())  # would fail on a duplicate id if the first were re-queued
    await outbox.flush()
    kinds = [e.kind for e in (await outbox.claim(100))[0]]
    assert sorted(kinds) == ["alarm.button", "alarm.button", "telemetry.vitals"]
    await outbox.close()


async def test_an_alarm_raised_again_under_its_key_is_stored_once_also_after_a_restart(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "o.sqlite3")
    outbox = Outbox(rig.store)
    await outbox.open()
    first = rig.alarm()
    assert await outbox.put(first, key="watch/C0:FF:EE:00:00:01/5/1/850000000") == first.id
    second = await outbox.put(rig.alarm(), key="watch/C0:FF:EE:00:00:01/6/1/850000001")
    assert second != first.id
    assert await outbox.put(rig.alarm(), key="watch/C0:FF:EE:00:00:01/5/1/850000000") == first.id
    await outbox.close()  # (a kill -9 keeps what was committed just as well)

    again = Rig(tmp_path / "o.sqlite3", clock=rig.clock)
    outbox = Outbox(again.store)
    await outbox.open()
    # Acknowledged meanwhile: the key still names it, nothing is stored.
    await outbox.acknowledge_alarms([first.id])
    repeat = again.alarm()
    assert await outbox.put(repeat, key="watch/C0:FF:EE:00:00:01/5/1/850000000") == first.id
    assert [alarm.id for alarm in await outbox.held_alarms()] == [second]  # the other key's
    assert (await outbox.stats()).last_seq == 2
    await outbox.close()


async def test_a_keyed_alarms_waiter_runs_before_the_store_claims_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a keyed alarm's COMMIT the store thread waits until the step of the loop that the
    alarm's waiter resumes in has run (a watch's 0x01 goes out in it) before it claims the
    alarm: its claim would compete with that step for the GIL. Here the step holds the loop
    for 0.2 s; the claim comes only after it."""
    monkeypatch.setattr(outbox_module, "LOOP_FIRST_MAX_S", 30.0)
    rig = Rig(tmp_path / "o.sqlite3")
    outbox = Outbox(rig.store)
    outbox.claim_at_insert = True
    await outbox.open()
    alarm = rig.alarm()
    assert await outbox.put(alarm, key="watch/C0:FF:EE:00:00:01/5/1/850000000") == alarm.id
    # The rest of the waiter's step, holding the loop: the store thread must not claim meanwhile.
    time.sleep(0.2)  # noqa: ASYNC251
    claimed_during_the_step = [e.id for b in list(outbox._claimed) for e in b.events]
    await wait_until(lambda: bool(outbox._claimed), 10.0, "the claim after the step")
    events, _ = outbox.take_claimed_alarms()
    await outbox.close()
    assert claimed_during_the_step == []
    assert [event.id for event in events] == [alarm.id]


def _committed_elsewhere(path: Path, alarm_id: str, key: str) -> tuple[bool, bool]:
    """Whether another connection sees the alarm's row and its key: their transaction is
    committed (with the store's ``synchronous=FULL``, its COMMIT returned after the fsync)."""
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = reader.execute("SELECT 1 FROM events WHERE id=?", (alarm_id,)).fetchone()
        named = reader.execute("SELECT alarm_id FROM alarm_keys WHERE key=?", (key,)).fetchone()
        return row is not None, named == (alarm_id,)
    finally:
        reader.close()


def test_a_keyed_alarm_is_told_committed_at_its_commit_and_only_then(rig: Rig) -> None:
    """``committed`` comes from inside the insert, after the COMMIT (fsync) and before the
    bookkeeping that follows: the alarm and its key are on disk, under synchronous=FULL."""
    seen: list[tuple[list[int], tuple[bool, bool], int]] = []
    alarm = rig.alarm()

    def committed(seqs: list[int]) -> None:  # on the store's thread, as the worker runs it
        synchronous = rig.store._require().execute("PRAGMA synchronous").fetchone()[0]
        seen.append((seqs, _committed_elsewhere(rig.path, alarm.id, "k"), synchronous))

    assert rig.store.insert([alarm], key="k", committed=committed) == [1]
    assert seen == [([1], (True, True), 2)]  # 2: FULL
    # Under a key stored before nothing is committed, and nothing is told.
    assert rig.store.insert([rig.alarm()], key="k", committed=committed) == []
    with pytest.raises(ValueError, match="one alarm"):
        rig.store.insert([rig.telemetry()], key="k2", committed=committed)
    assert len(seen) == 1


async def test_a_keyed_put_returns_once_its_alarm_and_key_are_committed(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "o.sqlite3")
    outbox = Outbox(rig.store)
    await outbox.open()
    stored = asyncio.Event()
    outbox.alarm_stored = stored
    for n in range(5):
        alarm = rig.alarm()
        assert await outbox.put(alarm, key=f"watch/{n}") == alarm.id
        assert _committed_elsewhere(rig.path, alarm.id, f"watch/{n}") == (True, True)
        assert outbox.alarms_arriving == 0
        await asyncio.wait_for(stored.wait(), 5)  # the uplink's fast path is woken too
        stored.clear()
    await outbox.close()


async def test_a_cancelled_keyed_put_stores_its_alarm_once(rig: Rig) -> None:
    outbox = Outbox(rig.store)
    first = rig.alarm()
    task = asyncio.create_task(outbox.put(first, key="k"))
    await asyncio.sleep(0)  # one turn of the loop: the put has handed its insert to the store
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The insert ran to its end all the same: the key names the first alarm.
    assert await outbox.put(rig.alarm(), key="k") == first.id
    assert (await outbox.stats()).last_seq == 1
    await outbox.close()


async def test_a_keyed_alarm_that_cannot_be_stored_raises_to_its_caller(rig: Rig) -> None:
    outbox = Outbox(rig.store)
    alarm = rig.alarm()
    await outbox.put(alarm, key="k")
    with pytest.raises(sqlite3.IntegrityError):  # the same id under another key
        await outbox.put(alarm, key="other")
    assert (await outbox.stats()).queued == {"alarm": 1}
    assert rig.store.alarm_under_key("other") is None  # rolled back with its alarm
    await outbox.close()


def test_alarm_keys_are_forgotten_after_a_day_by_the_writes_that_add_keys(rig: Rig) -> None:
    assert ALARM_KEY_KEPT_S >= ALERT_MEMORY_S  # as long as a watch repeats an alert
    old = rig.alarm()
    assert rig.store.insert([old], key="old") == [1]
    rig.clock.advance(ALARM_KEY_KEPT_S - 1)
    assert rig.store.insert([rig.alarm()], key="recent") == [2]
    assert rig.store.alarm_under_key("old") == old.id
    rig.clock.advance(2)
    assert rig.store.insert([rig.alarm()], key="new") == [3]
    assert rig.store.alarm_under_key("old") is None
    assert rig.store.alarm_under_key("recent") is not None
    # A key stored a day ahead of the clock (before the clock was set back) goes as well.
    rig.clock.set_wall(rig.clock.wall() - 2 * ALARM_KEY_KEPT_S)
    assert rig.store.insert([rig.alarm()], key="after the clock step") == [4]
    assert rig.store.alarm_under_key("new") is None
    reader = sqlite3.connect(rig.path)
    assert reader.execute("SELECT COUNT(*) FROM alarm_keys").fetchone()[0] == 1
    reader.close()
    # Forgotten, the key stores a new alarm.
    assert rig.store.insert([rig.alarm()], key="old") == [5]


def test_a_key_names_one_alarm(rig: Rig) -> None:
    with pytest.raises(ValueError, match="one alarm"):
        rig.store.insert([rig.telemetry()], key="k")
    with pytest.raises(ValueError, match="one alarm"):
        rig.store.insert([rig.alarm(), rig.alarm()], key="k")
    assert rig.store.stats().last_seq == 0


@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 20)), max_size=30))
def test_merge_ranges_is_the_union(pairs: list[tuple[int, int]]) -> None:
    ranges = [(a, a + n) for a, n in pairs]
    merged = merge_ranges(ranges)
    expand = lambda rs: {s for a, b in rs for s in range(a, b + 1)}  # noqa: E731
    assert expand(merged) == expand(ranges)
    assert all(merged[i][1] + 1 < merged[i + 1][0] for i in range(len(merged) - 1))


async def test_an_alarm_does_not_reorder_the_events_of_another_class(rig: Rig) -> None:
    outbox = Outbox(rig.store, group_commit_s=0.5)
    offline = rig.factory.make("device.offline", {"reason": "x", "last_seen": None}, None)
    online = rig.factory.make("device.online", {"reason": "x", "last_seen": None}, None)
    await outbox.put(offline)
    await outbox.put(rig.alarm())
    await outbox.put(online)
    await outbox.flush()
    device = [e for e in (await outbox.claim(10))[0] if e.event_class == "device"]
    assert [e.kind for e in sorted(device, key=lambda e: e.seq)] == [
        "device.offline",
        "device.online",
    ]
    await outbox.close()


def test_a_locked_database_is_not_taken_for_a_damaged_one(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    first = Rig(path)
    first.store.open()
    first.store.insert([first.telemetry()])
    first.store.close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="cannot open") as caught:
            Rig(path).store.open()
        assert not isinstance(caught.value, StoreCorruptError)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not list(tmp_path.glob("*.corrupt-*"))
    again = Rig(path)
    again.store.open()
    assert again.store.stats().queued == {"telemetry": 1}


def _outbox_files_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith("q.sqlite3"))


def test_the_quota_bounds_the_files_not_only_the_rows(tmp_path: Path) -> None:
    """1 MiB quota, batches of the store's transaction size: database, WAL, -shm, reserve and
    seq mark together stay within it after every write (checkpoints by the store alone)."""
    quota = 1024 * 1024
    rig = Rig(tmp_path / "q.sqlite3", max_bytes=quota)
    rig.store.open()
    assert rig.store.make_reserve()
    step = rig.store.rows_per_transaction
    for n in range(300):
        rig.store.insert([rig.telemetry(60 + (n + i) % 40) for i in range(step)])
        assert _outbox_files_bytes(tmp_path) <= quota, n
    assert rig.store.stats().queued.get("gateway", 0) > 0  # evictions were reported


def test_an_evicted_report_of_unstored_events_keeps_its_count(tmp_path: Path) -> None:
    """A gateway.dropped without seq ranges (buffer_full) that the quota evicts is replaced by
    one with the same count: a count of events that never had a seq is never lost."""
    rig = Rig(tmp_path / "q.sqlite3", max_bytes=MiB)
    rig.store.open()
    rig.store.insert([rig.store.dropped_event(7, [], "buffer_full")])
    fill_with_alarms(rig)  # so that the reports themselves are evicted
    for _ in range(50):
        rig.store.insert([rig.telemetry() for _ in range(20)])
    reports = [
        json.loads(e.data_json) for e in rig.store.claim(10**6) if e.kind == "gateway.dropped"
    ]
    unsequenced = [r for r in reports if not r["seq_ranges"]]
    assert unsequenced == [{"count": 7, "seq_ranges": [], "reason": "buffer_full"}]
    assert any(1 in range(a, b + 1) for r in reports for a, b in r["seq_ranges"])


def test_an_ack_that_fails_partway_keeps_what_it_committed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first chunk committed (an alarm delivered among it), the second failed: the first is
    no longer in flight and its alarm waits for the platform's ack; the rest is published again."""
    (alarm_seq,) = rig.store.insert([rig.alarm()])
    seqs = rig.store.insert([rig.telemetry() for _ in range(599)])
    claimed = [e.seq for e in rig.store.claim(600)]
    assert claimed[0] == alarm_seq and len(claimed) == 600
    real = rig.store._ack_rows
    calls = []

    def second_chunk_fails(chunk: list[int], db: sqlite3.Connection) -> object:
        calls.append(chunk)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real(chunk, db)

    monkeypatch.setattr(rig.store, "_ack_rows", second_chunk_fails)
    with pytest.raises(sqlite3.OperationalError):
        rig.store.ack(claimed)
    assert rig.store.in_flight() == 0
    assert rig.store.resends_scheduled() == 1
    again = [e.seq for e in rig.store.claim(1000)]
    assert again == calls[1], "the failed chunk is published again, nothing else"
    assert set(again) < set(seqs)


def test_a_quota_too_small_for_the_outbox_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="below the minimum"):
        Rig(tmp_path / "q.sqlite3", max_bytes=MiB - 1)
    with pytest.raises(ValidationError, match=r"fix: set outbox\.max_bytes to at least 1048576"):
        OutboxSection(max_bytes=256 * 1024)
    assert OutboxSection(max_bytes=MiB).max_bytes == DiskBudget.of(MiB).max_bytes
    assert DiskBudget.of(MiB).db >= MiB * 3 // 4


def occupy(worker: StoreWorker) -> tuple[threading.Event, Future[bool]]:
    """A call that holds the store thread until the gate returned is set; returned once it
    runs, with its future (True: the gate was set in time)."""
    gate, running = threading.Event(), threading.Event()

    def hold() -> bool:
        running.set()
        return gate.wait(5.0)

    busy = worker.submit(hold, (), urgent=False)
    assert running.wait(5), "the store thread never took the call"
    return gate, busy


def test_alarms_that_arrive_while_the_store_is_busy_are_committed_together(rig: Rig) -> None:
    """One transaction (one fsync) for the alarms queued behind the call in progress; one that
    cannot be stored (a duplicate id) leaves the others stored, each with its own outcome."""
    worker = StoreWorker()
    try:
        for duplicate in (False, True):
            gate, busy = occupy(worker)  # the call in progress
            alarms = [rig.alarm() for _ in range(3)]
            futures = [worker.submit_joined(rig.store.insert, alarm) for alarm in alarms]
            if duplicate:
                again = worker.submit_joined(rig.store.insert, alarms[1])
            gate.set()
            assert busy.result(5)
            results = [future.result(5) for future in futures]
            if duplicate:
                with pytest.raises(sqlite3.IntegrityError):
                    again.result(5)
                assert len({seq for seqs in results for seq in seqs}) == 3  # each alone
            else:
                assert results[0] == results[1] == results[2]  # one insert of all three
                assert len(results[0]) == 3
    finally:
        worker.shutdown()
    assert rig.store.stats().queued == {"alarm": 6}


def test_a_checkpoint_waits_for_a_moment_without_alarms(tmp_path: Path) -> None:
    """While alarms are being committed the checkpointer copies nothing into the database file
    (its fsyncs would share the disk with theirs); once they stop, it does; and if they never
    stop, it waits no longer than CHECKPOINT_HOLD_MAX_S."""
    path = tmp_path / "o.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x BLOB)")

    class Watched:
        """The checkpointer's lock: when it first took it is when its checkpoint started."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.taken_at: float | None = None

        def __enter__(self) -> None:
            self.lock.acquire()
            if self.taken_at is None:
                self.taken_at = time.monotonic()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    def checkpoint_started_after_s(alarms_for_s: float) -> float:
        """Seconds until the checkpointer (woken at once) started its checkpoint, with alarms
        being committed for ``alarms_for_s`` from its start; waits until it copied new pages."""
        writer.executemany("INSERT INTO t VALUES (?)", [(bytes(4000),)] * 100)
        before = path.stat().st_size
        watched = Watched()
        start = time.monotonic()
        checkpointer = Checkpointer(
            path,
            watched,  # type: ignore[arg-type]
            interval_s=0.01,
            hold=lambda: time.monotonic() - start < alarms_for_s,
        )
        try:
            while path.stat().st_size == before:
                assert time.monotonic() - start < 10, "never checkpointed"
                time.sleep(0.005)
        finally:
            checkpointer.stop()
        assert watched.taken_at is not None
        return watched.taken_at - start

    # Alarms stop coming after 0.2 s: it starts once they stopped, before its bound.
    assert 0.2 <= checkpoint_started_after_s(0.2) < CHECKPOINT_HOLD_MAX_S
    # They never stop: it waits its bound, no longer.
    assert checkpoint_started_after_s(float("inf")) >= CHECKPOINT_HOLD_MAX_S
    # None: at once.
    assert checkpoint_started_after_s(0.0) < CHECKPOINT_HOLD_MAX_S / 2
    writer.close()


def test_a_small_wal_is_left_to_grow_until_the_store_wakes_the_checkpointer(
    tmp_path: Path,
) -> None:
    """A checkpoint makes the next commit restart the WAL (its header and the whole -shm index
    written again), so the checkpointer leaves a few small commits in the WAL for
    CHECKPOINT_INTERVAL_S (a gateway whose uplink is down commits a heartbeat a minute), and
    copies them as soon as it is woken (the store does, when the WAL has grown)."""
    path = tmp_path / "o.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x BLOB)")
    checkpointer = Checkpointer(path, threading.Lock())
    try:
        assert CHECKPOINT_INTERVAL_S >= 60  # longer than a heartbeat's window
        writer.execute("INSERT INTO t VALUES (?)", (bytes(100),))
        before = path.stat().st_size
        # Several times the interval at which it used to copy every commit: nothing copied.
        time.sleep(3 * CHECKPOINT_SPACING_S + 1.0)
        assert path.stat().st_size == before
        checkpointer.wake()
        deadline = time.monotonic() + 5
        while path.stat().st_size == before:
            assert time.monotonic() < deadline, "not checkpointed once woken"
            time.sleep(0.005)
    finally:
        checkpointer.stop()
        writer.close()


def test_the_wal_restarts_once_the_checkpointer_has_copied_it(tmp_path: Path) -> None:
    """The checkpointer's copy does not let the WAL restart while the store keeps writing; once
    it has been seen at work and is done, the store copies what is left and the WAL restarts
    long before a quarter of its share (where the store would copy all of it itself)."""
    rig = Rig(tmp_path / "o.sqlite3", max_bytes=8 * MiB)
    rig.store.open()
    assert rig.store.make_reserve()
    budget = DiskBudget.of(8 * MiB)
    wal = Path(f"{rig.path}-wal")
    while wal.stat().st_size <= budget.wal // 8:
        rig.store.insert([rig.telemetry() for _ in range(20)])
    checkpointer = sqlite3.connect(rig.path, isolation_level=None)
    reader = sqlite3.connect(rig.path, isolation_level=None)  # as a transaction begun meanwhile
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM events").fetchone()
    with rig.store.checkpoint_lock:  # the checkpointer at work, seen by the next write
        checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        rig.store.insert([rig.telemetry() for _ in range(20)])  # appended during its copy
    reader.execute("COMMIT")
    grown = wal.stat().st_size
    assert budget.wal // 8 < grown < budget.wal // 4
    rig.store.insert([rig.telemetry() for _ in range(20)])  # copies the rest first
    rig.store.insert([rig.telemetry() for _ in range(20)])
    assert wal.stat().st_size <= budget.wal // 8  # restarted, cut back to its restart size
    checkpointer.close()
    reader.close()


# ------------------------------------------------------------------ the hot window


def _file_bytes(path: Path) -> bytes:
    """The database, its -wal file and the spool's records as they are on disk now."""
    spooled = "".join(repr(event) for event in read_spool(_spool_dir(path))).encode()
    return spooled + b"".join(
        Path(f"{path}{suffix}").read_bytes()
        for suffix in ("", "-wal")
        if Path(f"{path}{suffix}").exists()
    )


def _spool_dir(path: Path) -> Path:
    return path.with_name(path.name + ".spool")


def _rows(path: Path) -> list[int]:
    """The seqs on disk: rows of the database and events of the spool's records (which keep
    acknowledged events until their whole segment is acknowledged)."""
    reader = sqlite3.connect(path)
    try:
        rows = [seq for (seq,) in reader.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        reader.close()
    return sorted(rows + [event[0] for event in read_spool(_spool_dir(path))])


async def test_events_delivered_within_their_window_are_never_written(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "o.sqlite3")
    outbox = Outbox(rig.store, group_commit_s=0.2)
    await outbox.open()
    events = [rig.telemetry(60 + n) for n in range(20)]
    for event in events:
        await outbox.put(event)
    claimed, _ = await outbox.claim(100)
    assert [e.seq for e in claimed] == list(range(1, 21))  # seqs given at put, from memory
    assert await outbox.ack([e.seq for e in claimed]) == []
    assert outbox.buffered == 0
    await outbox.flush()  # what the window's end would write: nothing is left to write
    assert _rows(rig.path) == []
    on_disk = _file_bytes(rig.path)
    assert not [e.id for e in events if e.id.encode() in on_disk], "a delivered event was written"
    await outbox.close()
    # A clean close leaves no gap: the next start continues at the next seq.
    again = Rig(tmp_path / "o.sqlite3")
    assert again.store.open().lost_ranges == []
    assert again.store.insert([again.telemetry()]) == [21]
    assert not [e.id for e in events if e.id.encode() in _file_bytes(rig.path)]


async def test_undelivered_events_are_written_when_their_window_ends_and_survive_a_crash(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "o.sqlite3")
    outbox = Outbox(rig.store, group_commit_s=0.3)
    await outbox.open()
    for n in range(5):
        await outbox.put(rig.telemetry(60 + n))
    in_flight, _ = await outbox.claim(2)
    assert [e.seq for e in in_flight] == [1, 2]
    assert _rows(rig.path) == []
    await wait_until(lambda: _rows(rig.path) == [1, 2, 3, 4, 5], 5, "the window's end")
    # Those in flight when they were written stay in flight: never claimed twice.
    rest, _ = await outbox.claim(10)
    assert [e.seq for e in rest] == [3, 4, 5]
    await outbox.ack([1, 2])  # their PUBACK: the spool forgets them (in memory)
    assert (await outbox.stats()).queued == {"telemetry": 3}
    # A crash now (the files as they are, the process gone): the events are there, and the
    # seqs that may have been handed out beyond them are reported, never handed out again.
    # (Copied while the checkpointer is held off: a checkpoint between the copies of the
    # database and of its WAL would give a pair of files no crash can leave.)
    copy = tmp_path / "copy.sqlite3"
    with rig.store.checkpoint_lock:
        for suffix in ("", "-wal", ".seqmark"):
            shutil.copyfile(f"{rig.path}{suffix}", f"{copy}{suffix}")
        shutil.copytree(_spool_dir(rig.path), _spool_dir(copy))
    crashed = Rig(copy)
    report = crashed.store.open()
    # The acknowledged 1 and 2 come back with their segment: published again, duplicates.
    assert crashed.store.stats().queued == {"telemetry": 5}
    assert report.loss_reason == "store_rolled_back"
    assert report.lost_ranges[0][0] == 6
    (seq,) = crashed.store.insert([crashed.telemetry()])
    assert seq > report.lost_ranges[-1][1]
    crashed.store.close()
    await outbox.close()


async def test_an_ack_for_events_being_written_reaches_the_store_after_them(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "o.sqlite3")
    outbox = Outbox(rig.store, group_commit_s=30)
    await outbox.open()
    for _ in range(3):
        await outbox.put(rig.telemetry())
    claimed, _ = await outbox.claim(3)
    flushing = asyncio.create_task(outbox.flush())
    await asyncio.sleep(0)  # the batch is on its way to the store thread
    await outbox.ack([e.seq for e in claimed])
    await flushing
    assert _rows(rig.path) == []
    assert rig.store.in_flight() == 0
    assert (await outbox.claim(10))[0] == []
    await outbox.close()


async def test_released_events_in_memory_are_claimed_again_and_alarms_go_first(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "o.sqlite3")
    outbox = Outbox(rig.store, group_commit_s=30)
    await outbox.open()
    await outbox.put(rig.telemetry())
    await outbox.put(rig.telemetry())
    first, _ = await outbox.claim(10)
    assert [e.seq for e in first] == [1, 2]
    outbox.release([1])
    await outbox.put(rig.alarm())  # seq 3, from the same counter, stored at once
    again, _ = await outbox.claim(10)
    assert [(e.seq, e.kind) for e in again] == [(3, "alarm.button"), (1, "telemetry.vitals")]
    await outbox.release_all()
    await outbox.flush()  # written: those released keep being claimable, in seq order
    assert _rows(rig.path) == [1, 2, 3]
    after, _ = await outbox.claim(10)
    assert [e.seq for e in after] == [3, 1, 2]
    await outbox.close()


async def test_an_alarm_is_committed_in_the_middle_of_a_large_ack(rig: Rig) -> None:
    """An alarm put while a large acknowledgement is being applied is committed after the
    ack's current step (what that call deleted is committed then), not after the whole ack;
    the rest of the ack follows."""
    outbox = Outbox(rig.store, group_commit_s=0.5)
    rig.store.insert([rig.telemetry() for _ in range(10 * ACK_STEP_ROWS)])
    claimed, _ = await outbox.claim(10 * ACK_STEP_ROWS)
    order: list[tuple[str, int]] = []
    ack, insert = rig.store.ack_some, rig.store.insert
    started, gate = threading.Event(), threading.Event()

    def logged_ack(
        seqs: list[int], stop: Callable[[], bool] | None = None
    ) -> tuple[list[HeldAlarm], int]:
        started.set()
        gate.wait(5)  # the first call is in progress until the alarm is queued
        delivered, handled = ack(seqs, stop)
        order.append(("ack", handled))
        return delivered, handled

    def logged_insert(events: list[NewEvent], **options: Any) -> list[int]:
        order.append(("alarm", len(events)))
        return insert(events, **options)

    rig.store.ack_some = logged_ack  # type: ignore[method-assign]
    rig.store.insert = logged_insert  # type: ignore[method-assign]
    acking = asyncio.create_task(outbox.ack([e.seq for e in claimed]))
    await wait_until(started.is_set, 5, "the ack's first call")
    putting = asyncio.create_task(outbox.put(rig.alarm()))
    await wait_until(lambda: outbox.alarms_arriving == 1, 5, "the alarm queued")
    gate.set()
    await putting
    assert await acking == []
    assert order == [("ack", ACK_STEP_ROWS), ("alarm", 1), ("ack", 9 * ACK_STEP_ROWS)]
    assert rig.store.stats().queued == {"alarm": 1}
    assert rig.store.in_flight() == 0
    await outbox.close()


async def test_an_alarm_is_claimed_in_its_own_insert_while_the_uplink_publishes(rig: Rig) -> None:
    """With ``claim_at_insert`` the alarm comes out of its insert's store call already claimed
    (in flight: no other claim returns it); without, it waits for a claim. A claim made before
    the link was lost is not handed out after it."""
    outbox = Outbox(rig.store, group_commit_s=0.5)
    stored_before = rig.alarm()
    await outbox.put(stored_before)
    assert outbox.take_claimed_alarms() == ([], [])
    assert outbox.alarms_unclaimed
    outbox.claim_at_insert = True
    alarm = rig.alarm()
    await outbox.put(alarm)
    events, damaged = outbox.take_claimed_alarms()
    assert [e.id for e in events] == [stored_before.id, alarm.id]  # every alarm waiting
    assert damaged == []
    assert outbox.take_claimed_alarms() == ([], [])
    assert (await outbox.claim(0))[0] == []  # in flight
    await outbox.put(rig.alarm())
    await outbox.release_all()  # the link is lost before the uplink took it
    assert outbox.take_claimed_alarms() == ([], [])
    assert outbox.alarms_unclaimed
    assert len((await outbox.claim(0))[0]) == 3  # all of them again, from the store
    assert not outbox.alarms_unclaimed
    await outbox.close()


def test_a_claim_of_the_backlog_waits_for_the_alarms_queued_beside_it(rig: Rig) -> None:
    """Queued behind the call in progress, an alarm's insert goes before a backlog claim queued
    earlier, and that claim before other work queued earlier still."""
    rig.store.insert([rig.telemetry() for _ in range(10)])
    worker = StoreWorker()
    order: list[str] = []

    def step(name: str, fn: Callable[[], object]) -> object:
        order.append(name)
        return fn()

    try:
        gate, busy = occupy(worker)  # the call in progress
        other = worker.submit(step, ("other", rig.store.stats), urgent=False)
        claim = worker.submit_ranked(step, ("claim", lambda: rig.store.claim(10)), BACKLOG_RANK)
        alarm = worker.submit(step, ("alarm", lambda: rig.store.insert([rig.alarm()])), urgent=True)
        gate.set()
        for future in (busy, other, claim, alarm):
            future.result(5)
    finally:
        worker.shutdown()
    assert order == ["alarm", "claim", "other"]


async def test_a_claim_of_the_backlog_stops_early_for_an_alarm(rig: Rig) -> None:
    """A claim of the backlog in progress when an alarm is queued ends after its current step:
    the alarm waits for one step, not for the whole batch, which comes with the next claims."""
    outbox = Outbox(rig.store, group_commit_s=0.5)
    rig.store.insert([rig.telemetry() for _ in range(5 * CLAIM_ROWS_PER_STEP)])
    order: list[str] = []
    claim, insert = rig.store.claim_wire, rig.store.insert
    started, gate = threading.Event(), threading.Event()

    def logged_claim(max_events: int) -> list[StoredEvent | WireRun]:
        order.append("claim")
        started.set()
        gate.wait(5)  # the first step is in progress until the alarm is queued
        return claim(max_events)

    def logged_insert(events: list[NewEvent], **options: Any) -> list[int]:
        order.append("alarm")
        return insert(events, **options)

    rig.store.claim_wire = logged_claim  # type: ignore[method-assign]
    rig.store.insert = logged_insert  # type: ignore[method-assign]
    claiming = asyncio.create_task(outbox.claim(5 * CLAIM_ROWS_PER_STEP))
    await wait_until(started.is_set, 5, "the claim's first step")
    putting = asyncio.create_task(outbox.put(rig.alarm()))
    await wait_until(lambda: outbox.alarms_arriving == 1, 5, "the alarm queued")
    gate.set()
    first, _ = await claiming
    await putting
    assert order[:2] == ["claim", "alarm"]
    assert len(first) == CLAIM_ROWS_PER_STEP
    rest, _ = await outbox.claim(5 * CLAIM_ROWS_PER_STEP)
    assert rest[0].kind == "alarm.button"
    assert [e.seq for e in first + rest[1:]] == list(range(1, 5 * CLAIM_ROWS_PER_STEP + 1))
    await outbox.close()


def test_alarms_claimed_at_their_insert_reach_the_uplink_while_it_takes_them(rig: Rig) -> None:
    """The store's thread adds alarms claimed with their insert while the loop takes them: none
    is lost between the two (a thread switch after every few instructions)."""
    outbox = Outbox(rig.store)
    batches = 20_000
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    taken: list[StoredEvent] = []
    done = threading.Event()

    def store_thread() -> None:
        for n in range(batches):
            event = StoredEvent(n + 1, f"a{n}", "alarm.button", None, "{}", "t", True, 1)
            outbox._claimed.append(_ClaimedAlarms(outbox._epoch, [event], []))
        done.set()

    adder = threading.Thread(target=store_thread)
    try:
        adder.start()
        while not done.is_set():
            taken += outbox.take_claimed_alarms()[0]
        adder.join()
        taken += outbox.take_claimed_alarms()[0]
    finally:
        sys.setswitchinterval(interval)
    assert len(taken) == batches


async def test_a_claim_whose_later_step_fails_hands_out_what_it_claimed(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first step claimed an alarm (now in flight); the second fails: the claim returns
    what it has, so the alarm goes out rather than wait for the next link loss."""
    rig.store.insert([rig.alarm()])
    rig.store.insert([rig.telemetry() for _ in range(2 * CLAIM_ROWS_PER_STEP)])
    outbox = Outbox(rig.store)
    real = rig.store.claim_wire
    calls = []

    def second_step_fails(max_events: int) -> list[StoredEvent | WireRun]:
        calls.append(max_events)
        if len(calls) == 2:
            raise sqlite3.OperationalError("disk I/O error")
        return real(max_events)

    monkeypatch.setattr(rig.store, "claim_wire", second_step_fails)
    events, _ = await outbox.claim(3 * CLAIM_ROWS_PER_STEP)
    assert events[0].kind == "alarm.button"
    assert len(events) == CLAIM_ROWS_PER_STEP
    await outbox.close()
