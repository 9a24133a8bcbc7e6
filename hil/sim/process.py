"""One server process of the rig: spawned with a log file, awaited with a deadline, stopped, reaped.

The launchers of Mosquitto, NATS, RabbitMQ and PostgreSQL are ``RigServer``s: each owns one
``ServerProcess`` while its server runs, which never outlives it (a finalizer kills it if the
launcher is dropped).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self


def read_logs(*paths: Path) -> str:
    """The text of each log file that exists, one after the other."""
    parts = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "".join(parts)


def log_tail(text: str, name: str, where: Path, lines: int) -> str:
    """The last ``lines`` lines of ``text`` under ``--- NAME log tail (WHERE) ---``."""
    return f"--- {name} log tail ({where}) ---\n" + "\n".join(text.splitlines()[-lines:])


def tcp_accepts(host: str, port: int) -> bool:
    """True once ``host:port`` accepts a TCP connection; ``OSError`` (why not) otherwise."""
    with socket.create_connection((host, port), timeout=1.0):
        return True


class ServerProcess:
    """A running child: ``argv`` spawned in ``cwd`` with stdout and stderr appended to ``log_path``.

    If ``owner`` is garbage-collected (or at interpreter exit) while the child runs, the child gets
    ``reap_signal`` (if any) and ``reap_timeout_s`` to exit, then SIGKILL; ``detach`` cancels that
    once the owner has stopped it itself.
    """

    def __init__(
        self,
        owner: object,
        argv: list[str],
        *,
        log_path: Path,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        reap_timeout_s: float,
        reap_signal: signal.Signals | None = None,
    ) -> None:
        # The child has its own copy of the descriptor: ours is closed at once.
        with log_path.open("ab") as log:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        self._reaper = weakref.finalize(owner, _reap, self.proc, reap_timeout_s, reap_signal)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_ready(
        self,
        probe: Callable[[], bool],
        *,
        timeout_s: float,
        interval_s: float,
        timed_out: Callable[[BaseException | None], Exception],
        exited: Callable[[int], Exception],
        errors: tuple[type[Exception], ...] = (OSError,),
    ) -> None:
        """Until ``probe()`` is true; one of ``errors`` from it counts as "not yet". Raises
        ``timed_out(last error)`` after ``timeout_s``, ``exited(status)`` as soon as the child
        exits (the pause between probes is a wait for it)."""
        deadline = time.monotonic() + timeout_s
        last_error: BaseException | None = None
        while True:
            try:
                if probe():
                    return
            except errors as exc:
                last_error = exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timed_out(last_error)
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.proc.wait(timeout=min(interval_s, remaining))
                raise exited(code)

    def wake(self) -> None:
        """SIGCONT: a stopped process keeps other signals pending until continued; harmless
        otherwise."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)

    def stop(self, signum: signal.Signals, timeout_s: float) -> bool:
        """Send ``signum`` and wait for the exit; False if the child was still running after
        ``timeout_s`` (it still runs: the caller kills it and reports)."""
        if not self.running:
            return True
        self.proc.send_signal(signum)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self, timeout_s: float) -> None:
        """SIGKILL (also to a stopped child) and reap it."""
        if self.running:
            self.wake()
            self.proc.kill()
            self.proc.wait(timeout=timeout_s)

    def detach(self) -> None:
        """The owner is done with the child: no reaping at garbage collection any more."""
        self._reaper.detach()


class RigLauncher:
    """Base of a launcher of the rig (one server or a cluster of them): ``start``, ``stop`` (an
    orderly one) and ``kill`` (a crash) are the subclass's; ``close`` never leaves a process
    behind, and ``with`` starts and closes."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop if running; never leaves a process behind, even a frozen or stubborn one."""
        try:
            self.stop()
        finally:
            self.kill()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RigServer(RigLauncher):
    """Base of a launcher whose server is one child process (``_server`` while it runs);
    subclasses stop it with ``_stop_with``."""

    _server: ServerProcess | None
    _kill_timeout_s: float

    @property
    def running(self) -> bool:
        return self._server is not None and self._server.running

    @property
    def pid(self) -> int | None:
        return None if self._server is None else self._server.pid

    def kill(self) -> None:
        """SIGKILL: a crash of the server."""
        if self._server is not None:
            self._server.kill(self._kill_timeout_s)
        self._forget()

    def _stop_with(
        self, signum: signal.Signals, timeout_s: float, ignored: Callable[[], Exception]
    ) -> None:
        """Send ``signum`` and wait; after ``timeout_s``, kill and raise ``ignored()``."""
        if self._server is not None and not self._server.stop(signum, timeout_s):
            self.kill()
            raise ignored()
        self._forget()

    def _forget(self) -> None:
        if self._server is not None:
            self._server.detach()
            self._server = None


def _reap(
    proc: subprocess.Popen[bytes], timeout_s: float, reap_signal: signal.Signals | None
) -> None:
    """Last-resort cleanup of a child whose launcher was garbage-collected (or at exit)."""
    if proc.poll() is not None:
        return
    if reap_signal is not None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(reap_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout_s)
            return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
