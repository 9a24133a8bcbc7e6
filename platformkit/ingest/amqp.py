"""The ingest's source on RabbitMQ: one durable queue bound to ``amq.topic``, shared by all workers.

The gateways speak MQTT 3.1.1 to RabbitMQ's MQTT plugin, which publishes each message on
``amq.topic`` with the topic as routing key (``/`` → ``.``, ``.`` → ``/``):
``carebed/v1/GW/up/CLASS`` is ``carebed.v1.GW.up.CLASS``. The plugin answers a QoS 1 PUBLISH
once the queues it was routed to have it (publisher confirms), so a message the gateway counts
as delivered is in the ingest's queue.

The queue ``GROUP`` (durable; quorum on a cluster of three nodes or more, classic on one) is
bound with ``carebed.v1.*.up.#`` and consumed by every worker with manual acknowledgement after
the commit, at most a batch unacknowledged per worker (prefetch). A worker's connection that
ends (kill -9 included: the socket closes) gives its unacknowledged messages back to the queue
at once, to the other workers; so alarms need no queue of their own here, unlike NATS and
MQTT, where what a dead worker held waits (ack wait, session).

The downlink (acknowledgements of alarms) is published over MQTT 3.1.1 at QoS 1.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import structlog

from platformkit.ingest.source import Received, SourceSettings

log = structlog.get_logger("platformkit.ingest")

EXCHANGE = "amq.topic"
UP_ROUTING_KEY = "carebed.v1.*.up.#"
CONNECT_TIMEOUT_S = 10.0
# What an ack of a message whose channel is gone raises: the broker has given it back already.
_LOST = (*aio_pika.exceptions.CONNECTION_EXCEPTIONS, aio_pika.exceptions.MessageProcessError)

QueueType = Literal["quorum", "classic"]


@dataclass(frozen=True, slots=True)
class AmqpDelivery:
    topic: str
    payload: bytes
    message: aio_pika.abc.AbstractIncomingMessage


@dataclass(frozen=True, slots=True)
class AmqpSettings:
    url: str  # amqp://USER:PASSWORD@HOST:PORT/VHOST
    queue_type: QueueType = "quorum"


def routing_key_topic(routing_key: str) -> str:
    """The MQTT topic of a routing key the MQTT plugin made: ``.`` and ``/`` swapped back."""
    return routing_key.translate(str.maketrans("./", "/."))


class AmqpUplink:
    """One worker's consumer on the shared queue."""

    def __init__(self, settings: SourceSettings, amqp: AmqpSettings) -> None:
        self.settings = settings
        self.amqp = amqp

    async def run(self, queue: asyncio.Queue[Received]) -> None:
        connection = await aio_pika.connect_robust(
            self.amqp.url,
            client_properties={"connection_name": self.settings.name},
            timeout=CONNECT_TIMEOUT_S,
        )
        async with connection:
            await self._consume(connection, queue)

    async def ack(self, batch: Sequence[Received]) -> None:
        for delivery in batch:
            if isinstance(delivery, AmqpDelivery):
                # Its channel is gone: the broker has put it back in the queue already.
                with contextlib.suppress(*_LOST):
                    await delivery.message.ack()

    async def _consume(
        self, connection: aio_pika.abc.AbstractRobustConnection, queue: asyncio.Queue[Received]
    ) -> None:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=self.settings.batch_max_messages)
        shared = await channel.declare_queue(
            self.settings.group,
            durable=True,
            arguments={"x-queue-type": self.amqp.queue_type},
        )
        await shared.bind(EXCHANGE, routing_key=UP_ROUTING_KEY)

        async def received(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            topic = routing_key_topic(message.routing_key or "")
            queue.put_nowait(AmqpDelivery(topic, message.body, message))

        await shared.consume(received, no_ack=False)
        log.info("amqp_consuming", worker=self.settings.name, queue=self.settings.group)
        await asyncio.Future()  # the channel's consumer does the work
