"""The notify protocol against real unix datagram sockets, bound the way systemd binds them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway.app.sdnotify import GatewayState, SystemdNotifier, status_loop, watchdog_loop

RECV_TIMEOUT_S = 5.0


@dataclass
class Listener:
    """A bound datagram socket standing in for systemd, and its NOTIFY_SOCKET spelling."""

    sock: socket.socket
    notify_socket: str

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    async def recv_async(self) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(RECV_TIMEOUT_S):
            data = await loop.sock_recv(self.sock, 4096)
        return data.decode()

    def drain(self) -> list[str]:
        """Everything queued right now, without waiting."""
        got: list[str] = []
        timeout = self.sock.gettimeout()
        self.sock.setblocking(False)
        try:
            while True:
                got.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            return got
        finally:
            self.sock.settimeout(timeout)


def _bind_path(tmp_path: Path) -> Listener:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(RECV_TIMEOUT_S)
    return Listener(sock, str(path))


def _bind_abstract() -> Listener:
    name = f"carebed-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(RECV_TIMEOUT_S)
    return Listener(sock, "@" + name)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests may themselves run under systemd: start from an environment without its variables."""
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    bound = _bind_path(tmp_path) if request.param == "path" else _bind_abstract()
    yield bound
    bound.sock.close()


@pytest.fixture
def notifiers() -> Iterator[list[SystemdNotifier]]:
    """Collects notifiers built by a test and closes them afterwards."""
    made: list[SystemdNotifier] = []
    yield made
    for notifier in made:
        notifier.close()


def _from_env(
    made: list[SystemdNotifier],
    monkeypatch: pytest.MonkeyPatch,
    notify_socket: str | None,
    **env: str,
) -> SystemdNotifier:
    if notify_socket is not None:
        monkeypatch.setenv("NOTIFY_SOCKET", notify_socket)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notifier = SystemdNotifier.from_env()
    made.append(notifier)
    return notifier


def test_each_notification_arrives_as_one_datagram(
    listener: Listener,
    notifiers: list[SystemdNotifier],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notifier = _from_env(notifiers, monkeypatch, listener.notify_socket)
    assert notifier.enabled

    assert notifier.ready() is True
    assert listener.recv() == "READY=1"
    assert notifier.ready(status="outbox: 0 pending") is True
    assert listener.recv() == "READY=1\nSTATUS=outbox: 0 pending"
    assert notifier.status("uplink connected") is True
    assert listener.recv() == "STATUS=uplink connected"
    assert notifier.watchdog() is True
    assert listener.recv() == "WATCHDOG=1"
    assert notifier.stopping() is True
    assert listener.recv() == "STOPPING=1"
    assert listener.drain() == []


def test_status_cannot_forge_another_assignment(
    listener: Listener,
    notifiers: list[SystemdNotifier],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notifier = _from_env(notifiers, monkeypatch, listener.notify_socket)
    notifier.status("broker down\nREADY=1")
    assert listener.recv() == "STATUS=broker down READY=1"
    notifier.ready(status="a\r\nSTOPPING=1")
    assert listener.recv() == "READY=1\nSTATUS=a  STOPPING=1"


def test_without_notify_socket_everything_is_a_silent_no_op(
    notifiers: list[SystemdNotifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    with capture_logs() as logs:
        notifier = _from_env(notifiers, monkeypatch, None, WATCHDOG_USEC="30000000")
        assert not notifier.enabled
        assert notifier.watchdog_interval_s is None
        assert notifier.ready("up") is False
        assert notifier.status("x") is False
        assert notifier.watchdog() is False
        assert notifier.stopping() is False
        notifier.close()
    assert logs == []


def test_empty_notify_socket_is_disabled(
    notifiers: list[SystemdNotifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = _from_env(notifiers, monkeypatch, "")
    assert not notifier.enabled
    assert notifier.ready() is False


def test_unsupported_address_is_disabled_and_logged(
    notifiers: list[SystemdNotifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    with capture_logs() as logs:
        notifier = _from_env(notifiers, monkeypatch, "vsock:2:1234")
        assert notifier.ready() is False
    assert not notifier.enabled
    assert [entry["event"] for entry in logs] == ["sd_notify_unsupported_address"]


def test_send_to_vanished_path_socket_is_logged_not_raised(
    tmp_path: Path, notifiers: list[SystemdNotifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _bind_path(tmp_path)
    notifier = _from_env(notifiers, monkeypatch, first.notify_socket)
    notifier.ready()
    assert first.recv() == "READY=1"
    first.sock.close()
    Path(first.notify_socket).unlink()

    with capture_logs() as logs:
        assert notifier.watchdog() is False  # ENOENT
        assert notifier.watchdog() is False
        second = _bind_path(tmp_path)  # the manager comes back at the same path
        try:
            assert notifier.status("back") is True
            assert second.recv() == "STATUS=back"
        finally:
            second.sock.close()

    failed = [entry for entry in logs if entry["event"] == "sd_notify_failed"]
    assert [entry["log_level"] for entry in failed] == ["warning", "debug"]
    assert failed[0]["notification"] == "WATCHDOG=1"
    assert failed[0]["address"] == first.notify_socket
    assert failed[1]["consecutive_failures"] == 2
    recovered = [entry for entry in logs if entry["event"] == "sd_notify_recovered"]
    assert [entry["failed_sends"] for entry in recovered] == [2]


def test_send_to_closed_abstract_socket_is_logged_not_raised(
    notifiers: list[SystemdNotifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = _bind_abstract()
    notifier = _from_env(notifiers, monkeypatch, gone.notify_socket)
    gone.sock.close()  # ECONNREFUSED from now on
    with capture_logs() as logs:
        assert notifier.stopping() is False
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]
    assert logs[0]["address"] == gone.notify_socket


def test_overlong_path_is_logged_not_raised(
    notifiers: list[SystemdNotifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = _from_env(notifiers, monkeypatch, "/" + "x" * 200)
    with capture_logs() as logs:
        assert notifier.ready() is False
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]


def test_close_makes_later_notifications_no_ops(
    listener: Listener, notifiers: list[SystemdNotifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = _from_env(notifiers, monkeypatch, listener.notify_socket, WATCHDOG_USEC="2000000")
    notifier.ready()
    assert listener.recv() == "READY=1"
    notifier.close()
    notifier.close()  # idempotent
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert notifier.watchdog() is False
    assert listener.drain() == []


@pytest.mark.parametrize(
    ("env", "interval_s"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
        ({}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "thirty"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "me"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_our_pid(
    env: dict[str, str],
    interval_s: float | None,
    tmp_path: Path,
    notifiers: list[SystemdNotifier],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notifier = _from_env(notifiers, monkeypatch, str(tmp_path / "notify"), **env)
    assert notifier.watchdog_interval_s == interval_s


@contextlib.asynccontextmanager
async def _running(
    notifier: SystemdNotifier, interval_s: float
) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(watchdog_loop(notifier, interval_s), name="systemd.watchdog")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_watchdog_loop_pings_at_the_interval_from_watchdog_usec(
    listener: Listener, notifiers: list[SystemdNotifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    listener.sock.setblocking(False)
    notifier = _from_env(notifiers, monkeypatch, listener.notify_socket, WATCHDOG_USEC="200000")
    interval_s = notifier.watchdog_interval_s
    assert interval_s == 0.1
    loop = asyncio.get_running_loop()

    arrivals: list[float] = []
    async with _running(notifier, interval_s) as task:
        for _ in range(5):
            assert await listener.recv_async() == "WATCHDOG=1"
            arrivals.append(loop.time())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # Pings are sent synchronously, so whatever the loop sent is queued by now; the task is
    # finished, so nothing can follow.
    leftovers = listener.drain()
    assert set(leftovers) <= {"WATCHDOG=1"}
    assert len(leftovers) <= 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    # Each gap is one interval; arrival times are taken on the receiving side, so allow jitter.
    assert all(gap >= interval_s * 0.5 for gap in gaps), gaps
    assert arrivals[-1] - arrivals[0] >= 4 * interval_s * 0.9, gaps


async def test_a_wedged_event_loop_sends_no_pings(
    listener: Listener, notifiers: list[SystemdNotifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    listener.sock.setblocking(False)
    notifier = _from_env(notifiers, monkeypatch, listener.notify_socket, WATCHDOG_USEC="100000")
    interval_s = notifier.watchdog_interval_s
    assert interval_s == 0.05

    async with _running(notifier, interval_s):
        assert await listener.recv_async() == "WATCHDOG=1"
        # Hold the event loop for six intervals, as a blocking call on the loop would.
        time.sleep(interval_s * 6)  # noqa: ASYNC251 - wedging the loop is the point
        assert listener.drain() == []
        # Once the loop runs again, so do the pings.
        assert await listener.recv_async() == "WATCHDOG=1"


async def test_watchdog_loop_rejects_a_non_positive_interval(
    listener: Listener, notifiers: list[SystemdNotifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    notifier = _from_env(notifiers, monkeypatch, listener.notify_socket)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="watchdog interval"):
            await watchdog_loop(notifier, bad)
    assert listener.drain() == []


def test_the_status_line_names_the_gateway_state() -> None:
    assert str(GatewayState(True, 1, 1, 0)) == "uplink up, 1 button, 1 watch, 0 alarms pending"
    assert str(GatewayState(False, None, 2, 1)) == "uplink DOWN, 2 watches, 1 alarm pending"
    assert str(GatewayState(True, None, None, 3)) == "uplink up, 3 alarms pending"


async def test_the_status_line_is_sent_when_the_state_changes(listener: Listener) -> None:
    listener.sock.setblocking(False)
    notifier = SystemdNotifier(listener.notify_socket)
    states = [GatewayState(False, 1, None, 0)] * 3 + [GatewayState(True, 1, None, 0)] * 3
    asked = asyncio.Event()

    async def state() -> GatewayState:
        if len(states) == 1:
            asked.set()
        return states.pop(0) if len(states) > 1 else states[0]

    task = asyncio.create_task(status_loop(notifier, state, 0.01), name="systemd.status")
    try:
        assert await listener.recv_async() == "STATUS=uplink DOWN, 1 button, 0 alarms pending"
        assert await listener.recv_async() == "STATUS=uplink up, 1 button, 0 alarms pending"
        async with asyncio.timeout(RECV_TIMEOUT_S):
            await asked.wait()
        assert listener.drain() == []  # the same state is not sent again
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        notifier.close()
