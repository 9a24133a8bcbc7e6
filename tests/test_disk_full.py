"""The outbox on a really full disk (a small tmpfs) and within its quota: no alarm is lost."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.core.clock import ManualClock
from gateway.core.errors import StoreError
from gateway.store.disk import DiskBudget
from gateway.store.outbox import Outbox
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until
from tests.support.daemon import GatewayProcess, gateway_config, last_seq
from tests.support.reliability import record, scaled
from tests.test_outbox import BOOT, Rig

MiB = 1024 * 1024
DISK_BYTES = 8 * MiB
BUTTON = {"press": "short", "battery": 80, "rssi": -50}
OUTBOX_FILES = ("outbox.sqlite3",)  # every file the outbox puts on disk starts with this


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB filesystem (tmpfs), unmounted at teardown."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (root needed): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def fill(path: Path, size: int) -> None:
    """Another program's file taking ``size`` bytes of the disk (less if there is less)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)


def fill_up(path: Path) -> None:
    """Take every byte still free."""
    vfs = os.statvfs(path.parent)
    fill(path, (path.stat().st_size if path.exists() else 0) + vfs.f_bavail * vfs.f_frsize)
    with path.open("ab", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(bytes(4096))
    assert os.statvfs(path.parent).f_bavail == 0, "the disk is not full"


def free(directory: Path) -> int:
    vfs = os.statvfs(directory)
    return vfs.f_bavail * vfs.f_frsize


def _size(entry: os.DirEntry[str]) -> int:
    try:
        return entry.stat().st_size
    except FileNotFoundError:  # deleted meanwhile
        return 0


def outbox_bytes(directory: Path) -> tuple[int, dict[str, int]]:
    sizes: dict[str, int] = {}
    for entry in os.scandir(directory):
        if entry.name.startswith(OUTBOX_FILES):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_dir():  # the spool: its segments
                    sizes[entry.name] = sum(map(_size, os.scandir(entry.path)))
                else:
                    sizes[entry.name] = entry.stat().st_size
    return sum(sizes.values()), sizes


def events_logged(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry.get("event") == event]


def explained(platform: PlatformClient, gw: str = "gw-a") -> tuple[set[int], int]:
    """(seqs that gateway.dropped events say were evicted, events dropped without a seq)."""
    seqs: set[int] = set()
    unsequenced = 0
    for event in kinds(platform, "gateway.dropped"):
        data = event["data"]
        span = {s for first, last in data["seq_ranges"] for s in range(first, last + 1)}
        if span:
            assert data["count"] == len(span)
        seqs |= span
        if not span:
            unsequenced += data["count"]
    return seqs, unsequenced


def every_seq_accounted(platform: PlatformClient, last: int) -> bool:
    seen = set(platform.seq_ids("gw-a"))
    evicted, _ = explained(platform)
    return set(range(1, last + 1)) <= seen | evicted


class Flood:
    """Telemetry as fast as the gateway takes it, from a task of the gateway's loop."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.ids: list[str] = []
        self.refused = 0  # emit raised: the producer was told to go away
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        n = 0
        while True:
            try:
                event_id = await self.sink.emit(
                    "telemetry.vitals", {"heart_rate": 50 + n % 50}, "watch-AABBCCDDEEFF"
                )
            except StoreError:
                self.refused += 1
            else:
                self.ids.append(event_id)
            n += 1
            if n % 50 == 0:
                await asyncio.sleep(0.001)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name="test.flood")

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.mark.reliability
async def test_a_full_disk_with_the_broker_down_stores_every_alarm_and_delivers_it(
    tmp_path: Path, small_disk: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    """The state directory on an 8 MiB filesystem that another program half fills, the default
    quota (256 MiB, far above the disk), the broker down and telemetry flooding in: the disk
    fills up, every alarm raised then is stored, nothing crashes, and once the broker is back
    every alarm arrives and every telemetry event that did not is explained by gateway.dropped.
    When the other program's file goes, the alarm reserve is made again."""
    alarms_n = scaled(20, 200)
    other = small_disk / "other-program.log"
    fill(other, 5 * MiB)
    state = small_disk / "state"
    mosquitto.stop()
    with capture_logs() as logs:
        async with running_gateway(
            tmp_path, mosquitto, gateway={"state_dir": state, "heartbeat_s": 3600}
        ) as rig:
            gateway = rig.gateway
            assert (state / "outbox.sqlite3.reserve").exists(), "no alarm reserve was made"
            flood = Flood(gateway.sink)
            flood.start()
            await wait_until(lambda: events_logged(logs, "disk_full"), 60, "a full disk")
            alarm_ids = []
            for _ in range(alarms_n):  # while the flood goes on
                alarm_ids.append(
                    await gateway.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
                )
            held = {alarm.id for alarm in await gateway.outbox.held_alarms()}
            assert set(alarm_ids) <= held
            await flood.stop()
            assert flood.refused == 0, "telemetry producers were refused"
            assert events_logged(logs, "disk_full")
            await gateway.outbox.flush()
            assert not events_logged(logs, "task_crashed"), "a task crashed on the full disk"
            assert not events_logged(logs, "uplink_task_failed")

            mosquitto.start()
            last = (await gateway.outbox.stats()).last_seq
            await wait_platform(
                platform,
                lambda p: (
                    {e["id"] for e in kinds(p, "alarm.button")} >= set(alarm_ids)
                    and every_seq_accounted(p, last)
                ),
                "every alarm, and every seq received or explained",
                timeout=60,
            )
            other.unlink()  # space returns: the next write makes the reserve again
            # (wait for the store to say so: the reserve file also exists for a moment while an
            # attempt to allocate it on the still full disk fails). Written at once: delivered
            # within its window, it would never be written.
            async with asyncio.timeout(10):
                while not events_logged(logs, "disk_space_returned"):
                    await gateway.sink.emit(
                        "telemetry.vitals", {"heart_rate": 60}, "watch-AABBCCDDEEFF"
                    )
                    await gateway.outbox.flush()
                    await asyncio.sleep(0.05)
            assert (state / "outbox.sqlite3.reserve").exists()
    assert not events_logged(logs, "task_crashed")
    assert not events_logged(logs, "shutdown_store_failed")

    received = {e["id"] for e in kinds(platform, "telemetry.vitals")}
    missing = set(flood.ids) - received
    evicted, unsequenced = explained(platform)
    assert not evicted & set(platform.seq_ids("gw-a")), "an evicted seq arrived after all"
    assert len(missing) == len(evicted) + unsequenced, (len(missing), len(evicted), unsequenced)
    assert missing, "the disk never made the gateway drop telemetry: the test did not bite"
    reasons = {e["data"]["reason"] for e in kinds(platform, "gateway.dropped")}
    assert "disk_full" in reasons
    record(
        area="disk",
        fault=f"state dir on a full {DISK_BYTES // MiB} MiB tmpfs, broker down, telemetry flood",
        count=alarms_n,
        lost=alarms_n - len({e["id"] for e in kinds(platform, "alarm.button")} & set(alarm_ids)),
        outcome=(
            f"every alarm stored and delivered; {len(missing)} of {len(flood.ids)} telemetry "
            "events evicted, each in gateway.dropped (disk_full); reserve made again"
        ),
    )


@pytest.mark.reliability
def test_the_uplinks_store_calls_work_on_a_full_disk(small_disk: Path) -> None:
    """ack, acknowledge_alarms, promote_due_alarms, release, a command's result and the clock
    correction on a disk with no byte free."""
    rounds = scaled(20, 200)
    rig = Rig(small_disk / "outbox.sqlite3", clock=ManualClock(synced=False))
    rig.store.open()
    assert rig.store.make_reserve()
    rig.store.insert([rig.telemetry() for _ in range(2000)])
    # The backlog's clock correction with the WAL emptied (another tool checkpointed it) and no
    # byte free: the WAL needs new space, which the reserve gives back.
    other = sqlite3.connect(small_disk / "outbox.sqlite3")
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    other.close()
    fill_up(small_disk / "other-program.log")
    wall, mono = rig.clock.wall(), rig.clock.monotonic_ns()
    assert rig.store.correct_timestamps(BOOT, wall, mono) == 2000
    for n in range(rounds):
        fill_up(small_disk / "other-program.log")  # the reserve given back is taken as well
        rig.store.remember_command(f"cmd-{n}", json.dumps({"ok": True, "n": n}))
        assert rig.store.command_result(f"cmd-{n}") is not None
        fill_up(small_disk / "other-program.log")
        alarm = rig.alarm()
        (seq,) = rig.store.insert([alarm])
        fill_up(small_disk / "other-program.log")
        wall, mono = rig.clock.wall(), rig.clock.monotonic_ns()
        assert rig.store.correct_timestamps(BOOT, wall, mono) >= 1  # the alarm's, at least
        fill_up(small_disk / "other-program.log")
        # A few events per ack: after a truncated WAL, a large delete may find no room at all
        # and is then put back to be published again (a duplicate, never a loss).
        seqs = [seq] + [e.seq for e in rig.store.claim(5) if e.seq != seq]
        delivered = rig.store.ack(seqs)
        assert [a.id for a in delivered] == [alarm.id], f"round {n}"
        rig.clock.advance(31)
        promoted, _ = rig.store.promote_due_alarms()
        assert [a.id for a in promoted] == [alarm.id]
        rig.store.release([seq], rig.store.mono())
        assert [a.id for a in rig.store.acknowledge_alarms([alarm.id])] == [alarm.id]
    assert rig.store.held_alarms() == []
    rig.store.close()
    record(
        area="disk",
        fault="uplink, command and clock store calls with no byte free",
        count=rounds,
        lost=0,
        outcome="every call succeeded (the WAL restarts in the space it has)",
    )


@pytest.mark.reliability
async def test_the_memory_buffer_is_bounded_and_what_it_drops_is_reported(
    tmp_path: Path,
) -> None:
    """While the store cannot write (here: another process holds the database locked, and a
    file stands where the spool's directory goes; a full disk looks the same to the buffer), the
    buffer stays bounded, what it drops is counted, and
    once the store writes again every drop is reported by one gateway.dropped (reason
    buffer_full) with the seqs they had in memory; every other event is stored, in order."""
    produced = scaled(3000, 30000)
    path = tmp_path / "outbox.sqlite3"
    rig = Rig(path)
    outbox = Outbox(rig.store, group_commit_s=0.01, max_buffered=100, buffer_limit=500)
    await outbox.open()
    # Each write attempt against the lock fails after 50 ms instead of SQLite's 5 s.
    await outbox._call(rig.store._require().execute, "PRAGMA busy_timeout=50")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    blocker = path.with_name(path.name + ".spool")
    blocker.rename(blocker.with_name("spool.aside"))  # (made at open, empty)
    blocker.write_bytes(b"")
    made: list[str] = []
    try:
        with capture_logs() as logs:
            for n in range(produced):
                event = rig.telemetry(n % 200)
                made.append(event.id)
                await outbox.put(event)
                assert outbox.buffered <= outbox.buffer_limit
                await asyncio.sleep(0)
            dropped = outbox.dropped_unstored
            assert dropped >= produced - outbox.buffer_limit - outbox.max_buffered
            assert sum(entry["count"] for entry in events_logged(logs, "events_dropped")) == dropped
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        blocker.unlink()
        blocker.with_name("spool.aside").rename(blocker)
    await wait_until(lambda: outbox.dropped_unstored == 0, 20, "the drops to be reported")
    await outbox.flush()
    stored = (await outbox.claim(10**6))[0]
    reports = [json.loads(e.data_json) for e in stored if e.kind == "gateway.dropped"]
    (report,) = reports
    assert (report["count"], report["reason"]) == (dropped, "buffer_full")
    explained = {seq for first, last in report["seq_ranges"] for seq in range(first, last + 1)}
    assert len(explained) == dropped
    assert explained.isdisjoint(e.seq for e in stored)
    kept = [e.id for e in sorted(stored, key=lambda e: e.seq) if e.kind == "telemetry.vitals"]
    assert len(kept) + dropped == produced
    survivors = set(kept)
    assert kept == [i for i in made if i in survivors], "stored out of order"
    await outbox.close()
    record(
        area="disk",
        fault="telemetry while the store cannot write",
        count=produced,
        lost=0,
        outcome=f"buffer bounded at {outbox.buffer_limit}; {dropped} dropped, all reported "
        "by one gateway.dropped (buffer_full); the rest stored in order",
    )


def wait_log(daemon: GatewayProcess, event: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while f'"{event}"' not in daemon.log_text():
        assert time.monotonic() < deadline, f"no {event}: {daemon.log_text()[-3000:]}"
        time.sleep(0.05)


@pytest.mark.reliability
def test_a_full_disk_at_shutdown_ends_without_a_traceback(
    tmp_path: Path, small_disk: Path, mosquitto: Mosquitto
) -> None:
    """SIGTERM while nothing can be written: exit status 0, no traceback."""
    state = small_disk / "state"
    config = gateway_config(
        tmp_path,
        mosquitto,
        gateway={"state_dir": state},
        sim={"telemetry_interval_s": 0.01, "burst": 20, "alarm_interval_s": 3600, "seed": 1},
    )
    mosquitto.stop()
    daemon = GatewayProcess(config, tmp_path / "gateway.log")
    try:
        daemon.start()
        wait_log(daemon, "gateway_started")
        fill_up(small_disk / "other-program.log")
        when_full = last_seq(state)
        deadline = time.monotonic() + 30
        while last_seq(state) < when_full + 5000:  # the disk is full, and writes go on
            assert time.monotonic() < deadline, daemon.log_text()[-3000:]
            time.sleep(0.05)
        assert '"disk_full"' in daemon.log_text()
        assert daemon.terminate() == 0, daemon.log_text()[-3000:]
    finally:
        daemon.close()
    assert "Traceback" not in daemon.log_text(), daemon.log_text()[-3000:]
    assert last_seq(state) > when_full
    record(
        area="disk",
        fault="daemon flooded on a full disk, then SIGTERM",
        count=1,
        lost=0,
        outcome="kept storing (oldest telemetry evicted); exit 0 without a traceback",
    )


@pytest.mark.reliability
@pytest.mark.timeout(300)  # the flood is slower on a loaded machine: waited for by progress
def test_the_quota_bounds_every_file_the_outbox_puts_on_disk(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """outbox.max_bytes = 2 MiB, the broker down, the simulator flooding: the database, its WAL
    and -shm, the alarm reserve and the seq mark together never take more than the quota
    (sampled every millisecond from outside the daemon; no slack allowed)."""
    quota = 2 * MiB
    evictions = scaled(8, 300)  # the quota acting again and again while the sampler measures
    state = tmp_path / "state"
    flood = {"telemetry_interval_s": 0.01, "burst": 20, "alarm_interval_s": 0.5, "seed": 3}
    config = gateway_config(tmp_path, mosquitto, sim=flood, outbox={"max_bytes": quota})
    mosquitto.stop()
    peak: list[Any] = [0, {}]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            if state.exists():
                total, sizes = outbox_bytes(state)
                if total > peak[0]:
                    peak[:] = [total, sizes]
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, name="test.sampler")
    daemon = GatewayProcess(config, tmp_path / "gateway.log")
    sampler.start()
    try:
        daemon.start()
        # However slow the machine: each eviction must come within this of the one before.
        seen, deadline = 0, time.monotonic() + 60
        while (count := daemon.log_text().count('"events_evicted"')) < evictions:
            if count > seen:
                seen, deadline = count, time.monotonic() + 60
            assert time.monotonic() < deadline, (
                f"the quota acted {count} times, then no more: {daemon.log_text()[-3000:]}"
            )
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_text()[-3000:]
            time.sleep(0.1)
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log_text()[-3000:]
        assert daemon.terminate() == 0, daemon.log_text()[-3000:]
    finally:
        stop.set()
        sampler.join()
        daemon.close()
    produced = last_seq(state)
    assert peak[0] <= quota, f"{peak[0]} bytes on disk for a {quota}-byte quota: {peak[1]}"
    budget = DiskBudget.of(quota)
    assert peak[1].get("outbox.sqlite3-wal", 0) <= budget.wal, peak[1]
    record(
        area="disk",
        fault="2 MiB outbox quota, broker down, simulator flood",
        count=produced,
        lost=0,
        outcome=f"peak {peak[0]:,} bytes on disk (database, WAL, -shm, reserve, seq mark) "
        f"for a {quota:,}-byte quota; oldest telemetry evicted and reported",
    )
