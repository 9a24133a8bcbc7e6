"""The telemetry spool: records on real files, torn and damaged ones, and the store around it."""

from __future__ import annotations

import json
import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.clock import ManualClock
from gateway.core.events import NewEvent, StoredEvent
from gateway.store.outbox import Outbox
from gateway.store.sink import EventFactory
from gateway.store.spool import (
    HEADER_BYTES,
    RECORD_EVENTS,
    Spool,
    SpoolDamage,
    decode_body,
    decode_header,
    encode_record,
    read_spool,
)
from gateway.store.sqlite import HotBatch
from tests.test_outbox import BOOT, Rig

FACTORY = EventFactory(ManualClock(), BOOT)


def vitals(n: int) -> NewEvent:
    return FACTORY.make(
        "telemetry.vitals", {"heart_rate": 50 + n % 90, "steps": n}, "watch-AABBCCDDEEFF"
    )


def rows(first: int, count: int) -> list[tuple[int, NewEvent]]:
    return [(seq, vitals(seq)) for seq in range(first, first + count)]


def decode(data: bytes) -> list[list[object]]:
    header = decode_header(data)
    return decode_body(header, data[HEADER_BYTES : HEADER_BYTES + header.length])


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_records_come_back_after_reopen_in_seq_order_with_every_field(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    batch = rows(5, 3) + rows(10, 2)
    spool.append(batch, watermark=11)
    spool.close()
    again = Spool(tmp_path / "s")
    found = again.open()
    assert (found.max_seq, found.watermark, found.damaged, found.cut_bytes) == (11, 11, [], 0)
    claimed, damaged = again.claim(100, now=0.0)
    assert damaged == []
    assert [e.seq for e in claimed] == [5, 6, 7, 10, 11]
    for stored, (seq, event) in zip(claimed, batch, strict=True):
        assert (stored.seq, stored.id, stored.kind, stored.device, stored.data_json) == (
            seq,
            event.id,
            event.kind,
            event.device,
            event.data_json,
        )
        assert (stored.ts, stored.ts_synced, stored.attempt) == (event.ts, event.ts_synced, 1)


def test_a_segment_goes_once_every_event_in_it_is_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.append(rows(1, 4), watermark=4)
    spool.append(rows(5, 4), watermark=9)
    claimed, _ = spool.claim(100, now=0.0)
    assert [e.seq for e in claimed] == list(range(1, 9))
    assert spool.ack([1, 2, 3, 4, 5, 6, 7, 99]) == [99]
    assert spool.finished() == ([], 0)  # the segment still holds 8
    assert spool.ack([8]) == []
    segments_done, watermark = spool.finished()
    assert watermark == 9  # the highest watermark of what goes: the caller keeps it first
    spool.delete(segments_done)
    assert segments(tmp_path / "s") == []
    assert spool.queued() == 0
    spool.append(rows(10, 1), watermark=10)  # a new segment
    assert len(segments(tmp_path / "s")) == 1


def test_finished_segments_go_whatever_older_ones_still_hold(tmp_path: Path) -> None:
    """One event held back (released far into the future, or never acknowledged) keeps its own
    segment only: later segments go as they are delivered, and claims do not walk them."""
    spool = Spool(tmp_path / "s")
    first = 1
    while len(segments(tmp_path / "s")) < 4:
        spool.append(rows(first, 200), watermark=first + 199)
        first += 200
    claimed, _ = spool.claim(10_000, now=0.0)
    spool.release([1], retry_at=1e9)
    assert spool.ack([e.seq for e in claimed if e.seq != 1]) == []
    done, _ = spool.finished()
    spool.delete(done)
    assert len(segments(tmp_path / "s")) == 1  # the first, for seq 1
    assert len(spool._live) == 1
    assert spool.claim(10, now=0.0) == ([], [])


def test_released_and_lost_link_events_are_claimed_again(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.append(rows(1, 3), watermark=3)
    assert [e.seq for e in spool.claim(2, now=0.0)[0]] == [1, 2]
    assert [e.seq for e in spool.claim(10, now=0.0)[0]] == [3]
    assert spool.release([2, 77], retry_at=10.0) == [77]
    assert spool.claim(10, now=5.0)[0] == []
    assert [e.seq for e in spool.claim(10, now=10.0)[0]] == [2]
    spool.release_all()
    assert [e.seq for e in spool.claim(10, now=0.0)[0]] == [1, 2, 3]


def test_events_in_flight_when_written_stay_in_flight(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.append(rows(1, 3), watermark=3, inflight={2}, retry_at={3: 50.0})
    assert [e.seq for e in spool.claim(10, now=0.0)[0]] == [1]
    assert spool.ack([2]) == []
    assert [e.seq for e in spool.claim(10, now=50.0)[0]] == [3]


def test_segments_roll_over_and_the_oldest_is_evicted_whole(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    first = 1
    while len(segments(tmp_path / "s")) < 3:
        spool.append(rows(first, 400), watermark=first + 399)
        first += 400
    assert spool.disk_bytes == sum(p.stat().st_size for p in segments(tmp_path / "s"))
    oldest = spool.evictable()
    assert oldest is not None
    doomed = spool.doom(oldest)
    assert doomed[0] == 1
    assert doomed == list(range(1, len(doomed) + 1))
    spool.spare_doomed()  # the report's transaction failed: nothing goes
    assert len(segments(tmp_path / "s")) == 3
    spool.doom(oldest)
    spool.drop_doomed()
    assert len(segments(tmp_path / "s")) == 2
    claimed, _ = spool.claim(10, now=0.0)
    assert claimed[0].seq == len(doomed) + 1


def test_unsynchronised_timestamps_are_corrected_in_memory_and_when_read(tmp_path: Path) -> None:
    clock = ManualClock()
    clock.synced = False
    factory = EventFactory(clock, BOOT)
    event = factory.make("telemetry.vitals", {"heart_rate": 60}, None)
    spool = Spool(tmp_path / "s")
    spool.append([(1, event)], watermark=1)
    clock.advance(10)
    wall_now = 1_700_000_000.0
    spool.correct_timestamps(BOOT, wall_now, clock.monotonic_ns())
    (claimed,), _ = spool.claim(1, now=0.0)  # read from disk after the correction
    assert claimed.ts_synced
    assert claimed.ts == "2023-11-14T22:13:10.000Z"  # 10 s before the synchronised now


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=6),
    cut=st.floats(min_value=0.0, max_value=1.0),
)
def test_a_record_torn_at_any_byte_is_cut_off_and_those_before_it_stay(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], cut: float
) -> None:
    directory = tmp_path_factory.mktemp("torn") / "s"
    spool = Spool(directory)
    first = 1
    ends = []
    for size in sizes:
        spool.append(rows(first, size), watermark=first + size - 1)
        first += size
        ends.append((first - 1, sum(p.stat().st_size for p in segments(directory))))
    spool.close()
    (path,) = segments(directory)
    total = path.stat().st_size
    keep = int(total * cut)
    os.truncate(path, keep)
    again = Spool(directory)
    found = again.open()
    whole = [last for last, end in ends if end <= keep]
    expected_last = whole[-1] if whole else 0
    assert found.max_seq == expected_last
    assert found.damaged == []
    # Cut back to the last whole record (a segment left empty is deleted).
    assert (path.stat().st_size if path.exists() else 0) == keep - found.cut_bytes
    assert keep - found.cut_bytes == ([end for _, end in ends if end <= keep] or [0])[-1]
    claimed, _ = again.claim(10_000, now=0.0)
    assert [e.seq for e in claimed] == list(range(1, expected_last + 1))


@given(st.binary(max_size=200))
def test_random_bytes_are_never_taken_for_a_record(data: bytes) -> None:
    try:
        decode(data)
    except SpoolDamage:
        return
    pytest.fail("random bytes decoded as a record")


RECORD = encode_record(rows(1, 5), watermark=5)


@given(st.data())
def test_a_flipped_byte_in_a_record_is_damage(data: st.DataObject) -> None:
    record = bytearray(RECORD)
    index = data.draw(st.integers(min_value=0, max_value=len(record) - 1))
    record[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(SpoolDamage):
        decode(bytes(record))


def three_segments(directory: Path) -> Spool:
    """Seqs 1-3 and 4-6 in the first segment, 7-8 in the second, 20-21 in the third."""
    spool = Spool(directory)
    spool.append(rows(1, 3), watermark=3)
    spool.append(rows(4, 3), watermark=6)
    for first, count in ((7, 2), (20, 2)):
        spool._close_active()  # the next record goes into a segment of its own
        spool.append(rows(first, count), watermark=first + count - 1)
    spool.close()
    return spool


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def first_record_size(path: Path) -> int:
    """The size of the segment's first record (its events' ids make it vary)."""
    return HEADER_BYTES + decode_header(path.read_bytes()).length


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("body of the second record", [(4, 6)]),  # its header names its seqs
        ("header of the second record", [(4, 6)]),  # bounded by the records around it
        ("body of the first record", [(1, 3)]),
        ("header of the first record", [(1, 3)]),
    ],
)
def test_damage_before_the_end_is_reported_and_the_rest_read_on(
    tmp_path: Path, where: str, expected: list[tuple[int, int]]
) -> None:
    directory = tmp_path / "s"
    three_segments(directory)
    first_segment = segments(directory)[0]
    record = 0 if "first" in where else first_record_size(first_segment)
    flip(first_segment, record + (2 if "header" in where else HEADER_BYTES + 2))
    for _ in range(2):  # the segment stays on disk until the loss is reported
        again = Spool(directory)
        found = again.open()
        assert again.resolve_damage(found, top=21) == expected
        assert found.cut_bytes == 0
        assert segments(directory)[0] == first_segment
        again.close()
    claimed, _ = again.claim(100, now=0.0)
    lost = {s for a, b in expected for s in range(a, b + 1)}
    assert [e.seq for e in claimed] == [
        s for s in [1, 2, 3, 4, 5, 6, 7, 8, 20, 21] if s not in lost
    ]


def test_damage_in_the_middle_of_the_last_segment_is_not_taken_for_a_torn_append(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "s"
    spool = Spool(directory)
    for first in (1, 6, 11):
        spool.append(rows(first, 5), watermark=first + 4)
    spool.close()
    (path,) = segments(directory)
    size = path.stat().st_size
    flip(path, first_record_size(path) + HEADER_BYTES + 3)
    again = Spool(directory)
    found = again.open()
    assert again.resolve_damage(found, top=15) == [(6, 10)]
    assert found.cut_bytes == 0
    assert path.stat().st_size == size  # nothing cut
    assert [e.seq for e in again.claim(100, now=0.0)[0]] == [1, 2, 3, 4, 5, 11, 12, 13, 14, 15]


def test_a_record_that_cannot_be_read_when_claimed_stays_until_its_loss_is_reported(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "s"
    spool = Spool(directory)
    spool.append(rows(1, 3), watermark=3)
    spool.append(rows(4, 3), watermark=6)
    flip(segments(directory)[0], HEADER_BYTES + 1)  # after open: found when claimed
    claimed, damaged = spool.claim(100, now=0.0)
    assert damaged == [(1, 3)]
    assert [e.seq for e in claimed] == [4, 5, 6]
    assert spool.claim(100, now=0.0) == ([], [])  # skipped, not reported twice
    spool.ack([4, 5, 6])
    assert spool.finished() == ([], 0)  # not before the report
    spool.forget_unreadable()
    done, watermark = spool.finished()
    assert watermark == 6
    spool.delete(done)
    assert segments(directory) == []


def test_read_spool_lists_every_readable_event(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.append(rows(3, 2), watermark=4)
    assert [event[0] for event in read_spool(tmp_path / "s")] == [3, 4]
    assert read_spool(tmp_path / "missing") == []


# -- the store around it ---------------------------------------------------------------------


def test_telemetry_written_at_the_window_end_goes_to_the_spool_the_rest_to_the_database(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.store.open()
    device_event = rig.factory.make("device.battery", {"level": 50, "low": False}, "btn-00000001")
    seqs = [rig.store.next_seq() for _ in range(3)]
    batch = HotBatch(
        rows=[(seqs[1], device_event), (seqs[0], rig.telemetry()), (seqs[2], rig.telemetry())],
        watermark=seqs[2],
        epoch=0,
    )
    rig.store.insert_hot(batch)
    assert batch.written == 3
    spooled = read_spool(tmp_path / "outbox.sqlite3.spool")
    assert [event[0] for event in spooled] == [seqs[0], seqs[2]]
    stats = rig.store.stats()
    assert stats.queued == {"device": 1, "telemetry": 2}
    assert [e.seq for e in rig.store.claim(10)] == [seqs[1], seqs[0], seqs[2]]
    rig.store.close()


def test_a_crash_after_the_spool_write_reports_only_what_is_not_on_disk(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.store.open()
    seqs = [rig.store.next_seq() for _ in range(6)]
    # 1-3 spooled; 4 delivered from memory (never written); 5-6 in memory when it crashed.
    rig.store.insert_hot(
        HotBatch(rows=[(s, rig.telemetry()) for s in seqs[:3]], watermark=seqs[2], epoch=0)
    )
    crashed = Rig(tmp_path / "outbox.sqlite3")  # the first never closes: a crash
    report = crashed.store.open()
    assert report.loss_reason == "store_rolled_back"
    lost = {s for a, b in report.lost_ranges for s in range(a, b + 1)}
    assert not lost & set(seqs[:3])
    assert set(seqs[3:]) <= lost
    assert [e.seq for e in crashed.store.claim(10)] == seqs[:3]


async def test_an_outage_keeps_telemetry_in_the_spool_and_delivers_it_in_order(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "outbox.sqlite3")
    outbox = Outbox(rig.store, group_commit_s=600)
    await outbox.open()
    for n in range(30):
        await outbox.put(rig.telemetry(60 + n))
    await outbox.flush()  # the window's end, with the uplink down
    assert len(read_spool(tmp_path / "outbox.sqlite3.spool")) == 30
    events, _ = await outbox.claim(100)
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert len(events) == 30
    await outbox.ack([e.seq for e in events])
    assert (await outbox.stats()).queued.get("telemetry", 0) == 0
    assert segments(tmp_path / "outbox.sqlite3.spool") == []
    await outbox.close()


def spool_six_segments(rig: Rig) -> Path:
    for _ in range(6):  # six segments of telemetry kept while the uplink is down
        seqs = [rig.store.next_seq() for _ in range(20)]
        rig.store.insert_hot(
            HotBatch(rows=[(s, rig.telemetry()) for s in seqs], watermark=seqs[-1], epoch=0)
        )
        rig.store._spool._close_active()
    return rig.path.with_name(rig.path.name + ".spool")


def test_on_a_full_disk_a_write_to_the_database_does_not_evict_the_spool(tmp_path: Path) -> None:
    """Evicting the spool's segments frees nothing for the database's pages: a device event
    over the database's cap on a full disk leaves the spool alone."""
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.store.open()
    directory = spool_six_segments(rig)
    db = rig.store._require()
    # The disk is found full (as DiskGuard.make_room does): the database may not grow.
    rig.store._disk.full_cap = int(db.execute("PRAGMA page_count").fetchone()[0]) * 4096
    rig.store.insert([rig.factory.make("device.battery", {"level": 50, "low": False}, None)])
    assert len(segments(directory)) == 6
    assert rig.store.stats().queued["telemetry"] == 120


def test_a_segment_is_deleted_only_once_its_watermark_is_in_the_database(tmp_path: Path) -> None:
    """Delivered, the spool's segment goes; the watermark its record carried is written to
    the database first. If that write fails the segment stays, so a crash then reports none of
    the delivered events as lost."""
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.store.open()
    seqs = [rig.store.next_seq() for _ in range(5)]
    rig.store.insert_hot(
        HotBatch(rows=[(s, rig.telemetry()) for s in seqs], watermark=seqs[-1], epoch=0)
    )
    claimed = rig.store.claim(10)

    def fails(_watermark: int) -> None:
        raise OSError("disk I/O error")

    raise_watermark = rig.store._raise_watermark
    rig.store._raise_watermark = fails  # type: ignore[method-assign]
    rig.store.ack([e.seq for e in claimed])
    directory = tmp_path / "outbox.sqlite3.spool"
    assert len(segments(directory)) == 1  # kept: its watermark is not yet in the database
    crashed = Rig(tmp_path / "outbox.sqlite3")  # a crash now
    report = crashed.store.open()
    lost = {s for a, b in report.lost_ranges for s in range(a, b + 1)}
    assert not lost & set(seqs)
    crashed.store.close()
    rig.store._raise_watermark = raise_watermark  # type: ignore[method-assign]
    again = Rig(tmp_path / "outbox.sqlite3")
    again.store.open()
    assert again.store.ack([e.seq for e in again.store.claim(10)]) == []
    assert segments(directory) == []
    assert again.store._last_seq() >= seqs[-1]


def test_a_large_batch_is_records_whose_watermarks_stay_below_the_later_ones(
    tmp_path: Path,
) -> None:
    """Written in one go, a power cut may keep the first record of a batch and lose the next:
    the first's watermark then promises nothing about the lost seqs."""
    directory = tmp_path / "s"
    spool = Spool(directory)
    count = RECORD_EVENTS * 2 + 10
    spool.append(rows(1, count), watermark=count + 5)
    spool.close()
    (path,) = segments(directory)
    first = decode_header(path.read_bytes())
    assert (first.first, first.last, first.watermark) == (1, RECORD_EVENTS, RECORD_EVENTS)
    os.truncate(path, HEADER_BYTES + first.length)  # only the first record survived
    found = Spool(directory).open()
    assert (found.max_seq, found.watermark) == (RECORD_EVENTS, RECORD_EVENTS)


def test_a_finished_segment_kept_for_a_while_takes_no_new_records(tmp_path: Path) -> None:
    """Delivered whole, the active segment is closed: telemetry written while it waits for its
    deletion goes to a new one, which its deletion leaves alone."""
    directory = tmp_path / "s"
    spool = Spool(directory)
    spool.append(rows(1, 3), watermark=3)
    spool.ack([e.seq for e in spool.claim(10, now=0.0)[0]])
    done, _ = spool.finished()  # (its watermark could not be written yet: not deleted)
    spool.append(rows(4, 3), watermark=6)
    assert len(segments(directory)) == 2
    spool.delete(done)
    assert [e.seq for e in spool.claim(10, now=0.0)[0]] == [4, 5, 6]
    assert spool.finished() == ([], 0)


def test_a_record_damaged_at_the_end_after_a_clean_close_is_reported(tmp_path: Path) -> None:
    """The last record of the spool, whole when the gateway closed cleanly, damaged since: not
    a torn append (every append had completed), so its seqs are reported."""
    rig = Rig(tmp_path / "outbox.sqlite3")
    rig.store.open()
    seqs = [rig.store.next_seq() for _ in range(3)]
    rig.store.insert_hot(
        HotBatch(rows=[(s, rig.telemetry()) for s in seqs], watermark=seqs[-1], epoch=0)
    )
    battery = rig.factory.make("device.battery", {"level": 50, "low": False}, None)
    later = rig.store.next_seq()
    rig.store.insert_hot(HotBatch(rows=[(later, battery)], watermark=later, epoch=0))
    rig.store.close()
    (path,) = segments(tmp_path / "outbox.sqlite3.spool")
    flip(path, HEADER_BYTES + 2)
    again = Rig(tmp_path / "outbox.sqlite3")
    again.store.open()
    reports = [
        json.loads(e.data_json) for e in again.store.claim(100) if e.kind == "gateway.dropped"
    ]
    assert [(r["seq_ranges"], r["reason"]) for r in reports] == [
        ([[seqs[0], seqs[-1]]], "event_corrupt")
    ]


# -- events kept as their wire JSON ------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(
    seq=st.integers(min_value=1, max_value=2**62),
    event_id=st.text(st.characters(whitelist_categories=("Ll", "Nd"), whitelist_characters="-")),
    device=st.none() | TEXT,
    data=st.dictionaries(TEXT, st.integers() | st.floats(allow_nan=False) | TEXT, max_size=4),
    synced=st.booleans(),
    attempt=st.integers(min_value=1, max_value=99),
)
def test_an_event_read_back_from_its_wire_json_is_the_same_event(
    *,
    seq: int,
    event_id: str,
    device: str | None,
    data: dict[str, object],
    synced: bool,
    attempt: int,
) -> None:
    event = StoredEvent(
        seq,
        event_id,
        "telemetry.vitals",
        device,
        json.dumps(data, separators=(",", ":")),
        "2026-12-07T10:00:00.123Z",
        synced,
        attempt,
    )
    assert StoredEvent.from_wire(event.wire_json()) == event


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{}",
        "[1]",
        '{"id":"a"}',
        '{"id":"a","seq":"1","kind":"k","ts":"t","ts_synced":true,'
        '"device":null,"data":{},"attempt":1}',
        '{"seq":1,"id":"a","kind":"k","ts":"t",'
        '"ts_synced":true,"device":null,"data":{},"attempt":1}',
    ],
)
def test_what_is_not_an_events_wire_json_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"wire JSON|Expecting|Extra data"):
        StoredEvent.from_wire(text)


def write_first_format(directory: Path, rows_: list[tuple[int, NewEvent]], watermark: int) -> None:
    """A segment holding one record of the first format (magic CBS1, the events as rows), as
    an earlier version wrote it."""
    body = zlib.compress(
        json.dumps(
            [
                [s, e.id, e.kind, e.device, e.data_json, e.ts, e.ts_synced, e.mono_ns, e.boot_id]
                for s, e in rows_
            ],
            separators=(",", ":"),
        ).encode()
    )
    seqs = [s for s, _ in rows_]
    header = struct.pack(
        "<4sIQQQII",
        b"CBS1",
        len(body),
        min(seqs),
        max(seqs),
        watermark,
        len(rows_),
        zlib.crc32(body),
    )
    directory.mkdir(mode=0o700)
    (directory / f"{1:020d}.seg").write_bytes(header + struct.pack("<I", zlib.crc32(header)) + body)


def test_records_of_the_first_format_are_still_read_and_corrected(tmp_path: Path) -> None:
    clock = ManualClock()
    clock.synced = False
    factory = EventFactory(clock, BOOT)
    batch = [(seq, factory.make("telemetry.vitals", {"steps": seq}, None)) for seq in (3, 4, 7)]
    write_first_format(tmp_path / "s", batch, watermark=7)
    spool = Spool(tmp_path / "s")
    found = spool.open()
    assert (found.max_seq, found.watermark, found.damaged) == (7, 7, [])
    clock.advance(10)
    assert spool.correct_timestamps(BOOT, 1_700_000_000.0, clock.monotonic_ns()) == 3
    claimed, _ = spool.claim(10, now=0.0)
    assert [(e.seq, e.data_json, e.ts_synced) for e in claimed] == [
        (seq, event.data_json, True) for seq, event in batch
    ]
    assert claimed[0].ts == "2023-11-14T22:13:10.000Z"
    assert [event[0] for event in read_spool(tmp_path / "s")] == [3, 4, 7]
    spool.append(rows(8, 2), watermark=9)  # new records in the current format beside it
    assert spool.ack([3, 4, 7]) == []
    assert [e.seq for e in spool.claim(10, now=0.0)[0]] == [8, 9]


def test_records_of_the_second_format_are_still_read_and_name_no_database_top(
    tmp_path: Path,
) -> None:
    # CBS2: the header of CBS3 without the database's top (8 bytes shorter), the same body.
    batch = rows(1, 3)
    current = encode_record(batch, watermark=3, db_top=99)
    header = decode_header(current)
    assert (header.magic, header.db_top) == (b"CBS3", 99)
    fields = struct.unpack("<4sIQQQQII", current[: header.size - 4])
    old = struct.pack("<4sIQQQII", b"CBS2", *fields[1:5], *fields[6:])
    (tmp_path / "s").mkdir(mode=0o700)
    (tmp_path / "s" / f"{1:020d}.seg").write_bytes(
        old + struct.pack("<I", zlib.crc32(old)) + current[header.size :]
    )
    spool = Spool(tmp_path / "s")
    found = spool.open()
    assert (found.max_seq, found.watermark, found.db_top, found.damaged) == (3, 3, 0, [])
    claimed, _ = spool.claim(10, now=0.0)
    assert [e.seq for e in claimed] == [1, 2, 3]
    spool.append(rows(4, 1), watermark=4)  # a record of the current format after it
    assert [e.seq for e in spool.claim(10, now=0.0)[0]] == [4]


def test_claims_hand_out_stretches_of_wire_json_in_seq_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    batch = rows(1, 300)
    spool.append(batch, watermark=300)  # two records: 256 and 44 events
    runs, _ = spool.claim_runs(280, now=0.0)
    assert [(len(run), run.run_seqs()[0]) for run in runs] == [(256, 1), (24, 257)]
    wires = [event.stored(seq).wire_json() for seq, event in batch]
    assert [run.json() for run in runs] == [",".join(wires[:256]), ",".join(wires[256:280])]
    assert [e.seq for run in runs for e in run.events()] == list(range(1, 281))
    assert spool.release([5, 6, 300], retry_at=0.0) == []
    assert [run.run_seqs() for run in spool.claim_runs(100, now=0.0)[0]] == [
        [5, 6],
        list(range(281, 301)),
    ]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=4),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["claim", "ack", "release", "lost"]),
            st.integers(min_value=0, max_value=400),
            st.randoms(use_true_random=False),
        ),
        max_size=25,
    ),
)
def test_claims_acks_and_releases_in_any_order_deliver_every_event(
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    steps: list[tuple[str, int, random.Random]],
) -> None:
    """Against a model: an event is claimed only when it is neither in flight nor acknowledged,
    each claim in seq order; acknowledged, it is never claimed again; in the end every event is
    delivered and every segment goes."""
    directory = tmp_path_factory.mktemp("spool") / "s"
    spool = Spool(directory)
    first = 1
    for size in sizes:
        spool.append(rows(first, size), watermark=first + size - 1)
        first += size
    everything = set(range(1, first))
    flying: set[int] = set()
    acked: set[int] = set()
    for op, n, rng in steps:
        if op == "claim":
            got = [e.seq for e in spool.claim(n, now=0.0)[0]]
            assert got == sorted(got)
            assert len(got) == min(n, len(everything - flying - acked))
            assert not set(got) & (flying | acked)
            flying |= set(got)
        elif op == "ack":
            chosen = sorted(rng.sample(sorted(flying), min(n, len(flying))))
            assert spool.ack(chosen) == []
            flying -= set(chosen)
            acked |= set(chosen)
        elif op == "release":
            chosen = rng.sample(sorted(flying), min(n, len(flying)))
            assert spool.release(chosen, retry_at=0.0) == []
            flying -= set(chosen)
        else:
            spool.release_all()
            flying = set()
        assert spool.queued() == len(everything - acked)
    spool.release_all()
    rest = [e.seq for e in spool.claim(10**6, now=0.0)[0]]
    assert rest == sorted(everything - acked)
    assert spool.ack(rest) == []
    done, _ = spool.finished()
    spool.delete(done)
    assert segments(directory) == []


def test_events_read_before_the_clock_sync_are_corrected_in_memory(tmp_path: Path) -> None:
    """A record read (claimed) while the clock was not synchronised: its events' JSON is
    rewritten by the correction, those of other boots are left as they are."""
    clock = ManualClock()
    clock.synced = False
    mine = EventFactory(clock, BOOT).make("telemetry.vitals", {"heart_rate": 60}, None)
    other = EventFactory(clock, "other-boot").make("telemetry.vitals", {"heart_rate": 61}, None)
    spool = Spool(tmp_path / "s")
    spool.append([(1, mine), (2, other)], watermark=2)
    spool.close()
    again = Spool(tmp_path / "s")
    again.open()
    before = again.claim(10, now=0.0)[0]
    assert [e.ts_synced for e in before] == [False, False]
    again.release_all()
    clock.advance(10)
    assert again.correct_timestamps(BOOT, 1_700_000_000.0, clock.monotonic_ns()) == 1
    after = again.claim(10, now=0.0)[0]
    assert [(e.seq, e.ts_synced) for e in after] == [(1, True), (2, False)]
    assert after[0].ts == "2023-11-14T22:13:10.000Z"
    assert after[1] == before[1]
    assert (after[0].id, after[0].data_json) == (mine.id, mine.data_json)
