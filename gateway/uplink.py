"""Outbox → MQTT: batches up, presence, acknowledgements and commands down, per the contract."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.alarms import AlarmTracker
from gateway.backoff import Backoff
from gateway.config import MqttSection
from gateway.errors import UplinkAuthError, UplinkError, UplinkTransientError
from gateway.events import (
    CONTRACT_VERSION,
    MAX_EVENTS_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    StoredEvent,
    payload_prefix,
    status_payload,
    ts_from_unix,
)
from gateway.outbox import Outbox

log = structlog.get_logger("gateway.uplink")

IDLE_WAKE_S = 1.0  # how often an idle link looks for alarms due again
BACKOFF_RESET_AFTER_S = 30.0
DOWNLINK_FINISH_S = 5.0  # at teardown, the message being handled may finish (bounded)
CLAIM_MESSAGES_PER_ROUND = 1  # small claims keep the store thread free for alarms
ACKS_PER_CALL = 500
SHUTDOWN_STATUS_TIMEOUT_S = 2.0
ALARM_EXTRA_INFLIGHT = 16  # alarms are published even when the window is full
RECEIVE_MAXIMUM_RESERVE = 4  # of the broker's Receive Maximum, kept for alarms and status
AUTH_REASONS = {0x84, 0x85, 0x86, 0x87, 0x8C}  # MQTT 5 CONNACK codes that mean "credentials"


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publication: events of one class, or a control message."""

    topic: str
    payload: bytes
    seqs: tuple[int, ...] = ()
    is_alarm: bool = False
    retain: bool = False


@dataclass(slots=True)
class _InFlight:
    message: Message
    sent_mono: float


@dataclass(frozen=True, slots=True)
class _Downlink:
    client: mqtt.Client
    topic: str
    payload: bytes
    mid: int
    qos: int


@dataclass(slots=True)
class UplinkStats:
    published_messages: int = 0
    published_events: int = 0
    rejected_messages: int = 0
    connects: int = 0
    downlink_rejected: int = 0
    subscribe_refused: int = 0


class AckMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: int
    ids: list[str] = Field(max_length=1000)
    by: str = "unknown"


def topic_root(gateway_id: str) -> str:
    return f"carebed/v1/{gateway_id}"


def build_messages(gateway_id: str, events: list[StoredEvent]) -> list[Message]:
    """Group claimed events into publications: alarms alone and first, then per class in order,
    at most 500 events and 256 KiB each."""
    root = topic_root(gateway_id)
    prefix = payload_prefix(gateway_id)
    messages: list[Message] = []
    by_class: dict[str, list[StoredEvent]] = {}
    for event in events:
        klass = event.event_class
        if klass == "alarm":
            body = f"{prefix}{event.wire_json()}]}}".encode()
            messages.append(Message(f"{root}/up/alarm", body, (event.seq,), is_alarm=True))
        else:
            by_class.setdefault(klass, []).append(event)
    overhead = len(prefix) + 2
    for klass, members in by_class.items():
        parts: list[str] = []
        seqs: list[int] = []
        size = overhead
        for event in members:
            text = event.wire_json()
            if parts and (
                len(parts) >= MAX_EVENTS_PER_MESSAGE or size + len(text) + 1 > MAX_MESSAGE_BYTES
            ):
                messages.append(_pack(root, klass, prefix, parts, seqs))
                parts, seqs, size = [], [], overhead
            parts.append(text)
            seqs.append(event.seq)
            size += len(text) + 1
        if parts:
            messages.append(_pack(root, klass, prefix, parts, seqs))
    return messages


def _pack(root: str, klass: str, prefix: str, parts: list[str], seqs: list[int]) -> Message:
    body = (prefix + ",".join(parts) + "]}").encode()
    return Message(f"{root}/up/{klass}", body, tuple(seqs))


class MqttUplink:
    """One long-lived task that keeps a link to the broker and drains the outbox through it."""

    def __init__(
        self,
        gateway_id: str,
        settings: MqttSection,
        outbox: Outbox,
        alarms: AlarmTracker,
        on_command: Callable[[bytes], Awaitable[None]],
        *,
        username: str,
        version: str,
        boot_id: str,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.gateway_id = gateway_id
        self.settings = settings
        self.outbox = outbox
        self.alarms = alarms
        self.on_command = on_command
        self.username = username
        self.version = version
        self.boot_id = boot_id
        self.wall = wall
        self.stats = UplinkStats()
        self.connected = asyncio.Event()
        self.root = topic_root(gateway_id)
        self._backoff = Backoff(settings.backoff_min_s, settings.backoff_cap_s)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._inflight: dict[int, _InFlight] = {}
        self._wake = asyncio.Event()
        self._lost: asyncio.Future[str] | None = None
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._stopping = False
        self._acks: list[int] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._downlink: asyncio.Queue[_Downlink | None] = asyncio.Queue()
        self._downlink_task: asyncio.Task[None] | None = None
        self._alarm_task: asyncio.Task[None] | None = None
        self._control: dict[int, asyncio.Future[ReasonCode]] = {}
        self._window = settings.max_inflight
        self._session_began: float | None = None
        self._downlink_closing = False

    # --------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect, drain, and reconnect with capped, jittered back-off, until cancelled."""
        self._loop = asyncio.get_running_loop()
        while not self._stopping:
            self._session_began = None
            try:
                await self._session()
                delay = self._backoff.next_delay()
            except UplinkAuthError as exc:
                log.error("uplink_refused", reason=exc.reason)  # noqa: TRY400 - no traceback
                delay = self._backoff.at_cap()
            except UplinkTransientError as exc:
                log.warning("uplink_lost", error=str(exc))
                delay = self._backoff.next_delay()
            finally:
                await self._teardown()
            if self.stopping:
                break
            if self._session_lasted_s() >= BACKOFF_RESET_AFTER_S:
                # A link that held for a while was healthy: start the back-off afresh. A broker
                # that accepts and then drops at once keeps growing it.
                self._backoff.reset()
                delay = self._backoff.next_delay()
            log.info("uplink_retry", delay_s=round(delay, 2))
            await asyncio.sleep(delay)

    def _session_lasted_s(self) -> float:
        began = self._session_began
        return 0.0 if began is None else time.monotonic() - began

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def stop(self, drain_timeout_s: float) -> None:
        """Orderly shutdown: drain what can be drained, then say offline, then disconnect."""
        deadline = time.monotonic() + drain_timeout_s
        if self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._wait_drained()
        self._stopping = True
        if self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                    await self._downlink.join()
        client = self._client
        if client is not None and self.connected.is_set():
            offline = status_payload(self.gateway_id, "offline", reason="shutdown")
            try:
                async with asyncio.timeout(SHUTDOWN_STATUS_TIMEOUT_S):
                    await self._publish_control(f"{self.root}/status", offline, retain=True)
            except (TimeoutError, UplinkError) as exc:
                log.warning("offline_status_not_confirmed", error=str(exc))
            client.disconnect()
        self._wake.set()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result("shutdown")

    async def _wait_drained(self) -> None:
        while True:
            stats = await self.outbox.call(self.outbox.store.stats)
            pending_non_alarm = sum(n for klass, n in stats.queued.items() if klass != "alarm")
            if pending_non_alarm == 0 and not self._inflight and self.outbox.buffered == 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._wake.wait()

    # --------------------------------------------------------------------------- one link

    def _make_client(self) -> mqtt.Client:
        v5 = self.settings.protocol == "5"
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.gateway_id,
            clean_session=None if v5 else False,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=True,  # PUBACK downlink only once it has been handled and stored
        )
        client.connect_timeout = self.settings.connect_timeout_s
        client.max_inflight_messages_set(self.settings.max_inflight + ALARM_EXTRA_INFLIGHT)
        client.max_queued_messages_set(0)
        password = self.settings.password
        client.username_pw_set(
            self.username, password.get_secret_value() if password is not None else None
        )
        tls = self.settings.tls
        if tls is not None:
            context = ssl.create_default_context(cafile=str(tls.ca_file))
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            client.tls_set_context(context)
        will = status_payload(self.gateway_id, "offline", reason="lost")
        client.will_set(f"{self.root}/status", will, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        self._connack = loop.create_future()
        client = self._make_client()
        self._client = client
        v5_options: dict[str, Any] = {}
        if self.settings.protocol == "5":  # 3.1.1 gets clean_session=False from the constructor
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.settings.session_expiry_s
            v5_options = {"clean_start": False, "properties": properties}
        host, port = self.settings.host, self.settings.effective_port
        connect = loop.run_in_executor(
            None,
            functools.partial(client.connect, host, port, self.settings.keepalive_s, **v5_options),
        )
        try:
            # paho bounds the TCP connect and the TLS handshake by connect_timeout. The thread is
            # never abandoned while it may still send a CONNECT that would take over the session.
            try:
                await asyncio.shield(connect)
            except asyncio.CancelledError:
                connect.add_done_callback(lambda _: _drop_socket(client))
                raise
            client.loop_start()
            async with asyncio.timeout(self.settings.connect_timeout_s):
                reason = await self._connack
        except ssl.SSLCertVerificationError as exc:
            raise UplinkAuthError(f"TLS verification failed: {exc.verify_message}") from exc
        except (OSError, TimeoutError) as exc:
            raise UplinkTransientError(f"cannot connect to {host}:{port}: {exc!r}") from exc
        if reason.is_failure:
            if reason.value in AUTH_REASONS or reason.value in (4, 5):
                raise UplinkAuthError(str(reason))
            raise UplinkTransientError(f"broker refused the connection: {reason}")
        self.stats.connects += 1
        self._session_began = time.monotonic()
        log.info(
            "uplink_connected",
            host=host,
            port=port,
            protocol=self.settings.protocol,
            window=self._window,
        )
        online = status_payload(
            self.gateway_id,
            "online",
            since=ts_from_unix(self.wall()),
            version=self.version,
            boot_id=self.boot_id,
        )
        self._publish_raw(Message(f"{self.root}/status", online, retain=True))
        result, _ = client.subscribe(f"{self.root}/down/#", qos=1)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise UplinkTransientError(f"subscribe failed: {mqtt.error_string(result)}")
        self._downlink_closing = False
        self._downlink_task = loop.create_task(self._downlink_worker(), name="uplink.downlink")
        self._alarm_task = loop.create_task(self._alarm_path(), name="uplink.alarms")
        for child in (self._downlink_task, self._alarm_task):
            child.add_done_callback(self._child_done)
        self.connected.set()
        self.alarms.link_changed(True, [])
        await self._drain()

    def _child_done(self, task: asyncio.Task[None]) -> None:
        """A session task that fails ends the session (and so gets a clean teardown)."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("uplink_task_failed", task=task.get_name(), error=repr(exc))
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(f"{task.get_name()} failed: {exc!r}")

    async def _stop_children(self) -> None:
        """Let the downlink message being handled finish (bounded), then stop both tasks."""
        self._downlink_closing = True
        self._downlink.put_nowait(None)
        downlink, alarm = self._downlink_task, self._alarm_task
        self._downlink_task = self._alarm_task = None
        if alarm is not None:
            alarm.cancel()
        if downlink is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(downlink), DOWNLINK_FINISH_S)
            downlink.cancel()
        tasks = [task for task in (downlink, alarm) if task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _teardown(self) -> None:
        was_up = self.connected.is_set()
        self.connected.clear()
        client = self._client
        try:
            await self._stop_children()
            self._client = None
            if client is not None:
                if not self._stopping:
                    _drop_socket(client)  # no DISCONNECT: the broker publishes the will ("lost")
                await asyncio.to_thread(client.loop_stop)
            # unacknowledged downlink comes again next session
            self._downlink = asyncio.Queue()
            for future in self._control.values():
                if not future.done():
                    future.set_exception(UplinkTransientError("link lost"))
            self._control.clear()
            self._inflight.clear()
            with contextlib.suppress(Exception):
                await self._settle_acks()
        finally:
            self._client = None
            await self.outbox.call(self.outbox.store.release_all, urgent=True)
            held = await self.outbox.call(self.outbox.store.held_alarms, urgent=True)
            # An orderly stop is no news for the senior: only a lost link says "not delivered".
            if (was_up or held) and not self._stopping:
                self.alarms.link_changed(False, held)

    async def _drain(self) -> None:
        assert self._lost is not None
        lost = self._lost
        while not lost.done():
            promoted, given_up = await self.outbox.call(
                self.outbox.store.promote_due_alarms, urgent=True
            )
            if promoted:
                self.alarms.resending(promoted)
            if given_up:
                self.alarms.given_up(given_up)
            self.outbox.changed.clear()
            room = self._window - sum(1 for f in self._inflight.values() if not f.message.is_alarm)
            if self._alarm_on_its_way():
                room = 0  # the backlog waits: the CPU, the store and the link go to the alarm
            claim = max(0, min(room, CLAIM_MESSAGES_PER_ROUND)) * MAX_EVENTS_PER_MESSAGE
            events = await self.outbox.call(self.outbox.store.claim, claim, urgent=True)
            if events:
                self._publish_within(build_messages(self.gateway_id, events), room)
                continue
            self._check_half_open()
            self._wake.clear()
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(self.outbox.changed.wait()),
            ]
            try:
                await asyncio.wait(
                    [*waiters, lost], timeout=IDLE_WAKE_S, return_when="FIRST_COMPLETED"
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
        reason = lost.result()
        if reason != "shutdown":
            raise UplinkTransientError(reason)

    def _publish_within(self, messages: list[Message], room: int) -> None:
        """Publish alarms and at most ``room`` other messages; put the rest back for later.

        One claim can make more messages than its room (one per class, 256 KiB splits): the
        window stays a real bound, which brokers with a small Receive Maximum enforce.
        """
        left = max(room, 0)
        for message in messages:
            if message.is_alarm:
                self._publish_raw(message)
            elif left > 0:
                self._publish_raw(message)
                left -= 1
            else:
                self.outbox.call_nowait(
                    self.outbox.store.release, message.seqs, self.outbox.store.mono()
                )

    def _alarm_on_its_way(self) -> bool:
        """An alarm is being stored, or is stored and waits for its PUBACK.

        Only while the fast path runs: if it has died, the session is ending anyway and the
        backlog must not wait on a flag that nobody will clear.
        """
        if self._alarm_task is None or self._alarm_task.done():
            return False
        return (
            self.outbox.alarms_arriving > 0
            or self.outbox.alarm_stored.is_set()
            or any(f.message.is_alarm for f in self._inflight.values())
        )

    async def _alarm_path(self) -> None:
        """Publish a new alarm as soon as it is stored, without waiting for the drain loop's
        next round (which may be busy with the backlog). ``claim(0)`` claims alarms only; the
        store thread marks them in flight, so the drain loop never publishes them twice."""
        self.outbox.alarm_stored.set()  # alarms stored while the link was down
        while True:
            await self.outbox.alarm_stored.wait()
            self.outbox.alarm_stored.clear()
            alarms = await self.outbox.call(self.outbox.store.claim, 0, urgent=True)
            for message in build_messages(self.gateway_id, alarms):
                self._publish_raw(message)

    def _check_half_open(self) -> None:
        if not self._inflight:
            return
        oldest = min(f.sent_mono for f in self._inflight.values())
        waited = time.monotonic() - oldest
        if waited > self.settings.effective_puback_timeout_s:
            raise UplinkTransientError(f"no PUBACK for {waited:.1f} s: link is half-open")

    def _publish_raw(self, message: Message) -> int:
        client = self._client
        if client is None:
            raise UplinkTransientError("not connected")
        info = client.publish(message.topic, message.payload, qos=1, retain=message.retain)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise UplinkTransientError(f"publish failed: {mqtt.error_string(info.rc)}")
        self._inflight[info.mid] = _InFlight(message, time.monotonic())
        if message.seqs:
            self.stats.published_messages += 1
            self.stats.published_events += len(message.seqs)
        return info.mid

    async def _publish_control(self, topic: str, payload: bytes, *, retain: bool) -> None:
        mid = self._publish_raw(Message(topic, payload, retain=retain))
        future: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        self._control[mid] = future
        reason = await future
        if reason.is_failure:
            raise UplinkTransientError(f"broker refused {topic}: {reason}")

    # --------------------------------------------------------------------------- paho thread

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(callback, *args)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        receive_maximum = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self._post(self._connected, client, reason, receive_maximum)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            self._post(self._subscribe_refused, refused)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self._post(self._disconnected, client, str(reason))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self._post(self._published, client, mid, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        item = _Downlink(client, msg.topic, bytes(msg.payload), msg.mid, msg.qos)
        self._post(self._downlink.put_nowait, item)

    # --------------------------------------------------------------------------- event loop side

    def _connected(
        self, client: mqtt.Client, reason: ReasonCode, receive_maximum: int | None
    ) -> None:
        if client is not self._client or self._connack is None or self._connack.done():
            return
        self._window = self.settings.max_inflight
        if receive_maximum:
            # The broker's Receive Maximum bounds what may be in flight (paho does not apply it,
            # and cannot change its own limit once connected): leave room for alarms and status.
            self._window = max(1, min(self._window, receive_maximum - RECEIVE_MAXIMUM_RESERVE))
        self._connack.set_result(reason)

    def _subscribe_refused(self, reasons: list[str]) -> None:
        self.stats.subscribe_refused += 1
        log.error("subscribe_refused", topic=f"{self.root}/down/#", reasons=reasons)

    def _disconnected(self, client: mqtt.Client, reason: str) -> None:
        if client is not self._client:
            return
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(UplinkTransientError(f"disconnected: {reason}"))
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(f"disconnected: {reason}")

    def _published(self, client: mqtt.Client, mid: int, reason: ReasonCode) -> None:
        if client is not self._client:
            return
        flight = self._inflight.pop(mid, None)
        self._wake.set()
        control = self._control.pop(mid, None)
        if control is not None and not control.done():
            control.set_result(reason)
        if flight is None or not flight.message.seqs:
            if reason.is_failure:
                log.error(
                    "publish_rejected",
                    topic=flight.message.topic if flight else None,
                    reason=str(reason),
                    code=reason.value,
                )
            return
        if reason.is_failure:
            # paho counts this message as published; the broker did not take it.
            self.stats.rejected_messages += 1
            retry_at = self.outbox.store.mono() + self._backoff.cap_s / 4
            log.error(
                "publish_rejected",
                topic=flight.message.topic,
                reason=str(reason),
                code=reason.value,
                events=len(flight.message.seqs),
                first_seq=flight.message.seqs[0],
            )
            self.outbox.call_nowait(self.outbox.store.release, flight.message.seqs, retry_at)
            return
        self._acks.extend(flight.message.seqs)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.get_running_loop().create_task(
                self._flush_acks(), name="uplink.ack"
            )

    async def _flush_acks(self) -> None:
        while self._acks:
            seqs, self._acks = self._acks[:ACKS_PER_CALL], self._acks[ACKS_PER_CALL:]
            delivered = await self.outbox.call(self.outbox.store.ack, seqs)
            if delivered:
                self.alarms.delivered(delivered)
        self._wake.set()

    async def _settle_acks(self) -> None:
        if self._ack_task is not None:
            with contextlib.suppress(Exception):
                await self._ack_task
        await self._flush_acks()

    async def _downlink_worker(self) -> None:
        """Handle downlink one message at a time, in order, and PUBACK each once handled."""
        while not self._downlink_closing:
            item = await self._downlink.get()
            try:
                if item is None or self._downlink_closing:
                    return
                if item.client is not self._client:
                    continue  # an earlier connection's: the broker sends it again, unacked
                await self._handle_downlink(item.topic, item.payload)
                if item.qos > 0:
                    item.client.ack(item.mid, item.qos)
            finally:
                self._downlink.task_done()

    async def _handle_downlink(self, topic: str, payload: bytes) -> None:
        try:
            if topic == f"{self.root}/down/ack":
                await self._handle_ack(payload)
            elif topic == f"{self.root}/down/cmd":
                await self.on_command(payload)
            else:
                self.stats.downlink_rejected += 1
                log.warning("downlink_unknown_topic", topic=topic)
        except Exception:
            log.exception("downlink_failed", topic=topic)

    async def _handle_ack(self, payload: bytes) -> None:
        try:
            ack = AckMessage.model_validate_json(payload)
        except ValidationError as exc:
            self.stats.downlink_rejected += 1
            log.warning("ack_rejected", errors=exc.error_count())
            return
        if ack.v != CONTRACT_VERSION:
            self.stats.downlink_rejected += 1
            log.warning("ack_rejected", version=ack.v)
            return
        found = await self.outbox.call(self.outbox.store.acknowledge_alarms, ack.ids, urgent=True)
        known = {alarm.id for alarm in found}
        await self.alarms.acknowledged(found, [i for i in ack.ids if i not in known], ack.by)


def _drop_socket(client: mqtt.Client) -> None:
    """Close a client's connection without DISCONNECT, so that the broker publishes its will."""
    sock = client.socket()
    if isinstance(sock, socket.socket):  # ssl.SSLSocket included
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
