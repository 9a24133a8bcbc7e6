"""The rig's database: a real PostgreSQL in its own temporary data directory on a free port.

The one launcher of the platform's tests, benchmarks and demo (the reference ingest stores the
gateways' events in it). Started as root, the server runs as the ``postgres`` user (or
``nobody``): ``initdb`` refuses root.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

from hil.sim.broker import HOST, free_port
from hil.sim.process import RigServer, ServerProcess, log_tail, read_logs

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
KILL_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.02
LOG_TAIL_LINES = 40
SUPERUSER = "carebed"
DATABASE = "carebed"
# Users that may own the server's files when we are root, in order of preference.
SERVICE_USERS = ("postgres", "nobody")


class PostgresError(Exception):
    """The rig's database could not be created, started or stopped."""


def postgres_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/N/bin`` (Debian), else the directory of ``pg_ctl``."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    if on_path is None:
        raise PostgresError(
            "PostgreSQL not found in /usr/lib/postgresql/*/bin or on PATH "
            "(scripts/install-system-deps installs it)"
        )
    return Path(on_path).resolve().parent


def _service_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None when we are not root (it runs as us)."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresError(f"running as root and none of the users {SERVICE_USERS} exists")


class Postgres(RigServer):
    """One PostgreSQL server listening on 127.0.0.1:``port`` and on a unix socket of its own.

    ``start`` creates the cluster on first use (``initdb``, trust authentication for local
    connections, superuser ``carebed``) and the database ``carebed``; ``stop`` is an orderly
    shutdown (SIGINT: PostgreSQL's fast mode), ``kill`` a crash of the server (SIGKILL to the
    postmaster); ``close`` stops and removes the directory. ``durable=False`` turns fsync off:
    for tests that never crash the server, where it saves time; never for a benchmark.
    """

    _kill_timeout_s = KILL_TIMEOUT_S

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        port: int | None = None,
        durable: bool = True,
        max_connections: int = 100,
    ) -> None:
        self.host = HOST
        self.port = free_port() if port is None else port
        self.durable = durable
        self.max_connections = max_connections
        self.bin_dir = postgres_bin_dir()
        # Its own directory, not the caller's: the server's user must be able to reach it (a
        # pytest tmp_path sits in a directory only root may enter).
        self.workdir = Path(tempfile.mkdtemp(prefix="carebed-pg-", dir=base_dir))
        self.data_dir = self.workdir / "data"
        self.socket_dir = self.workdir / "socket"
        self.log_path = self.workdir / "postgres.log"
        self._user = _service_user()
        self._server = None

    # -- where to connect --------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """A libpq connection string (psycopg, asyncpg, psql) over TCP, to database carebed."""
        return self.dsn_of(DATABASE)

    def dsn_of(self, database: str) -> str:
        return f"host={self.host} port={self.port} user={SUPERUSER} dbname={database}"

    def create_database(self, name: str) -> str:
        """A new empty database on the running server (a test's own); returns its DSN."""
        self._createdb(name)
        return self.dsn_of(name)

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{DATABASE}"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster if needed, start the server, wait until it accepts connections."""
        if self.running:
            raise PostgresError(f"postgres on port {self.port} is already running")
        fresh = not (self.data_dir / "PG_VERSION").exists()
        if fresh:
            self._initdb()
        # The postmaster is our child (not pg_ctl's daemon): we reap it, so a killed server
        # leaves no zombie whose pid would make the next start believe it still runs.
        argv = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-h",
            self.host,
            "-k",
            str(self.socket_dir),
        ]
        # If this object is dropped while the server runs: SIGQUIT (immediate shutdown) first.
        self._server = ServerProcess(
            self,
            _as_user(self._user, argv),
            log_path=self.log_path,
            cwd=self.workdir,
            reap_timeout_s=KILL_TIMEOUT_S,
            reap_signal=signal.SIGQUIT,
        )
        try:
            self._wait_until_ready(self._server)
            if fresh:
                self._createdb()
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """An orderly shutdown (SIGINT, PostgreSQL's "fast" mode: sessions are disconnected,
        what was committed is kept)."""
        self._stop_with(
            signal.SIGINT,
            STOP_TIMEOUT_S,
            lambda: PostgresError(
                f"postgres on port {self.port} ignored SIGINT for {STOP_TIMEOUT_S} s; "
                f"killed.\n{self.log_tail()}"
            ),
        )

    def kill(self) -> None:
        """SIGKILL to the postmaster: a crash; its backends exit when they notice. The next
        ``start`` recovers from the WAL."""
        if self._server is None:
            return
        self._server.kill(KILL_TIMEOUT_S)
        # The backends leave with their postmaster (the next start refuses while they hold
        # its shared memory).
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while _backends_of(self.data_dir) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
        self._forget()

    def close(self) -> None:
        """Stop if running and remove the directory; never leaves a process behind."""
        try:
            self.stop()
        except PostgresError:
            self.kill()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    # -- state and logs ----------------------------------------------------------------------

    def log_text(self) -> str:
        return read_logs(self.log_path)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_text(), "postgres", self.log_path, lines)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Postgres {self.host}:{self.port} {self.data_dir} {state}>"

    # -- internals ---------------------------------------------------------------------------

    def _initdb(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)
        if self._user is not None:
            for path in (self.workdir, self.socket_dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        result = self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                *([] if self.durable else ["--no-sync"]),
            ],
            timeout=120,
        )
        if result.returncode != 0:
            raise PostgresError(f"initdb failed ({result.returncode}):\n{result.stdout}")
        settings = [
            "# Set by hil/sim/postgres.py for one run; not an example to copy.",
            f"max_connections = {self.max_connections}",
            "logging_collector = off",
            "log_min_messages = warning",
            "log_line_prefix = '%m [%p] '",
            # Without fsync a crash of the server loses nothing (the WAL is in the kernel at
            # commit); a crash of the machine would.
            *([] if self.durable else ["fsync = off"]),
        ]
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n" + "\n".join(settings) + "\n")

    def _createdb(self, name: str = DATABASE) -> None:
        result = self._run(
            [
                str(self.bin_dir / "createdb"),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                name,
            ],
            timeout=30,
        )
        if result.returncode != 0:
            raise PostgresError(f"createdb failed: {result.stdout}\n{self.log_tail()}")

    def _run(self, argv: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                _as_user(self._user, argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
                check=False,
                cwd=self.workdir,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{argv[0]} did not finish in {timeout} s") from exc

    def _wait_until_ready(self, server: ServerProcess) -> None:
        """Until ``postmaster.pid`` says "ready" (its 8th line, PostgreSQL 10 and later)."""
        pid_file = self.data_dir / "postmaster.pid"

        def ready() -> bool:
            lines = pid_file.read_text().splitlines()
            return len(lines) >= 8 and lines[0] == str(server.pid) and lines[7].strip() == "ready"

        server.wait_ready(
            ready,
            timeout_s=START_TIMEOUT_S,
            interval_s=POLL_INTERVAL_S,
            timed_out=lambda _: PostgresError(
                f"postgres was not ready on {self.host}:{self.port} within "
                f"{START_TIMEOUT_S} s.\n{self.log_tail()}"
            ),
            exited=lambda code: PostgresError(
                f"postgres exited with status {code} during start-up (port {self.port})."
                f"\n{self.log_tail()}"
            ),
        )


def _as_user(user: pwd.struct_passwd | None, argv: list[str]) -> list[str]:
    if user is None:
        return argv
    return [
        "setpriv",
        f"--reuid={user.pw_uid}",
        f"--regid={user.pw_gid}",
        "--clear-groups",
        "--reset-env",
        *argv,
    ]


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _backends_of(data_dir: Path) -> list[int]:
    """Live processes whose working directory is the data directory (the server's own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(os.readlink(entry / "cwd")) == data_dir and not _is_zombie(int(entry.name)):
                pids.append(int(entry.name))
    return pids
