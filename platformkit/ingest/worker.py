"""One ingest worker: a member of the shared subscription, writing batches to PostgreSQL.

On MQTT (below); on NATS and RabbitMQ the worker consumes from the broker's own competing
consumer instead (``platformkit.ingest.jetstream``, ``platformkit.ingest.amqp``): the same
batches, the same store, an ack after the commit, presence over MQTT as here.

Run as many as needed, each with its own ``name`` (its MQTT client id and persistent session:
a worker that is killed and started again under the same name gets what was left
unacknowledged). Every worker takes a share of each ``carebed/v1/+/up/CLASS`` but alarms, and
*every* worker takes every alarm (``carebed/v1/+/up/alarm``, not shared): a broker keeps
sending a dead worker's share to its session until it is back, and an alarm must not wait for
that; the store keeps the first copy. One worker at a time, the one that holds the presence
lock in PostgreSQL, also follows ``carebed/v1/+/status`` (not shared: it sees every gateway's
retained status and will, in order), checks seq gaps, and acknowledges again an alarm that a
gateway sent again after the desk had acknowledged it.

Over TLS the worker's link presents the certificate of its ``name`` and reads the uplink only;
the presence link presents the certificate of ``presence_name`` (one name for all workers: one
of them at a time holds the lock), reads the statuses and sends those acknowledgements again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import structlog

from platformkit.ingest import gaps, store
from platformkit.ingest.contract import ContractError, ContractValidator, Event, parse_topic
from platformkit.ingest.migrations import migrate
from platformkit.ingest.mqtt import BrokerAddress, Delivery, MqttLink, PublishError, TlsFiles
from platformkit.ingest.source import MqttUplink, Received, SourceSettings, UplinkSource

log = structlog.get_logger("platformkit.ingest")

STATUS_TOPIC = "carebed/v1/+/status"
# pg_try_advisory_lock key of the presence role: "carebed ingest presence".
PRESENCE_LOCK = 0x63617265_62656432
BATCH_MAX_MESSAGES = 500
BATCH_WAIT_S = 0.01  # after the first message, how long a batch waits for more
RETRY_S = 0.5
REACKS_AT_ONCE = 4
CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    dsn: str
    broker: BrokerAddress
    name: str = "ingest-1"
    group: str = "carebed-ingest"
    shared: bool = True  # False: a plain subscription (a broker without $share, one worker)
    gap_grace_s: float = 30.0
    gap_forget_s: float = 24 * 3600.0
    gap_check_s: float = 5.0
    presence_poll_s: float = 2.0
    session_expiry_s: int = 24 * 3600
    tls: TlsFiles | None = None  # None: plain TCP
    presence_name: str = "platform-presence"  # the presence link's client id (and CN)
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    source: str = "mqtt"  # or "nats" (JetStream), "amqp" (RabbitMQ)
    mqtt_protocol: str = "5"  # "3.1.1": NATS 2.9, RabbitMQ before 3.13
    nats_servers: tuple[str, ...] = ()  # nats://HOST:PORT
    nats_replicas: int = 3
    ack_wait_s: float = 10.0  # NATS: when a fetched message not acknowledged comes again
    amqp_url: str = ""  # amqp://USER:PASSWORD@HOST:PORT/VHOST
    amqp_queue_type: str = "quorum"


@dataclass(slots=True)
class WorkerStats:
    messages: int = 0
    stored: int = 0
    duplicates: int = 0
    resends: int = 0
    rejected: int = 0
    batches: int = 0
    reacks: int = 0
    reacks_failed: int = 0


class IngestWorker:
    """``run`` until cancelled: migrate, then consume, store, acknowledge."""

    def __init__(self, settings: WorkerSettings, validator: ContractValidator) -> None:
        self.settings = settings
        self.validator = validator
        self.stats = WorkerStats()
        self.is_presence_leader = False
        self._presence_link: MqttLink | None = None
        self._reacking: set[asyncio.Task[None]] = set()
        # Re-acknowledgements waiting for their PUBACK at once (each holds a thread for it).
        self._reack_slots = asyncio.Semaphore(REACKS_AT_ONCE)
        self.source = make_source(settings)

    async def run(self) -> None:
        settings = self.settings
        conn = await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True)
        try:
            version = await migrate(conn)
            log.info("ingest_started", worker=settings.name, schema_version=version)
            queue: asyncio.Queue[Received] = asyncio.Queue()
            source = self.source
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(source.run(queue), name=f"ingest.{settings.source}")
                tasks.create_task(self._consume(conn, source, queue), name="ingest.consume")
                tasks.create_task(self._presence_role(), name="ingest.presence")
        finally:
            for task in list(self._reacking):
                task.cancel()
            await asyncio.gather(*self._reacking, return_exceptions=True)
            await conn.close()

    # -- events -------------------------------------------------------------------------------

    async def _consume(
        self, conn: store.Conn, link: UplinkSource, queue: asyncio.Queue[Received]
    ) -> None:
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + BATCH_WAIT_S
            while len(batch) < BATCH_MAX_MESSAGES:
                try:
                    batch.append(queue.get_nowait())
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            batch.append(await queue.get())
            await self._store(conn, link, batch)

    async def _store(self, conn: store.Conn, link: UplinkSource, batch: list[Received]) -> None:
        parsed: list[tuple[Received, list[Event]]] = []
        rejected: list[store.Rejected] = []
        for delivery in batch:
            gw = None
            try:
                topic = parse_topic(delivery.topic)
                gw = topic.gw
                parsed.append((delivery, self.validator.events(topic, delivery.payload)))
            except ContractError as exc:
                rejected.append(self._rejected(delivery, gw, str(exc)))
        try:
            counts = await self._write(conn, [e for _, events in parsed for e in events], rejected)
        except psycopg.DataError:
            # Valid for the schema, not for PostgreSQL (a seq beyond bigint, a NUL character in
            # a text): find the message(s) one by one, so that one cannot block the others.
            counts = store.Counts()
            for delivery, events in parsed:
                try:
                    one = await self._write(conn, events, [])
                except psycopg.DataError as exc:
                    gw = events[0].gw if events else None
                    one = await self._write(conn, [], [self._rejected(delivery, gw, str(exc))])
                counts = counts.plus(one)
            counts = counts.plus(await self._write(conn, [], rejected))
        # Stored: only now does the broker learn that these messages were received.
        await link.ack(batch)
        stats = self.stats
        stats.messages += len(batch)
        stats.batches += 1
        stats.stored += counts.stored
        stats.duplicates += counts.duplicates
        stats.resends += counts.resends
        stats.rejected += counts.rejected
        presence = self._presence_link if self.is_presence_leader else None
        if presence is None:
            return
        for reack in counts.reacks:
            # Beside the batches, not before the next one: its PUBACK may take a while (a
            # broker node restarting) and the next batch may hold an alarm.
            task = asyncio.create_task(self._reack(presence, reack), name="ingest.reack")
            self._reacking.add(task)
            task.add_done_callback(self._reacking.discard)

    async def _reack(self, presence: MqttLink, reack: store.Reack) -> None:
        """The gateway sent an alarm again after the desk acknowledged it: it missed the ack.
        Sent on the presence link (the worker's own identity may not write the downlink). Not
        retried when the broker does not take it (one not known to be taken may still be
        delivered): the gateway sends the alarm again until an ack reaches it, and each time it
        is acknowledged again."""
        try:
            async with self._reack_slots:
                await presence.publish(
                    f"carebed/v1/{reack.gw}/down/ack", ack_payload([reack.id], reack.by)
                )
        except PublishError as exc:
            self.stats.reacks_failed += 1
            log.warning("alarm_reack_failed", gw=reack.gw, alarm_id=reack.id, error=str(exc))
            return
        self.stats.reacks += 1
        log.info("alarm_reacknowledged", gw=reack.gw, alarm_id=reack.id)

    async def _write(
        self, conn: store.Conn, events: list[Event], rejected: list[store.Rejected]
    ) -> store.Counts:
        while True:
            try:
                return await store.write_batch(conn, events, rejected)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                log.warning("batch_retried", worker=self.settings.name, events=len(events))
                await asyncio.sleep(RETRY_S)

    @staticmethod
    def _rejected(delivery: Received, gw: str | None, error: str) -> store.Rejected:
        error = storable_text(error)
        log.warning("message_rejected", topic=delivery.topic, error=error)
        return store.Rejected(delivery.topic, gw, error, delivery.payload)

    # -- presence and gaps: one worker at a time ------------------------------------------------

    async def _presence_role(self) -> None:
        settings = self.settings
        conn = await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True)
        try:
            while True:
                cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (PRESENCE_LOCK,))
                row = await cur.fetchone()
                if row is not None and row[0]:
                    break
                await asyncio.sleep(settings.presence_poll_s)
            log.info("presence_role_taken", worker=settings.name)
            queue: asyncio.Queue[Delivery] = asyncio.Queue()
            link = MqttLink(
                settings.broker,
                client_id=settings.presence_name,
                subscriptions=[STATUS_TOPIC],
                queue=queue,
                tls=settings.tls,
                protocol=settings.mqtt_protocol,
            )
            link.start()
            try:
                await link.wait_connected(settings.connect_timeout_s)
                self._presence_link = link
                self.is_presence_leader = True
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._presence(conn, link, queue), name="ingest.status")
                    tasks.create_task(self._gaps(), name="ingest.gaps")
            finally:
                self.is_presence_leader = False
                self._presence_link = None
                link.close()
        finally:
            await conn.close()

    async def _presence(
        self, conn: store.Conn, link: MqttLink, queue: asyncio.Queue[Delivery]
    ) -> None:
        while True:
            delivery = await queue.get()
            try:
                topic = parse_topic(delivery.topic)
                if not delivery.payload:
                    await store.forget_status(conn, topic.gw)
                else:
                    status = self.validator.status(topic, delivery.payload)
                    await store.write_status(conn, status)
                    log.info("presence", gw=status.gw, state=status.state, reason=status.reason)
            except (ContractError, psycopg.DataError) as exc:
                # psycopg.DataError: valid for the schema, not for PostgreSQL (a NUL character)
                error = storable_text(str(exc))
                log.warning("status_rejected", topic=delivery.topic, error=error)
                await store.write_batch(
                    conn, [], [store.Rejected(delivery.topic, None, error, delivery.payload)]
                )
            link.ack(delivery)

    async def _gaps(self) -> None:
        settings = self.settings
        conn = await psycopg.AsyncConnection.connect(settings.dsn, autocommit=True)
        try:
            while True:
                for gap in await gaps.check(
                    conn, grace_s=settings.gap_grace_s, forget_s=settings.gap_forget_s
                ):
                    log.warning(
                        "seq_gap", gw=gap.gw, first_seq=gap.first_seq, last_seq=gap.last_seq
                    )
                await asyncio.sleep(settings.gap_check_s)
        finally:
            await conn.close()


def source_settings(settings: WorkerSettings) -> SourceSettings:
    return SourceSettings(
        name=settings.name,
        group=settings.group,
        shared=settings.shared,
        session_expiry_s=settings.session_expiry_s,
        batch_max_messages=BATCH_MAX_MESSAGES,
    )


def make_source(settings: WorkerSettings) -> UplinkSource:
    """The worker's source for ``settings.source``; the other brokers' clients are imported
    only when asked for."""
    common = source_settings(settings)
    if settings.source == "mqtt":
        return MqttUplink(
            common,
            settings.broker,
            settings.mqtt_protocol,
            tls=settings.tls,
            connect_timeout_s=settings.connect_timeout_s,
        )
    if settings.source == "nats":
        from platformkit.ingest.jetstream import (  # noqa: PLC0415
            JetStreamSettings,
            JetStreamUplink,
        )

        jetstream = JetStreamSettings(
            servers=settings.nats_servers,
            replicas=settings.nats_replicas,
            ack_wait_s=settings.ack_wait_s,
        )
        return JetStreamUplink(common, jetstream)
    if settings.source == "amqp":
        from platformkit.ingest.amqp import AmqpSettings, AmqpUplink  # noqa: PLC0415

        classic = settings.amqp_queue_type == "classic"
        amqp = AmqpSettings(settings.amqp_url, "classic" if classic else "quorum")
        return AmqpUplink(common, amqp)
    raise ValueError(f"unknown source {settings.source!r} (mqtt, nats or amqp)")


def storable_text(text: str) -> str:
    """``text`` as PostgreSQL can store it: a NUL and a lone surrogate written as escapes (an
    error message may quote what made the message fail)."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def ack_payload(ids: list[str], by: str) -> dict[str, object]:
    """The contract's ``down/ack`` body."""
    now = datetime.now(UTC)
    ts = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"
    return {"v": 1, "ids": ids, "by": by[:128], "ts": ts}
