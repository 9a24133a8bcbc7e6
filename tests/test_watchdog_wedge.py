"""A wedged event loop stops the watchdog pings; systemd's abort and restart lose no alarm.

The test plays systemd: it binds the NOTIFY_SOCKET, sets WATCHDOG_USEC, and aborts the daemon
(SIGABRT, as systemd does) once WatchdogSec passes without a WATCHDOG=1. The daemon's loop is
wedged from outside, without touching product code: a ``sitecustomize`` on PYTHONPATH installs
a SIGUSR2 handler that blocks the main thread, which runs the event loop (Python runs signal
handlers there), while paho's and the store's threads keep running. A ping from any thread but
the loop would keep a wedged gateway alive forever: the test fails if one arrives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from tests.support.daemon import GatewayProcess, gateway_config, last_seq
from tests.support.reliability import record, scaled
from tests.test_faults import assert_complete_without_invention, has_all

WATCHDOG_S = 2.0
READY_TIMEOUT_S = 20.0
WEDGES = scaled(1, 5)
ALARMS_BEFORE_WEDGE = 3
POLL_S = 0.05
SIM = {"telemetry_interval_s": 0.05, "burst": 5, "alarm_interval_s": 0.3, "seed": 11}

# Imported by the daemon's interpreter at start-up (test only). Writes the marker from inside the
# handler, so every ping the loop sent before the wedge is already queued when the marker exists.
WEDGE_HOOK = '''"""Test hook: SIGUSR2 blocks the main thread (the event loop) for good."""
import os
import resource
import signal
import time

_MARK = os.environ.get("CAREBED_TEST_WEDGE_MARK")
if _MARK:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGABRT leaves no core file behind

    def _wedge(signum, frame):
        with open(_MARK, "w") as handle:
            handle.write(str(time.monotonic()))
        while True:
            time.sleep(3600)

    signal.signal(signal.SIGUSR2, _wedge)
'''


class WatchdogExpiredError(Exception):
    """WatchdogSec passed without a WATCHDOG=1: systemd would abort the service now."""


class FakeSystemd:
    """The service manager's side of sd_notify: one datagram socket, READY and the watchdog."""

    def __init__(self, watchdog_s: float) -> None:
        self.watchdog_s = watchdog_s
        self.address = "@carebed-wedge-" + uuid.uuid4().hex
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.address[1:])
        self.last_ping: float | None = None
        self.pings = 0
        self.longest_gap_s = 0.0
        self.ready = False

    def env(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.address, "WATCHDOG_USEC": str(int(self.watchdog_s * 1e6))}

    def reset(self) -> None:
        """A new service instance: forget the previous one's readiness and pings."""
        self.last_ping, self.pings, self.longest_gap_s, self.ready = None, 0, 0.0, False

    def run_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        """Take notifications until ``done()``; raise WatchdogExpiredError as systemd would."""
        deadline = time.monotonic() + timeout
        self.drain()  # what queued while nobody listened counts as arriving now
        while not done():
            now = time.monotonic()
            if self.last_ping is not None and now - self.last_ping > self.watchdog_s:
                raise WatchdogExpiredError(f"no WATCHDOG=1 for {now - self.last_ping:.2f} s")
            if now > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            self.sock.settimeout(POLL_S)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            self._take(message, time.monotonic())

    def drain(self) -> list[str]:
        """The notifications queued right now, taken without waiting."""
        self.sock.setblocking(False)
        got: list[str] = []
        try:
            while True:
                got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        now = time.monotonic()
        for message in got:
            self._take(message, now)
        return got

    def _take(self, message: str, now: float) -> None:
        lines = message.split("\n")
        if "READY=1" in lines:
            self.ready = True
        if "WATCHDOG=1" in lines:
            if self.last_ping is not None:
                self.longest_gap_s = max(self.longest_gap_s, now - self.last_ping)
            self.last_ping = now
            self.pings += 1

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    manager = FakeSystemd(WATCHDOG_S)
    yield manager
    manager.close()


def stored_alarm_ids(state: Path) -> set[str]:
    db = sqlite3.connect(f"file:{state / 'outbox.sqlite3'}?mode=ro", uri=True, timeout=5)
    try:
        return {row[0] for row in db.execute("SELECT id FROM events WHERE class = 'alarm'")}
    finally:
        db.close()


def acknowledged_in_log(log: str) -> set[str]:
    """Alarm ids the daemon logged as acknowledged (its log is JSON, one event a line)."""
    found: set[str] = set()
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "alarm_acknowledged":
            found.add(str(entry.get("alarm_id")))
    return found


@pytest.mark.reliability
def test_a_wedged_event_loop_is_aborted_by_the_watchdog_and_restarts_losing_nothing(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, systemd: FakeSystemd
) -> None:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(WEDGE_HOOK)
    state = tmp_path / "state"
    mosquitto.stop()  # alarms stay in the outbox; the platform's session survives (persistence)
    producer_config = gateway_config(tmp_path, mosquitto, sim=SIM)
    producer_config = producer_config.rename(tmp_path / "producer.toml")
    config = gateway_config(tmp_path, mosquitto)  # the same gateway, without the simulator
    log = tmp_path / "gateway.log"
    wedged: list[GatewayProcess] = []
    stored: set[str] = set()
    silences: list[float] = []
    try:
        for cycle in range(WEDGES):
            mark = tmp_path / f"wedged-{cycle}"
            daemon = GatewayProcess(producer_config, log)
            wedged.append(daemon)
            env = {
                **systemd.env(),
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(hook), os.environ.get("PYTHONPATH")])
                ),
                "CAREBED_TEST_WEDGE_MARK": str(mark),
                "PYTHONFAULTHANDLER": "1",  # as the shipped unit sets it
            }
            systemd.reset()
            daemon.start(env)
            systemd.run_until(
                lambda: systemd.ready and systemd.pings >= 2, READY_TIMEOUT_S, "READY"
            )
            before = len(stored_alarm_ids(state))
            systemd.run_until(
                lambda before=before: len(stored_alarm_ids(state)) >= before + ALARMS_BEFORE_WEDGE,
                30,
                "alarms stored while the broker is down",
            )
            assert systemd.longest_gap_s <= WATCHDOG_S, "a healthy gateway missed its watchdog"
            assert daemon.proc is not None
            signalled = time.monotonic()
            daemon.proc.send_signal(signal.SIGUSR2)
            systemd.run_until(mark.exists, WATCHDOG_S, "the loop to wedge")
            # The handler writes the mark: every ping sent before the wedge is queued by now.
            systemd.drain()
            pings_before_wedge = systemd.pings
            with pytest.raises(WatchdogExpiredError):
                systemd.run_until(lambda: False, WATCHDOG_S + 5, "the watchdog to expire")
            expired = time.monotonic()
            assert systemd.pings == pings_before_wedge, "a ping came while the loop was wedged"
            assert daemon.proc.poll() is None, "the wedged daemon died by itself"
            threads = len(os.listdir(f"/proc/{daemon.proc.pid}/task"))
            assert threads > 1, "only the wedged thread is left"
            silences.append(expired - signalled)
            stored = stored_alarm_ids(state)
            # What systemd does when WatchdogSec passes: SIGABRT, then a restart.
            daemon.proc.send_signal(signal.SIGABRT)
            assert daemon.proc.wait(timeout=10) == -signal.SIGABRT
            # The fault handler's dump names the culprit on the loop's thread, for the journal.
            dumps = daemon.log_text().split("Fatal Python error: Aborted")
            assert len(dumps) == cycle + 2, "no stack dump on SIGABRT"
            assert " in _wedge" in dumps[-1], dumps[-1][:2000]
    finally:
        for daemon in wedged:
            daemon.kill()

    assert len(stored) >= ALARMS_BEFORE_WEDGE * WEDGES
    mosquitto.start()
    platform.wait_for(lambda p: p.connected, 20, "the platform to reconnect")
    restarted = GatewayProcess(config, log)
    systemd.reset()
    try:
        restarted.start(systemd.env())
        systemd.run_until(lambda: systemd.ready and systemd.pings >= 2, READY_TIMEOUT_S, "READY")
        arrived = lambda p: stored <= {e["id"] for _, e in p.events()}  # noqa: E731
        platform.wait_for(arrived, 60, "every alarm stored before the wedges")
        for alarm_id in sorted(stored):
            platform.publish("carebed/v1/gw-a/down/ack", {"v": 1, "ids": [alarm_id], "by": "desk"})
        systemd.run_until(
            lambda: stored <= acknowledged_in_log(restarted.log_text()), 30, "the acknowledgements"
        )
        assert restarted.terminate() == 0, restarted.log_text()[-3000:]
    finally:
        restarted.kill()
    n = last_seq(state)
    platform.wait_for(lambda p: has_all(p, n), 30, f"every seq up to {n}")
    assert_complete_without_invention(platform, n)
    record(
        "process",
        f"event loop wedged (main thread blocked), WatchdogSec={WATCHDOG_S:g} s",
        count=WEDGES,
        lost=0,  # asserted: every alarm stored before a wedge delivered and acknowledged
        outcome=(
            f"no ping after the wedge; WatchdogSec ran out {min(silences):.1f}-"
            f"{max(silences):.1f} s after it ({WATCHDOG_S:g} s after the last ping before it); "
            f"SIGABRT (stack dump names the wedge) and restart delivered {len(stored)} alarms, "
            f"all acknowledged, and every seq 1..{n:,} once"
        ),
    )
