"""Where a worker's uplink comes from: the interface of a broker's source, and the MQTT one.

A source puts each message it receives on the worker's queue as a ``Delivery`` (the MQTT topic
and the payload's bytes, whatever the broker called them), takes the worker's ``ack`` of a batch
once the batch is committed in PostgreSQL. The ingest's downlink (an alarm acknowledged again)
goes over the presence link (MQTT, ``platformkit.ingest.worker``) whatever the source. The
sources of other brokers are ``platformkit.ingest.jetstream`` (JetStream) and
``platformkit.ingest.amqp`` (RabbitMQ).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from platformkit.ingest.mqtt import BrokerAddress, Delivery, MqttLink, TlsFiles

UP_TOPIC = "carebed/v1/+/up/#"
ALARM_TOPIC = "carebed/v1/+/up/alarm"
SHARED_CLASSES = ("telemetry", "device", "gateway", "camera", "audit", "cmdres")
SOURCES = ("mqtt", "nats", "amqp")


class Received(Protocol):
    """A message as the worker sees it: the MQTT topic it was published on, and its bytes."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> bytes: ...


class UplinkSource(Protocol):
    """A broker's competing consumer, as one worker holds it."""

    async def run(self, queue: asyncio.Queue[Received]) -> None:
        """Receive into ``queue`` until cancelled (connecting, and again after every loss);
        an error that a new process may cure (no broker at start) ends it."""

    async def ack(self, batch: Sequence[Received]) -> None:
        """``batch`` is stored: the broker may forget it. What cannot be acknowledged any more
        (its connection was lost meanwhile) is left to the broker, which sends it again."""


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """What every source needs to know of the worker; the broker's addresses are its own."""

    name: str  # the worker's stable name: its session / consumer
    group: str  # the name the workers share
    shared: bool = True  # MQTT: $share (False: a plain subscription, one worker)
    session_expiry_s: int = 24 * 3600
    batch_max_messages: int = 500


class MqttUplink:
    """An MQTT 5 shared subscription (``$share/GROUP/…``) in a persistent session per worker;
    alarms not shared (every worker takes every alarm): see ``platformkit.ingest.worker``."""

    def __init__(
        self,
        settings: SourceSettings,
        broker: BrokerAddress,
        protocol: str,
        tls: TlsFiles | None = None,
        connect_timeout_s: float = 30.0,
    ) -> None:
        self.settings = settings
        self.broker = broker
        self.protocol = protocol
        self.tls = tls
        self.connect_timeout_s = connect_timeout_s
        self._link: MqttLink | None = None

    async def run(self, queue: asyncio.Queue[Received]) -> None:
        settings = self.settings
        self._link = MqttLink(
            self.broker,
            client_id=settings.name,
            subscriptions=subscriptions(settings),
            persistent=True,
            session_expiry_s=settings.session_expiry_s,
            queue=queue,  # type: ignore[arg-type]  # a Delivery is a Received
            protocol=self.protocol,
            tls=self.tls,
        )
        self._link.start()
        try:
            # A refused certificate or plain TCP to a TLS listener: MqttConnectError, the reason.
            await self._link.wait_connected(self.connect_timeout_s)
            await asyncio.Future()  # paho's thread does the work
        finally:
            self._link.close()

    async def ack(self, batch: Sequence[Received]) -> None:
        link = self._started()
        for delivery in batch:
            if isinstance(delivery, Delivery):
                link.ack(delivery)

    def _started(self) -> MqttLink:
        if self._link is None:
            raise RuntimeError("the MQTT source is not started")
        return self._link


def subscriptions(settings: SourceSettings) -> list[str]:
    """Each class but alarms shared by the group; alarms to every worker."""
    if not settings.shared:
        return [UP_TOPIC]
    shared = [f"$share/{settings.group}/carebed/v1/+/up/{klass}" for klass in SHARED_CLASSES]
    return [ALARM_TOPIC, *shared]
