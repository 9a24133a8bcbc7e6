"""Where the fleet connects: a broker it starts for the run, or one given as HOST:PORT.

Each kind says which MQTT version the gateways and the desk speak and whether the desk may use a
shared subscription. Mosquitto (MQTT 5) is the one this checkout can start; a clustered broker
(NATS with its MQTT listener, MQTT 3.1.1 only and no ``$share``) is added here as one more entry
of ``KINDS`` once its launcher exists in ``hil/sim``.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.sim.broker import Mosquitto

KILLED_NODE = 1  # of a cluster: not node 0, the desk's
NATS_ACK_WAIT_S = 5.0
# One replica for the JetStream consumer behind each MQTT subscription, the streams keeping
# three: with the server's default (consumers replicated as the streams are, a Raft group each)
# 500 gateways subscribing at once, or again after a node's restart, had thousands of SUBSCRIBEs
# refused for timeouts and acks that never reached their gateways; with one, none was refused.
# The price: a consumer on a killed node delivers (its gateways' acks) once the node is back.
NATS_CONSUMER_REPLICAS = 1


class BrokerError(Exception):
    """The fleet's broker could not be started or is unknown."""


@dataclass(slots=True)
class FleetBroker:
    """A broker the fleet uses: its address, protocol, and how to end it."""

    kind: str
    host: str
    port: int
    protocol: str  # "5" or "3.1.1", for the gateways and the desk
    shared_subscriptions: bool
    close: Callable[[], None]
    log_tail: Callable[[], str] = lambda: ""
    # Every listener the homes may use (a cluster's nodes): home i connects to ports[i % n].
    ports: list[int] = field(default_factory=list)
    # A fault of the broker for ``down_s`` seconds, returning once it is over (None: it has no
    # fault to inject); ``fault_name`` says which.
    fault: Callable[[float], None] | None = None
    fault_name: str = ""
    # How the reference ingest consumes from it where MQTT 5 shared subscriptions are missing
    # (``python -m platformkit.ingest worker`` options; docs/PLATFORM.md, "Other brokers").
    ingest_args: tuple[str, ...] = ()

    def port_of(self, index: int) -> int:
        return self.ports[index % len(self.ports)] if self.ports else self.port


def _mosquitto(workdir: Path) -> FleetBroker:
    broker = Mosquitto(workdir / "mosquitto", persistence=True)
    broker.start()

    def restart(down_s: float) -> None:
        broker.stop()  # orderly: sessions and queued messages saved
        time.sleep(down_s)
        broker.start()

    return FleetBroker(
        "mosquitto",
        broker.host,
        broker.port,
        "5",
        True,
        broker.close,
        broker.log_tail,
        fault=restart,
        fault_name="broker stopped (orderly) and started again",
    )


def _nats(workdir: Path) -> FleetBroker:
    """A 3-node NATS cluster with JetStream and MQTT (``hil.sim.nats``, where the checkout has
    it): MQTT 3.1.1, no shared subscriptions; the homes are spread over the nodes."""
    try:
        nats: Any = importlib.import_module("hil.sim.nats")
    except ImportError as exc:
        raise BrokerError("no NATS launcher in this checkout (hil/sim/nats.py)") from exc
    # The ack wait docs/SCALE.md recommends for gateways: an ack in flight when a node or a
    # gateway's link goes is delivered again after 5 s, not NATS's default 30 s.
    cluster = nats.NatsCluster(
        workdir / "nats", ack_wait_s=NATS_ACK_WAIT_S, consumer_replicas=NATS_CONSUMER_REPLICAS
    )
    cluster.start()

    def kill_node(down_s: float) -> None:
        cluster.kill_node(KILLED_NODE)
        time.sleep(down_s)
        cluster.restart_node(KILLED_NODE)

    return FleetBroker(
        "nats",
        cluster.host,
        cluster.port,
        "3.1.1",
        False,
        cluster.close,
        cluster.log_tail,
        ports=[node.port for node in cluster.nodes],
        fault=kill_node,
        fault_name=f"node {KILLED_NODE} of the cluster killed (SIGKILL) and started again",
        ingest_args=(
            "--source=nats",
            *(f"--nats=nats://{node.host}:{node.client_port}" for node in cluster.nodes),
            "--mqtt-protocol=3.1.1",
            "--ack-wait-s=4",  # below the fleet ingest's gap grace (5 s)
        ),
    )


KINDS: dict[str, Callable[[Path], FleetBroker]] = {"mosquitto": _mosquitto, "nats": _nats}


def start(kind: str, workdir: Path) -> FleetBroker:
    """Start a broker of ``kind`` for the run, in ``workdir``."""
    factory = KINDS.get(kind)
    if factory is None:
        raise BrokerError(f"unknown broker kind {kind!r} (known here: {', '.join(KINDS)})")
    return factory(workdir)


def remote(address: str, protocol: str) -> FleetBroker:
    """A broker the fleet did not start, given as HOST:PORT."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BrokerError(f"--broker wants HOST:PORT, not {address!r}")
    return FleetBroker("remote", host, int(port), protocol, protocol == "5", lambda: None)


def close_quietly(broker: FleetBroker) -> None:
    with contextlib.suppress(Exception):
        broker.close()
