"""The ingest's MQTT link: paho in its own thread, messages handed to asyncio, acked on demand.

A message is acknowledged (PUBACK) only when the caller says so, after its batch is committed
in PostgreSQL: a worker killed before that leaves it unacknowledged in its session on the
broker, which sends it again when the worker's slot reconnects. Message ids belong to one
connection: an ack for a message of an earlier connection is not sent (the broker sends that
message again on the new one, and the store drops the duplicate).

Every link is one identity on the broker: over TLS (``TlsFiles``) it presents the client
certificate of its name (the certificate's CN, which the shipped broker configuration makes the
username and the client id), and verifies the broker against the CA and its host name. Key files
are read by OpenSSL only: neither their content nor a passphrase is ever logged.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.uplink.client import no_delay

KEEPALIVE_S = 30
PUBLISH_TIMEOUT_S = 10.0
REFUSED_KEPT_S = 2 * PUBLISH_TIMEOUT_S  # a refusal nobody waits for any more is forgotten
RECEIVE_MAXIMUM = 1000  # unacknowledged messages the broker may send us at once
RECONNECT_MIN_S = 0.1
RECONNECT_MAX_S = 2.0


NAME_PLACEHOLDER = "{name}"

log = structlog.get_logger("platformkit.ingest")


class MqttError(Exception):
    """Root of the ingest's broker errors: it could not connect or publish.

    MqttError
    ├── TlsConfigError     a TLS option names an unusable file: exit with the message, no retry
    ├── MqttConnectError   no connection within the deadline (refused certificate, plain TCP to
    │                      a TLS listener, broker down): exit, the supervisor starts it again
    └── PublishError       a publication the broker did not take: refused (a PUBACK with a
                           failure code such as 0x87 Not authorized: never delivered), or not
                           known to be taken (not connected, no PUBACK in time: paho keeps a QoS 1
                           message and may still deliver it after a reconnect). The caller says so
                           (the desk answers 503, a worker logs it) and goes on
    """


class PublishError(MqttError):
    """The broker did not take a publication (``MqttLink.publish``)."""


class TlsConfigError(MqttError):
    """A TLS option (``option``, e.g. ``--cert-file``) names a file that cannot be used."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


class MqttConnectError(MqttError):
    """A link got no successful CONNACK within its deadline; ``reason`` is the last failure."""

    def __init__(self, client_id: str, broker: str, timeout_s: float, reason: str) -> None:
        super().__init__(
            f"{client_id}: no connection to the broker {broker} within {timeout_s:g} s: {reason}"
        )
        self.client_id = client_id
        self.reason = reason


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

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """TLS 1.2+ with a client certificate per link.

    ``ca_file`` signs the broker's certificate (verified, with the broker's host name).
    ``cert_file`` and ``key_file`` may hold ``{name}``, replaced by each link's name (a worker's
    ``--name``, the presence link's, the desk's): the certificate's CN must be that name, since
    the broker takes the CN as the client's identity and client id.
    """

    ca_file: Path
    cert_file: str
    key_file: str

    def files(self, name: str) -> tuple[Path, Path]:
        """The certificate and key files of the link ``name``."""
        return (
            Path(self.cert_file.replace(NAME_PLACEHOLDER, name)),
            Path(self.key_file.replace(NAME_PLACEHOLDER, name)),
        )

    @property
    def per_name(self) -> bool:
        return NAME_PLACEHOLDER in self.cert_file and NAME_PLACEHOLDER in self.key_file

    def context(self, name: str) -> ssl.SSLContext:
        """The client context of link ``name``; ``TlsConfigError`` naming the option at fault."""
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError("--ca-file", _file_problem(self.ca_file, exc)) from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        cert_file, key_file = self.files(name)
        cn = _certificate_cn(cert_file)
        if cn != name:
            raise TlsConfigError(
                "--cert-file",
                f"{cert_file} is the certificate of CN {cn!r}, not of {name!r}: each link"
                " presents the certificate whose CN is its name (one certificate, one"
                " connection)",
            )

        def no_passphrase() -> bytes:
            raise TlsConfigError("--key-file", f"{key_file} is protected by a passphrase")

        try:
            context.load_cert_chain(cert_file, key_file, password=no_passphrase)
        except TlsConfigError:
            raise
        except (OSError, ssl.SSLError) as exc:
            if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
                problem = f"{key_file} is not the key of the certificate {cert_file}"
            else:
                problem = _file_problem(key_file, exc)
            raise TlsConfigError("--key-file", problem) from None
        return context


def _certificate_cn(path: Path) -> str:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise TlsConfigError("--cert-file", _file_problem(path, exc)) from None
    except ValueError:
        raise TlsConfigError("--cert-file", f"{path} holds no PEM certificate") from None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""


def _file_problem(path: Path, exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"{path} is unusable ({exc.reason or exc})"
    if isinstance(exc, OSError):
        return f"{path}: {exc.strerror or exc}"
    return f"{path}: {exc}"


class _Client(mqtt.Client):
    """paho's client, keeping the reason of the last failed connection attempt."""

    last_error: str | None = None
    socket_error: str | None = None  # of the current connection, as paho logged it

    def reconnect(self) -> MQTTErrorCode:
        self.socket_error = None
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_error = _connect_problem(exc)
            raise


def _connect_problem(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's certificate was refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return str(exc.strerror or exc)


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
        tls: TlsFiles | None = None,
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
        self._tls = tls
        self._failure: str | None = None  # the last connection failure, once logged
        self._up = False  # paho's thread: a CONNACK came on the current connection
        self._ever_up = False  # a CONNACK came once: a later close is the broker, not TLS
        # mid -> the failure code of its PUBACK and when it came (paho's thread); one that came
        # after ``publish`` gave up is dropped once stale, before paho reuses its mid.
        self._refused: dict[int, tuple[str, float]] = {}
        # "3.1.1" for a broker that speaks no MQTT 5 (NATS 2.9, RabbitMQ before 3.13): the
        # session is then kept (or not) by the clean-session flag, without an expiry.
        self._mqtt5 = protocol == "5"
        self._client = _Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self._mqtt5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self._mqtt5 else not persistent,
            manual_ack=True,
        )
        # Without Nagle: an acknowledgement is not held behind a PUBACK not yet ACKed by TCP.
        self._client.on_socket_open = no_delay
        self._client.reconnect_delay_set(
            min_delay=RECONNECT_MIN_S,  # type: ignore[arg-type]
            max_delay=RECONNECT_MAX_S,  # type: ignore[arg-type]
        )
        if tls is not None:
            self._client.tls_set_context(tls.context(client_id))
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_log = self._on_log

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
        """Until connected; ``MqttConnectError`` with the last failure after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.connected.wait()
        except TimeoutError:
            reason = self._client.last_error or "no answer from the broker"
            raise MqttConnectError(self.client_id, str(self.broker), timeout_s, reason) from None

    def ack(self, delivery: Delivery) -> None:
        """PUBACK ``delivery`` if it came on the current connection."""
        if delivery.qos == 0:
            return
        with self._lock:
            if delivery.connection != self._connection:
                return
        self._client.ack(delivery.mid, delivery.qos)

    async def publish(self, topic: str, payload: dict[str, Any] | bytes, qos: int = 1) -> None:
        """Publish and return once the broker has it (PUBACK with a success code);
        ``PublishError`` otherwise."""
        data = (
            payload
            if isinstance(payload, bytes)
            else json.dumps(payload, separators=(",", ":")).encode()
        )
        info = self._client.publish(topic, data, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        await asyncio.to_thread(info.wait_for_publish, PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise PublishError(f"no PUBACK for {topic} within {PUBLISH_TIMEOUT_S} s")
        with self._lock:
            refused = self._refused.pop(info.mid, None)
        # (A refusal older than this publication is another's, of a mid paho has reused.)
        if refused is not None and time.monotonic() - refused[1] <= PUBLISH_TIMEOUT_S:
            raise PublishError(f"the broker refused the publication to {topic}: {refused[0]}")

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
            self._failed(f"the broker refused the connection: {reason_code}")
            return
        self._client.last_error = None
        self._failure = None
        self._up = True
        self._ever_up = True
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
        up, self._up = self._up, False
        if not up and not flags.is_disconnect_packet_from_server:
            # Closed before any CONNACK: a TLS listener reached over plain TCP, a client
            # certificate the broker did not accept (TLS 1.3 says so only after the handshake).
            detail = "the broker closed the connection before its CONNACK"
            if self._client.socket_error is not None:
                detail += f" ({self._client.socket_error})"
            if self._tls is None and not self._ever_up:
                detail += "; plain TCP: is this a TLS listener?"
            self._failed(detail)
        self._loop.call_soon_threadsafe(self.connected.clear)

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        # Called before paho marks the publication done: ``publish`` finds the code.
        if reason_code.is_failure:
            now = time.monotonic()
            with self._lock:
                stale = [m for m, (_, at) in self._refused.items() if now - at > REFUSED_KEPT_S]
                for old in stale:
                    del self._refused[old]
                self._refused[mid] = (str(reason_code), now)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._failed(self._client.last_error or "connection failed")

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and "socket" in text:
            # e.g. "failed to receive on socket: [SSL: TLSV1_ALERT_UNKNOWN_CA] ...": the broker
            # refused this link's certificate after the handshake.
            self._client.socket_error = text

    def _failed(self, reason: str) -> None:
        """Log a connection failure once, until it changes or a connection succeeds."""
        self._client.last_error = reason
        if reason != self._failure:
            self._failure = reason
            self._loop.call_soon_threadsafe(
                lambda: log.warning(
                    "mqtt_connect_failed",
                    link=self.client_id,
                    broker=str(self.broker),
                    error=reason,
                )
            )

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
