"""Run the real daemon (``python -m gateway run``) as a child process, and write its config.

With a simulated event source the child is the rig's entry instead (``python -m hil.sim.daemon
--sim SIM.toml run``): a config written with ``sim=`` names its SIM.toml in its first line, so
the file keeps its source when a test renames it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gateway.app import config, control
from gateway.store.spool import read_spool
from hil.sim.broker import Mosquitto

SIM_MARKER = "# simulated source: "


STARTED = '"gateway_started"'  # the log line of a daemon whose store is open and sources run


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + "}"
    raise TypeError(value)


def write_config(
    path: Path, sections: dict[str, dict[str, Any]], *, header: str | None = None
) -> Path:
    lines: list[str] = [] if header is None else [header]
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
    path.write_text("\n".join(lines) + "\n")
    return path


def gateway_config(
    workdir: Path,
    broker: Mosquitto,
    *,
    gateway_id: str = "gw-a",
    sim: dict[str, Any] | None = None,
    **overrides: dict[str, Any],
) -> Path:
    """A config for a gateway on ``broker`` (plain TCP, or TLS with ``gateway_id``'s cert).

    ``sim``: the ``[sim]`` settings of a simulated event source (``hil.sim.source.SimSettings``),
    written to ``sim.toml`` beside the config, which names it for ``GatewayProcess``.
    """
    mqtt: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": broker.port,
        "keepalive_s": 5,
        "backoff_min_s": 0.1,
        "backoff_cap_s": 1.0,
        "connect_timeout_s": 3.0,
    }
    sections: dict[str, dict[str, Any]] = {
        "gateway": {"id": gateway_id, "state_dir": workdir / "state", "heartbeat_s": 3600},
        "mqtt": mqtt,
        "logging": {"level": "info", "format": "json"},
        "outbox": {"group_commit_s": 0.05},
    }
    if broker.pki is None:
        mqtt["plaintext"] = True
    for name, values in overrides.items():
        sections.setdefault(name, {}).update(values)
    if broker.pki is not None:
        cert = broker.pki.client(gateway_id)
        sections["mqtt.tls"] = {
            "ca_file": broker.pki.ca_cert,
            "cert_file": cert.cert,
            "key_file": cert.key,
        }
    header = None
    if sim is not None:
        sim_path = write_config(workdir / "sim.toml", {"sim": sim})
        header = SIM_MARKER + str(sim_path)
    return write_config(workdir / "carebed.toml", sections, header=header)


def sim_settings_of(config: Path) -> Path | None:
    """The SIM.toml that a config written by ``gateway_config(sim=...)`` names, if any."""
    try:
        with config.open(encoding="utf-8") as handle:
            first = handle.readline().rstrip("\n")
    except OSError:  # no config at all: the daemon says so itself
        return None
    return Path(first.removeprefix(SIM_MARKER)) if first.startswith(SIM_MARKER) else None


class GatewayProcess:
    """The daemon as systemd would run it: a child process, killed or stopped by signals.

    A config that names a simulated source runs under the rig's entry, which is the same
    daemon with that source added.
    """

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._starts_logged = 0

    def wait_started(self, timeout: float = 60.0) -> None:
        """Until the daemon last started has logged ``gateway_started`` (its store is open and
        its sources run): a fault schedule counts from there, not from a slow start-up."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(STARTED) <= self._starts_logged:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(
                    f"the daemon exited before it started:\n{self.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the daemon did not start in {timeout} s:\n{self.log_text()[-3000:]}"
                )
            time.sleep(0.05)

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        self._starts_logged = self.log_text().count(STARTED)
        log = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env.update(extra_env or {})
        sim = sim_settings_of(self.config)
        entry = ["gateway"] if sim is None else ["hil.sim.daemon", "--sim", str(sim)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *entry, "run", "--config", str(self.config)],
            stdout=log,
            stderr=log,
            env=env,
        )
        log.close()

    def allocated_seq(self) -> int:
        """The last seq the running daemon handed out (its control socket's ``status``): events
        delivered from memory never reach the database, so the database cannot tell."""
        socket = config.load(self.config).control_socket

        async def ask() -> int:
            async for reply in control.request(socket, "status", {}):
                return int(reply["last_seq"])
            raise RuntimeError("the control socket answered nothing")

        return asyncio.run(ask())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        self.kill()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def last_seq(state_dir: Path) -> int:
    """The highest seq the gateway's files account for: the database's watermark, or the last
    event of its spool (telemetry written at its window's end)."""
    db = sqlite3.connect(state_dir / "outbox.sqlite3")
    try:
        watermark = int(db.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])
    finally:
        db.close()
    spooled = read_spool(state_dir / "outbox.sqlite3.spool")
    return max([watermark, *(event[0] for event in spooled)])
