"""A NATS cluster for the rig: nats-server nodes with JetStream and MQTT on free 127.0.0.1 ports.

Each node has its own config file, JetStream store and log in its own directory, a
``server_name`` (MQTT in NATS needs one, and JetStream), routes to every other node, an MQTT
listener (MQTT 3.1.1 only: NATS 2.9 refuses MQTT 5 connections) and a monitoring port. The
cluster counts as formed once every running node has a route to every other running one, reports
itself healthy (``/healthz``: JetStream current) and knows the JetStream meta leader; the MQTT
streams are created before ``start`` returns, so that the first gateway does not wait for them.

Tests kill, stop and restart single nodes; a client connects to one node's MQTT port (``port`` is
node 0's).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from hil.sim.broker import HOST, free_port
from hil.sim.pki import Pki
from hil.sim.process import RigLauncher, RigServer, ServerProcess, log_tail, read_logs, tcp_accepts

CLUSTER_NAME = "carebed"
DEFAULT_SIZE = 3
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
FORM_TIMEOUT_S = 120.0  # a restarted node catches up its streams: seconds, minutes when busy
PROBE_INTERVAL_S = 0.05
HTTP_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 40
# The first MQTT connection of an account creates its streams (R3 here): a few seconds.
WARM_UP_TIMEOUT_S = 30.0
ATTEMPT_S = 10.0  # one CONNECT's wait for its CONNACK


class NatsError(Exception):
    """A node of the rig's NATS cluster could not be started, stopped or reached."""


def nats_binary() -> str:
    """Path of the nats-server executable (Debian installs it in /usr/sbin)."""
    found = shutil.which("nats-server", path="/usr/sbin:/usr/local/sbin:/usr/bin:/usr/local/bin")
    if found is None:
        raise NatsError("nats-server not found in /usr/sbin, /usr/local/sbin or on PATH")
    return found


class NatsNode(RigServer):
    """One nats-server of the cluster; ``port`` is its MQTT listener."""

    _kill_timeout_s = STOP_TIMEOUT_S

    def __init__(
        self,
        workdir: Path,
        name: str,
        *,
        stream_replicas: int | None = None,
        consumer_replicas: int | None = None,
        ack_wait_s: float | None = None,
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.host = HOST
        self.client_port = free_port()
        self.cluster_port = free_port()
        self.http_port = free_port()
        self.port = free_port()  # MQTT
        self.stream_replicas = stream_replicas
        # The replicas of the JetStream consumer behind each MQTT QoS 1 subscription (server
        # default: as many as the streams'). Each replicated consumer is a Raft group of its own,
        # made when a session subscribes: hundreds of sessions subscribing at once make that
        # the cluster's bottleneck (SUBSCRIBEs refused for "timeout", docs/SCALE.md).
        self.consumer_replicas = consumer_replicas
        # How long an MQTT QoS 1 delivery waits for its PUBACK before it is sent again (server
        # default 30 s). NATS 2.9 sends unacknowledged messages again only then, also to a
        # session resumed after a crash.
        self.ack_wait_s = ack_wait_s
        self.routes: list[int] = []  # every node's cluster port, this one's included
        self.config_path = workdir / "nats.conf"
        self.log_path = workdir / "nats.log"
        self.stderr_path = workdir / "nats.stderr"
        self.store_dir = workdir / "jetstream"
        self._server = None

    @property
    def pki(self) -> Pki | None:
        """Plain TCP: the rig's NATS has no TLS (the platform client asks)."""
        return None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Spawn the server and wait until its monitoring and MQTT ports accept connections
        (the cluster may not be formed yet: see ``NatsCluster.wait_formed``)."""
        if self.running:
            raise NatsError(f"{self.name} is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        self._server = ServerProcess(
            self,
            [nats_binary(), "-c", str(self.config_path)],
            log_path=self.stderr_path,
            cwd=self.workdir,
            reap_timeout_s=STOP_TIMEOUT_S,
        )
        try:
            self._wait_until_listening(self._server)
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        """SIGTERM and wait: an orderly shutdown."""
        self._stop_with(
            signal.SIGTERM,
            STOP_TIMEOUT_S,
            lambda: NatsError(
                f"{self.name} ignored SIGTERM for {STOP_TIMEOUT_S} s; killed.\n{self.log_tail()}"
            ),
        )

    # -- monitoring --------------------------------------------------------------------------

    def monitor(self, endpoint: str) -> dict[str, Any]:
        """GET a monitoring endpoint (``routez``, ``jsz``, ``healthz``, ``varz``) as JSON."""
        url = f"http://{self.host}:{self.http_port}/{endpoint}"
        try:
            with urllib.request.urlopen(
                url, timeout=HTTP_TIMEOUT_S
            ) as reply:  # our own http://127.0.0.1
                document = json.loads(reply.read())
        except urllib.error.HTTPError as exc:  # /healthz answers 503 with a JSON body
            document = json.loads(exc.read() or b"{}")
        if not isinstance(document, dict):
            raise NatsError(f"{self.name} /{endpoint}: not a JSON object")
        return document

    def formed_with(self, peers: int, *, healthy: bool = True) -> bool:
        """Routed to ``peers`` other nodes, a JetStream meta leader known, and (``healthy``)
        ``/healthz`` ok: every stream and consumer of this node current."""
        try:
            routes = self.monitor("routez").get("num_routes", 0)
            meta = self.monitor("jsz").get("meta_cluster") or {}
            health = not healthy or self.monitor("healthz").get("status") == "ok"
        except (OSError, ValueError, NatsError):
            return False
        leader = bool(meta.get("leader")) or not self.routes  # a node alone has no meta group
        return routes >= peers and leader and health

    def meta_leader(self) -> str | None:
        leader = (self.monitor("jsz").get("meta_cluster") or {}).get("leader")
        return str(leader) if leader else None

    # -- logs and config ---------------------------------------------------------------------

    def log_text(self) -> str:
        return read_logs(self.log_path, self.stderr_path)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_text(), self.name, self.log_path, lines)

    def config_text(self) -> str:
        routes = ", ".join(f"nats-route://{self.host}:{port}" for port in self.routes)
        mqtt_lines = [f"  listen: {self.host}:{self.port}"]
        if self.stream_replicas is not None:
            mqtt_lines.append(f"  stream_replicas: {self.stream_replicas}")
        if self.consumer_replicas is not None:
            mqtt_lines.append(f"  consumer_replicas: {self.consumer_replicas}")
        if self.ack_wait_s is not None:
            mqtt_lines.append(f'  ack_wait: "{int(self.ack_wait_s * 1000)}ms"')
        lines = [
            "# Generated by hil/sim/nats.py for one run; not an example to copy.",
            f"server_name: {self.name}",
            f"listen: {self.host}:{self.client_port}",
            f"http: {self.host}:{self.http_port}",
            f"log_file: {json.dumps(str(self.log_path))}",
            "logtime: true",
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))} }}",
            # One node alone runs without a cluster block: JetStream in cluster mode wants routes.
            *(
                [
                    "cluster {",
                    f"  name: {CLUSTER_NAME}",
                    f"  listen: {self.host}:{self.cluster_port}",
                    f"  routes: [{routes}]",
                    "}",
                ]
                if self.routes
                else []
            ),
            "mqtt {",
            *mqtt_lines,
            "}",
        ]
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<NatsNode {self.name} mqtt={self.host}:{self.port} {state}>"

    # -- internals ---------------------------------------------------------------------------

    def _wait_until_listening(self, server: ServerProcess) -> None:
        server.wait_ready(
            self._listening,
            timeout_s=START_TIMEOUT_S,
            interval_s=PROBE_INTERVAL_S,
            errors=(OSError, ValueError),
            timed_out=lambda last_error: NatsError(
                f"{self.name} did not listen within {START_TIMEOUT_S} s ({last_error!r}).\n"
                f"{self.log_tail()}"
            ),
            exited=lambda code: NatsError(
                f"{self.name} exited with status {code} during start-up.\n{self.log_tail()}"
            ),
        )

    def _listening(self) -> bool:
        """Both the monitoring port and the MQTT listener answer."""
        self.monitor("varz")
        return tcp_accepts(self.host, self.port)


class NatsCluster(RigLauncher):
    """``size`` NATS nodes routed to each other on 127.0.0.1, JetStream and MQTT on each.

    ``host``/``port`` are node 0's MQTT listener, so that the cluster stands where a rig
    ``Mosquitto`` does; ``nodes[i]`` are the nodes, each also a place to connect to.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        size: int = DEFAULT_SIZE,
        stream_replicas: int | None = None,
        consumer_replicas: int | None = None,
        ack_wait_s: float | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self.workdir = workdir
        self.nodes = [
            NatsNode(
                workdir / f"n{i}",
                f"{CLUSTER_NAME}-n{i}",
                stream_replicas=stream_replicas,
                consumer_replicas=consumer_replicas,
                ack_wait_s=ack_wait_s,
            )
            for i in range(size)
        ]
        ports = [node.cluster_port for node in self.nodes]
        for node in self.nodes:
            node.routes = ports if size > 1 else []

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

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start every node, wait until the cluster has formed, and create the MQTT streams."""
        try:
            for node in self.nodes:
                node.start()
            self.wait_formed()
            self.warm_up()
        except BaseException:
            self.kill()
            raise

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def kill_node(self, index: int) -> None:
        """SIGKILL one node; the others stay up."""
        self.nodes[index].kill()

    def restart_node(self, index: int) -> None:
        """Start a stopped or killed node again (same ports, same store) and wait until it is
        routed to the others, a meta leader is known and it accepts MQTT clients.

        Not until it is healthy: NATS 2.9.10 may keep reporting a consumer that was moved or
        replaced while the node was down as "not current" for minutes (``/healthz`` 503)."""
        node = self.nodes[index]
        node.start()
        self.wait_formed(healthy=False)
        wait_mqtt_ready(node.host, node.port, WARM_UP_TIMEOUT_S, f"{node.name}: MQTT")

    def wait_formed(self, timeout: float = FORM_TIMEOUT_S, *, healthy: bool = True) -> None:
        """Until every running node is routed to all other running nodes, knows a JetStream
        meta leader and (``healthy``) says it is healthy; raises ``NatsError`` with the nodes'
        logs on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            up = [node for node in self.nodes if node.running]
            if not up:
                raise NatsError("no node of the cluster is running")
            if all(node.formed_with(len(up) - 1, healthy=healthy) for node in up):
                return
            if time.monotonic() > deadline:
                raise NatsError(
                    f"the NATS cluster did not form within {timeout} s\n{self.log_tail()}"
                )
            time.sleep(PROBE_INTERVAL_S)

    def warm_up(self, timeout: float = WARM_UP_TIMEOUT_S) -> None:
        """Connect once over MQTT (clean session) to each node and wait for the CONNACK: the
        first connection creates the account's MQTT streams, which takes seconds in a cluster."""
        for node in self.nodes:
            if node.running:
                wait_mqtt_ready(node.host, node.port, timeout, f"{node.name}: MQTT warm-up")

    def meta_leader(self) -> str | None:
        """The name of the JetStream meta leader, as a running node sees it."""
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(OSError, ValueError, NatsError):
                    return node.meta_leader()
        return None

    def node_named(self, name: str) -> int:
        return [node.name for node in self.nodes].index(name)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(node.log_tail(lines) for node in self.nodes)

    def __repr__(self) -> str:
        return f"<NatsCluster {self.nodes!r}>"


def wait_mqtt_ready(host: str, port: int, timeout: float, what: str) -> None:
    """Until an MQTT 3.1.1 clean-session CONNECT gets a successful CONNACK (then DISCONNECT):
    a broker may listen before it accepts MQTT clients. Raises ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while True:
        answer = _mqtt_attempt(host, port, min(ATTEMPT_S, max(1.0, deadline - time.monotonic())))
        if answer == "Success":
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: no MQTT connection accepted within {timeout} s ({answer})")
        time.sleep(PROBE_INTERVAL_S * 4)


def _mqtt_attempt(host: str, port: int, seconds: float) -> str:
    """One CONNECT: the CONNACK's reason, or why there was none."""
    answer: list[str] = []
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"rig-ready-{port}",
        protocol=MQTTProtocolVersion.MQTTv311,
        clean_session=True,
        reconnect_on_failure=False,
    )
    client.on_connect = lambda _c, _u, _f, reason, _p: answer.append(str(reason))
    client.on_disconnect = lambda _c, _u, _f, reason, _p: answer.append(f"closed: {reason}")
    client.connect_timeout = seconds
    try:
        client.connect(host, port, keepalive=60)
        end = time.monotonic() + seconds
        while not answer and time.monotonic() < end:
            client.loop(timeout=PROBE_INTERVAL_S)
    except OSError as exc:
        answer.append(repr(exc))
    finally:
        with contextlib.suppress(OSError):
            client.disconnect()
    return answer[0] if answer else "no CONNACK"


def main(argv: list[str] | None = None) -> int:
    """``python -m hil.sim.nats DIR``: run a cluster in DIR until SIGINT/SIGTERM, printing
    each node's MQTT and NATS ports (for a bench or a demo)."""
    parser = argparse.ArgumentParser(prog="python -m hil.sim.nats", description=main.__doc__)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--nodes", type=int, default=DEFAULT_SIZE)
    args = parser.parse_args(argv)
    stop = stop_on_signals()
    with NatsCluster(args.workdir, size=args.nodes) as cluster:
        for node in cluster.nodes:
            print(
                json.dumps(
                    {
                        "node": node.name,
                        "mqtt": f"{node.host}:{node.port}",
                        "nats": f"{node.host}:{node.client_port}",
                        "monitor": f"http://{node.host}:{node.http_port}/",
                    }
                ),
                flush=True,
            )
        stop.wait()
    return 0


def stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return stop


if __name__ == "__main__":
    raise SystemExit(main())
