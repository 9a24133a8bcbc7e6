"""The platform's side on the simulated rig: the ingest's workers as processes, and waiting on
what PostgreSQL holds. For the tests, the demo and the fleet benchmarks; never the ingest's own
code (which knows nothing of the rig).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import psycopg

STOP_TIMEOUT_S = 10.0
POLL_S = 0.05
LOG_TAIL_CHARS = 3000

T = TypeVar("T")


class IngestProcesses:
    """Ingest workers as child processes (``python -m platformkit.ingest worker``), one per
    name, logging to ``logdir/NAME.log``; killed (SIGKILL) and started again under the same
    name as a supervisor would."""

    def __init__(
        self,
        dsn: str,
        broker: str,
        logdir: Path,
        *,
        gap_grace_s: float = 1.0,
        gap_check_s: float = 0.2,
        presence_poll_s: float = 0.2,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.dsn = dsn
        self.broker = broker
        self.logdir = logdir
        self.options = (
            "--gap-grace-s",
            str(gap_grace_s),
            "--gap-check-s",
            str(gap_check_s),
            "--presence-poll-s",
            str(presence_poll_s),
            *extra_args,
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        self.logdir.mkdir(parents=True, exist_ok=True)
        with (self.logdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "platformkit.ingest",
                    "--dsn",
                    self.dsn,
                    "--broker",
                    self.broker,
                    "worker",
                    "--name",
                    name,
                    *self.options,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.procs[name] = proc
        return proc

    def wait_logged(self, name: str, text: str, timeout_s: float = 30.0) -> None:
        """Until worker ``name`` has logged ``text`` (e.g. ``ingest_started``)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log(name):
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"worker {name} exited ({proc.returncode}):\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker {name} did not log {text!r}:\n{self.tail(name)}")
            time.sleep(POLL_S)

    def kill(self, name: str) -> None:
        """SIGKILL: the worker dies between any two instructions."""
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def tail(self, name: str) -> str:
        return self.log(name)[-LOG_TAIL_CHARS:]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


async def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of one statement (none for one that returns none), on a connection of its
    own."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(sql, params)
        return await cur.fetchall() if cur.description is not None else []


async def eventually(
    probe: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout_s: float, what: str
) -> T:
    """Poll ``probe`` until ``check`` holds for what it returned; that value, or an
    AssertionError naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}: {value!r}")
        await asyncio.sleep(POLL_S)
