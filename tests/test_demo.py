"""``make demo`` and the hil/ simulated rig run and show the alarm chain end to end."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

DEMO_TIMEOUT_S = 60.0  # every wait ends on what the demo printed; this is only the deadline
STOP_TIMEOUT_S = 30.0
WATCH_VITALS = re.compile(r"platform ← telemetry\.vitals .* device=watch-C0FFEE000001 ")
WHILE_RUNNING = (
    "platform ← status online",
    "platform ← gateway.started",
    "senior presses the button",
    "senior hears: alarm received by the gateway",
    "platform ← alarm.button",
    "platform ← camera.call",
    "platform → ack",
    "senior hears: help is on the way",
    "platform ← audit.alarm_acknowledged",
    "senior holds the watch's SOS key",
    "platform ← alarm.watch_sos",
    "senior's watch vibrates: alarm received",
    "senior's watch shows: help is on the way",
)
AFTER_STOP = ("platform ← gateway.stopping", "platform ← status offline")


class Output:
    """A child's stdout, read by a thread, so that the test waits on what it printed."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()

    @property
    def text(self) -> str:
        with self._cond:
            return "".join(self._lines)

    def wait_for(self, check: Callable[[str], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: check("".join(self._lines)), timeout):
                raise AssertionError(f"{what} within {timeout} s:\n{''.join(self._lines)[-3000:]}")

    def closed(self, timeout: float) -> None:
        """Wait until the child closed its stdout (everything it printed has been read)."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the demo's stdout is still open"


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, with their command names."""
    children: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm = text[text.index("(") + 1 : text.rindex(")")]
        ppid = int(text[text.rindex(")") + 2 :].split()[1])
        if ppid == pid:
            children[int(stat.parent.name)] = comm
    return children


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_demo_shows_the_alarm_chains_and_a_clean_stop(tmp_path: Path) -> None:
    log_path = tmp_path / "demo.log"
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            [sys.executable, "-m", "hil.sim.demo", "--alarm-every", "1", "--sos-every", "2"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        ) as proc,
    ):
        try:
            assert proc.stdout is not None
            output = Output(proc.stdout)
            output.wait_for(
                lambda text: (
                    all(line in text for line in WHILE_RUNNING)
                    and WATCH_VITALS.search(text) is not None
                ),
                DEMO_TIMEOUT_S,
                "the button's and the watch's alarm chains and the watch's vitals",
            )
            children = _children(proc.pid)
            assert sorted(children.values()) == ["dbus-daemon", "mosquitto"], children
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            returncode = proc.wait(STOP_TIMEOUT_S)
            output.closed(STOP_TIMEOUT_S)
        finally:
            if proc.poll() is None:  # a failed wait: still stop it cleanly, or kill it
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
    logged = log_path.read_text()
    assert returncode == 0, logged[-3000:]
    for trouble in ("Traceback", "[error", "[critical"):
        assert trouble not in logged, logged[-3000:]
    out = output.text
    for line in AFTER_STOP:
        assert line in out, f"{line!r} missing from the demo's output:\n{out[-2000:]}"
    # The private bus (dbus-daemon) and Mosquitto went with the demo.
    assert [pid for pid in children if not _gone(pid)] == []
