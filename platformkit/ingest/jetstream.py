"""The ingest's source on NATS: JetStream durable pull consumers over the gateways' MQTT uplink.

The gateways speak MQTT 3.1.1 to NATS's MQTT listener; ``carebed/v1/GW/up/CLASS`` is the
subject ``carebed.v1.GW.up.CLASS``. NATS (2.9) stores every QoS 1 publication of an MQTT client
in its own stream ``$MQTT_msgs`` (subject ``$MQTT.msgs.carebed.v1.GW.up.CLASS``) before it sends
the PUBACK, so the ingest consumes from that stream: what a gateway was acknowledged is what the
ingest reads. The stream's retention is *interest*: a message is kept until every consumer it
matches has acknowledged it (one with no consumer is not kept), so the ingest's durable consumers
are what keeps the uplink. The stream is created by NATS on the account's first MQTT connection
(the presence worker's, at the latest); a worker waits for it.

- ``GROUP``: one durable pull consumer on ``$MQTT.msgs.carebed.v1.*.up.>``, shared by every
  worker (each fetches a batch; explicit ack after the commit; what is not acknowledged within
  ``ack_wait_s`` is delivered again, to whoever fetches next).
- ``GROUP-NAME-alarm``: one durable pull consumer per worker on
  ``$MQTT.msgs.carebed.v1.*.up.alarm``, so that every worker takes every alarm: a worker killed
  with an alarm in hand delays nothing (the others have it), where the shared consumer alone
  would wait for ``ack_wait_s``. The store keeps the first copy.

The downlink (acknowledgements of alarms) is published over MQTT 3.1.1 at QoS 1: a QoS 1
subscription in NATS receives a core NATS publication at QoS 0 only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
)

from platformkit.ingest.source import Received, SourceSettings

log = structlog.get_logger("platformkit.ingest")

STREAM = "$MQTT_msgs"  # NATS's own stream of MQTT QoS 1 messages
MQTT_PREFIX = "$MQTT.msgs."
UP_SUBJECT = MQTT_PREFIX + "carebed.v1.*.up.>"
ALARM_SUBJECT = MQTT_PREFIX + "carebed.v1.*.up.alarm"
FETCH_WAIT_S = 1.0  # one pull request's wait when nothing is there
RECONNECT_WAIT_S = 0.5
# A JetStream API request's wait. NATS 2.9 may leave a consumer's creation unanswered right
# after its stream was created (seen here: two workers starting at once); creation is
# idempotent, so the setup asks again soon rather than waiting long.
REQUEST_TIMEOUT_S = 3
ALARM_BATCH = 50
RETRY_S = 0.5


class JetStreamError(Exception):
    """The ingest's stream or consumers could not be set up on NATS."""


@dataclass(frozen=True, slots=True)
class NatsDelivery:
    topic: str
    payload: bytes
    msg: Msg


@dataclass(frozen=True, slots=True)
class JetStreamSettings:
    servers: tuple[str, ...]  # nats://HOST:PORT of one or more nodes
    replicas: int = 3  # the consumers' (at most the stream's)
    # Below the gap grace (30 s): a killed worker's batch comes again before it counts as a gap.
    ack_wait_s: float = 10.0
    max_ack_pending: int = 20_000


def subject_topic(subject: str) -> str:
    """``$MQTT.msgs.carebed.v1.GW.up.CLASS`` (or ``carebed.v1.GW.up.CLASS``) →
    ``carebed/v1/GW/up/CLASS`` (NATS 2.9 refuses MQTT topics with a dot, so every dot of a
    subject from MQTT was a slash)."""
    return subject.removeprefix(MQTT_PREFIX).replace(".", "/")


class JetStreamUplink:
    """One worker's pull subscriptions on the shared and on its own alarm consumer."""

    def __init__(
        self,
        settings: SourceSettings,
        jetstream: JetStreamSettings,
    ) -> None:
        self.settings = settings
        self.jetstream = jetstream
        self._nc: NatsClient | None = None
        self._in_flight = 0  # fetched and not yet acknowledged (or dropped with a connection)
        self._room = asyncio.Event()
        self._room.set()

    @property
    def shared_consumer(self) -> str:
        return self.settings.group

    @property
    def alarm_consumer(self) -> str:
        return f"{self.settings.group}-{self.settings.name}-alarm"

    async def run(self, queue: asyncio.Queue[Received]) -> None:
        try:
            await self._consume(queue)
        finally:
            if self._nc is not None:
                with contextlib.suppress(nats.errors.Error):
                    await self._nc.close()

    async def ack(self, batch: Sequence[Received]) -> None:
        acked = 0
        for delivery in batch:
            if not isinstance(delivery, NatsDelivery):
                continue
            acked += 1
            # Lost with the connection: the consumer delivers it again after its ack wait.
            with contextlib.suppress(nats.errors.Error):
                await delivery.msg.ack()
        if self._nc is not None and acked:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._nc.flush(timeout=REQUEST_TIMEOUT_S)
        self._in_flight -= acked
        if self._in_flight < self.settings.batch_max_messages:
            self._room.set()

    # -- internals ----------------------------------------------------------------------------

    async def _consume(self, queue: asyncio.Queue[Received]) -> None:
        self._nc = nc = await nats.connect(
            servers=list(self.jetstream.servers),
            name=self.settings.name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_S,
            allow_reconnect=True,
        )
        js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
        while True:
            try:
                await self._setup(js)
                break
            except (nats.errors.Error, TimeoutError, JetStreamError) as exc:
                # A cluster without a JetStream leader yet, one of its nodes down, or no MQTT
                # connection to the account yet.
                log.warning("jetstream_setup_retried", worker=self.settings.name, error=repr(exc))
                await asyncio.sleep(RETRY_S)
        shared = await js.pull_subscribe_bind(durable=self.shared_consumer, stream=STREAM)
        alarms = await js.pull_subscribe_bind(durable=self.alarm_consumer, stream=STREAM)
        log.info("jetstream_consuming", worker=self.settings.name, stream=STREAM)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._pull(shared, queue, self.settings.batch_max_messages))
            tasks.create_task(self._pull(alarms, queue, ALARM_BATCH))

    async def _setup(self, js: Any) -> None:
        """Both consumers on NATS's MQTT stream, created or updated to this configuration."""
        jetstream = self.jetstream
        try:
            info = await js.stream_info(STREAM)
        except nats.js.errors.NotFoundError as exc:
            # Created by the account's first MQTT connection (the presence worker makes one).
            raise JetStreamError(f"{STREAM} does not exist yet") from exc
        replicas = min(jetstream.replicas, info.config.num_replicas or 1)
        for durable, subject in (
            (self.shared_consumer, UP_SUBJECT),
            (self.alarm_consumer, ALARM_SUBJECT),
        ):
            await js.add_consumer(
                STREAM,
                ConsumerConfig(
                    durable_name=durable,
                    filter_subject=subject,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=jetstream.ack_wait_s,
                    max_ack_pending=jetstream.max_ack_pending,
                    num_replicas=replicas,
                ),
            )

    async def _pull(self, sub: Any, queue: asyncio.Queue[Received], batch: int) -> None:
        """Fetch while fewer than a batch wait for their ack: what waits in our queue past the
        ack wait would be delivered again."""
        while True:
            await self._room.wait()
            try:
                msgs: list[Msg] = await sub.fetch(batch=batch, timeout=FETCH_WAIT_S)
            except TimeoutError:
                continue
            except nats.errors.Error as exc:
                log.warning("jetstream_fetch_failed", worker=self.settings.name, error=repr(exc))
                await asyncio.sleep(RETRY_S)
                continue
            self._in_flight += len(msgs)
            if self._in_flight >= self.settings.batch_max_messages:
                self._room.clear()
            for msg in msgs:
                queue.put_nowait(NatsDelivery(subject_topic(msg.subject), msg.data, msg))
