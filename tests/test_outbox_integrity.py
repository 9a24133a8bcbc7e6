"""The outbox's integrity: seq after a lost -wal, damaged rows, command ids, file modes."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.app.commands import CommandProcessor
from gateway.core.clock import ManualClock
from gateway.core.errors import StoreError
from gateway.core.events import KIND_DATA, StoredEvent
from gateway.core.kinds import event_class
from gateway.store.alarms import AlarmTiming
from gateway.store.integrity import DAMAGED_ROW_REASON, row_crc, row_damage
from gateway.store.outbox import Outbox
from gateway.store.sink import EventFactory, OutboxSink
from gateway.store.sqlite import HotBatch, SqliteStore
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from tests.gateway_rig import kinds, running_gateway, wait_platform
from tests.support.daemon import GatewayProcess, gateway_config
from tests.support.reliability import record, scaled

BOOT = "boot-1"
REPO = Path(__file__).resolve().parents[1]
DAY_S = 24 * 3600.0


def make_store(
    path: Path, clock: ManualClock | None = None, *, max_bytes: int = 10**9
) -> tuple[SqliteStore, EventFactory]:
    clock = clock or ManualClock()
    factory = EventFactory(clock, BOOT)
    store = SqliteStore(
        path,
        max_bytes=max_bytes,
        timing=AlarmTiming(),
        make_dropped=lambda count, ranges, reason: factory.make(
            "gateway.dropped", {"count": count, "seq_ranges": ranges, "reason": reason}
        ),
        now=clock.wall,
        monotonic_ns=clock.monotonic_ns,
        boot_id=BOOT,
        clock_synced=clock.is_synced,
    )
    return store, factory


def telemetry(factory: EventFactory, hr: int = 70) -> Any:
    return factory.make("telemetry.vitals", {"heart_rate": hr}, "watch-AABBCCDDEEFF")


def alarm(factory: EventFactory) -> Any:
    return factory.make(
        "alarm.button", {"press": "short", "battery": 80, "rssi": -50}, "btn-00000001"
    )


def remove_wal(path: Path) -> None:
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


# ------------------------------------------------------------------ seq after a lost -wal file

# A gateway killed (SIGKILL) after ``before`` events were checkpointed into the database file
# and ``after`` more were committed to the -wal file only (the checkpointer had not run yet).
_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    from pathlib import Path
    from tests.test_outbox_integrity import make_store, telemetry

    path, before, after = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory) for _ in range(before)])
    checkpointer = sqlite3.connect(path)
    checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    checkpointer.close()
    for _ in range(after):
        store.insert([telemetry(factory)])
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def killed_writer(path: Path, before: int, after: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path), str(before), str(after)],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -9, done.stderr.decode(errors="replace")[-2000:]
    assert Path(f"{path}-wal").exists(), "the killed writer left no -wal file"


@pytest.mark.reliability
def test_seq_is_never_reused_after_the_wal_is_lost(tmp_path: Path) -> None:
    rng = random.Random(9)
    cycles = scaled(3, 20)
    path = tmp_path / "outbox.sqlite3"
    issued = 0  # every seq the writers committed
    for _ in range(cycles):
        before, after = rng.randint(1, 50), rng.randint(1, 300)
        killed_writer(path, before, after)
        issued = max(issued, _last_seq_with_wal(path))
        remove_wal(path)  # the -wal file is lost; the database file alone is left
        store, factory = make_store(path)
        report = store.open()
        assert report.loss_reason == "store_rolled_back"
        (first, last) = report.lost_ranges[-1]
        assert first <= issued - after + 1 and last >= issued, "the gap is not explained"
        (seq,) = store.insert([telemetry(factory)])
        assert seq > issued, f"seq {seq} issued again (the lost -wal held up to {issued})"
        issued = seq
        store.close()
    record(
        "disk",
        "-wal file lost after kill -9 (database file alone restored)",
        count=cycles,
        lost=0,
        outcome="no seq reused; the possible loss reported as gateway.dropped store_rolled_back",
    )


# A gateway killed (SIGKILL) after an alarm committed to the -wal file only, then a window of
# telemetry appended to the spool with a watermark that counts the alarm as on disk.
_KILLED_AFTER_A_SPOOLED_WINDOW = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    from pathlib import Path
    from gateway.store.sqlite import HotBatch
    from tests.test_outbox_integrity import alarm, make_store, telemetry

    path = Path(sys.argv[1])
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory) for _ in range(5)])
    checkpointer = sqlite3.connect(path)
    checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    checkpointer.close()
    (seq,) = store.insert([alarm(factory)])
    print("alarm-seq", seq, flush=True)
    seqs = [store.next_seq() for _ in range(3)]
    store.insert_hot(
        HotBatch(rows=[(s, telemetry(factory)) for s in seqs], watermark=seqs[-1], epoch=0)
    )
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def killed_after_a_spooled_window(path: Path) -> int:
    """Run ``_KILLED_AFTER_A_SPOOLED_WINDOW`` on ``path``; the seq of its alarm."""
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_A_SPOOLED_WINDOW, str(path)],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -9, done.stderr.decode(errors="replace")[-2000:]
    words = done.stdout.split()
    return int(words[words.index(b"alarm-seq") + 1])


def abandon(store: SqliteStore) -> None:
    """Leave the store as a killed process does: no clean close, nothing more written."""
    store._require().close()
    store._db = None


@pytest.mark.parametrize("wal", ["kept", "lost"])
def test_a_window_spooled_after_commits_the_wal_lost_does_not_hide_them(
    tmp_path: Path, wal: str
) -> None:
    # The spool's record counted the alarm (in the -wal file only) as on disk. With the -wal
    # file lost, its watermark must not hide the alarm's seq: the gap is reported. With it kept,
    # nothing is.
    path = tmp_path / "outbox.sqlite3"
    alarm_seq = killed_after_a_spooled_window(path)
    if wal == "lost":
        remove_wal(path)
    for restart in range(2):  # a crash before the report is written: reported again
        store, factory = make_store(path)
        with capture_logs() as logs:
            report = store.open()
        lost = {seq for first, last in report.lost_ranges for seq in range(first, last + 1)}
        if wal == "lost":
            assert alarm_seq in lost, (restart, report.lost_ranges)
            assert any(entry["event"] == "store_commits_lost" for entry in logs)
        else:
            assert alarm_seq not in lost, report.lost_ranges
            assert store.claim(10)[0].seq == alarm_seq  # the alarm first, from the database
        store.insert([alarm(factory)])  # an alarm stored before the report of the loss
        abandon(store)  # killed again: no clean close
    store, factory = make_store(path)
    report = store.open()
    # The daemon writes the report of the loss, then its watermark passes it.
    store.insert([store.dropped_event(1, report.lost_ranges, "store_rolled_back")])
    store.insert_hot(HotBatch(rows=[], watermark=store.last_handed_out, epoch=0))
    abandon(store)  # killed once more
    store, _ = make_store(path)
    # Written with the report, the loss is not found again: only the seqs reserved above it.
    assert all(first > alarm_seq + 1 for first, _ in store.open().lost_ranges)


def _vitals(store: SqliteStore, factory: EventFactory, count: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    return [
        (
            store.next_seq(),
            factory.make(
                "telemetry.vitals",
                {"heart_rate": rng.randint(40, 200), "rr_ms": [rng.randint(300, 1200)] * 20},
                "watch-AABBCCDDEEFF",
            ),
        )
        for _ in range(count)
    ]


def _crashed_copy(path: Path, into: Path) -> Path:
    """The store's files as a crash that lost the -wal file leaves them (the process still runs)."""
    into.mkdir()
    shutil.copyfile(path, into / path.name)
    for suffix in (".seqmark", ".reserve"):
        if Path(f"{path}{suffix}").exists():
            shutil.copyfile(f"{path}{suffix}", into / f"{path.name}{suffix}")
    shutil.copytree(f"{path}.spool", into / f"{path.name}.spool")
    return into / path.name


@pytest.mark.parametrize("by", ["database_write", "spool_write"])
def test_an_evictions_report_is_not_lost_with_the_wal(tmp_path: Path, by: str) -> None:
    # The quota evicts a window of the spool; the report of its events is committed, the
    # segment deleted. Records after it count those events as on disk: the -wal file lost, the
    # report must still be there, or the loss found again.
    path = tmp_path / "outbox.sqlite3"
    store, factory = make_store(path, max_bytes=1_100_000)
    store.open()
    window = _vitals(store, factory, 10_000, seed=1)
    store.insert_hot(HotBatch(rows=window, watermark=window[-1][0], epoch=0))
    later = _vitals(store, factory, 10, seed=2)
    store.insert_hot(HotBatch(rows=later, watermark=later[-1][0], epoch=0))
    checkpointer = sqlite3.connect(path)
    checkpointer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    checkpointer.close()
    if by == "database_write":
        command = {"who": "x" * 1000, "what": "y", "why": None, "cmd_id": "c"}
        for _ in range(8):
            store.insert([factory.make("audit.command", command, None) for _ in range(50)])
    else:
        more = _vitals(store, factory, 10_000, seed=3)
        store.insert_hot(HotBatch(rows=more, watermark=more[-1][0], epoch=0))
    spool = Path(f"{path}.spool")
    assert len(list(spool.iterdir())) < 3, "the quota evicted nothing: no test"
    copy = _crashed_copy(path, tmp_path / "crashed")
    abandon(store)
    store, _ = make_store(copy, max_bytes=1_100_000)
    report = store.open()
    explained = {seq for first, last in report.lost_ranges for seq in range(first, last + 1)}
    for (data,) in store._require().execute("SELECT data FROM events WHERE kind='gateway.dropped'"):
        for first, last in json.loads(data)["seq_ranges"]:
            explained.update(range(first, last + 1))
    present = set(store._spool.seqs_above(0))
    unexplained = [seq for seq, _ in window if seq not in explained | present]
    assert not unexplained, f"{len(unexplained)} seqs neither on disk nor reported"


def test_a_second_crash_before_the_report_finds_the_lost_commits_again(tmp_path: Path) -> None:
    # After the -wal file was lost, the spool's telemetry is delivered and acknowledged before
    # the report of the loss is written: the records' watermarks must not pass into the
    # database's, or a second crash would no longer find the lost alarm.
    path = tmp_path / "outbox.sqlite3"
    alarm_seq = killed_after_a_spooled_window(path)
    remove_wal(path)
    store, _ = make_store(path)
    store.open()
    delivered = store.claim(100)
    assert delivered
    store.ack([event.seq for event in delivered])
    abandon(store)  # killed before the report is written
    store, _ = make_store(path)
    report = store.open()
    assert any(first <= alarm_seq <= last for first, last in report.lost_ranges), report.lost_ranges


_TOP_SEQ = (
    "SELECT MAX(value, (SELECT COALESCE(MAX(seq), 0) FROM events)) FROM meta WHERE key='last_seq'"
)


def _last_seq_with_wal(path: Path) -> int:
    """The last seq committed, read from a copy of the database and its -wal file."""
    copy = path.with_name("peek.sqlite3")
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
    db = sqlite3.connect(copy)
    try:
        return int(db.execute(_TOP_SEQ).fetchone()[0])
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)


def _last_seq_of_the_file_alone(path: Path) -> int:
    copy = path.with_name("alone.sqlite3")
    shutil.copyfile(path, copy)
    db = sqlite3.connect(copy)
    try:
        return int(db.execute(_TOP_SEQ).fetchone()[0])
    except sqlite3.OperationalError:  # not even the schema was checkpointed yet
        return 0
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)


def _wal_ahead(path: Path) -> bool:
    """The -wal file holds commits the database file alone does not have."""
    if not Path(f"{path}-wal").exists():
        return False
    try:
        return 0 < _last_seq_of_the_file_alone(path) < _last_seq_with_wal(path)
    except (OSError, sqlite3.Error):  # caught while it was being created
        return False


@pytest.mark.reliability
def test_daemon_killed_and_its_wal_lost_reuses_no_seq(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    state = tmp_path / "state"
    path = state / "outbox.sqlite3"
    flood = {"telemetry_interval_s": 0.01, "burst": 4, "alarm_interval_s": 3600, "seed": 9}
    daemon = GatewayProcess(gateway_config(tmp_path, mosquitto, sim=flood), tmp_path / "gw.log")
    # The broker down: the flood is not delivered, so its windows are written.
    mosquitto.stop()
    try:
        for _ in range(5):  # until the kill leaves commits in the -wal file only
            daemon.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not _wal_ahead(path):
                time.sleep(0.05)
            daemon.kill()
            if _wal_ahead(path):
                break
        else:
            pytest.fail("every kill found the -wal file checkpointed")
        remove_wal(path)
        mosquitto.start()
        starts = len(kinds(platform, "gateway.started"))
        daemon = GatewayProcess(gateway_config(tmp_path, mosquitto), tmp_path / "gw.log")
        daemon.start()

        def explained(p: PlatformClient) -> set[int]:
            return {
                seq
                for event in kinds(p, "gateway.dropped")
                if event["data"]["reason"] == "store_rolled_back"
                for first, last in event["data"]["seq_ranges"]
                for seq in range(first, last + 1)
            }

        def accounted(p: PlatformClient) -> bool:
            if len(kinds(p, "gateway.started")) <= starts:  # the new start's report is needed
                return False
            seen = set(p.seq_ids("gw-a"))
            gap = explained(p)
            return bool(gap) and set(range(1, max(seen) + 1)) <= seen | gap

        try:
            platform.wait_for(accounted, 30, "every seq delivered or explained")
        except TimeoutError as exc:
            seen = set(platform.seq_ids("gw-a"))
            unexplained = sorted(
                set(range(1, max(seen, default=0) + 1)) - seen - explained(platform)
            )
            raise AssertionError(
                f"seqs neither delivered nor explained: {unexplained[:50]}"
            ) from exc
        assert daemon.terminate() == 0, daemon.log_text()[-3000:]
    finally:
        daemon.close()
    forked = {seq: ids for seq, ids in platform.seq_ids("gw-a").items() if len(ids) > 1}
    assert not forked, f"seqs issued again with new ids: {sorted(forked)[:10]}"
    record(
        "disk",
        "daemon killed under a flood, then its -wal file lost",
        count=1,
        lost=0,
        outcome="no seq reused; the gap reported as gateway.dropped store_rolled_back",
    )


def test_kill_with_the_wal_intact_reports_only_the_seqs_not_on_disk(tmp_path: Path) -> None:
    # Seqs of events kept in memory die with the process: after a crash every seq above those
    # stored, up to the reserved bound, is reported; none that is on disk.
    path = tmp_path / "outbox.sqlite3"
    killed_writer(path, 20, 30)
    bound = int(Path(f"{path}.seqmark").read_text().split()[0])
    store, factory = make_store(path)
    report = store.open()
    assert (report.loss_reason, report.lost_ranges) == ("store_rolled_back", [(51, bound)])
    assert store.insert([telemetry(factory)]) == [bound + 1]


def test_kill_then_another_tool_reading_the_store_loses_no_row(tmp_path: Path) -> None:
    # A tool that opens the database after the crash (sqlite3, a status command) checkpoints the
    # -wal file into it and deletes it on close: no row is lost, none is reported.
    path = tmp_path / "outbox.sqlite3"
    killed_writer(path, 20, 30)
    db = sqlite3.connect(path)
    assert db.execute(_TOP_SEQ).fetchone()[0] == 50
    db.close()
    assert not Path(f"{path}-wal").exists()
    store, factory = make_store(path)
    report = store.open()
    assert all(first > 50 for first, _ in report.lost_ranges)
    (seq,) = store.insert([telemetry(factory)])
    assert seq > report.lost_ranges[-1][1]


def test_clean_restart_leaves_no_gap_and_an_older_copy_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory) for _ in range(10)])
    store.close()
    shutil.copyfile(path, tmp_path / "copy")  # a backup taken at seq 10
    store, factory = make_store(path)
    report = store.open()
    assert report.lost_ranges == []
    assert store.insert([telemetry(factory) for _ in range(5)]) == [11, 12, 13, 14, 15]
    store.close()
    shutil.copyfile(tmp_path / "copy", path)  # restored: seqs 11..15 are gone from it
    store, factory = make_store(path)
    report = store.open()
    # Closed cleanly: the mark's last seq is exact, so the range is too.
    assert (report.loss_reason, report.lost_ranges) == ("store_rolled_back", [(11, 15)])
    assert store.insert([telemetry(factory)]) == [16]


def test_a_mark_written_before_the_state_was_kept_is_still_honoured(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory) for _ in range(3)])
    store.close()
    Path(f"{path}.seqmark").write_text("5000\n")  # the format of earlier versions
    store, factory = make_store(path)
    assert store.open().lost_ranges == []
    assert store.insert([telemetry(factory)]) == [4]
    store.close()
    path.unlink()
    store, factory = make_store(path)
    report = store.open()
    assert report.loss_reason == "store_missing" and report.lost_ranges[-1][1] >= 5000


def test_a_seq_mark_that_cannot_be_rewritten_does_not_stop_the_store(tmp_path: Path) -> None:
    # A full disk: the mark's temporary file cannot be made (here: a directory in its way).
    path = tmp_path / "outbox.sqlite3"
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory) for _ in range(3)])
    store.close()
    Path(f"{path}.seqmark.tmp").mkdir()
    store, factory = make_store(path)
    with capture_logs() as logs:
        assert store.open().lost_ranges == []
    assert any(entry["event"] == "seq_mark_not_written" for entry in logs)
    assert store.insert([telemetry(factory)]) == [4]
    # noted in place: a crash now is not taken for a clean close
    assert Path(f"{path}.seqmark").read_text().split()[1:] == ["open", f"{3:020d}"]


def test_a_seq_bound_that_could_not_be_written_is_written_by_the_next_insert(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory)])
    bound = int(Path(f"{path}.seqmark").read_text().split()[0])
    Path(f"{path}.seqmark.tmp").mkdir()  # the next bound cannot be written
    with pytest.raises(OSError):  # noqa: PT011 - whatever the filesystem says
        store.insert([telemetry(factory) for _ in range(bound)])
    Path(f"{path}.seqmark.tmp").rmdir()
    noted = Path(f"{path}.seqmark").stat().st_ino
    seqs = store.insert([telemetry(factory) for _ in range(bound)])
    assert int(Path(f"{path}.seqmark").read_text().split()[0]) >= seqs[-1]
    # written anew (fsync, rename), not only noted in place without fsync after the commit
    assert Path(f"{path}.seqmark").stat().st_ino != noted
    store.close()


# ------------------------------------------------------------------ damaged rows


def _stored(event: Any, seq: int = 1, attempt: int = 1) -> tuple[Any, ...]:
    """A row as ``claim`` reads it (``_CLAIM_COLUMNS``), with its checksum."""
    crc = row_crc(event.id, event.kind, event.device, event.data_json)
    return (seq, event.id, event.kind, event.device, event.data_json, event.ts, 1, attempt, crc)


def _wire(row: tuple[Any, ...]) -> str:
    seq, event_id, kind, device, data, ts, synced, attempt, _ = row
    return StoredEvent(seq, event_id, kind, device, data, ts, bool(synced), attempt).wire_json()


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(name)

    return json.loads(text, parse_constant=refuse)


_FACTORY = EventFactory(ManualClock(), BOOT)
_EVENTS = st.sampled_from(
    [
        _FACTORY.make("telemetry.vitals", {"heart_rate": 70, "rr_ms": [812.5, 790.0]}, "watch-A1"),
        _FACTORY.make("telemetry.vitals", {"spo2": 97.5, "contact": True}, "watch-AABBCCDDEEFF"),
        _FACTORY.make("alarm.button", {"press": "long", "battery": None, "rssi": -71}, "btn-01"),
        _FACTORY.make("alarm.cancelled", {"alarm_id": None}, "btn-00000001"),
        _FACTORY.make("device.online", {"reason": "rssi", "last_seen": None}, "btn-00000002"),
        _FACTORY.make("gateway.dropped", {"count": 2, "seq_ranges": [[3, 4]], "reason": "x"}),
        _FACTORY.make("audit.command", {"who": "platform", "what": "ping", "why": "é ✓"}),
    ]
)


DAMAGED_SPANS = scaled(300, 10_000)
_spans_checked: list[int] = []  # rows really damaged and checked (a NULL device is skipped)


@st.composite
def _damaged_text(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with one to three spans replaced by other bytes (of any length up to 16):
    bytes changed, lost or added, as a worn card or a torn write leaves them."""
    damaged = original
    for _ in range(draw(st.integers(1, 3), label="spans")):
        at = draw(st.integers(0, len(damaged)), label="at")
        length = draw(st.integers(0, min(16, len(damaged) - at)), label="length")
        replacement = draw(st.binary(max_size=16), label="replacement")
        damaged = damaged[:at] + replacement + damaged[at + length :]
    assume(damaged != original)
    return damaged


@settings(max_examples=DAMAGED_SPANS)
@given(event=_EVENTS, column=st.sampled_from([1, 2, 3, 4]), data=st.data())
def _damaged_span_is_found(event: Any, column: int, data: st.DataObject) -> None:
    row = _stored(event)
    assert row_damage(row) is None
    _strict_json(_wire(row))
    original = (row[column] or "").encode()
    if not original:
        return
    damaged = list(row)
    raw = data.draw(_damaged_text(original), label="damaged")
    damaged[column] = raw.decode("utf-8", "surrogateescape")  # as claim reads it
    # CRC-32 finds every burst of up to 32 bits by construction; longer damage escapes it with
    # a chance of 2**-32 per row.
    assert row_damage(damaged) is not None
    _spans_checked.append(1)


@pytest.mark.reliability
def test_damaged_spans_of_a_checksummed_row_are_found() -> None:
    _spans_checked.clear()
    _damaged_span_is_found()
    assert len(_spans_checked) > DAMAGED_SPANS // 2
    record(
        "disk",
        "1-3 spans of a stored row's id, kind, device or data replaced by other bytes (hypothesis)",
        count=len(_spans_checked),
        lost=0,
        outcome="every one found by the row checksum",
    )


_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet='{}[]":,0123456789.-eEtrufalsnNI \\', max_size=40),
    st.binary(max_size=20).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    st.sampled_from(["{}", '{"a":1}', '{"a":NaN}', "[]", "null", "2026-12-07T06:00:00.000Z"]),
    st.sampled_from(sorted(KIND_DATA)),
)
_ANY = st.one_of(_TEXT, st.none(), st.integers(-5, 2**40), st.floats(), st.binary(max_size=8))


@st.composite
def _damaged_rows(draw: st.DrawFn) -> tuple[Any, ...]:
    """A stored row, with or without its checksum, some columns replaced by garbage."""
    row = list(_stored(draw(_EVENTS)))
    if draw(st.booleans()):
        row[8] = None  # stored before checksums
    for column in draw(st.sets(st.integers(0, 8), max_size=3)):
        row[column] = draw(_ANY)
    return tuple(row)


GARBAGE_ROWS = scaled(1000, 20_000)


@settings(max_examples=GARBAGE_ROWS)
@given(row=_damaged_rows() | st.tuples(*[_ANY] * 8, st.none() | _ANY))
def _intact_row_makes_valid_json(row: tuple[Any, ...]) -> None:
    # Checksummed or not (crc NULL: stored before checksums), garbage in any column: a row that
    # the check lets through puts valid JSON, with a JSON object as data, on the wire.
    if row_damage(row) is not None:
        return
    event = _strict_json(_wire(row))
    assert isinstance(event["data"], dict)
    _wire(row).encode()  # and it can be sent: UTF-8 throughout


@pytest.mark.reliability
def test_a_row_passed_as_intact_always_makes_valid_json() -> None:
    _intact_row_makes_valid_json()
    record(
        "disk",
        "garbage in a stored row's columns, with and without checksum (hypothesis)",
        count=GARBAGE_ROWS,
        lost=0,
        outcome="no row let through made invalid JSON",
    )


def _corrupt(path: Path, seq: int, column: str, sql_value: str) -> None:
    db = sqlite3.connect(path)
    db.execute(f"UPDATE events SET {column}={sql_value} WHERE seq=?", (seq,))  # noqa: S608
    db.commit()
    db.close()


@pytest.mark.reliability
async def test_damaged_rows_are_quarantined_and_the_rest_delivered(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    path = tmp_path / "state" / "outbox.sqlite3"
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory, 40 + i % 100) for i in range(600)])  # seqs 1..600
    store.insert([alarm(factory)])  # 601: damaged below
    store.insert([alarm(factory)])  # 602: intact
    store.insert([telemetry(factory, 99)])  # 603: made unchecksummed, then damaged
    store.insert([telemetry(factory, 98)])  # 604: unchecksummed, intact
    store.close()
    _corrupt(path, 7, "data", "replace(data, '46', '47')")  # one bit: valid JSON, wrong value
    _corrupt(path, 250, "data", "substr(data, 2)")  # a lost "{": the message would break
    _corrupt(path, 300, "data", "CAST(X'7B2268656172745F72617465223AFF7D' AS TEXT)")  # not UTF-8
    _corrupt(path, 301, "id", "id || '\"'")
    _corrupt(path, 601, "data", "replace(data, 'short', 'sh\"rt')")
    _corrupt(path, 603, "crc", "NULL")
    _corrupt(path, 603, "data", "replace(data, '}', '')")
    _corrupt(path, 604, "crc", "NULL")
    damaged = {7, 250, 300, 301, 601, 603}
    async with running_gateway(tmp_path, mosquitto) as running:
        await wait_platform(
            platform,
            lambda p: (
                any(e["data"]["reason"] == DAMAGED_ROW_REASON for e in kinds(p, "gateway.dropped"))
                and set(range(1, 605)) - damaged <= set(p.seq_ids("gw-a"))
            ),
            "every intact event and the report of the damaged ones",
        )
        stats = await running.gateway.outbox.stats()
    explained = {
        seq
        for event in kinds(platform, "gateway.dropped")
        if event["data"]["reason"] == DAMAGED_ROW_REASON
        for first, last in event["data"]["seq_ranges"]
        for seq in range(first, last + 1)
    }
    assert explained == damaged
    assert not damaged & set(platform.seq_ids("gw-a")), "a damaged row was sent"
    assert [e["seq"] for e in kinds(platform, "alarm.button")] == [602]
    assert stats.queued.get("alarm", 0) == 1  # 602, awaiting its ack; 601 is not resent
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    kept = dict(db.execute("SELECT seq, why FROM quarantine").fetchall())
    db.close()
    assert set(kept) == damaged, kept
    record(
        "disk",
        "stored row damaged (flipped bit, cut JSON, not UTF-8, bad id, alarm, pre-checksum row)",
        count=len(damaged),
        lost=0,
        outcome="damaged rows (one an alarm) quarantined and reported as gateway.dropped "
        "event_corrupt; the other 598 delivered as valid JSON",
    )


def test_a_damaged_row_that_cannot_be_moved_is_held_back_and_reported_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.sqlite3"
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory, 60 + i) for i in range(3)])
    _corrupt(path, 2, "data", "substr(data, 2)")
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE quarantine RENAME TO quarantine_away")  # the move will fail
    db.commit()
    assert [e.seq for e in store.claim(10)] == [1, 3]
    store.release_all()  # the link was lost: everything comes back, the damaged row too
    assert [e.seq for e in store.claim(10)] == [1, 3, 4]  # 4: the one report
    db.execute("ALTER TABLE quarantine_away RENAME TO quarantine")
    db.commit()
    store.release_all()
    assert [e.seq for e in store.claim(10)] == [1, 3, 4]
    assert db.execute("SELECT seq FROM quarantine").fetchall() == [(2,)]
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind='gateway.dropped'").fetchone() == (1,)
    db.close()
    store.close()


MiB = 1024 * 1024


def _fill_with_alarms(store: SqliteStore, factory: EventFactory, count: int = 6000) -> None:
    """Alarms (never evicted) enough to take a 1 MiB quota past its limit by themselves."""
    for _ in range(0, count, 1000):
        store.insert([alarm(factory) for _ in range(1000)])


def test_a_claim_that_finds_a_damaged_row_keeps_the_rows_it_returns(tmp_path: Path) -> None:
    """At the quota, the report of a damaged row evicts, but never the rows claimed with it."""
    path = tmp_path / "o.sqlite3"
    store, factory = make_store(path, max_bytes=MiB)
    store.open()
    store.insert([telemetry(factory, 60 + i) for i in range(10)])
    _corrupt(path, 5, "data", "substr(data, 2)")
    _fill_with_alarms(store, factory)
    store.ack([e.seq for e in store.claim(6000)])  # the alarms: delivered, not claimed again
    claimed = [e.seq for e in store.claim(100)]
    assert claimed == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    store.release_all()
    assert [e.seq for e in store.claim(100) if e.kind == "telemetry.vitals"] == claimed
    db = sqlite3.connect(path)
    reports = [json.loads(data) for (data,) in db.execute(DROPPED)]
    db.close()
    dropped = {s for r in reports for a, b in r["seq_ranges"] for s in range(a, b + 1)}
    assert 5 in dropped and not dropped & set(claimed), reports
    store.close()


DROPPED = "SELECT data FROM events WHERE kind='gateway.dropped'"


def test_a_damaged_report_is_not_evicted_but_left_to_the_quarantine(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    store, factory = make_store(path, max_bytes=MiB)
    store.open()
    store.insert([store.dropped_event(3, [], "buffer_full")])
    _corrupt(path, 1, "data", "'{\"count\": 3}'")  # no reason, no seq_ranges
    _fill_with_alarms(store, factory)  # so that the reports are evicted too
    for _ in range(3):
        store.insert([telemetry(factory)])  # each evicts every report it can
    store.ack([e.seq for e in store.claim(6000)])  # the alarms
    assert 1 not in {e.seq for e in store.claim(10_000)}
    db = sqlite3.connect(path)
    assert db.execute("SELECT seq FROM quarantine").fetchall() == [(1,)]
    db.close()
    store.close()


def test_the_quarantine_is_trimmed_before_any_event_is_evicted(tmp_path: Path) -> None:
    """Damaged rows kept for inspection count against the quota and go first."""
    path = tmp_path / "o.sqlite3"
    store, factory = make_store(path, max_bytes=MiB)
    store.open()
    bulky = json.dumps({"note": "x" * 3000})
    db = sqlite3.connect(path)
    db.executemany(
        "INSERT INTO quarantine (seq, quarantined_at, why, id, kind, class, device, data, ts, "
        "ts_synced, attempt, alarm_state, crc) VALUES (?, 0, 'x', ?, 'audit.command', 'audit', "
        "NULL, ?, '2026-12-07T06:00:00.000Z', 1, 1, NULL, 0)",
        [(-n, f"q{n}", bulky) for n in range(1, 201)],  # 600 KB of the 1 MiB quota
    )
    db.commit()
    with capture_logs() as logs:
        for _ in range(10):
            store.insert([telemetry(factory) for _ in range(200)])
    assert not [e for e in logs if e["event"] == "events_evicted"], "telemetry evicted"
    assert [e for e in logs if e["event"] == "quarantine_trimmed"]
    assert store.stats().queued == {"telemetry": 2000}
    left = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
    assert 0 < left < 200  # the newest kept while there was room
    db.close()
    store.close()


def test_rows_stored_before_checksums_are_checked_by_parsing(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    db = sqlite3.connect(path)
    schema = REPO / "gateway" / "store" / "schema" / "001_initial.sql"
    for statement in schema.read_text().split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("PRAGMA user_version=1")
    factory = EventFactory(ManualClock(), BOOT)
    rows = [telemetry(factory, 60 + i) for i in range(3)]
    for seq, event in enumerate(rows, 1):
        db.execute(
            "INSERT INTO events (seq, id, kind, class, device, data, ts, ts_synced, mono_ns, "
            "boot_id, size, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, 0, ?, 100, 0)",
            (seq, event.id, event.kind, event_class(event.kind), event.device,
             event.data_json if seq != 2 else '{"heart_rate":6', event.ts, BOOT),
        )  # fmt: skip
    db.execute("UPDATE meta SET value=3")
    db.execute("INSERT INTO commands VALUES ('c-old', 1.0, '{}'), ('c-new', 2.0, '{}')")
    db.commit()
    db.close()
    store, factory = make_store(path)
    assert store.open().migrated_from == 1
    assert [e.seq for e in store.claim(10)] == [1, 3]
    (report,) = store.claim(10)
    assert (report.seq, report.kind) == (4, "gateway.dropped")
    assert json.loads(report.data_json)["seq_ranges"] == [[2, 2]]
    assert store.command_result("c-old") == "{}"
    store.remember_command("c-3", "{}", keep=2)
    assert store.command_result("c-old") is None  # the oldest by arrival went first
    assert store.command_result("c-new") == "{}"


# ------------------------------------------------------------------ command ids and the clock


def test_command_ids_are_forgotten_by_count_never_by_the_clock(tmp_path: Path) -> None:
    clock = ManualClock(wall=1_700_000_000.0 - 30 * DAY_S, synced=False)  # 30 days behind
    store, _ = make_store(tmp_path / "o.sqlite3", clock)
    store.open()
    store.remember_command("cmd-1", '{"n":1}')
    clock.set_wall(1_700_000_000.0)  # NTP steps the clock forward
    for n in range(2, 12):
        store.remember_command(f"cmd-{n}", f'{{"n":{n}}}', keep=10)
    assert store.command_result("cmd-1") is None  # ten newer ids arrived
    assert store.command_result("cmd-2") == '{"n":2}'
    clock.set_wall(1_700_000_000.0 + 400 * DAY_S)
    store.remember_command("cmd-12", "{}", keep=10)
    assert store.command_result("cmd-3") == '{"n":3}'  # still among the ten newest


@pytest.mark.reliability
async def test_a_command_redelivered_after_a_forward_clock_step_runs_once(
    tmp_path: Path,
) -> None:
    clock = ManualClock(wall=1_700_000_000.0 - 30 * DAY_S, synced=False)
    store, factory = make_store(tmp_path / "o.sqlite3", clock)
    outbox = Outbox(store, group_commit_s=0)
    await outbox.open()
    runs: list[str] = []

    async def test_alarm(args: dict[str, Any]) -> dict[str, Any]:
        runs.append("test_alarm")
        return {"alarm_id": "a"}

    commands = CommandProcessor(outbox, OutboxSink(outbox, factory), clock)
    commands.register("test_alarm", test_alarm)

    def message(cmd_id: str, name: str = "test_alarm") -> bytes:
        return json.dumps({"v": 1, "id": cmd_id, "name": name, "args": {}}).encode()

    try:
        await commands.handle(message("cmd-1"))
        clock.set_wall(1_700_000_000.0)  # NTP: 30 days forward
        clock.advance(60)
        await commands.handle(message("cmd-2", "nope"))  # another command meanwhile
        await commands.handle(message("cmd-1"))  # the broker delivers cmd-1 again
        assert runs == ["test_alarm"], "the command ran twice"
        db = sqlite3.connect(store.path)
        results = [
            json.loads(row[0])
            for row in db.execute("SELECT data FROM events WHERE kind='cmd.result' ORDER BY seq")
        ]
        db.close()
        assert [r["cmd_id"] for r in results] == ["cmd-1", "cmd-2", "cmd-1"]
        assert results[0] == results[2]
    finally:
        await outbox.close()
    record(
        "clock",
        "command redelivered after a 30-day forward clock step",
        count=1,
        lost=0,
        outcome="not run again: its stored result sent again (ids kept by count)",
    )


# ------------------------------------------------------------------ file modes


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_store_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.sqlite3"
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory) for _ in range(3)])
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.seqmark")]
    assert {str(f): oct(_mode(f)) for f in files} == {str(f): "0o600" for f in files}
    store.close()


@pytest.mark.usefixtures("open_umask")
def test_store_files_left_readable_by_an_earlier_version_are_made_private(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite3"
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory)])
    store.close()
    for name in (path, Path(f"{path}.seqmark")):
        name.chmod(0o644)
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory)])
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.seqmark")):
        assert _mode(name) == 0o600, name
    store.close()


def test_a_directory_in_the_outbox_path_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    path.mkdir(mode=0o755)
    store, _ = make_store(path)
    with pytest.raises(StoreError):
        store.open()
    assert _mode(path) == 0o755


# Another process asks for an exclusive lock over the whole -shm file: it must be refused while
# the gateway has the store open (SQLite holds a lock in it for as long as a connection uses it).
_SHM_LOCK_PROBE = textwrap.dedent(
    """
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(0)
    sys.exit(3)
    """
)


def test_making_the_files_private_leaves_sqlites_locks_alone(tmp_path: Path) -> None:
    # Closing any descriptor of a file drops every POSIX lock the process holds on it: a mode
    # fixed by opening the -shm would let the next process to open the store take it for unused
    # and reset it under the running gateway (SIGBUS).
    path = tmp_path / "outbox.sqlite3"
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory)])
    store.close()
    for suffix in ("", ".seqmark"):
        Path(f"{path}{suffix}").chmod(0o644)
    store, factory = make_store(path)
    store.open()
    store.insert([telemetry(factory)])
    probe = subprocess.run(
        [sys.executable, "-c", _SHM_LOCK_PROBE, f"{path}-shm"], timeout=30, check=False
    )
    store.close()
    assert probe.returncode == 0, "the open store's lock on its -shm file was dropped"


def test_the_daemon_started_by_hand_keeps_its_outbox_private(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # Outside systemd (no UMask=), with the usual umask 022.
    daemon = GatewayProcess(gateway_config(tmp_path, mosquitto), tmp_path / "gateway.log")
    previous = os.umask(0o022)
    try:
        daemon.start()
    finally:
        os.umask(previous)
    state = tmp_path / "state"
    names = ["outbox.sqlite3", "outbox.sqlite3-wal", "outbox.sqlite3-shm", "outbox.sqlite3.seqmark"]
    try:
        deadline = time.monotonic() + 20
        while not all((state / name).exists() for name in names):
            assert time.monotonic() < deadline, f"the daemon made no outbox\n{daemon.log_text()}"
            time.sleep(0.05)
        modes = {name: oct(_mode(state / name)) for name in names}
        assert daemon.terminate() == 0, daemon.log_text()[-3000:]
    finally:
        daemon.close()
    assert modes == dict.fromkeys(names, "0o600")
    assert _mode(state / "outbox.sqlite3") == 0o600


def test_quarantined_alarms_are_handed_over_once(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite3"
    store, factory = make_store(path)
    store.open()
    first, second = alarm(factory), alarm(factory)
    store.insert([first])
    store.insert([second])
    store.insert([telemetry(factory)])
    _corrupt(path, 1, "data", "substr(data, 2)")
    _corrupt(path, 2, "id", "CAST(X'FF' AS TEXT)")  # not even the id is readable
    assert {1, 2}.isdisjoint(event.seq for event in store.claim(10))
    taken = store.take_quarantined_alarms()
    assert [(a.seq, a.kind, a.device) for a in taken] == [
        (1, "alarm.button", "btn-00000001"),
        (2, "alarm.button", "btn-00000001"),
    ]
    assert taken[0].id == first.id
    assert store.take_quarantined_alarms() == []
    store.close()
