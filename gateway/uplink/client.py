"""paho ↔ asyncio: one MQTT connection, its callbacks handed from paho's thread to the loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.core.errors import UplinkAuthError, UplinkTransientError
from gateway.uplink.messages import MAX_PACKET_BYTES, Message
from gateway.uplink.ports import MqttSettings

ALARM_EXTRA_INFLIGHT = 16  # alarms are published even when the window is full
AUTH_REASONS = {0x84, 0x85, 0x86, 0x87, 0x8C}  # MQTT 5 CONNACK codes that mean "credentials"
CLOSE_DRAIN_S = 1.0  # after a DISCONNECT, downlink still arriving is read until the broker closes


@dataclass(frozen=True, slots=True)
class Downlink:
    """A message from the broker, to be PUBACKed on its connection once handled."""

    connection: MqttConnection
    topic: str
    payload: bytes
    mid: int
    qos: int


class ConnectionListener(Protocol):
    """What a connection tells its user, on the event loop, until it is detached."""

    def on_published(self, mid: int, reason: ReasonCode) -> None:
        """The broker's PUBACK (or its refusal) of a publication."""

    def on_downlink(self, item: Downlink) -> None:
        """A message on a downlink topic, within that topic's size limit."""

    def on_refused(self, item: Downlink, size: int, why: str) -> None:
        """A message on an unknown topic, or too large: its payload was not read."""

    def on_subscribed(self) -> None:
        """The broker granted the downlink's SUBSCRIBE: what the platform publishes now comes."""

    def on_subscribe_refused(self, reasons: list[str]) -> None: ...

    def on_disconnected(self, reason: str) -> None: ...


class MqttConnection:
    """One paho client and its one connection, seen from the event loop.

    paho's network thread calls back; each callback is handed to the loop with
    ``call_soon_threadsafe``. Once the session is done with the connection it is detached: what
    it still reports (a late PUBACK, downlink, its own disconnect) is dropped, and a PUBACK
    awaited on it fails.
    """

    def __init__(
        self,
        settings: MqttSettings,
        listener: ConnectionListener,
        *,
        client_id: str,
        username: str,
        will: Message,
        read_limits: Mapping[str, int],
    ) -> None:
        self._settings = settings
        self._listener = listener
        self._read_limits = read_limits  # downlink topic -> largest payload read
        self._loop = asyncio.get_running_loop()
        self._attached = True
        self._gone = threading.Event()  # the connection is closed (paho's thread)
        self._last_inbound = time.monotonic()  # any packet from the broker (paho's thread)
        self._connack: asyncio.Future[tuple[ReasonCode, int | None]] = self._loop.create_future()
        self._confirmations: dict[int, asyncio.Future[ReasonCode]] = {}
        self._client = self._make_client(client_id, username, will)

    def _make_client(self, client_id: str, username: str, will: Message) -> mqtt.Client:
        settings = self._settings
        v5 = settings.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=True,  # PUBACK downlink only once it has been handled and stored
        )
        client.connect_timeout = settings.connect_timeout_s
        client.max_inflight_messages_set(settings.max_inflight + ALARM_EXTRA_INFLIGHT)
        client.max_queued_messages_set(0)
        password = settings.password
        client.username_pw_set(
            username, password.get_secret_value() if password is not None else None
        )
        tls = settings.tls
        if tls is not None:
            context = ssl.create_default_context(cafile=str(tls.ca_file))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            client.tls_set_context(context)
        client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_log = self._on_log
        client.on_socket_open = no_delay
        return client

    # --------------------------------------------------------------------------- event loop side

    async def connect(self) -> int | None:
        """Connect and wait for the CONNACK; return the broker's Receive Maximum, if it sent one.

        Raises ``UplinkAuthError`` for refused credentials or certificates, and
        ``UplinkTransientError`` for anything worth retrying.
        """
        settings = self._settings
        client = self._client
        v5_options: dict[str, Any] = {}
        if settings.protocol == "5":  # 3.1.1 gets clean_session=False from the constructor
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = settings.session_expiry_s
            # The broker sends nothing larger (3.1.1 has no such limit: see _on_message).
            properties.MaximumPacketSize = MAX_PACKET_BYTES
            v5_options = {"clean_start": False, "properties": properties}
        host, port = settings.host, settings.effective_port
        connect = self._loop.run_in_executor(
            None,
            functools.partial(client.connect, host, port, settings.keepalive_s, **v5_options),
        )
        try:
            # paho bounds the TCP connect and the TLS handshake by connect_timeout. The thread is
            # never abandoned while it may still send a CONNECT that would take over the session.
            try:
                await asyncio.shield(connect)
            except asyncio.CancelledError:
                connect.add_done_callback(lambda _: self.drop())
                raise
            client.loop_start()
            async with asyncio.timeout(settings.connect_timeout_s):
                reason, receive_maximum = await self._connack
        except ssl.SSLCertVerificationError as exc:
            raise UplinkAuthError(f"TLS verification failed: {exc.verify_message}") from exc
        except (OSError, TimeoutError) as exc:
            raise UplinkTransientError(f"cannot connect to {host}:{port}: {exc!r}") from exc
        if reason.is_failure:
            if reason.value in AUTH_REASONS or reason.value in (4, 5):
                raise UplinkAuthError(str(reason))
            raise UplinkTransientError(f"broker refused the connection: {reason}")
        return receive_maximum

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1; a refusal by the broker comes later, as ``on_subscribe_refused``."""
        result, _ = self._client.subscribe(topic, qos=1)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise UplinkTransientError(f"subscribe failed: {mqtt.error_string(result)}")

    def publish(self, message: Message) -> int:
        """Hand a message to paho at QoS 1; its PUBACK comes as ``on_published`` with this mid."""
        info = self._client.publish(message.topic, message.payload, qos=1, retain=message.retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise UplinkTransientError(f"publish failed: {mqtt.error_string(info.rc)}")
        return info.mid

    def confirmation(self, mid: int) -> asyncio.Future[ReasonCode]:
        """The PUBACK of a publication, to await; it fails if the connection is detached first."""
        future: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._confirmations[mid] = future
        return future

    def puback(self, mid: int, qos: int) -> None:
        """Acknowledge a downlink message once it has been handled (never a detached one's)."""
        if qos > 0 and self._attached:
            self._client.ack(mid, qos)

    def silent_s(self) -> float:
        """How long nothing at all has come from the broker."""
        return time.monotonic() - self._last_inbound

    def detach(self) -> None:
        """The session is done with this connection: what it still reports is dropped (its
        downlink stays unacknowledged, so the broker sends it again to the next session)."""
        self._attached = False
        for future in self._confirmations.values():
            if not future.done():
                future.set_exception(UplinkTransientError("link lost"))
        self._confirmations.clear()

    def disconnect(self) -> None:
        """DISCONNECT, so that the broker does not publish the will.

        paho closes the socket as soon as the DISCONNECT is written. Downlink that arrived and was
        not read by then makes the close a TCP reset, and the broker, which may not have read the
        DISCONNECT yet, then drops it and publishes the will. So what comes in is read until the
        broker closes its side (bounded) before the socket is closed.
        """
        client = self._client
        close = client._sock_close  # paho has no hook between DISCONNECT and close

        def close_when_read() -> None:
            sock = client.socket()
            if isinstance(sock, socket.socket):
                deadline = time.monotonic() + CLOSE_DRAIN_S
                with contextlib.suppress(OSError):  # ssl.SSLWantReadError included
                    while (left := deadline - time.monotonic()) > 0:
                        readable, _, _ = select.select([sock], [], [], left)
                        if not readable or not sock.recv(65536):
                            break
            close()

        client._sock_close = close_when_read  # type: ignore[method-assign]
        client.disconnect()

    def no_delay(self) -> bool:
        """Whether the current connection's socket sends without Nagle's delay."""
        sock = self._client.socket()
        if not isinstance(sock, socket.socket):
            return False
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def drop(self) -> None:
        """Close the connection without DISCONNECT, so that the broker publishes the will."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket included
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    async def wait_closed(self, timeout_s: float) -> None:
        """Until paho's thread has closed the connection (after writing a DISCONNECT), bounded."""
        await asyncio.to_thread(self._gone.wait, timeout_s)

    async def stop(self) -> None:
        """Stop paho's network thread."""
        await asyncio.to_thread(self._client.loop_stop)

    def _connected(self, reason: ReasonCode, receive_maximum: int | None) -> None:
        if self._attached and not self._connack.done():
            self._connack.set_result((reason, receive_maximum))

    def _disconnected(self, reason: str) -> None:
        if not self._attached:
            return
        if not self._connack.done():
            self._connack.set_exception(UplinkTransientError(f"disconnected: {reason}"))
        self._listener.on_disconnected(reason)

    def _published(self, mid: int, reason: ReasonCode) -> None:
        if not self._attached:
            return
        confirmation = self._confirmations.pop(mid, None)
        if confirmation is not None and not confirmation.done():
            confirmation.set_result(reason)
        self._listener.on_published(mid, reason)

    def _received(self, item: Downlink) -> None:
        if self._attached:
            self._listener.on_downlink(item)

    def _refused(self, item: Downlink, size: int, why: str) -> None:
        if self._attached:
            self._listener.on_refused(item, size, why)

    def _subscribe_refused(self, reasons: list[str]) -> None:
        if self._attached:
            self._listener.on_subscribe_refused(reasons)

    def _subscribed(self) -> None:
        if self._attached:
            self._listener.on_subscribed()

    # --------------------------------------------------------------------------- paho thread

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        receive_maximum = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self._post(self._connected, reason, receive_maximum)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            self._post(self._subscribe_refused, refused)
        else:
            self._post(self._subscribed)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._gone.set()
        self._post(self._disconnected, str(reason))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._post(self._published, mid, reason)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, buf: str) -> None:
        if buf.startswith("Received "):  # any packet from the broker: PUBLISH, PUBACK, PINGRESP
            self._last_inbound = time.monotonic()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Sort downlink by topic; refuse what is too large before it is copied or parsed."""
        size = len(msg.payload)
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            topic = "?"
        limit = self._read_limits.get(topic)
        if limit is None or size > limit:
            why = "unknown topic" if limit is None else "too large"
            self._post(self._refused, Downlink(self, topic, b"", msg.mid, msg.qos), size, why)
            return
        self._post(self._received, Downlink(self, topic, bytes(msg.payload), msg.mid, msg.qos))


def no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """TCP_NODELAY on a new connection (paho's thread). paho leaves Nagle's algorithm on, so an
    alarm written while an earlier segment (a telemetry batch) is not yet acknowledged by TCP
    would wait for the broker's delayed ACK, tens of milliseconds; MQTT packets are written whole,
    so nothing is gained by holding them back."""
    if isinstance(sock, socket.socket):  # ssl.SSLSocket included
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
