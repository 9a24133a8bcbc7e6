"""The rig's broker: a real Mosquitto with its own config on a free 127.0.0.1 port.

The one launcher of tests, bench, hil/ and the demo; tests also freeze, kill and restart it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from hil.sim.pki import Pki
from hil.sim.process import RigServer, ServerProcess, log_tail, read_logs, tcp_accepts

REPO_ROOT = Path(__file__).resolve().parents[2]
# The ACL file we ship to installers; the TLS broker of the tests loads this very file.
SHIPPED_ACL = REPO_ROOT / "config" / "mosquitto" / "carebed.acl"

HOST = "127.0.0.1"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
SIGNAL_TIMEOUT_S = 5.0
PROBE_INTERVAL_S = 0.02
LOG_TAIL_LINES = 40
# Per subscriber: messages beyond max_queued_messages are silently dropped by the broker
# (default 1000), which would turn a flood test into a false "the gateway lost events".
MAX_QUEUED_MESSAGES = 1_000_000
# Also the Receive Maximum that Mosquitto announces to MQTT 5 clients. 20 (the default) throttles
# a publisher; paho gets slower, not faster, near 1000 (it scans its in-flight list on each ack).
MAX_INFLIGHT_MESSAGES = 100


class MosquittoError(Exception):
    """The rig's broker could not be started, stopped or signalled."""


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    """Path of the mosquitto executable (Debian installs it in /usr/sbin, off a user's PATH)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    found = shutil.which("mosquitto", path=search)
    if found is None:
        raise MosquittoError("mosquitto not found on PATH, /usr/sbin or /usr/local/sbin")
    return found


class Mosquitto(RigServer):
    """One Mosquitto broker listening on 127.0.0.1 only, configured and logging in `workdir`.

    Plain TCP with anonymous access by default. With `pki`: TLS 1.2+, a client certificate is
    required and its CN becomes the username and the client id, as in the shipped
    `config/mosquitto/carebed-broker.conf`. With `acl`: the shipped `carebed.acl` is loaded.
    """

    _kill_timeout_s = STOP_TIMEOUT_S

    def __init__(
        self,
        workdir: Path,
        *,
        pki: Pki | None = None,
        acl: bool = False,
        port: int | None = None,
        persistence: bool = True,
        autosave_interval_s: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.host = HOST
        self.port = free_port() if port is None else port
        self.pki = pki
        self.acl = acl
        self.persistence = persistence
        # Seconds between saves of the persistence file (Mosquitto's default: 1800). Only an
        # orderly stop saves otherwise, so a SIGKILL loses everything since the last save.
        self.autosave_interval_s = autosave_interval_s
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        # Mosquitto writes config errors to stderr before its log file is open.
        self.stderr_path = workdir / "mosquitto.stderr"
        self._server = None
        self._frozen = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the broker and wait until its port accepts TCP connections."""
        if self.running:
            raise MosquittoError(f"mosquitto on port {self.port} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        server = ServerProcess(
            self,
            [mosquitto_binary(), "-c", str(self.config_path)],
            log_path=self.stderr_path,
            cwd=self.workdir,
            reap_timeout_s=SIGNAL_TIMEOUT_S,
        )
        self._server, self._frozen = server, False
        try:
            self._wait_until_listening(server)
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """SIGTERM and wait: Mosquitto saves its persistence file on the way out."""
        server = self._server
        if server is None:
            return
        if server.running:
            self._wake(server)
        self._stop_with(
            signal.SIGTERM,
            STOP_TIMEOUT_S,
            lambda: MosquittoError(
                f"mosquitto on port {self.port} ignored SIGTERM for {STOP_TIMEOUT_S} s; "
                f"killed.\n{self.log_tail()}"
            ),
        )

    def kill(self) -> None:
        """SIGKILL: a crash. Nothing is saved after the last autosave."""
        super().kill()

    def restart(self) -> None:
        """Stop (orderly, persistence saved) and start again on the same port."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP, returning once the kernel reports the broker stopped.

        Open TCP connections stay open and new ones still complete (the kernel's listen backlog),
        but nothing is read or answered: no CONNACK, no PUBACK, no delivery, until `thaw`.
        """
        proc = self._require_running()
        proc.send_signal(signal.SIGSTOP)
        self._await_child_state(proc, os.WSTOPPED, os.CLD_STOPPED)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT, returning once the kernel reports the broker running again."""
        proc = self._require_running()
        proc.send_signal(signal.SIGCONT)
        self._await_child_state(proc, os.WCONTINUED, os.CLD_CONTINUED)
        self._frozen = False

    # -- state and logs ----------------------------------------------------------------------

    @property
    def frozen(self) -> bool:
        return self._frozen

    def log_text(self) -> str:
        """Everything the broker wrote: its log file, then anything it printed to stderr."""
        return read_logs(self.log_path, self.stderr_path)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_text(), "mosquitto", self.log_path, lines)

    def config_text(self) -> str:
        """The configuration this broker runs with (rewritten at each start)."""
        lines = [
            "# Generated by hil/sim/broker.py for one run; not an example to copy.",
            # Global options.
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {_conf_path(self.workdir)}/",
            *(
                [f"autosave_interval {self.autosave_interval_s}"]
                if self.autosave_interval_s is not None
                else []
            ),
            f"log_dest file {_conf_path(self.log_path)}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            # Otherwise Mosquitto drops to user "mosquitto" and cannot read our temp files.
            lines.append("user root")
        if self.acl:
            lines.append(f"acl_file {_conf_path(SHIPPED_ACL)}")
        lines.append(f"listener {self.port} {self.host}")
        if self.pki is None:
            lines.append("allow_anonymous true")
        else:
            lines += [
                "allow_anonymous false",
                f"cafile {_conf_path(self.pki.ca_cert)}",
                f"certfile {_conf_path(self.pki.server_cert)}",
                f"keyfile {_conf_path(self.pki.server_key)}",
                "require_certificate true",
                "use_identity_as_username true",
                # As shipped: the client id is forced to the CN, so another gateway's
                # certificate can neither kick a gateway off nor take over its session.
                "use_username_as_clientid true",
                "tls_version tlsv1.2",
            ]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        state = "frozen" if self._frozen else "running" if self.running else "stopped"
        tls = "tls" if self.pki else "plain"
        return f"<Mosquitto {self.host}:{self.port} {tls} acl={self.acl} {state}>"

    # -- internals ---------------------------------------------------------------------------

    def _wait_until_listening(self, server: ServerProcess) -> None:
        server.wait_ready(
            lambda: tcp_accepts(self.host, self.port),
            timeout_s=START_TIMEOUT_S,
            interval_s=PROBE_INTERVAL_S,
            timed_out=lambda last_error: MosquittoError(
                f"mosquitto did not accept connections on {self.host}:{self.port} within "
                f"{START_TIMEOUT_S} s ({last_error!r}).\n{self.log_tail()}"
            ),
            exited=lambda code: MosquittoError(
                f"mosquitto exited with status {code} during start-up "
                f"(port {self.port}).\n{self.log_tail()}"
            ),
        )

    def _require_running(self) -> subprocess.Popen[bytes]:
        server = self._server
        if server is None or not server.running:
            raise MosquittoError(f"mosquitto on port {self.port} is not running")
        return server.proc

    def _wake(self, server: ServerProcess) -> None:
        # A stopped process keeps SIGTERM pending until continued (also after a SIGSTOP sent by
        # someone else than `freeze`).
        server.wake()
        self._frozen = False

    def _await_child_state(self, proc: subprocess.Popen[bytes], option: int, code: int) -> None:
        # waitid blocks until the kernel reports the stop/continue; WNOWAIT leaves the child
        # waitable so Popen still reaps it and learns its exit status.
        result = os.waitid(os.P_PID, proc.pid, option | os.WEXITED | os.WNOWAIT)
        if result is None or result.si_code != code:
            raise MosquittoError(
                f"mosquitto on port {self.port} did not change state as signalled "
                f"({result!r}).\n{self.log_tail()}"
            )

    def _forget(self) -> None:
        super()._forget()
        self._frozen = False


def _conf_path(path: Path) -> str:
    text = str(path.resolve())
    if any(ch.isspace() for ch in text):
        raise MosquittoError(f"mosquitto.conf cannot hold a path with white space: {text!r}")
    return text
