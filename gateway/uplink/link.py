"""Outbox → MQTT, the policy: alarms first, resends, presence, acknowledgements and commands down.

Written against one ``MqttConnection`` per session (``gateway.uplink.client``); the messages are
built and parsed by ``gateway.uplink.messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from paho.mqtt.reasoncodes import ReasonCode

from gateway.core.backoff import Backoff
from gateway.core.clock import ts_from_unix
from gateway.core.errors import UplinkAuthError, UplinkError, UplinkTransientError
from gateway.core.events import MAX_EVENTS_PER_MESSAGE, StoredEvent, WireRun, status_payload
from gateway.store.alarms import HeldAlarm
from gateway.store.outbox import Outbox
from gateway.uplink.client import Downlink, MqttConnection
from gateway.uplink.messages import AckMessage, Message, Topics, build_messages, parse_ack
from gateway.uplink.ports import AlarmFeedback, CommandHandler, MqttSettings

log = structlog.get_logger("gateway.uplink.link")
_T = TypeVar("_T")

IDLE_WAKE_S = 1.0  # how often an idle link looks for alarms due again
BACKOFF_RESET_AFTER_S = 30.0
DOWNLINK_FINISH_S = 5.0  # at teardown, the message being handled may finish (bounded)
CLAIM_MESSAGES_PER_ROUND = 1  # small claims keep the store thread free for alarms
ACKS_PER_CALL = 500
PROMOTE_SPACING_S = 0.05  # alarms due again are looked for at most this often while draining
SHUTDOWN_STATUS_TIMEOUT_S = 2.0
DISCONNECT_SENT_TIMEOUT_S = 2.0  # paho's thread writes the DISCONNECT out before it is stopped
RECEIVE_MAXIMUM_RESERVE = 4  # of the broker's Receive Maximum, kept for alarms and status
MAX_QUEUED_ACKS = 1000  # more waiting acks are left unacknowledged; the broker sends them again
MAX_QUEUED_COMMANDS = 10_000
MAX_QUEUED_COMMAND_BYTES = 16 * 1024 * 1024
ACKED_IDS_LOGGED = 5  # an applied ack is logged once, with the first few alarm ids
SILENT_LINK_KEEPALIVES = 1.5  # no packet at all from the broker for this long: half-open
STORE_RETRY_MIN_S = 0.1  # a failing store call is retried with back-off, the link stays up
STORE_RETRY_CAP_S = 5.0
# A refused SUBSCRIBE of the downlink (a broker under load, an ACL being changed) is sent again
# on the same connection with back-off: without it no ack and no command would arrive.
SUBSCRIBE_RETRY_MIN_S = 5.0  # not sooner: a broker that refuses under load is not pressed harder
SUBSCRIBE_RETRY_CAP_S = 60.0
# A PUBACK "No matching subscribers" (MQTT 5 reason 0x10): sent again after this long, when
# the platform's consumers have had time to subscribe again (a broker restart: about a second).
NO_MATCHING_SUBSCRIBERS = 0x10
UNHEARD_RETRY_S = 5.0


@dataclass(slots=True)
class _InFlight:
    message: Message
    sent_mono: float


@dataclass(slots=True)
class UplinkStats:
    published_messages: int = 0
    published_events: int = 0
    rejected_messages: int = 0
    # PUBACK "No matching subscribers" (MQTT 5, 0x10): nobody received them; kept, sent again.
    unheard_messages: int = 0
    connects: int = 0
    downlink_rejected: int = 0  # acks that are not acks, downlink on unknown topics
    downlink_oversized: int = 0  # refused unread for their size
    commands_deferred: int = 0  # not taken (queue full, or failed): received again later
    acks_deferred: int = 0  # not taken while the ack queue was full: received again later
    acks_applied: int = 0
    subscribe_refused: int = 0
    store_failures: int = 0  # store calls that raised; each was retried with back-off
    silent_links: int = 0  # links dropped for silence (half-open)


class MqttUplink:
    """One long-lived task that keeps a link to the broker and drains the outbox through it."""

    def __init__(
        self,
        gateway_id: str,
        settings: MqttSettings,
        outbox: Outbox,
        alarms: AlarmFeedback,
        on_command: CommandHandler,
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
        # The downlink's SUBSCRIBE granted on this connection (set after ``connected``, at the
        # SUBACK): what the platform publishes from then on reaches the gateway.
        self.subscribed = asyncio.Event()
        self._online: bytes | None = None  # the presence published at the last connect
        self.topics = Topics.of(gateway_id)
        self._read_limits = self.topics.read_limits()
        self._backoff = Backoff(settings.backoff_min_s, settings.backoff_cap_s)
        self._client: MqttConnection | None = None
        self._inflight: dict[int, _InFlight] = {}
        self._wake = asyncio.Event()
        self._lost: asyncio.Future[str] | None = None
        self._stopping = False
        self._acks: list[int] = []
        self._ack_task: asyncio.Task[None] | None = None
        self._ack_queue: asyncio.Queue[Downlink | None] = asyncio.Queue()
        self._command_queue: asyncio.Queue[Downlink | None] = asyncio.Queue()
        self._command_bytes = 0  # payload bytes waiting in the command queue
        self._downlink_ack_task: asyncio.Task[None] | None = None
        self._downlink_task: asyncio.Task[None] | None = None
        self._acking: set[str] = set()  # alarms told "acknowledged" whose ack is being applied
        self._store_backoff = Backoff(STORE_RETRY_MIN_S, STORE_RETRY_CAP_S)
        self._command_backoff = Backoff(STORE_RETRY_MIN_S, STORE_RETRY_CAP_S)
        self._subscribe_backoff = Backoff(SUBSCRIBE_RETRY_MIN_S, SUBSCRIBE_RETRY_CAP_S)
        self._resubscribe: asyncio.TimerHandle | None = None
        self._alarm_task: asyncio.Task[None] | None = None
        self._window = settings.max_inflight
        self._session_began: float | None = None
        self._downlink_closing = False
        self._deferred = 0  # downlink of this session left unacknowledged, to be received again
        self._renew = False  # the session was ended on purpose, to receive deferred downlink
        self._stop_requested = False
        self._promoted_mono = -float("inf")  # the drain's last look for alarms due again

    # --------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect, drain, and reconnect with capped, jittered back-off, until cancelled."""
        while not self._stopping:
            self._session_began = None
            try:
                await self._session()
                delay = self._backoff.next_delay()
            except UplinkAuthError as exc:
                log.error("uplink_refused", reason=exc.reason)  # noqa: TRY400 - no traceback
                delay = self._backoff.at_cap()
            except UplinkTransientError as exc:
                if self._renew:
                    log.info("uplink_renewed", reason=str(exc))
                    delay = 0.0  # a renewal is no failure
                else:
                    log.warning("uplink_lost", error=str(exc))
                    delay = self._backoff.next_delay()
            finally:
                await self._teardown()
            if self.stopping:
                break
            if self._renew:
                self._renew = False
                continue
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
        self._stop_requested = True  # no session renewal from now on
        if self._renew:  # one under way: its new connection says offline
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self.connected.wait()
        if self.connected.is_set():
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._wait_drained()
            except TimeoutError:
                pass
            except Exception as exc:  # noqa: BLE001 - a failing store: stop without the drain
                self._store_failed("stats", exc)
        self._stopping = True
        if self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.5, deadline - time.monotonic())):
                    await self._ack_queue.join()
                    await self._command_queue.join()
        client = self._client
        if client is not None and self.connected.is_set():
            offline = status_payload(self.gateway_id, "offline", reason="shutdown")
            try:
                async with asyncio.timeout(SHUTDOWN_STATUS_TIMEOUT_S):
                    await self._publish_control(self.topics.status, offline, retain=True)
            except (TimeoutError, UplinkError) as exc:
                log.warning("offline_status_not_confirmed", error=str(exc))
            client.disconnect()
        self._wake.set()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result("shutdown")

    async def _wait_drained(self) -> None:
        while True:
            stats = await self.outbox.stats()
            pending_non_alarm = sum(n for klass, n in stats.queued.items() if klass != "alarm")
            if pending_non_alarm == 0 and not self._inflight and self.outbox.buffered == 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._wake.wait()

    # --------------------------------------------------------------------------- one link

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        will = status_payload(self.gateway_id, "offline", reason="lost")
        client = MqttConnection(
            self.settings,
            self,
            client_id=self.gateway_id,
            username=self.username,
            will=Message(self.topics.status, will, retain=True),
            read_limits=self._read_limits,
        )
        self._client = client
        receive_maximum = await client.connect()
        self._window = self.settings.max_inflight
        if receive_maximum:
            # The broker's Receive Maximum bounds what may be in flight (paho does not apply it,
            # and cannot change its own limit once connected): leave room for alarms and status.
            self._window = max(1, min(self._window, receive_maximum - RECEIVE_MAXIMUM_RESERVE))
        self.stats.connects += 1
        self._session_began = time.monotonic()
        log.info(
            "uplink_connected",
            host=self.settings.host,
            port=self.settings.effective_port,
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
        self._online = online
        self._publish_raw(Message(self.topics.status, online, retain=True))
        client.subscribe(self.topics.downlink)
        self._subscribe_backoff.reset()
        self._downlink_closing = False
        self._downlink_ack_task = loop.create_task(self._ack_worker(), name="uplink.down_ack")
        self._downlink_task = loop.create_task(self._command_worker(), name="uplink.down_cmd")
        self._alarm_task = loop.create_task(self._alarm_path(), name="uplink.alarms")
        for child in (self._downlink_ack_task, self._downlink_task, self._alarm_task):
            child.add_done_callback(self._child_done)
        self.connected.set()
        self.alarms.link_changed(True, [])
        await self._drain(client)

    def _child_done(self, task: asyncio.Task[None]) -> None:
        """A session task that fails ends the session (and so gets a clean teardown)."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("uplink_task_failed", task=task.get_name(), error=repr(exc))
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(f"{task.get_name()} failed: {exc!r}")

    def _lose(self, reason: str) -> None:
        """End the session (the drain loop raises, the run loop tears down and reconnects)."""
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(reason)

    async def _stop_children(self) -> None:
        """Let the downlink messages being handled finish (bounded), then stop the tasks."""
        self._downlink_closing = True
        self._ack_queue.put_nowait(None)
        self._command_queue.put_nowait(None)
        acks, commands, alarm = self._downlink_ack_task, self._downlink_task, self._alarm_task
        self._downlink_ack_task = self._downlink_task = self._alarm_task = None
        if alarm is not None:
            alarm.cancel()
        workers = [task for task in (acks, commands) if task is not None]
        if workers:
            await asyncio.wait(workers, timeout=DOWNLINK_FINISH_S)
            for task in workers:
                task.cancel()
        tasks = [task for task in (acks, commands, alarm) if task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _teardown(self) -> None:
        was_up = self.connected.is_set()
        self.connected.clear()
        self.subscribed.clear()
        self.outbox.claim_at_insert = False  # nobody publishes them now (release_all follows)
        client = self._client
        if self._resubscribe is not None:
            self._resubscribe.cancel()
            self._resubscribe = None
        try:
            await self._stop_children()
            self._client = None
            if client is not None:
                client.detach()  # its late PUBACKs and downlink are dropped
                if self._renew:
                    client.disconnect()  # on purpose: no will, the session stays
                elif not self._stopping:
                    client.drop()  # no DISCONNECT: the broker publishes the will ("lost")
                if was_up and (self._renew or self._stopping):
                    # Stopped before it has written the DISCONNECT, paho's thread would close
                    # the socket without it, and the broker would publish the will.
                    await client.wait_closed(DISCONNECT_SENT_TIMEOUT_S)
                await client.stop()
            # unacknowledged downlink comes again next session
            self._ack_queue = asyncio.Queue()
            self._command_queue = asyncio.Queue()
            self._command_bytes = 0
            self._deferred = 0  # the broker sends them again to the next session
            self._acking.clear()  # their acks were not PUBACKed: they come again
            self._inflight.clear()
            with contextlib.suppress(Exception):
                await self._settle_acks()
        finally:
            self._client = None
            if client is not None:
                client.detach()
            held: list[HeldAlarm] = []
            try:
                await self.outbox.release_all()
                held = await self.outbox.held_alarms()
            except Exception as exc:  # noqa: BLE001 - whatever the store raises: logged, retried
                self._store_failed("teardown", exc)
            # An orderly stop or a renewal is no news for the senior: only a lost link says
            # "not delivered".
            if (was_up or held) and not self._stopping and not self._renew:
                self.alarms.link_changed(False, held)

    async def _drain(self, client: MqttConnection) -> None:
        """Publish what the outbox holds, until the link is lost. A store call that fails is
        retried with back-off while the link stays up: what can be published still is."""
        assert self._lost is not None
        lost = self._lost
        while not lost.done():
            self._check_half_open(client)
            failed = False
            try:
                promoted, given_up = await self._promote_due_alarms()
            except Exception as exc:  # noqa: BLE001 - whatever the store raises: logged, retried
                failed = True
                self._store_failed("promote_due_alarms", exc)
            else:
                promoted = [a for a in promoted if a.id not in self._acking]
                if promoted:
                    self.alarms.resending(promoted)
                if given_up:
                    self.alarms.given_up(given_up)
            self.outbox.changed.clear()
            room = self._window - sum(1 for f in self._inflight.values() if not f.message.is_alarm)
            if self._alarm_on_its_way():
                room = 0  # the backlog waits: the CPU, the store and the link go to the alarm
            claim = max(0, min(room, CLAIM_MESSAGES_PER_ROUND)) * MAX_EVENTS_PER_MESSAGE
            try:
                events = await self._claim(claim)
            except Exception as exc:  # noqa: BLE001 - whatever the store raises: logged, retried
                failed, events = True, []
                self._store_failed("claim", exc)
            if events:
                self._publish_within(build_messages(self.gateway_id, events), room)
                if not failed:
                    self._store_backoff.reset()
                continue
            if failed:
                await self._pause(self._store_backoff.next_delay(), lost, client)
                continue
            self._store_backoff.reset()
            self._wake.clear()
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(self.outbox.changed.wait()),
            ]
            try:
                await asyncio.wait(
                    [*waiters, lost],
                    timeout=self._idle_wait_s(client),
                    return_when="FIRST_COMPLETED",
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
        reason = lost.result()
        if reason != "shutdown":
            raise UplinkTransientError(reason)

    async def _promote_due_alarms(self) -> tuple[list[HeldAlarm], list[HeldAlarm]]:
        """At most every ``PROMOTE_SPACING_S``: not a store call per round of the drain."""
        now = time.monotonic()
        if now - self._promoted_mono < PROMOTE_SPACING_S:
            return [], []
        self._promoted_mono = now
        return await self.outbox.promote_due_alarms()

    def _store_failed(self, call: str, exc: Exception) -> None:
        self.stats.store_failures += 1
        log.error("store_call_failed", call=call, error=repr(exc))

    async def _pause(
        self, delay_s: float, lost: asyncio.Future[str], client: MqttConnection
    ) -> None:
        """Wait ``delay_s`` (at most until the next silence check), or until the link is lost."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(delay_s, self._idle_wait_s(client))):
                await asyncio.shield(lost)

    async def _retry_store(self, call: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """A store call, retried with back-off until it succeeds (or the task ends)."""
        backoff = Backoff(STORE_RETRY_MIN_S, STORE_RETRY_CAP_S)
        while True:
            try:
                return await attempt()
            except Exception as exc:  # noqa: BLE001 - whatever the store raises: logged, retried
                self._store_failed(call, exc)
                await asyncio.sleep(backoff.next_delay())

    async def _claim(self, max_events: int) -> list[StoredEvent | WireRun]:
        """Claim; the alarms the claim found damaged and quarantined are told "not delivered"."""
        events, damaged = await self.outbox.claim_wire(max_events)
        if damaged:
            self.alarms.damaged(damaged)
        return events

    def _publish_within(self, messages: list[Message], room: int) -> None:
        """Publish alarms and at most ``room`` other messages; put the rest back for later.

        One claim can make more messages than its room (one per class, 256 KiB splits): the
        window stays a real bound, which brokers with a small Receive Maximum enforce.
        """
        left = max(room, 0)
        for message in messages:
            if message.is_alarm:
                if message.alarm_id not in self._acking:
                    self._publish_raw(message)
            elif left > 0:
                self._publish_raw(message)
                left -= 1
            else:
                self.outbox.release(message.seqs)

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
        next round (which may be busy with the backlog). While this runs the outbox claims each
        alarm in its insert's own store call (``claim_at_insert``), so the alarm never waits
        for a second store call behind the backlog's; ``claim(0)`` (alarms only) takes those
        stored otherwise (while the link was down). The store thread marks them in flight, so
        the drain loop never publishes them twice."""
        self.outbox.claim_at_insert = True
        self.outbox.alarm_stored.set()  # alarms stored while the link was down
        while True:
            await self.outbox.alarm_stored.wait()
            self.outbox.alarm_stored.clear()
            claimed, damaged = self.outbox.take_claimed_alarms()
            if damaged:
                self.alarms.damaged(damaged)
            alarms: list[StoredEvent | WireRun] = list(claimed)
            if self.outbox.alarms_unclaimed:
                alarms += await self._retry_store("claim", lambda: self._claim(0))
            for message in build_messages(self.gateway_id, alarms):
                if message.alarm_id not in self._acking:
                    self._publish_raw(message)

    def _silent_limit_s(self) -> float:
        return SILENT_LINK_KEEPALIVES * self.settings.keepalive_s

    def _idle_wait_s(self, client: MqttConnection) -> float:
        """How long the drain may sleep: at most until the link would count as silent."""
        silent_for = client.silent_s()
        return max(0.01, min(IDLE_WAKE_S, self._silent_limit_s() - silent_for + 0.005))

    def _check_half_open(self, client: MqttConnection) -> None:
        """paho notices a silent link only after about 2 x keepalive (it waits a whole
        keepalive for the PINGRESP). On a healthy link something comes in at least once per
        keepalive (a PUBACK, a PINGRESP), so silence for 1.5 x keepalive means half-open."""
        silent_s = client.silent_s()
        if silent_s > self._silent_limit_s():
            self.stats.silent_links += 1
            log.warning(
                "link_silent", silent_s=round(silent_s, 2), keepalive_s=self.settings.keepalive_s
            )
            raise UplinkTransientError(f"nothing from the broker for {silent_s:.1f} s: half-open")
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
        mid = client.publish(message)
        self._inflight[mid] = _InFlight(message, time.monotonic())
        if message.seqs:
            self.stats.published_messages += 1
            self.stats.published_events += len(message.seqs)
        return mid

    async def probe_publish(self) -> str | None:
        """Publish this connection's presence once more (the same retained payload) and wait
        for the broker's answer: None when it took it, else its refusal (MQTT 5 PUBACK reason;
        MQTT 3.1.1 acknowledges a refused publish like an accepted one). ``carebed doctor``."""
        client = self._client
        if client is None or self._online is None:
            raise UplinkTransientError("not connected")
        message = Message(self.topics.status, self._online, retain=True)
        reason = await client.confirmation(self._publish_raw(message))
        return str(reason) if reason.is_failure else None

    async def _publish_control(self, topic: str, payload: bytes, *, retain: bool) -> None:
        client = self._client
        if client is None:
            raise UplinkTransientError("not connected")
        reason = await client.confirmation(
            self._publish_raw(Message(topic, payload, retain=retain))
        )
        if reason.is_failure:
            raise UplinkTransientError(f"broker refused {topic}: {reason}")

    # ------------------------------------------------------------------ what the connection reports

    def on_refused(self, item: Downlink, size: int, why: str) -> None:
        """Counted, logged and PUBACKed (so that it is not sent again), never read."""
        if why == "too large":
            self.stats.downlink_oversized += 1
        else:
            self.stats.downlink_rejected += 1
        log.warning("downlink_refused", topic=item.topic, size=size, why=why)
        self._puback(item)

    def on_downlink(self, item: Downlink) -> None:
        """Acknowledgements and commands wait in queues of their own: an ack never waits
        behind commands. Both queues are bounded."""
        # One that does not fit is not acknowledged, not kept: once both queues have drained
        # the session is renewed and the broker sends it again.
        if item.topic == self.topics.ack:
            if self._ack_queue.qsize() >= MAX_QUEUED_ACKS:
                self.stats.acks_deferred += 1
                self._defer("ack", self._ack_queue.qsize())
                return
            self._ack_queue.put_nowait(item)
            return
        size = len(item.payload)
        if (
            self._command_queue.qsize() >= MAX_QUEUED_COMMANDS
            or self._command_bytes + size > MAX_QUEUED_COMMAND_BYTES
        ):
            self.stats.commands_deferred += 1
            self._defer("cmd", self._command_queue.qsize())
            return
        self._command_bytes += size
        self._command_queue.put_nowait(item)

    def _defer(self, queue: str, waiting: int) -> None:
        self._deferred += 1
        if self._deferred == 1:
            log.warning("downlink_deferred", queue=queue, waiting=waiting)

    def _renew_when_drained(self) -> bool:
        """Once both queues have drained, end the session on purpose so that the broker sends
        what was deferred again (never while stopping: the stop says offline and disconnects)."""
        if (
            not self._deferred
            or self._stop_requested
            or not self._ack_queue.empty()
            or not self._command_queue.empty()
        ):
            return False
        log.info("downlink_resume", deferred=self._deferred)
        self._renew = True  # reconnect at once: a renewal is no failure
        self._lose("downlink was deferred: renew the session to receive it")
        return True

    def on_subscribed(self) -> None:
        self.subscribed.set()

    def on_subscribe_refused(self, reasons: list[str]) -> None:
        self.stats.subscribe_refused += 1
        if self._resubscribe is not None or self._client is None:
            log.error("subscribe_refused", topic=self.topics.downlink, reasons=reasons)
            return
        delay = self._subscribe_backoff.next_delay()
        log.error(
            "subscribe_refused", topic=self.topics.downlink, reasons=reasons, retry_in_s=delay
        )
        self._resubscribe = asyncio.get_running_loop().call_later(
            delay, self._subscribe_again, self._client
        )

    def _subscribe_again(self, client: MqttConnection) -> None:
        self._resubscribe = None
        if client is not self._client:
            return
        try:
            client.subscribe(self.topics.downlink)
        except UplinkTransientError as exc:
            self._lose(f"subscribe failed: {exc}")

    def on_disconnected(self, reason: str) -> None:
        self._lose(f"disconnected: {reason}")

    def on_published(self, mid: int, reason: ReasonCode) -> None:
        flight = self._inflight.pop(mid, None)
        self._wake.set()
        if flight is None or not flight.message.seqs:
            if reason.is_failure:
                log.error(
                    "publish_rejected",
                    topic=flight.message.topic if flight else None,
                    reason=str(reason),
                    code=reason.value,
                )
            return
        if reason.value == NO_MATCHING_SUBSCRIBERS:
            # The broker took it and handed it to nobody: the platform's consumers are not
            # subscribed (Mosquitto 2.0 does not restore shared subscriptions after a restart,
            # until each consumer subscribes again). Not a delivery: kept and sent again.
            self.stats.unheard_messages += 1
            log.warning(
                "publish_unheard",
                topic=flight.message.topic,
                events=len(flight.message.seqs),
                first_seq=flight.message.seqs[0],
                retry_s=UNHEARD_RETRY_S,
            )
            self.outbox.release(flight.message.seqs, self.outbox.mono() + UNHEARD_RETRY_S)
            return
        if reason.is_failure:
            # paho counts this message as published; the broker did not take it.
            self.stats.rejected_messages += 1
            retry_at = self.outbox.mono() + self._backoff.cap_s / 4
            log.error(
                "publish_rejected",
                topic=flight.message.topic,
                reason=str(reason),
                code=reason.value,
                events=len(flight.message.seqs),
                first_seq=flight.message.seqs[0],
            )
            self.outbox.release(flight.message.seqs, retry_at)
            return
        self._acks.extend(flight.message.seqs)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.get_running_loop().create_task(
                self._flush_acks(), name="uplink.ack"
            )

    async def _flush_acks(self) -> None:
        while self._acks:
            acks, self._acks = self._acks, []  # (those arriving meanwhile: the next round)
            for start in range(0, len(acks), ACKS_PER_CALL):
                try:
                    delivered = await self.outbox.ack(acks[start : start + ACKS_PER_CALL])
                except Exception as exc:  # noqa: BLE001 - whatever the store raises: logged
                    # The store puts them back to be published again: a duplicate, not a loss.
                    self._store_failed("ack", exc)
                    continue
                if delivered:
                    self.alarms.delivered(delivered)
        self._wake.set()

    async def _settle_acks(self) -> None:
        if self._ack_task is not None:
            with contextlib.suppress(Exception):
                await self._ack_task
        await self._flush_acks()

    def _puback(self, item: Downlink) -> None:
        item.connection.puback(item.mid, item.qos)

    async def _command_worker(self) -> None:
        """Handle commands one at a time, in order, and PUBACK each once handled. One whose
        handling failed (its store calls) is not PUBACKed: it is received again later."""
        backoff = self._command_backoff  # across sessions: a failing store is not hammered
        while not self._downlink_closing:
            item = await self._command_queue.get()
            try:
                if item is None or self._downlink_closing:
                    return
                self._command_bytes -= len(item.payload)
                if item.connection is not self._client:
                    continue  # an earlier connection's: the broker sends it again, unacked
                try:
                    await self.on_command(item.payload)
                except Exception:
                    log.exception("downlink_failed", topic=item.topic)
                    self.stats.commands_deferred += 1
                    self._defer("cmd", self._command_queue.qsize())
                    await asyncio.sleep(backoff.next_delay())  # the store is failing
                else:
                    backoff.reset()
                    self._puback(item)
            finally:
                self._command_queue.task_done()
            if self._renew_when_drained():
                return

    async def _ack_worker(self) -> None:
        """Apply the platform's acknowledgements, all that wait at once, and PUBACK each only
        once applied: one whose application fails is retried, never dropped."""
        while not self._downlink_closing:
            first = await self._ack_queue.get()
            batch = [first]
            while not self._ack_queue.empty():
                batch.append(self._ack_queue.get_nowait())
            try:
                items = [item for item in batch if item is not None]
                if len(items) < len(batch) or self._downlink_closing:
                    return
                await self._handle_acks([i for i in items if i.connection is self._client])
            finally:
                for _ in batch:
                    self._ack_queue.task_done()
            if self._renew_when_drained():
                return

    async def _handle_acks(self, items: list[Downlink]) -> None:
        acks: list[AckMessage] = []
        accepted: list[Downlink] = []
        for item in items:
            ack = parse_ack(item.payload)
            if isinstance(ack, str):
                self.stats.downlink_rejected += 1
                log.warning("ack_rejected", why=ack, size=len(item.payload))
                self._puback(item)
            else:
                acks.append(ack)
                accepted.append(item)
        if acks:
            await self.apply_acks(acks)
            self.stats.acks_applied += len(acks)
        for item in accepted:
            self._puback(item)

    async def apply_acks(self, acks: Sequence[AckMessage]) -> None:
        """Tell the senior, then forget the alarms and store their audit events, both in one
        transaction: once this returns (and the ack is PUBACKed) the audit event is on disk.

        The senior hears "help is on the way" even while the store fails, and the alarm is not
        resent while its acknowledgement is being applied.
        """
        by_id: dict[str, str] = {}
        for ack in acks:
            for alarm_id in ack.ids:
                by_id.setdefault(alarm_id, ack.by)
        if not by_id:
            return
        held = await self._retry_store("held_alarms", self.outbox.held_alarms)
        found = [alarm for alarm in held if alarm.id in by_id]
        known = {alarm.id for alarm in found}
        for ack in acks:
            self.alarms.unknown_acknowledged([i for i in ack.ids if i not in known], ack.by)
        by_operator: dict[str, list[HeldAlarm]] = {}
        for alarm in found:
            by_operator.setdefault(by_id[alarm.id], []).append(alarm)
        for by, told in by_operator.items():
            self.alarms.acknowledged(told, by)
        if not found:
            return
        audits = {alarm.id: self.alarms.audit_event(alarm, by_id[alarm.id]) for alarm in found}
        self._acking.update(known)
        try:
            await self._retry_store(
                "acknowledge_alarms",
                lambda: self.outbox.acknowledge_alarms(
                    sorted(known), lambda alarm: audits[alarm.id]
                ),
            )
        finally:
            self._acking.difference_update(known)
        self.outbox.changed.set()  # the audit events are to be sent
        log.info("ack_applied", alarms=len(known), alarm_ids=sorted(known)[:ACKED_IDS_LOGGED])
