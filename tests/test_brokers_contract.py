"""The gateway's contract against each broker the platform may run.

Mosquitto with MQTT 5 and with MQTT 3.1.1, a 3-node NATS cluster (JetStream, MQTT 3.1.1 only) and
RabbitMQ with its MQTT plugin (3.1.1 only; one node in make test, a 3-node cluster in make soak):
presence (retained status, the will on kill -9), alarms resent until acknowledged and the senior
told, commands (also one queued while the gateway is away, and one in flight at a crash), MQTT 5
where it is spoken and the doctor's word where it is not, kill -9 of the daemon with nothing lost,
and cluster nodes killed mid-run. On a cluster the gateway and the platform connect to different
nodes. docs/SCALE.md ("Brokers") says what each
broker lacks and how the gateway degrades; these tests hold it to that.

Each broker is started once per module; each test has its own gateway id, state and platform
session, so tests do not see each other's messages.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from paho.mqtt.enums import MQTTProtocolVersion
from structlog.testing import capture_logs

from drivers.button.codec import Pattern
from drivers.button.pairing import PairingStore
from gateway.app import config
from gateway.app.daemon import Gateway
from gateway.app.sdnotify import SystemdNotifier
from gateway.cli.checks import probe_broker
from gateway.core.clock import ManualClock
from hil.sim.broker import Mosquitto
from hil.sim.nats import NatsCluster
from hil.sim.platform import Broker, PlatformClient, Received
from hil.sim.rabbitmq import RabbitCluster
from hil.sim.receiver import SimReceiver
from tests.gateway_rig import kinds, wait_platform, wait_until
from tests.support.daemon import SIM_MARKER, GatewayProcess, last_seq, write_config
from tests.support.reliability import SOAK, record, scaled
from tests.support.schema import validate_uplink

BUTTON = 0x00C0FFEE
GATEWAY_PASSWORD = "gw-rig-secret"  # RabbitMQ wants one; a throwaway rig's
SIM = {"telemetry_interval_s": 0.02, "burst": 2, "alarm_interval_s": 0.5, "seed": 11}
ALARMS_FAST = {"ack_timeout_s": 2.0, "resend_interval_s": 1.0}
KILLS = scaled(1, 5)
# NATS sends an unacknowledged downlink message again only after its ack wait (30 s by default),
# even to a session resumed after a crash: docs/SCALE.md advises a shorter one, as here.
NATS_ACK_WAIT_S = 5.0
CLUSTER_TIMEOUT_S = 400  # a cluster booted or restarted within one test, on a busy machine
_gateway_numbers = itertools.count(1)


@dataclass
class Target:
    """A broker under test: where the gateway and the platform connect, and what it offers."""

    name: str
    protocol: Literal["5", "3.1.1"]
    gateway_node: Broker
    platform_node: Broker
    retained_across_nodes: bool  # a retained message is seen on every node
    speaks_mqtt5: bool = False
    needs_password: bool = False
    add_user: Callable[[str, str], None] | None = None
    cluster: NatsCluster | RabbitCluster | Mosquitto | None = None
    users: set[str] = field(default_factory=set)

    @property
    def paho_protocol(self) -> MQTTProtocolVersion:
        return MQTTProtocolVersion.MQTTv5 if self.protocol == "5" else MQTTProtocolVersion.MQTTv311

    def new_gateway(self) -> str:
        gw = f"gw-{self.name.replace('.', '')}-{next(_gateway_numbers):03d}"
        if self.add_user is not None:
            self.add_user(gw, GATEWAY_PASSWORD)
        return gw

    def platform(
        self,
        gw: str,
        *,
        node: Broker | None = None,
        tag: str = "desk",
        on_received: Callable[[Received], None] | None = None,
        status_only: bool = False,
    ) -> PlatformClient:
        topics = [f"carebed/v1/{gw}/status", f"rig/echo/{tag}-{gw}"]
        if not status_only:
            topics.insert(0, f"carebed/v1/{gw}/up/#")
        return PlatformClient(
            node or self.platform_node,
            client_id=f"platform-{tag}-{gw}",
            protocol=self.paho_protocol,
            validate=validate_uplink,
            subscriptions=topics,
            on_received=on_received,
        )

    def config(
        self,
        workdir: Path,
        gw: str,
        *,
        sim: dict[str, Any] | None = None,
        **sections: dict[str, Any],
    ) -> Path:
        """The gateway's config: plain TCP to its node, this target's protocol version; with
        ``sim``, the simulated source's settings beside it (``GatewayProcess`` runs the rig's
        daemon then)."""
        workdir.mkdir(parents=True, exist_ok=True)
        mqtt: dict[str, Any] = {
            "host": self.gateway_node.host,
            "port": self.gateway_node.port,
            "plaintext": True,
            "protocol": self.protocol,
            "keepalive_s": 5,
            "backoff_min_s": 0.1,
            "backoff_cap_s": 1.0,
            "connect_timeout_s": 5.0,
        }
        if self.needs_password:
            mqtt["password"] = GATEWAY_PASSWORD
        all_sections: dict[str, dict[str, Any]] = {
            "gateway": {"id": gw, "state_dir": workdir / "state", "heartbeat_s": 3600},
            "mqtt": mqtt,
            "logging": {"level": "info", "format": "json"},
            "outbox": {"group_commit_s": 0.05},
        }
        for name, values in sections.items():
            all_sections.setdefault(name, {}).update(values)
        header = None
        if sim is not None:
            header = SIM_MARKER + str(write_config(workdir / "sim.toml", {"sim": sim}))
        return write_config(workdir / "carebed.toml", all_sections, header=header)


# --------------------------------------------------------------------------- the brokers

TARGETS = [
    pytest.param("mosquitto-5", id="mosquitto-5"),
    pytest.param("mosquitto-3.1.1", id="mosquitto-3.1.1"),
    pytest.param("nats", id="nats"),
    # One node in make test (it boots in 15-40 s here); the 3-node cluster under make soak.
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.timeout(CLUSTER_TIMEOUT_S)),
    pytest.param(
        "rabbitmq-cluster",
        id="rabbitmq-cluster",
        marks=[
            pytest.mark.slow,
            pytest.mark.timeout(CLUSTER_TIMEOUT_S),
            pytest.mark.skipif(not SOAK, reason="a 3-node RabbitMQ boots in minutes: make soak"),
        ],
    ),
]


@pytest.fixture(scope="module", params=TARGETS)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    name: str = request.param
    workdir = tmp_path_factory.mktemp(name)
    if name.startswith("mosquitto"):
        protocol: Literal["5", "3.1.1"] = "5" if name == "mosquitto-5" else "3.1.1"
        with Mosquitto(workdir) as mosquitto:
            yield Target(
                name, protocol, mosquitto, mosquitto, True, speaks_mqtt5=True, cluster=mosquitto
            )
    elif name == "nats":
        with NatsCluster(workdir, ack_wait_s=NATS_ACK_WAIT_S) as nats:
            yield Target(name, "3.1.1", nats.nodes[0], nats.nodes[1], True, cluster=nats)
    else:
        with RabbitCluster(workdir, size=3 if name == "rabbitmq-cluster" else 1) as rabbit:
            yield Target(
                name,
                "3.1.1",
                rabbit.nodes[0],
                rabbit.nodes[-1],
                False,
                needs_password=True,
                add_user=rabbit.add_user,
                cluster=rabbit,
            )


# --------------------------------------------------------------------------- helpers


@dataclass
class InProcess:
    gateway: Gateway
    receiver: SimReceiver


@asynccontextmanager
async def in_process(
    target: Target, workdir: Path, gw: str, *, clock: ManualClock | None = None, **sections: Any
) -> AsyncIterator[InProcess]:
    """The whole gateway in the test's loop, with a simulated button receiver on a pty."""
    PairingStore(workdir / "state" / "buttons.json").add(BUTTON)
    receiver = SimReceiver(link_path=workdir / "receiver", retransmit_interval_s=0.2)
    await receiver.start()
    button = {"enabled": True, "port": str(workdir / "receiver"), "reopen_interval_s": 0.05}
    cfg = config.load(target.config(workdir, gw, button=button, **sections))
    gateway = Gateway(cfg, clock=clock, notifier=SystemdNotifier(None), boot_id="contract")
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop), name="gateway")
    try:
        async with asyncio.timeout(30):
            await gateway.started.wait()
        link = gateway.button
        assert link is not None
        await wait_until(link.connected.is_set, 10, "the receiver to be opened")
        yield InProcess(gateway, receiver)
    finally:
        stop.set()
        try:
            async with asyncio.timeout(30):
                await task
        finally:
            await receiver.close()


def statuses(platform: PlatformClient, gw: str) -> list[tuple[str, str | None, bool]]:
    """(state, reason, retained) of each status message of ``gw``, in arrival order."""
    return [
        (m.payload["state"], m.payload.get("reason"), m.retain)
        for m in platform.messages
        if m.topic == f"carebed/v1/{gw}/status" and m.payload is not None
    ]


def statuses_before_echo(platform: PlatformClient, gw: str) -> list[tuple[str, str | None, bool]]:
    """The status messages of ``gw`` that came before a message this client sends itself after
    subscribing: a retained message, sent after the SUBACK, would have come first."""
    echo = next(topic for topic in platform.subscriptions if topic.startswith("rig/echo/"))
    platform.publish(echo, b"echo")
    platform.wait_for(lambda p: any(m.topic == echo for m in p.messages), 10, "the echo")
    until = next(i for i, m in enumerate(platform.messages) if m.topic == echo)
    return [
        (m.payload["state"], m.payload.get("reason"), m.retain)
        for m in platform.messages[:until]
        if m.topic == f"carebed/v1/{gw}/status" and m.payload is not None
    ]


def explained(platform: PlatformClient) -> set[int]:
    return {
        seq
        for event in kinds(platform, "gateway.dropped")
        for first, last in event["data"]["seq_ranges"]
        for seq in range(first, last + 1)
    }


def has_all(platform: PlatformClient, gw: str, n: int) -> bool:
    if platform.complete_up_to(gw) >= n:
        return True
    return set(range(1, n + 1)) <= set(platform.seq_ids(gw)) | explained(platform)


def assert_complete(platform: PlatformClient, gw: str, n: int) -> None:
    """Every seq 1..n arrived or is explained, none beyond, one id per seq."""
    seen = platform.seq_ids(gw)
    missing = sorted(set(range(1, n + 1)) - set(seen) - explained(platform))
    assert not missing, f"{len(missing)} seqs never arrived nor explained, first {missing[:10]}"
    assert max(seen) == n, f"seq {max(seen)} arrived but the gateway allocated only {n}"
    forked = {seq: ids for seq, ids in seen.items() if len(ids) > 1}
    assert not forked, f"one seq carried different ids: {list(forked.items())[:3]}"


class Desk:
    """Acknowledges every alarm of one gateway as it arrives (paho's thread: no waiting)."""

    def __init__(self) -> None:
        self.platform: PlatformClient | None = None
        self.acked: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, message: Received) -> None:
        if self.platform is None or not message.topic.endswith("/up/alarm"):
            return
        assert message.payload is not None
        gw = message.topic.split("/")[2]
        ids = [e["id"] for e in message.payload["events"] if e["kind"].startswith("alarm.")]
        with self._lock:
            self.acked.update(ids)
        self.platform.ack(gw, ids, "desk", wait=False)


def more_alarms(platform: PlatformClient, count: int) -> None:
    """Until ``count`` more alarm messages (first sends or resends) have arrived."""
    goal = len(kinds(platform, "alarm.button")) + count
    platform.wait_for(lambda p: len(kinds(p, "alarm.button")) >= goal, 60, f"{count} alarms")


def audited(platform: PlatformClient) -> set[str]:
    return {e["data"]["alarm_id"] for e in kinds(platform, "audit.alarm_acknowledged")}


# --------------------------------------------------------------------------- the contract


def test_presence_retained_online_then_the_will_on_kill_9(target: Target, tmp_path: Path) -> None:
    gw = target.new_gateway()
    daemon = GatewayProcess(target.config(tmp_path, gw), tmp_path / "gateway.log")
    with target.platform(gw, status_only=True) as platform:
        try:
            daemon.start()
            platform.wait_for(
                lambda p: statuses(p, gw)[-1:] == [("online", None, False)], 30, "online"
            )
            # A consumer that subscribes later gets the retained presence: on the gateway's node
            # always, on another node only where retained messages are replicated.
            with target.platform(
                gw, node=target.gateway_node, tag="late", status_only=True
            ) as late:
                late.wait_for(lambda p: statuses(p, gw) == [("online", None, True)], 10, "retained")
            if target.platform_node is not target.gateway_node:
                with target.platform(gw, tag="late-other", status_only=True) as other:
                    if target.retained_across_nodes:
                        other.wait_for(
                            lambda p: statuses(p, gw) == [("online", None, True)],
                            10,
                            "retained on another node",
                        )
                    else:
                        assert statuses_before_echo(other, gw) == []

            daemon.kill()
            platform.wait_for(
                lambda p: statuses(p, gw)[-1][:2] == ("offline", "lost"), 30, "the will"
            )
            with target.platform(
                gw, node=target.gateway_node, tag="later", status_only=True
            ) as later:
                later.wait_for(
                    lambda p: statuses(p, gw) == [("offline", "lost", True)],
                    10,
                    "the will, retained",
                )

            daemon.start()
            platform.wait_for(lambda p: statuses(p, gw)[-1][:2] == ("online", None), 30, "online")
            assert daemon.terminate() == 0, daemon.log_text()[-3000:]
            platform.wait_for(
                lambda p: statuses(p, gw)[-1][:2] == ("offline", "shutdown"),
                30,
                "offline on an orderly stop",
            )
        finally:
            daemon.close()
    assert [s[:2] for s in statuses(platform, gw)] == [
        ("online", None),
        ("offline", "lost"),
        ("online", None),
        ("offline", "shutdown"),
    ]


async def test_an_alarm_is_resent_until_acknowledged_and_the_senior_told(
    target: Target, tmp_path: Path
) -> None:
    gw = target.new_gateway()
    clock = ManualClock(wall=1_800_000_000.0)
    with target.platform(gw) as platform:
        async with in_process(
            target, tmp_path, gw, clock=clock, alarms={"ack_timeout_s": 30, "resend_interval_s": 60}
        ) as rig:
            sim = rig.receiver
            await sim.press(BUTTON)
            await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "alarm")
            await sim.wait_for(lambda s: Pattern.RECEIVED in s.indications(BUTTON), 10, "0x01")
            await wait_until(lambda: rig.gateway.store.in_flight() == 0, 10, "its PUBACK")
            clock.advance(31)  # no acknowledgement within the ack timeout
            await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 2, "resend")
            first, second = kinds(platform, "alarm.button")
            assert (second["id"], second["seq"]) == (first["id"], first["seq"])
            assert (first["attempt"], second["attempt"]) == (1, 2)
            await sim.wait_for(
                lambda s: Pattern.NOT_DELIVERED in s.indications(BUTTON), 10, "INDICATE 0x03"
            )

            platform.ack(gw, [first["id"]], "operator-7")
            await sim.wait_for(
                lambda s: Pattern.ACKNOWLEDGED in s.indications(BUTTON), 10, "INDICATE 0x02"
            )
            await wait_platform(platform, lambda p: audited(p) == {first["id"]}, "the audit event")
            clock.advance(3600)  # many resend intervals later: nothing is resent
            await rig.gateway.sink.emit(
                "telemetry.vitals", {"heart_rate": 70}, "watch-AABBCCDDEEFF"
            )
            await wait_platform(
                platform, lambda p: len(kinds(p, "telemetry.vitals")) == 1, "marker"
            )
            assert len(kinds(platform, "alarm.button")) == 2


async def test_commands_are_answered_also_when_queued_while_away(
    target: Target, tmp_path: Path
) -> None:
    gw = target.new_gateway()
    with target.platform(gw) as platform:
        async with in_process(target, tmp_path, gw):
            # The broker has the gateway's SUBSCRIBE once an event published after it arrived.
            await wait_platform(platform, lambda p: len(kinds(p, "gateway.started")) == 1, "start")
            ping = platform.command(gw, "ping")
            status = platform.command(gw, "status")
            await wait_platform(platform, lambda p: len(kinds(p, "cmd.result")) == 2, "results")
        away = platform.command(gw, "ping")  # kept in the gateway's persistent session
        async with in_process(target, tmp_path, gw):
            await wait_platform(platform, lambda p: len(kinds(p, "cmd.result")) == 3, "queued")
    results = {e["data"]["cmd_id"]: e["data"] for e in kinds(platform, "cmd.result")}
    assert results[ping]["result"] == {"pong": True} and results[away]["result"] == {"pong": True}
    assert results[status]["ok"] and {"uptime_s", "queued", "devices"} <= set(
        results[status]["result"]
    )


async def test_mqtt_5_is_used_only_where_spoken_and_the_doctor_says_so(
    target: Target, tmp_path: Path
) -> None:
    """With mqtt.protocol = 5 on a broker that speaks only 3.1.1 the daemon cannot connect: it
    keeps trying (an ``uplink_refused`` or ``uplink_lost`` each time) and ``carebed doctor``
    tells the installer to set 3.1.1, which works (the other tests)."""
    gw = target.new_gateway()
    cfg = config.load(target.config(tmp_path, gw, mqtt={"protocol": "5"}))
    probe = await asyncio.to_thread(probe_broker, cfg)
    assert probe.v5_refused is not target.speaks_mqtt5, probe
    gateway = Gateway(cfg, notifier=SystemdNotifier(None), boot_id="contract")
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(gateway.run(stop), name="gateway")
        try:
            if target.speaks_mqtt5:
                await wait_until(gateway.uplink.connected.is_set, 20, "an MQTT 5 connection")
            else:
                failures = {"uplink_refused", "uplink_lost"}
                await wait_until(
                    lambda: sum(e["event"] in failures for e in logs) >= 2, 20, "two refusals"
                )
                assert gateway.uplink.stats.connects == 0
        finally:
            stop.set()
            async with asyncio.timeout(30):
                await task


@pytest.mark.reliability
def test_kill_9_of_the_daemon_loses_nothing(target: Target, tmp_path: Path) -> None:
    if target.name.startswith("mosquitto") and not SOAK:
        pytest.skip("kill -9 on Mosquitto is tests/test_faults.py's in make test")
    gw = target.new_gateway()
    daemon = GatewayProcess(
        target.config(tmp_path, gw, alarms=ALARMS_FAST, sim=SIM), tmp_path / "gateway.log"
    )
    desk = Desk()
    with target.platform(gw, on_received=desk) as platform:
        desk.platform = platform
        try:
            for _ in range(KILLS):
                daemon.start()
                more_alarms(platform, 2)
                daemon.kill()
            daemon.start()
            platform.wait_for(lambda p: desk.acked <= audited(p), 60, "every ack applied")
            acked = set(desk.acked)  # (alarms raised from now on may be acknowledged too late)
            assert daemon.terminate() == 0, daemon.log_text()[-3000:]
            n = last_seq(tmp_path / "state")
            platform.wait_for(lambda p: has_all(p, gw, n), 60, f"every seq up to {n}")
        finally:
            daemon.close()
    assert_complete(platform, gw, n)
    assert acked and acked <= audited(platform)


@pytest.mark.reliability
@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("nats", id="nats"),
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
@pytest.mark.timeout(CLUSTER_TIMEOUT_S)
def test_cluster_nodes_killed_during_a_run_lose_nothing(broker: str, tmp_path: Path) -> None:
    """Gateway on node 0, platform on node 2: node 1 is killed and restarted while events and
    alarms flow, then node 0 itself (the gateway waits for it and resumes its session)."""
    cluster: NatsCluster | RabbitCluster
    if broker == "nats":
        cluster = NatsCluster(tmp_path / "nats", ack_wait_s=NATS_ACK_WAIT_S)
    else:
        cluster = RabbitCluster(tmp_path / "rabbit")
    with cluster:
        target = Target(
            broker,
            "3.1.1",
            cluster.nodes[0],
            cluster.nodes[2],
            broker == "nats",
            needs_password=broker != "nats",
            add_user=cluster.add_user if isinstance(cluster, RabbitCluster) else None,
            cluster=cluster,
        )
        gw = target.new_gateway()
        daemon = GatewayProcess(
            target.config(tmp_path, gw, alarms=ALARMS_FAST, sim=SIM), tmp_path / "gateway.log"
        )
        desk = Desk()
        with target.platform(gw, on_received=desk) as platform:
            desk.platform = platform
            try:
                daemon.start()
                more_alarms(platform, 2)
                for index in (1, 0):
                    cluster.kill_node(index)
                    if index != 0:
                        more_alarms(platform, 2)  # the cluster goes on with two of three nodes
                    cluster.restart_node(index)
                    more_alarms(platform, 2)
                platform.wait_for(lambda p: desk.acked <= audited(p), 60, "every ack applied")
                acked = set(desk.acked)
                assert daemon.terminate() == 0, daemon.log_text()[-3000:]
                n = last_seq(tmp_path / "state")
                platform.wait_for(lambda p: has_all(p, gw, n), 60, f"every seq up to {n}")
            finally:
                daemon.close()
        assert_complete(platform, gw, n)
        assert acked and acked <= audited(platform)
    record(
        "network",
        f"{broker} cluster of 3: a node without clients, then the gateway's node, SIGKILLed and "
        "restarted mid-run",
        count=2,
        lost=0,
        outcome="every seq delivered or explained, every alarm acknowledged and audited",
    )


def test_downlink_in_flight_at_a_crash_comes_again(target: Target, tmp_path: Path) -> None:
    """A command the broker has sent but the gateway never acknowledged (the daemon frozen, then
    SIGKILLed) is delivered again to the restarted daemon's session, and answered."""
    if target.name.startswith("mosquitto") and not SOAK:
        pytest.skip("on Mosquitto it is tests/test_uplink.py's (kill -9 before the PUBACK)")
    gw = target.new_gateway()
    daemon = GatewayProcess(target.config(tmp_path, gw), tmp_path / "gateway.log")
    with target.platform(gw) as platform:
        try:
            daemon.start()
            platform.wait_for(lambda p: len(kinds(p, "gateway.started")) == 1, 30, "started")
            assert daemon.proc is not None
            daemon.proc.send_signal(signal.SIGSTOP)
            command_id = platform.command(gw, "ping")
            daemon.kill()
            daemon.start()
            platform.wait_for(
                lambda p: any(e["data"]["cmd_id"] == command_id for e in kinds(p, "cmd.result")),
                60,
                "the result of the command sent before the crash",
            )
        finally:
            daemon.close()
