"""RabbitMQ for the rig: nodes with the MQTT plugin on free 127.0.0.1 ports, clustered or alone.

Never the machine's own broker: each node has its own node name, Mnesia and log directories,
config file, enabled-plugins file and distribution port; the nodes of one rig share an Erlang
cookie (in a HOME of their own, which the CLI tools read too) and an epmd of their own on a free
port (``ERL_EPMD_PORT``), so that they never register with the machine's epmd on 4369.

The MQTT plugin of RabbitMQ 3.10 speaks MQTT 3.1.1 only, and it needs a majority of the cluster's
nodes up (it tracks client ids in a Raft cluster): three nodes survive the loss of one, two do not.
It refuses a username without a password (``add_user`` makes one per gateway); a client that sends
no username at all is let in as ``DEFAULT_USER``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

from hil.sim.broker import HOST, free_port
from hil.sim.nats import stop_on_signals, wait_mqtt_ready
from hil.sim.pki import Pki
from hil.sim.process import RigLauncher, RigServer, ServerProcess, log_tail, read_logs, tcp_accepts

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")  # Debian's wrappers in /usr/sbin switch to its user
NODE_HOST = "localhost"
DEFAULT_SIZE = 3
DEFAULT_USER = "platform"
DEFAULT_PASSWORD = "platform-rig"  # noqa: S105 - a throwaway rig's, on 127.0.0.1
START_TIMEOUT_S = 180.0  # an Erlang VM and its plugins, on a loaded machine
STOP_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0
PROBE_INTERVAL_S = 0.1
LOG_TAIL_LINES = 40


class RabbitError(Exception):
    """A node of the rig's RabbitMQ could not be started, stopped or asked."""


def rabbit_tool(name: str) -> str:
    path = RABBIT_BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            raise RabbitError(f"{name} not found in {RABBIT_BIN} nor on PATH")
        return found
    return str(path)


class _Shared:
    """What the nodes of one rig share: the cookie's HOME and an epmd of their own."""

    def __init__(self, workdir: Path) -> None:
        self.home = workdir / "home"
        self.epmd_port = free_port()
        self._epmd: ServerProcess | None = None

    def start(self) -> None:
        if self._epmd is not None and self._epmd.running:
            return
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16), encoding="ascii")
            cookie.chmod(0o400)
        epmd = shutil.which("epmd", path="/usr/bin:/usr/lib/erlang/bin:/usr/local/bin")
        if epmd is None:
            raise RabbitError("epmd not found (Debian: erlang-base)")
        self._epmd = ServerProcess(
            self,
            [epmd, "-port", str(self.epmd_port), "-address", HOST],
            log_path=Path(os.devnull),
            reap_timeout_s=STOP_TIMEOUT_S,
        )
        _wait_port(self.epmd_port, 10.0, "epmd", self._epmd)

    def stop(self) -> None:
        if self._epmd is not None:
            self._epmd.kill(STOP_TIMEOUT_S)
            self._epmd.detach()
        self._epmd = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.home),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=HOST,
            # Not /etc/rabbitmq/rabbitmq-env.conf, which names the machine's node.
            RABBITMQ_CONF_ENV_FILE=os.devnull,
            LANG="C.UTF-8",
            LC_ALL="C.UTF-8",
        )
        return env


class RabbitNode(RigServer):
    """One RabbitMQ node; ``port`` is its MQTT listener, ``amqp_port`` its AMQP 0-9-1 one."""

    _kill_timeout_s = STOP_TIMEOUT_S

    def __init__(self, workdir: Path, name: str, shared: _Shared, peers: list[str]) -> None:
        self.workdir = workdir
        self.name = name
        self.nodename = f"{name}@{NODE_HOST}"
        self.host = HOST
        self.port = free_port()  # MQTT
        self.amqp_port = free_port()
        self.dist_port = free_port()
        self.peers = peers  # every node name of the cluster, this one's included
        self.config_path = workdir / "rabbitmq.conf"
        self.plugins_path = workdir / "enabled_plugins"
        self.log_dir = workdir / "log"
        self.stdout_path = workdir / "rabbitmq.stdout"
        self.pid_path = workdir / "rabbitmq.pid"
        self._shared = shared
        self._server = None

    @property
    def pki(self) -> Pki | None:
        return None

    # -- lifecycle ---------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start the VM without waiting for it (nodes of a cluster boot together)."""
        if self.running:
            raise RabbitError(f"{self.nodename} is already running")
        self._shared.start()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        self.plugins_path.write_text("[rabbitmq_mqtt].\n", encoding="utf-8")
        self.pid_path.unlink(missing_ok=True)
        self._server = ServerProcess(
            self,
            [rabbit_tool("rabbitmq-server")],
            log_path=self.stdout_path,
            cwd=self.workdir,
            env=self.env(),
            reap_timeout_s=STOP_TIMEOUT_S,
        )

    def wait_booted(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until the node runs its applications and its MQTT port accepts connections."""
        server = self._require_running()
        deadline = time.monotonic() + timeout
        try:
            self._wait_pid_file(server, timeout)
            left = max(1.0, deadline - time.monotonic())
            self.ctl("wait", str(self.pid_path), "--timeout", str(int(left)), timeout=left + 10)
            _wait_port(
                self.port, max(1.0, deadline - time.monotonic()), f"{self.nodename} MQTT", server
            )
        except BaseException:
            self.kill()
            raise

    def _wait_pid_file(self, server: ServerProcess, timeout: float) -> None:
        """The VM writes its pid file early in its boot: a node that dies before (a port taken
        meanwhile) is reported at once, with its log, not after the CLI's timeout."""
        server.wait_ready(
            self.pid_path.exists,
            timeout_s=timeout,
            interval_s=PROBE_INTERVAL_S,
            timed_out=lambda _: RabbitError(
                f"{self.nodename} wrote no pid file within {timeout} s\n{self.log_tail()}"
            ),
            exited=lambda code: RabbitError(
                f"{self.nodename} exited with status {code} during boot\n{self.log_tail()}"
            ),
        )

    def start(self) -> None:
        self.spawn()
        self.wait_booted()

    def stop(self) -> None:
        """SIGTERM: the VM stops the broker in order and exits."""
        self._stop_with(
            signal.SIGTERM,
            STOP_TIMEOUT_S,
            lambda: RabbitError(
                f"{self.nodename} ignored SIGTERM for {STOP_TIMEOUT_S} s; killed.\n"
                f"{self.log_tail()}"
            ),
        )

    # -- the CLI -----------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = CLI_TIMEOUT_S) -> str:
        """``rabbitmqctl -n NODE ARGS`` against this node; its output, or ``RabbitError``."""
        env = self._shared.env()
        # The CLI is a node too: one free distribution port for this call (its default range,
        # 35672-35682, may be taken).
        port = str(free_port())
        env.update(RABBITMQ_CTL_DIST_PORT_MIN=port, RABBITMQ_CTL_DIST_PORT_MAX=port)
        try:
            done = subprocess.run(
                [rabbit_tool("rabbitmqctl"), "-n", self.nodename, *args],
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise RabbitError(
                f"rabbitmqctl {' '.join(args)}: no answer in {timeout} s\n{self.log_tail()}"
            ) from exc
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
            raise RabbitError(
                f"rabbitmqctl {' '.join(args)} on {self.nodename} exited {done.returncode}:\n"
                f"{output}\n{self.log_tail()}"
            )
        return done.stdout.decode(errors="replace")

    def running_nodes(self) -> list[str]:
        """The cluster's running nodes, as this node sees them."""
        status = json.loads(self.ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    # -- config and logs ---------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = self._shared.env()
        env.update(
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.log_dir),
            RABBITMQ_CONFIG_FILE=str(self.config_path),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.plugins_path),
            RABBITMQ_PID_FILE=str(self.pid_path),
            # exec the VM in place of the script: our child is the node, signals reach it.
            RUNNING_UNDER_SYSTEMD="1",
        )
        return env

    def config_text(self) -> str:
        lines = [
            "# Generated by hil/sim/rabbitmq.py for one run; not an example to copy.",
            f"listeners.tcp.1 = {self.host}:{self.amqp_port}",
            "loopback_users = none",
            f"default_user = {DEFAULT_USER}",
            f"default_pass = {DEFAULT_PASSWORD}",
            "default_user_tags.administrator = true",
            f"mqtt.listeners.tcp.1 = {self.host}:{self.port}",
            "mqtt.allow_anonymous = true",
            f"mqtt.default_user = {DEFAULT_USER}",
            f"mqtt.default_pass = {DEFAULT_PASSWORD}",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            "log.console = false",
            "log.file.level = info",
        ]
        if len(self.peers) > 1:
            lines += [
                "cluster_formation.peer_discovery_backend = classic_config",
                *(
                    f"cluster_formation.classic_config.nodes.{i} = {peer}"
                    for i, peer in enumerate(self.peers, start=1)
                ),
            ]
        return "\n".join(lines) + "\n"

    def log_text(self) -> str:
        return read_logs(self.log_dir / f"{self.nodename}.log", self.stdout_path)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_text(), self.nodename, self.log_dir, lines)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RabbitNode {self.nodename} mqtt={self.host}:{self.port} {state}>"

    # -- internals ---------------------------------------------------------------------------

    def _require_running(self) -> ServerProcess:
        server = self._server
        if server is None or not server.running:
            raise RabbitError(f"{self.nodename} is not running.\n{self.log_tail()}")
        return server


class RabbitCluster(RigLauncher):
    """``size`` RabbitMQ nodes clustered by classic peer discovery, MQTT on each.

    ``host``/``port`` are node 0's MQTT listener, so that the cluster stands where a rig
    ``Mosquitto`` does. ``size=1`` is a single node.
    """

    def __init__(self, workdir: Path, *, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.workdir = workdir
        self._shared = _Shared(workdir)
        names = [f"carebed-r{i}" for i in range(size)]
        peers = [f"{name}@{NODE_HOST}" for name in names]
        self.nodes = [RabbitNode(workdir / name, name, self._shared, peers) for name in names]

    @property
    def host(self) -> str:
        return self.nodes[0].host

    @property
    def port(self) -> int:
        return self.nodes[0].port

    @property
    def pki(self) -> Pki | None:
        return None

    @property
    def running(self) -> bool:
        return any(node.running for node in self.nodes)

    def start(self) -> None:
        """Boot node 0, then the others at once (classic peer discovery joins them to it), and
        wait until each runs, sees all of them and accepts MQTT clients.

        Booted all at once, the nodes can each start the MQTT plugin's Raft cluster (client id
        tracking) alone; one of them then refuses every MQTT client ("leader not known")."""
        try:
            first, *others = self.nodes
            first.start()
            for node in others:
                node.spawn()
            for node in others:
                node.wait_booted()
            self.wait_formed()
        except BaseException:
            self.kill()
            raise

    def wait_formed(self, timeout: float = START_TIMEOUT_S) -> None:
        """Until every running node counts all running nodes as running members, and each
        accepts an MQTT client."""
        deadline = time.monotonic() + timeout
        while True:
            up = sorted(node.nodename for node in self.nodes if node.running)
            seen = {node.nodename: node.running_nodes() for node in self.nodes if node.running}
            if all(nodes == up for nodes in seen.values()):
                for node in self.nodes:
                    if node.running:
                        left = max(1.0, deadline - time.monotonic())
                        wait_mqtt_ready(node.host, node.port, left, f"{node.nodename} MQTT")
                return
            if time.monotonic() > deadline:
                raise RabbitError(
                    f"the RabbitMQ cluster did not form within {timeout} s: {seen}\n"
                    f"{self.log_tail()}"
                )
            time.sleep(PROBE_INTERVAL_S * 10)

    def stop(self) -> None:
        try:
            for node in reversed(self.nodes):
                node.stop()
        finally:
            self._shared.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()
        self._shared.stop()

    def kill_node(self, index: int) -> None:
        self.nodes[index].kill()

    def restart_node(self, index: int) -> None:
        self.nodes[index].start()
        self.wait_formed()

    def add_user(self, name: str, password: str) -> None:
        """A user with every permission on ``/`` (users are cluster-wide)."""
        node = next(node for node in self.nodes if node.running)
        node.ctl("add_user", name, password)
        node.ctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(node.log_tail(lines) for node in self.nodes)

    def __repr__(self) -> str:
        return f"<RabbitCluster {self.nodes!r}>"


def _wait_port(port: int, timeout: float, what: str, server: ServerProcess) -> None:
    server.wait_ready(
        lambda: tcp_accepts(HOST, port),
        timeout_s=timeout,
        interval_s=PROBE_INTERVAL_S,
        timed_out=lambda last_error: RabbitError(
            f"{what} did not listen on {port} within {timeout} s: {last_error!r}"
        ),
        exited=lambda code: RabbitError(
            f"{what} exited with status {code} before listening on {port}"
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m hil.sim.rabbitmq DIR``: run RabbitMQ node(s) in DIR until SIGINT/SIGTERM,
    printing each node's MQTT and AMQP ports (for a bench or a demo)."""
    parser = argparse.ArgumentParser(prog="python -m hil.sim.rabbitmq", description=main.__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--nodes", type=int, default=DEFAULT_SIZE)
    args = parser.parse_args(argv)
    stop = stop_on_signals()
    with RabbitCluster(args.workdir, size=args.nodes) as cluster:
        for node in cluster.nodes:
            print(
                json.dumps(
                    {
                        "node": node.nodename,
                        "mqtt": f"{node.host}:{node.port}",
                        "amqp": f"{node.host}:{node.amqp_port}",
                        "user": DEFAULT_USER,
                        "password": DEFAULT_PASSWORD,
                    }
                ),
                flush=True,
            )
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
