"""The reference ingest's competing consumers on NATS (JetStream) and RabbitMQ (AMQP queue).

Real brokers (a 3-node NATS cluster, one RabbitMQ node: each once for the module), a real
PostgreSQL and the rig's gateway daemon sending telemetry and alarms over MQTT 3.1.1; two
ingest workers as processes (``--source nats`` / ``--source amqp``) and the desk in this
process. The gateway and the ingest connect to different NATS nodes. Every event is stored
once, an alarm acknowledged from the desk reaches the gateway (its ``audit.alarm_acknowledged``
comes back), and each worker, killed with SIGKILL mid-stream while the other carries the stream
alone, loses and doubles nothing. On NATS, a node (the leader of ``$MQTT_msgs``, the stream the
ingest reads, unless that is the gateway's node) is also killed mid-stream and started again.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats as nats_client
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hil.sim.nats import NatsCluster
from hil.sim.postgres import Postgres
from hil.sim.rabbitmq import DEFAULT_PASSWORD, DEFAULT_USER, RabbitCluster
from platformkit.ingest.amqp import routing_key_topic
from platformkit.ingest.desk import Desk, DeskSettings
from platformkit.ingest.jetstream import STREAM as NATS_STREAM
from platformkit.ingest.jetstream import subject_topic
from platformkit.ingest.mqtt import BrokerAddress
from platformkit.rig import IngestProcesses, eventually, query
from tests.support.daemon import SIM_MARKER, GatewayProcess, last_seq, write_config
from tests.support.reliability import SOAK

TIMEOUT_S = 60.0  # deadlines only: every wait ends on its condition
GATEWAY_PASSWORD = "gw-rig-secret"  # RabbitMQ wants one; a throwaway rig's
# A telemetry message of 2 events every 20 ms, an alarm every 3 s (resent each second until
# acknowledged): a stream in which a worker dies with batches in hand.
SIM = {"telemetry_interval_s": 0.02, "burst": 2, "alarm_interval_s": 3.0, "seed": 7}
ALARMS = {"ack_timeout_s": 2.0, "resend_interval_s": 1.0}
ACK_WAIT_S = 2.0  # NATS: a killed worker's fetched messages come again after this
# Longer than the ack wait and a worker's restart: a killed worker's batch is no gap.
GAP_GRACE_S = 10.0
# How long NATS waits for a gateway's PUBACK of a downlink message before it sends it again.
NATS_MQTT_ACK_WAIT_S = 5.0
STORED_AFTER_KILL = 300  # events stored by the other worker while the killed one is away
WORKERS = ("ingest-1", "ingest-2")
CLUSTER_TIMEOUT_S = 600  # a 3-node RabbitMQ boots in minutes on a busy machine
_numbers = itertools.count(1)


@dataclass
class BrokerRig:
    """Where the gateway connects, where the ingest connects, and how."""

    name: str
    gateway_mqtt: BrokerAddress
    ingest_mqtt: BrokerAddress
    worker_args: tuple[str, ...]
    consuming: str  # what a worker logs once its source receives
    rabbit: RabbitCluster | None = None
    nats: NatsCluster | None = None

    def new_gateway(self) -> str:
        gw = f"gw-{self.name}-{next(_numbers):03d}"
        if self.rabbit is not None:
            self.rabbit.add_user(gw, GATEWAY_PASSWORD)
        return gw


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("nats", id="nats", marks=pytest.mark.timeout(180)),
        pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.timeout(240)),
        pytest.param(
            "rabbitmq-cluster",
            id="rabbitmq-cluster",
            marks=[
                pytest.mark.slow,
                pytest.mark.timeout(CLUSTER_TIMEOUT_S),
                pytest.mark.skipif(
                    not SOAK, reason="a 3-node RabbitMQ boots in minutes: make soak"
                ),
            ],
        ),
    ],
)
def rig(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerRig]:
    name: str = request.param
    workdir = tmp_path_factory.mktemp(name)
    if name == "nats":
        with NatsCluster(workdir, ack_wait_s=NATS_MQTT_ACK_WAIT_S) as nats:
            gateway, ingest, other = nats.nodes
            servers = [f"nats://{n.host}:{n.client_port}" for n in (ingest, other)]
            yield BrokerRig(
                name,
                BrokerAddress(gateway.host, gateway.port),
                BrokerAddress(ingest.host, ingest.port),
                (
                    "--source=nats",
                    *(f"--nats={url}" for url in servers),
                    f"--ack-wait-s={ACK_WAIT_S}",
                    "--mqtt-protocol=3.1.1",
                ),
                "jetstream_consuming",
                nats=nats,
            )
    else:
        # One node in make test: a classic queue; the 3-node cluster (make soak): a quorum queue,
        # the gateway on node 0 and the ingest on node 2.
        size = 3 if name == "rabbitmq-cluster" else 1
        with RabbitCluster(workdir, size=size) as rabbit:
            first, last = rabbit.nodes[0], rabbit.nodes[-1]
            amqp = f"amqp://{DEFAULT_USER}:{DEFAULT_PASSWORD}@{last.host}:{last.amqp_port}/"
            queue_type = "quorum" if size >= 3 else "classic"
            yield BrokerRig(
                "rabbit",
                BrokerAddress(first.host, first.port),
                BrokerAddress(last.host, last.port),
                (
                    "--source=amqp",
                    f"--amqp={amqp}",
                    f"--amqp-queue-type={queue_type}",
                    "--mqtt-protocol=3.1.1",
                ),
                "amqp_consuming",
                rabbit=rabbit,
            )


@pytest.fixture
def dsn(postgres: Postgres, rig: BrokerRig) -> str:
    return postgres.create_database(f"brokers_{rig.name}_{next(_numbers)}")


def gateway_config(workdir: Path, gw: str, rig: BrokerRig) -> Path:
    """The rig's daemon with a simulated source, MQTT 3.1.1 to the gateway's node."""
    workdir.mkdir(parents=True, exist_ok=True)
    sim = write_config(workdir / "sim.toml", {"sim": SIM})
    mqtt: dict[str, Any] = {
        "host": rig.gateway_mqtt.host,
        "port": rig.gateway_mqtt.port,
        "plaintext": True,
        "protocol": "3.1.1",
        "keepalive_s": 5,
        "backoff_min_s": 0.1,
        "backoff_cap_s": 1.0,
        "connect_timeout_s": 5.0,
    }
    if rig.rabbit is not None:
        mqtt["password"] = GATEWAY_PASSWORD
    sections: dict[str, dict[str, Any]] = {
        "gateway": {"id": gw, "state_dir": workdir / "state", "heartbeat_s": 3600},
        "mqtt": mqtt,
        "logging": {"level": "info", "format": "json"},
        "outbox": {"group_commit_s": 0.05},
        "alarms": ALARMS,
    }
    return write_config(workdir / "carebed.toml", sections, header=SIM_MARKER + str(sim))


async def stored(dsn: str, gw: str) -> int:
    return int((await query(dsn, "SELECT count(*) FROM event WHERE gw = %s", (gw,)))[0][0])


async def kill_a_nats_node_mid_stream(cluster: NatsCluster, dsn: str, gw: str) -> None:
    """SIGKILL the leader of the stream the ingest reads, let the stream go on without it, and
    start it again. A leader on the gateway's node 0 is first asked to step down, so that the
    gateway keeps its connection and the kill tests the stream, not the gateway's reconnect."""
    node = cluster.nodes[1]
    gateway_node = cluster.nodes[0].name
    nc = await nats_client.connect(f"nats://{node.host}:{node.client_port}")
    try:
        js = nc.jetstream(timeout=5)
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                info = await js.stream_info(NATS_STREAM)
                leader = info.cluster.leader if info.cluster is not None else None
                if leader is not None and leader != gateway_node:
                    break
                if leader == gateway_node:
                    await nc.request(
                        f"$JS.API.STREAM.LEADER.STEPDOWN.{NATS_STREAM}", b"", timeout=5
                    )
                await asyncio.sleep(0.2)  # polling the cluster's election: no event to wait on
    finally:
        await nc.close()
    victim = cluster.node_named(leader)
    cluster.kill_node(victim)
    at_kill = await stored(dsn, gw)
    await eventually(
        lambda: stored(dsn, gw),
        at_least(at_kill + STORED_AFTER_KILL),
        TIMEOUT_S,
        f"events stored with {leader}, the leader of {NATS_STREAM}, killed",
    )
    await asyncio.to_thread(cluster.restart_node, victim)


async def logged(workers: IngestProcesses, name: str, text: str) -> int:
    """How often worker ``name`` has logged ``text`` (its log goes on across restarts)."""
    return workers.log(name).count(text)


def at_least(goal: int) -> Callable[[int], bool]:
    return lambda n: n >= goal


async def ack_from_the_desk(port: int, gw: str, alarm_id: str) -> None:
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/api/alarms/{gw}/{alarm_id}/ack"
        # A desk without an operators file acts as "desk", whatever the body says.
        async with http.post(url, json={}) as response:
            assert response.status == 200, await response.text()


async def test_two_workers_store_every_event_once_through_kills_and_the_desk_acks(
    rig: BrokerRig, dsn: str, tmp_path: Path
) -> None:
    gw = rig.new_gateway()
    broker = f"{rig.ingest_mqtt.host}:{rig.ingest_mqtt.port}"
    daemon = GatewayProcess(gateway_config(tmp_path / "gw", gw, rig), tmp_path / "gateway.log")
    desk = Desk(DeskSettings(dsn=dsn, broker=rig.ingest_mqtt, port=0, mqtt_protocol="3.1.1"))
    desk_task = asyncio.create_task(desk.run(), name="desk")
    try:
        with IngestProcesses(
            dsn,
            broker,
            tmp_path / "ingest",
            transport=("--plaintext",),  # the rig's brokers on loopback
            gap_grace_s=GAP_GRACE_S,
            extra_args=rig.worker_args,
        ) as workers:
            for name in WORKERS:
                workers.start(name)
            for name in WORKERS:
                await asyncio.to_thread(workers.wait_logged, name, rig.consuming, TIMEOUT_S)
            async with asyncio.timeout(TIMEOUT_S):
                await desk.started.wait()
            assert desk.port is not None
            daemon.start()

            # The desk acknowledges the first alarm; the gateway tells the senior and says so.
            ((alarm_id,),) = await eventually(
                lambda: query(
                    dsn, "SELECT id FROM alarm WHERE gw = %s ORDER BY seq LIMIT 1", (gw,)
                ),
                lambda rows: len(rows) == 1,
                TIMEOUT_S,
                "the first alarm stored",
            )
            await ack_from_the_desk(desk.port, gw, alarm_id)
            await eventually(
                lambda: query(
                    dsn,
                    "SELECT acked_by, confirmed_at IS NOT NULL FROM alarm WHERE id = %s",
                    (alarm_id,),
                ),
                lambda rows: rows == [("desk", True)],
                TIMEOUT_S,
                "the gateway's confirmation of the desk's ack",
            )
            await eventually(
                lambda: query(dsn, "SELECT state FROM presence WHERE gw = %s", (gw,)),
                lambda rows: rows == [("online",)],
                TIMEOUT_S,
                "the gateway online",
            )

            if rig.nats is not None:
                await kill_a_nats_node_mid_stream(rig.nats, dsn, gw)

            # kill -9 of each worker in turn mid-stream; its supervisor starts it again once the
            # other has stored a good part of the stream alone.
            for victim, other in (WORKERS, WORKERS[::-1]):
                workers.kill(victim)
                at_kill = await stored(dsn, gw)
                await eventually(
                    lambda: stored(dsn, gw),
                    at_least(at_kill + STORED_AFTER_KILL),
                    TIMEOUT_S,
                    f"events stored by {other} alone",
                )
                workers.start(victim)
                await eventually(
                    functools.partial(logged, workers, victim, rig.consuming),
                    at_least(2),
                    TIMEOUT_S,
                    f"{victim} consuming again",
                )
            assert daemon.terminate() == 0, daemon.log_text()[-3000:]
            n = last_seq(tmp_path / "gw" / "state")
            await eventually(
                lambda: query(dsn, "SELECT count(*), max(seq) FROM event WHERE gw = %s", (gw,)),
                lambda rows: rows == [(n, n)],
                TIMEOUT_S,
                f"every seq up to {n} stored",
            )
            logs = {name: workers.log(name) for name in WORKERS}
    finally:
        daemon.close()
        desk_task.cancel()
        await asyncio.gather(desk_task, return_exceptions=True)

    rows = await query(
        dsn,
        "SELECT count(*), count(DISTINCT seq), count(DISTINCT id), min(seq)"
        " FROM event WHERE gw = %s",
        (gw,),
    )
    assert rows == [(n, n, n, 1)]
    (counters,) = await query(
        dsn, "SELECT events, conflicts, rejected FROM gateway WHERE gw = %s", (gw,)
    )
    assert counters == (n, 0, 0)
    reported = "SELECT first_seq, last_seq FROM gap WHERE reported_at IS NOT NULL"
    assert await query(dsn, reported) == []
    consuming = {name: text.count(rig.consuming) for name, text in logs.items()}
    assert consuming == dict.fromkeys(WORKERS, 2), consuming  # started, and again after the kill
    assert n > 2 * STORED_AFTER_KILL


def test_a_subject_and_a_routing_key_are_the_gateway_s_topic_again() -> None:
    assert subject_topic("carebed.v1.gw-a.up.telemetry") == "carebed/v1/gw-a/up/telemetry"
    # What the ingest reads on NATS: the subject in the MQTT layer's own stream.
    assert subject_topic("$MQTT.msgs.carebed.v1.gw-a.up.alarm") == "carebed/v1/gw-a/up/alarm"
    assert routing_key_topic("carebed.v1.gw-a.up.alarm") == "carebed/v1/gw-a/up/alarm"
    # RabbitMQ's MQTT plugin writes a dot of a topic as a slash.
    assert routing_key_topic("carebed.v1.gw/x.up.alarm") == "carebed/v1/gw.x/up/alarm"


LEVELS = st.lists(st.text(st.characters(exclude_characters="/+#\x00"), max_size=12), min_size=1)


@given(LEVELS)
def test_the_topic_the_mqtt_plugin_mapped_is_found_again(levels: list[str]) -> None:
    """RabbitMQ: ``/`` → ``.`` between levels, ``.`` → ``/`` inside one; any topic back."""
    topic = "/".join(levels)
    routing_key = ".".join(level.replace(".", "/") for level in levels)
    assert routing_key_topic(routing_key) == topic


@given(st.lists(st.text(st.characters(exclude_characters="/.+#*>\x00 "), max_size=12), min_size=1))
def test_the_topic_of_a_nats_subject_is_found_again(levels: list[str]) -> None:
    """NATS 2.9: levels joined by dots (a topic with a dot is refused at the MQTT listener)."""
    assert subject_topic(".".join(levels)) == "/".join(levels)
