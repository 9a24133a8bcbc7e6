"""The ingest's MQTT link: paho in its own thread, messages handed to asyncio, acked on demand.

A message is acknowledged (PUBACK) only when the caller says so, after its batch is committed
in PostgreSQL: a worker killed before that leaves it unacknowledged in its session on the
broker, which sends it again when the worker's slot reconnects. Message ids belong to one
connection: an ack for a message of an earlier connection is not sent (the broker sends that
message again on the new one, and the store drops the duplicate).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

KEEPALIVE_S = 30
PUBLISH_TIMEOUT_S = 10.0
RECEIVE_MAXIMUM = 1000  # unacknowledged messages the broker may send us at once
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 2.0


class MqttError(Exception):
    """The ingest could not publish on the broker."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as received; ``ack`` it once what it carries is stored."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int
    connection: int  # which connection of the client it came on


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> BrokerAddress:
        host, _, port = text.rpartition(":")
        return cls(host or "127.0.0.1", int(port))


class MqttLink:
    """A paho client (MQTT 5) that subscribes on every connect and feeds ``queue``.

    ``persistent``: a session that outlives the connection (expiry ``session_expiry_s``), so
    that what is queued for this client while it is away waits for it; otherwise a clean
    session (and retained messages are sent again on each subscribe).
    """

    def __init__(
        self,
        broker: BrokerAddress,
        *,
        client_id: str,
        subscriptions: Sequence[str] = (),
        persistent: bool = False,
        session_expiry_s: int = 3600,
        queue: asyncio.Queue[Delivery] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        protocol: str = "5",
    ) -> None:
        self.broker = broker
        self.client_id = client_id
        self.subscriptions = tuple(subscriptions)
        self.queue = queue
        self.connected = asyncio.Event()
        self._loop = loop or asyncio.get_running_loop()
        self._persistent = persistent
        self._session_expiry_s = session_expiry_s
        self._connection = 0
        self._lock = threading.Lock()
        # "3.1.1" for a broker that speaks no MQTT 5 (NATS 2.9, RabbitMQ before 3.13): the
        # session is then kept (or not) by the clean-session flag, without an expiry.
        self._mqtt5 = protocol == "5"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._mqtt5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._mqtt5 else not persistent,
            manual_ack=True,
        )
        self._client.reconnect_delay_set(
            min_delay=RECONNECT_MIN_S,  # type: ignore[arg-type]
            max_delay=RECONNECT_MAX_S,  # type: ignore[arg-type]
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def start(self) -> None:
        """Connect in the background (and again after every loss)."""
        if not self._mqtt5:
            self._client.connect_async(self.broker.host, self.broker.port, KEEPALIVE_S)
            self._client.loop_start()
            return
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = self._session_expiry_s if self._persistent else 0
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        self._client.connect_async(
            self.broker.host,
            self.broker.port,
            KEEPALIVE_S,
            clean_start=not self._persistent,
            properties=properties,
        )
        self._client.loop_start()

    async def wait_connected(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self.connected.wait()

    def ack(self, delivery: Delivery) -> None:
        """PUBACK ``delivery`` if it came on the current connection."""
        if delivery.qos == 0:
            return
        with self._lock:
            if delivery.connection != self._connection:
                return
        self._client.ack(delivery.mid, delivery.qos)

    async def publish(self, topic: str, payload: dict[str, Any] | bytes, qos: int = 1) -> None:
        """Publish and return once the broker has it (PUBACK with a success code)."""
        data = (
            payload
            if isinstance(payload, bytes)
            else json.dumps(payload, separators=(",", ":")).encode()
        )
        info = self._client.publish(topic, data, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        await asyncio.to_thread(info.wait_for_publish, PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise MqttError(f"no PUBACK for {topic} within {PUBLISH_TIMEOUT_S} s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho's thread ------------------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            return
        with self._lock:
            self._connection += 1
        if self.subscriptions:
            client.subscribe([(topic, 1) for topic in self.subscriptions])
        self._loop.call_soon_threadsafe(self.connected.set)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._loop.call_soon_threadsafe(self.connected.clear)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            connection = self._connection
        delivery = Delivery(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=int(msg.qos),
            retain=bool(msg.retain),
            mid=int(msg.mid),
            connection=connection,
        )
        if self.queue is None:
            self.ack(delivery)
            return
        self._loop.call_soon_threadsafe(self.queue.put_nowait, delivery)
