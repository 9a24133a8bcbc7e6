"""The installer's commands against a daemon that goes away mid-answer or hangs: a stand-in on a
real unix socket (the real daemon cannot be made to hang on purpose). Never a success, never a
wait without end, never "not running" when something holds the socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.test_doctor import carebed


@contextlib.asynccontextmanager
async def fake_daemon(socket: Path, mode: str) -> AsyncIterator[list[str]]:
    """``eof``: answers ``test_alarm`` with ``stored`` then closes (a daemon that dies), any
    other command with nothing; ``hang``: takes the request and never answers."""
    requests: list[str] = []
    done = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = json.loads(await reader.readline())
        requests.append(request["cmd"])
        if mode == "hang":
            await done.wait()
        elif request["cmd"] == "test_alarm":
            stored = {"event": "stored", "alarm_id": "X1", "device": "rcv-gw-a", "at": time.time()}
            writer.write(json.dumps(stored).encode() + b"\n")
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_unix_server(serve, path=str(socket))
    async with server:
        try:
            yield requests
        finally:
            done.set()
            server.close()
            await server.wait_closed()


def _config(tmp_path: Path) -> Path:
    (tmp_path / "state").mkdir(exist_ok=True)
    config = tmp_path / "carebed.toml"
    config.write_text(
        f'[gateway]\nid = "gw-a"\nstate_dir = "{tmp_path / "state"}"\n'
        f'control_socket = "{tmp_path / "control.sock"}"\n'
        '[mqtt]\nhost = "127.0.0.1"\nport = 1\nplaintext = true\n'
    )
    return config


async def test_test_alarm_fails_when_the_daemon_goes_away(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with fake_daemon(tmp_path / "control.sock", "eof"):
        status, out = await carebed(config, "test-alarm", "--timeout", "5")
    assert status == 1, out
    assert "The whole chain works" not in out, out
    assert "stopped answering" in out and "journalctl -u carebed" in out, out


@pytest.mark.parametrize("command", ["status", "support-bundle"])
async def test_a_hung_daemon_is_a_clear_error_not_a_wait_without_end(
    tmp_path: Path, command: str
) -> None:
    config = _config(tmp_path)
    args = ("--output", str(tmp_path)) if command == "support-bundle" else ()
    started = time.monotonic()
    async with fake_daemon(tmp_path / "control.sock", "hang"):
        status, out = await carebed(config, command, *args)
    assert time.monotonic() - started < 60, out
    assert "Traceback" not in out, out
    if command == "status":
        assert status == 1, out
        assert "not answering" in out and "systemctl restart carebed" in out, out
    else:  # the bundle is still written, and says what the daemon did
        assert status == 0, out
        with tarfile.open(out.strip().splitlines()[-1]) as tar:
            member = tar.extractfile("carebed-support/status.json")
            assert member is not None
            assert "not answering" in json.loads(member.read())["daemon"]


async def test_the_doctor_does_not_take_a_silent_daemon_for_an_absent_one(tmp_path: Path) -> None:
    config = _config(tmp_path)
    async with fake_daemon(tmp_path / "control.sock", "eof") as requests:
        status, out = await carebed(config, "doctor", "--json", "--boot-dir", str(tmp_path))
    assert status == 1, out
    checks = {check["id"]: check for check in json.loads(out)["checks"]}
    assert checks["daemon.socket"]["status"] == "fail", out
    assert "not answering" in checks["daemon.socket"]["detail"], out
    assert "journalctl" in checks["daemon.socket"]["fix"], out
    # It went no further: no serial port opened, no broker session taken as the gateway.
    assert "mqtt.connect" not in checks and "button.receiver" not in checks, out
    assert requests == ["doctor"]


@pytest.mark.parametrize(
    "command",
    [("status",), ("test-alarm", "--timeout", "60"), ("support-bundle",), ("doctor", "--json")],
)
async def test_ctrl_c_is_one_line_not_a_traceback(tmp_path: Path, command: tuple[str, ...]) -> None:
    config = _config(tmp_path)
    async with fake_daemon(tmp_path / "control.sock", "hang") as requests:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            *command,
            "--config",
            str(config),
            *(("--boot-dir", str(tmp_path)) if command[0] == "doctor" else ()),
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(30):
            while not requests:  # it is waiting for the daemon's answer
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert "Traceback" not in out.decode(), out.decode()
    assert proc.returncode in (1, 130), out.decode()
