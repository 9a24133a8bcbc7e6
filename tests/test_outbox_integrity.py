"""The outbox's integrity: seq after a lost -wal, damaged rows, command ids, file modes."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import ManualClock
from gateway.emitter import EventFactory
from gateway.outbox import (
    AlarmTiming,
    SqliteStore,
)
from tests.gateway_rig import kinds
from tests.support.broker import Mosquitto
from tests.support.daemon import GatewayProcess, gateway_config
from tests.support.platform import PlatformClient
from tests.support.reliability import record, scaled

BOOT = "boot-1"
REPO = Path(__file__).resolve().parents[1]
DAY_S = 24 * 3600.0


def make_store(path: Path, clock: ManualClock | None = None) -> tuple[SqliteStore, EventFactory]:
    clock = clock or ManualClock()
    factory = EventFactory(clock, BOOT)
    store = SqliteStore(
        path,
        max_bytes=10**9,
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


def _last_seq_with_wal(path: Path) -> int:
    """The last seq committed, read from a copy of the database and its -wal file."""
    copy = path.with_name("peek.sqlite3")
    for suffix in ("", "-wal"):
        shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
    db = sqlite3.connect(copy)
    try:
        return int(db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)


def _last_seq_of_the_file_alone(path: Path) -> int:
    copy = path.with_name("alone.sqlite3")
    shutil.copyfile(path, copy)
    db = sqlite3.connect(copy)
    try:
        return int(db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])
    except sqlite3.OperationalError:  # not even the schema was checkpointed yet
        return 0
    finally:
        db.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{copy}{suffix}").unlink(missing_ok=True)


def _complete_up_to(seq: int) -> Callable[[PlatformClient], bool]:
    return lambda platform: platform.complete_up_to("gw-a") >= seq


@pytest.mark.reliability
def test_daemon_killed_and_its_wal_lost_reuses_no_seq(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    state = tmp_path / "state"
    path = state / "outbox.sqlite3"
    flood = {"telemetry_interval_s": 0.01, "burst": 4, "alarm_interval_s": 3600, "seed": 9}
    daemon = GatewayProcess(gateway_config(tmp_path, mosquitto, sim=flood), tmp_path / "gw.log")
    try:
        for _ in range(5):  # until the kill leaves commits in the -wal file only
            daemon.start()
            target = platform.complete_up_to("gw-a") + 600
            platform.wait_for(_complete_up_to(target), 30, "the flood")
            daemon.kill()
            if 0 < _last_seq_of_the_file_alone(path) < _last_seq_with_wal(path):
                break
        else:
            pytest.fail("every kill found the -wal file checkpointed")
        remove_wal(path)
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
            seen = set(p.seq_ids("gw-a"))
            gap = explained(p)
            return bool(gap) and set(range(1, max(seen) + 1)) <= seen | gap

        platform.wait_for(accounted, 30, "every seq delivered or explained")
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


def test_kill_with_the_wal_intact_leaves_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    killed_writer(path, 20, 30)
    store, factory = make_store(path)
    report = store.open()
    assert report.lost_ranges == [] and report.loss_reason is None
    assert store.insert([telemetry(factory)]) == [51]


def test_kill_then_another_tool_reading_the_store_leaves_no_gap(tmp_path: Path) -> None:
    # A tool that opens the database after the crash (sqlite3, a status command) checkpoints the
    # -wal file into it and deletes it on close: nothing is lost, and no gap may be reported.
    path = tmp_path / "outbox.sqlite3"
    killed_writer(path, 20, 30)
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0] == 50
    db.close()
    assert not Path(f"{path}-wal").exists()
    store, factory = make_store(path)
    report = store.open()
    assert report.lost_ranges == []
    assert store.insert([telemetry(factory)]) == [51]


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
