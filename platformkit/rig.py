"""The platform's side on the simulated rig: the ingest's workers as processes, and waiting on
what PostgreSQL holds. For the tests, the demo and the fleet benchmarks; never the ingest's own
code (which knows nothing of the rig).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import psycopg

from hil.sim.process import ServerProcess

STOP_TIMEOUT_S = 10.0
POLL_S = 0.05
LOG_TAIL_CHARS = 3000

T = TypeVar("T")


class IngestProcesses:
    """Ingest workers as child processes (``python -m platformkit.ingest worker``), one per
    name, logging to ``logdir/NAME.log``; killed (SIGKILL) and started again under the same
    name as a supervisor would.

    ``transport``: how they reach the broker, ``("--plaintext",)`` or the TLS options
    (``tls_args``); there is no default, as there is none on the ingest's command line."""

    def __init__(
        self,
        dsn: str,
        broker: str,
        logdir: Path,
        *,
        transport: Sequence[str],
        gap_grace_s: float = 1.0,
        gap_check_s: float = 0.2,
        presence_poll_s: float = 0.2,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.dsn = dsn
        self.broker = broker
        self.logdir = logdir
        self.transport = tuple(transport)
        self.options = (
            "--gap-grace-s",
            str(gap_grace_s),
            "--gap-check-s",
            str(gap_check_s),
            "--presence-poll-s",
            str(presence_poll_s),
            *extra_args,
        )
        self.procs: dict[str, ServerProcess] = {}

    def start(self, name: str) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "platformkit.ingest", "--dsn", self.dsn]
        argv += ["--broker", self.broker, *self.transport, "worker", "--name", name, *self.options]
        self.procs[name] = ServerProcess(
            self,
            argv,
            log_path=self.logdir / f"{name}.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            reap_timeout_s=STOP_TIMEOUT_S,
            reap_signal=signal.SIGTERM,
        )

    def wait_logged(self, name: str, text: str, timeout_s: float = 30.0) -> None:
        """Until worker ``name`` has logged ``text`` (e.g. ``ingest_started``)."""

        def timed_out(_: BaseException | None) -> Exception:
            return TimeoutError(f"worker {name} did not log {text!r}:\n{self.tail(name)}")

        def exited(code: int) -> Exception:
            return RuntimeError(f"worker {name} exited ({code}):\n{self.tail(name)}")

        self.procs[name].wait_ready(
            lambda: text in self.log(name),
            timeout_s=timeout_s,
            interval_s=POLL_S,
            timed_out=timed_out,
            exited=exited,
        )

    def kill(self, name: str) -> None:
        """SIGKILL: the worker dies between any two instructions."""
        self.procs[name].kill(STOP_TIMEOUT_S)

    def stop(self, name: str) -> None:
        proc = self.procs[name]
        if not proc.stop(signal.SIGTERM, STOP_TIMEOUT_S):
            proc.kill(STOP_TIMEOUT_S)
        proc.detach()

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


def tls_args(ca_file: Path, cert_dir: Path) -> tuple[str, ...]:
    """The ingest's TLS options for certificates named ``cert_dir/client-NAME.crt`` and
    ``.key`` (as ``hil.sim.pki`` writes them), one per link name."""
    return (
        *("--ca-file", str(ca_file)),
        *("--cert-file", str(cert_dir / "client-{name}.crt")),
        *("--key-file", str(cert_dir / "client-{name}.key")),
    )


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
