"""The daemon as systemd runs it: notify protocol, watchdog, SIGTERM, logs."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from tests.support.daemon import GatewayProcess, gateway_config

SECRET = "hunter2-do-not-log"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(15)
    yield sock
    sock.close()


def next_message(sock: socket.socket, wanted: str) -> list[str]:
    """Datagrams until one containing ``wanted`` (each raises on timeout)."""
    seen: list[str] = []
    while True:
        text = sock.recv(4096).decode()
        seen.append(text)
        if wanted in text.splitlines():
            return seen


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[GatewayProcess]:
    proc = GatewayProcess(tmp_path / "carebed.toml", tmp_path / "gateway.log")
    yield proc
    proc.close()


def test_ready_watchdog_stopping_and_a_quick_clean_exit(
    tmp_path: Path,
    mosquitto: Mosquitto,
    platform: PlatformClient,
    notify_socket: socket.socket,
    daemon: GatewayProcess,
) -> None:
    gateway_config(tmp_path, mosquitto, mqtt={"password": SECRET}, logging={"level": "debug"})
    address = notify_socket.getsockname()
    daemon.start({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    next_message(notify_socket, "READY=1")
    for _ in range(3):  # pinged every 0.2 s from the event loop
        next_message(notify_socket, "WATCHDOG=1")
    platform.wait_for(
        lambda p: any(e["kind"] == "gateway.started" for _, e in p.events()), 20, "started"
    )
    began = time.monotonic()
    assert daemon.proc is not None
    daemon.proc.terminate()
    next_message(notify_socket, "STOPPING=1")
    assert daemon.proc.wait(timeout=10) == 0
    assert time.monotonic() - began < 5
    platform.wait_for(
        lambda p: any(
            m.payload == {"v": 1, "gw": "gw-a", "state": "offline", "reason": "shutdown"}
            for m in p.messages
        ),
        10,
        "the orderly offline status",
    )
    log = daemon.log_text()
    assert SECRET not in log
    records = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert {"gateway_started", "uplink_connected", "gateway_stopped"} <= {
        r["event"] for r in records
    }


def test_sigterm_with_the_broker_down_still_exits_quickly(
    tmp_path: Path, mosquitto: Mosquitto, notify_socket: socket.socket, daemon: GatewayProcess
) -> None:
    mosquitto.stop()
    gateway_config(tmp_path, mosquitto)
    daemon.start({"NOTIFY_SOCKET": notify_socket.getsockname()})
    next_message(notify_socket, "READY=1")
    began = time.monotonic()
    assert daemon.terminate(timeout=10) == 0
    assert time.monotonic() - began < 5


def test_store_of_a_newer_carebed_stops_with_status_78(
    tmp_path: Path, mosquitto: Mosquitto, daemon: GatewayProcess
) -> None:
    import sqlite3

    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "outbox.sqlite3")
    db.execute("PRAGMA user_version=99")
    db.close()
    gateway_config(tmp_path, mosquitto)
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=20) == 78
    assert "newer than this carebed" in daemon.log_text()


@pytest.mark.parametrize(
    ("section", "name"),
    [("button", "buttons.json"), ("watch", "watches.json")],
)
def test_a_state_file_that_cannot_be_read_stops_with_status_1(
    tmp_path: Path, mosquitto: Mosquitto, daemon: GatewayProcess, section: str, name: str
) -> None:
    """Unreadable is not empty: no paired button or watch is forgotten; systemd tries again.

    The backup copy is a directory (the file itself looks fine to the preflight checks): reading
    it fails with EISDIR, even for root."""
    state = tmp_path / "state"
    (state / f"{name}.bak").mkdir(parents=True)
    gateway_config(tmp_path, mosquitto, **{section: {"enabled": True}})
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=20) == 1
    assert f"carebed: cannot read {state / name}.bak: Is a directory" in daemon.log_text()


def wait_for_event(daemon: GatewayProcess, event: str, timeout: float) -> dict[str, Any]:
    """The first log record of ``event``, read from the daemon's log as it grows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in daemon.log_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == event:
                return dict(json.loads(line))
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, daemon.log_text()
        time.sleep(0.05)
    raise AssertionError(f"no {event} within {timeout} s:\n{daemon.log_text()[-3000:]}")


def test_a_password_everyone_can_read_is_warned_of_and_the_daemon_runs(
    tmp_path: Path, mosquitto: Mosquitto, daemon: GatewayProcess
) -> None:
    path = gateway_config(tmp_path, mosquitto, mqtt={"password": SECRET})
    path.chmod(0o644)
    daemon.start()
    warning = wait_for_event(daemon, "config_file_readable_by_others", 20)
    assert warning["level"] == "warning"
    assert warning["path"] == str(path)
    assert "mqtt.password" in warning["problem"]
    assert warning["fix"].startswith(f"chmod 640 {path} && chgrp ")
    wait_for_event(daemon, "gateway_started", 20)
    assert daemon.terminate(timeout=10) == 0
    assert SECRET not in daemon.log_text()


def test_a_killed_daemon_is_announced_offline_by_its_will(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, daemon: GatewayProcess
) -> None:
    gateway_config(tmp_path, mosquitto)
    daemon.start()
    online = {"state": "online"}
    platform.wait_for(
        lambda p: any(m.payload and online.items() <= m.payload.items() for m in p.messages),
        20,
        "online",
    )
    daemon.kill()
    platform.wait_for(
        lambda p: any(
            m.payload == {"v": 1, "gw": "gw-a", "state": "offline", "reason": "lost"}
            for m in p.messages
        ),
        20,
        "the last will",
    )
