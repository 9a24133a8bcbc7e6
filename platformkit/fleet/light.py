"""Light gateways: thousands of synthetic homes in one process, each nothing but its wire traffic.

A light gateway is one MQTT connection speaking the platform contract as the daemon does
(/work/shared/specs/platform-mqtt.md): client id = gateway id, a persistent session, the
retained ``offline``/``lost`` will, the retained ``online`` status after each connect, a
subscription to ``carebed/v1/GW/down/#``, events on ``up/CLASS`` with the gateway's own
consecutive ``seq`` (``gateway.started`` first), alarms resent with ``attempt`` + 1 and the same
id and seq until ``down/ack`` names them, then ``audit.alarm_acknowledged``. There is no
SQLite and no daemon: what is measured is the broker and the consumer, not the gateway.

Every client is paho's, driven from one thread through its external-loop API (``socket()``,
``loop_read``, ``loop_write``, ``loop_misc`` and the socket callbacks) on a ``selectors``
selector: no thread per connection, no MQTT codec of our own.

``python -m platformkit.fleet.light`` runs one such process under the control of another
(``LightProcess``): one JSON command per line on stdin, one JSON answer per line on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import json
import os
import queue
import random
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.core.clock import format_ts
from gateway.core.events import new_event_id
from gateway.core.kinds import event_class
from hil.mqtt import session_properties

VERSION = "light-1"  # what a light gateway says it runs (status and gateway.started)
KEEPALIVE_S = 60
SESSION_EXPIRY_S = 24 * 3600  # the contract asks for at least 24 h
ACK_TIMEOUT_S = 30.0  # the contract's default: an unacknowledged alarm is published again
RESEND_INTERVAL_S = 60.0  # then at most this often
CONNECT_TIMEOUT_S = 5.0
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 3.0
# A refused SUBSCRIBE is asked again on the same connection after 5 s, doubling up to 60 s, as
# the daemon's uplink does (gateway/uplink/link.py); until it is granted the gateway sends nothing.
SUBSCRIBE_RETRY_MIN_S = 5.0
SUBSCRIBE_RETRY_CAP_S = 60.0
MISC_INTERVAL_S = 1.0  # loop_misc (keepalive) for every client this often
MAX_SELECT_S = 0.05
MAX_PUBLISH_BURST = 2000  # per loop iteration, so that reads are never starved
FD_HEADROOM = 256
# A home's mix of events at the shipped intervals (docs/FLEET.md: about 3.5 a minute): two
# heartbeats, a vitals report and, now and then, the button's battery, per 3.5 events.
HOME_EVENTS_PER_MIN = 3.5
KIND_WEIGHTS = (("gateway.heartbeat", 4), ("telemetry.vitals", 2), ("device.battery", 1))


class LightError(Exception):
    """A light-gateway process failed or did not answer."""


def gateway_id(prefix: str, index: int) -> str:
    """The id of light gateway ``index``: ``PREFIX-NNNNN``, as the contract's pattern wants."""
    return f"{prefix}-{index:05d}"


def event_body(kind: str, index: int, uptime_s: float, **extra: Any) -> tuple[str | None, Any]:
    """``(device, data)`` of a synthetic event of ``kind`` for gateway ``index``."""
    button = f"btn-{0x10000000 + index:08X}"
    if kind == "gateway.heartbeat":
        return None, {
            "uptime_s": round(uptime_s, 1),
            "queued": {},
            "oldest_queued_ts": None,
            "disk_free_bytes": 12_000_000_000,
            "clock_synced": True,
            "version": VERSION,
        }
    if kind == "telemetry.vitals":
        hr = 60 + index % 30
        return f"watch-{0xA0B0C0000000 + index:012X}", {
            "heart_rate": hr,
            "pulse_rate": hr,
            "spo2": 97.0,
            "rr_ms": [round(60000 / hr, 1)],
        }
    if kind == "device.battery":
        return button, {"level": 80 - index % 50, "low": False}
    if kind == "alarm.button":
        return button, {"press": "short", "battery": 80, "rssi": -61}
    if kind == "audit.alarm_acknowledged":
        return None, {
            "who": extra["by"],
            "what": "alarm acknowledged",
            "why": None,
            "alarm_id": extra["alarm_id"],
        }
    if kind in ("gateway.started", "gateway.stopping"):
        return None, {"version": VERSION, "boot_id": extra["boot_id"]}
    raise ValueError(f"no synthetic body for {kind!r}")


def message(
    gw: str,
    seq: int,
    kind: str,
    ts: str,
    *,
    device: str | None,
    data: Any,
    event_id: str,
    attempt: int = 1,
) -> str:
    """An uplink payload of one event: ``{"v":1,"gw":…,"events":[…]}``."""
    event = {
        "id": event_id,
        "seq": seq,
        "kind": kind,
        "ts": ts,
        "ts_synced": True,
        "device": device,
        "data": data,
        "attempt": attempt,
    }
    return json.dumps({"v": 1, "gw": gw, "events": [event]}, separators=(",", ":"))


@dataclass(slots=True)
class PendingAlarm:
    id: str
    seq: int
    ts: str
    raised_mono: float
    sent_mono: float
    attempt: int = 1


@dataclass(slots=True)
class LightGateway:
    """One synthetic home: its MQTT client and what it has sent."""

    index: int
    gw: str
    port: int
    client: mqtt.Client
    boot_id: str
    seq: int = 0
    online: bool = False  # connected and subscribed: it may publish
    connecting: bool = False
    writing: bool = False  # its socket is registered for EVENT_WRITE
    connects: int = 0
    reconnect_at: float | None = None
    pending: dict[str, PendingAlarm] = field(default_factory=dict)
    refusals: int = 0  # SUBSCRIBEs refused in a row
    slot: int = -1  # its place in LightFleet._online


class LightFleet:
    """Light gateways on one selector, one thread: connect them, offer a rate, count."""

    def __init__(
        self,
        host: str,
        ports: Sequence[int],
        protocol: str,
        *,
        prefix: str,
        indices: Sequence[int],
        ack_timeout_s: float = ACK_TIMEOUT_S,
        seed: int = 1,
    ) -> None:
        self.host = host
        self.ports = list(ports)
        self.v5 = protocol == "5"
        self.prefix = prefix
        self.ack_timeout_s = ack_timeout_s
        self.random = random.Random(seed)
        self.selector = selectors.DefaultSelector()
        self.started_mono = time.monotonic()
        self._indices = list(indices)
        self.gateways: list[LightGateway] = []
        self._online: list[LightGateway] = []
        self._to_connect = 0  # gateways still to create, at connect_per_s
        self._connect_per_s = 200.0
        self._connect_credit = 0.0
        self._rate = 0.0
        self.alarm_share = 0.0
        self._publish_credit = 0.0
        self._last_tick = time.monotonic()
        self._misc_at = 0.0
        self._kinds = [k for k, w in KIND_WEIGHTS for _ in range(w)]
        self._ts_cache: tuple[int, str] = (0, "")
        self._stopping = False
        self._order = itertools.count()  # ties in the heaps below
        self._resends: list[tuple[float, int, LightGateway, PendingAlarm]] = []
        self._reconnects: list[tuple[float, int, LightGateway]] = []
        self._resubscribes: list[tuple[float, int, LightGateway]] = []
        # Counters, and what the controller has not collected yet.
        self.published = 0
        self.alarms_raised = 0
        self.resends = 0
        self.acks_received = 0
        self.acks_duplicate = 0
        self.acks_unknown = 0
        self.disconnects = 0
        self.connect_errors = 0
        self.subscribe_refused = 0
        self.publish_errors = 0
        self.new_alarms: list[list[Any]] = []  # [id, gw, seq, raised_mono]
        self.new_acks: list[list[Any]] = []  # [id, received_mono, attempt]
        raise_fd_limit(len(self._indices) * 2 + FD_HEADROOM)

    # ------------------------------------------------------------------ control

    @property
    def online(self) -> int:
        return len(self._online)

    @property
    def capacity(self) -> int:
        return len(self._indices)

    def add(self, count: int, per_s: float) -> None:
        """Connect ``count`` more gateways, at most ``per_s`` new connections a second."""
        room = len(self._indices) - len(self.gateways) - self._to_connect
        self._to_connect += max(0, min(count, room))
        self._connect_per_s = per_s

    def set_rate(self, events_per_s: float, alarm_share: float) -> None:
        """Offer ``events_per_s`` events a second over the online gateways, ``alarm_share`` of
        them alarms."""
        self._rate = events_per_s
        self.alarm_share = alarm_share
        self._publish_credit = 0.0

    def pending_alarms(self) -> int:
        return sum(len(g.pending) for g in self.gateways)

    def stop(self, timeout_s: float = 10.0) -> None:
        """An orderly stop of every gateway: ``gateway.stopping``, ``offline``/``shutdown``,
        DISCONNECT, and the sockets written out."""
        self._rate = 0.0
        self._stopping = True
        ts = self._ts()
        for gw in list(self._online):
            self._publish_event(gw, "gateway.stopping", ts, boot_id=gw.boot_id)
            status = {"v": 1, "gw": gw.gw, "state": "offline", "reason": "shutdown"}
            gw.client.publish(f"carebed/v1/{gw.gw}/status", json.dumps(status), qos=1, retain=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(g.client.want_write() for g in self._online):
            self.iterate(MAX_SELECT_S)
        for gw in self.gateways:
            with contextlib.suppress(Exception):
                gw.client.disconnect()
        end = time.monotonic() + 2.0
        while time.monotonic() < end and any(g.client.socket() is not None for g in self.gateways):
            self.iterate(MAX_SELECT_S)

    def snapshot(self) -> dict[str, Any]:
        """The counters, and the alarms and acks since the last snapshot."""
        times = os.times()
        out = {
            "gateways": len(self.gateways),
            "online": len(self._online),
            "published": self.published,
            "alarms_raised": self.alarms_raised,
            "resends": self.resends,
            "acks_received": self.acks_received,
            "acks_duplicate": self.acks_duplicate,
            "acks_unknown": self.acks_unknown,
            "pending_alarms": self.pending_alarms(),
            "disconnects": self.disconnects,
            "connects": sum(g.connects for g in self.gateways),
            "connect_errors": self.connect_errors,
            "subscribe_refused": self.subscribe_refused,
            "publish_errors": self.publish_errors,
            "cpu_s": times.user + times.system,
            "mono": time.monotonic(),
            "rss_kib": _rss_kib(),
            "fds": len(os.listdir("/proc/self/fd")),
            "alarms": self.new_alarms,
            "acks": self.new_acks,
        }
        self.new_alarms, self.new_acks = [], []
        return out

    def last_seqs(self) -> dict[str, int]:
        return {g.gw: g.seq for g in self.gateways}

    # ------------------------------------------------------------------ the loop

    def iterate(self, timeout_s: float = MAX_SELECT_S) -> list[tuple[Any, int]]:
        """One turn: wait for sockets (at most ``timeout_s``), read and write them, then
        keepalives, connects, reconnects, resends and the offered events. Returns what the
        selector reported for objects that are not gateways (the controller's stdin)."""
        others: list[tuple[Any, int]] = []
        for key, mask in self.selector.select(timeout_s):
            gw = key.data
            if not isinstance(gw, LightGateway):
                others.append((key.data, mask))
                continue
            client = gw.client
            if mask & selectors.EVENT_READ:
                client.loop_read()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()
        now = time.monotonic()
        elapsed, self._last_tick = now - self._last_tick, now
        if now >= self._misc_at:
            self._misc_at = now + MISC_INTERVAL_S
            for gw in self.gateways:
                if gw.client.socket() is not None:
                    gw.client.loop_misc()
        self._connect_more(now, elapsed)
        self._reconnect_due(now)
        self._resubscribe_due(now)
        self._resend_due(now)
        self._publish_offered(now, elapsed)
        return others

    def _connect_more(self, now: float, elapsed: float) -> None:
        if self._to_connect <= 0:
            self._connect_credit = 0.0
            return
        self._connect_credit = min(
            self._connect_credit + elapsed * self._connect_per_s, self._connect_per_s
        )
        while self._to_connect > 0 and self._connect_credit >= 1.0:
            self._connect_credit -= 1.0
            self._to_connect -= 1
            index = self._indices[len(self.gateways)]
            gw = self._new_gateway(index)
            self.gateways.append(gw)
            self._connect(gw, now, first=True)

    def _new_gateway(self, index: int) -> LightGateway:
        gw_id = gateway_id(self.prefix, index)
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=gw_id,
            protocol=MQTTProtocolVersion.MQTTv5 if self.v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if self.v5 else False,
        )
        port = self.ports[index % len(self.ports)]
        gw = LightGateway(index, gw_id, port, client, new_event_id())
        client.user_data_set(gw)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        will = {"v": 1, "gw": gw_id, "state": "offline", "reason": "lost"}
        client.will_set(f"carebed/v1/{gw_id}/status", json.dumps(will), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return gw

    def _connect(self, gw: LightGateway, now: float, *, first: bool) -> None:
        gw.connecting = True
        gw.reconnect_at = None
        try:
            if first:
                options: dict[str, Any] = {}
                if self.v5:
                    options = {
                        "clean_start": False,
                        "properties": session_properties(SESSION_EXPIRY_S),
                    }
                gw.client.connect(self.host, gw.port, KEEPALIVE_S, **options)
            else:
                gw.client.reconnect()
        except OSError:
            self.connect_errors += 1
            gw.connecting = False
            self._schedule_reconnect(gw, now)

    def _schedule_reconnect(self, gw: LightGateway, now: float) -> None:
        if self._stopping or gw.reconnect_at is not None:
            return
        gw.reconnect_at = now + self.random.uniform(RECONNECT_MIN_S, RECONNECT_MAX_S)
        heapq.heappush(self._reconnects, (gw.reconnect_at, next(self._order), gw))

    def _reconnect_due(self, now: float) -> None:
        while self._reconnects and self._reconnects[0][0] <= now:
            _, _, gw = heapq.heappop(self._reconnects)
            if gw.reconnect_at is not None and not self._stopping:
                self._connect(gw, now, first=False)

    def _resubscribe_due(self, now: float) -> None:
        while self._resubscribes and self._resubscribes[0][0] <= now:
            _, _, gw = heapq.heappop(self._resubscribes)
            if not gw.online and gw.client.socket() is not None and not self._stopping:
                gw.client.subscribe(f"carebed/v1/{gw.gw}/down/#", qos=1)

    def _resend_due(self, now: float) -> None:
        """Alarms without an acknowledgement after the ack timeout: published again (same id
        and seq, ``attempt`` + 1), then every ``RESEND_INTERVAL_S``; a gateway offline resends
        once it is back."""
        while self._resends and self._resends[0][0] <= now:
            _, _, gw, alarm = heapq.heappop(self._resends)
            if alarm.id not in gw.pending:
                continue  # acknowledged meanwhile
            if not gw.online:
                heapq.heappush(self._resends, (now + 1.0, next(self._order), gw, alarm))
                continue
            alarm.attempt += 1
            alarm.sent_mono = now
            self.resends += 1
            device, data = event_body("alarm.button", gw.index, 0.0)
            payload = message(
                gw.gw,
                alarm.seq,
                "alarm.button",
                alarm.ts,
                device=device,
                data=data,
                event_id=alarm.id,
                attempt=alarm.attempt,
            )
            self._send(gw, "alarm.button", payload)
            due = now + RESEND_INTERVAL_S
            heapq.heappush(self._resends, (due, next(self._order), gw, alarm))

    def _publish_offered(self, now: float, elapsed: float) -> None:
        if self._rate <= 0 or not self._online:
            return
        # At most a second's worth of credit: an offered rate, not a backlog to catch up.
        self._publish_credit = min(self._publish_credit + elapsed * self._rate, self._rate + 1)
        burst = min(int(self._publish_credit), MAX_PUBLISH_BURST)
        if burst <= 0:
            return
        self._publish_credit -= burst
        ts = self._ts()
        choice, rand = self.random.choice, self.random.random
        for _ in range(burst):
            gw = choice(self._online)
            if rand() < self.alarm_share:
                self._raise_alarm(gw, ts, now)
            else:
                self._publish_event(gw, choice(self._kinds), ts)

    def _raise_alarm(self, gw: LightGateway, ts: str, now: float) -> None:
        gw.seq += 1
        alarm = PendingAlarm(new_event_id(), gw.seq, ts, now, now)
        gw.pending[alarm.id] = alarm
        heapq.heappush(self._resends, (now + self.ack_timeout_s, next(self._order), gw, alarm))
        self.alarms_raised += 1
        self.new_alarms.append([alarm.id, gw.gw, alarm.seq, now])
        device, data = event_body("alarm.button", gw.index, 0.0)
        self._send(
            gw,
            "alarm.button",
            message(
                gw.gw, alarm.seq, "alarm.button", ts, device=device, data=data, event_id=alarm.id
            ),
        )

    def _publish_event(self, gw: LightGateway, kind: str, ts: str, **extra: Any) -> None:
        gw.seq += 1
        device, data = event_body(kind, gw.index, time.monotonic() - self.started_mono, **extra)
        self._send(
            gw,
            kind,
            message(gw.gw, gw.seq, kind, ts, device=device, data=data, event_id=new_event_id()),
        )

    def _send(self, gw: LightGateway, kind: str, payload: str) -> None:
        info = gw.client.publish(f"carebed/v1/{gw.gw}/up/{event_class(kind)}", payload, qos=1)
        # Not connected: paho keeps a QoS 1 message and sends it after the next CONNACK.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.publish_errors += 1
        self.published += 1

    def _ts(self) -> str:
        """Now as a contract timestamp, formatted once per millisecond at most."""
        ms = time.time_ns() // 1_000_000
        if self._ts_cache[0] != ms:
            self._ts_cache = (ms, format_ts(datetime.fromtimestamp(ms / 1000, UTC)))
        return self._ts_cache[1]

    # ------------------------------------------------------------------ paho's callbacks

    def _on_socket_open(self, client: mqtt.Client, gw: LightGateway, sock: Any) -> None:
        gw.writing = False
        nodelay(sock)
        self.selector.register(sock, selectors.EVENT_READ, gw)

    def _on_socket_close(self, client: mqtt.Client, gw: LightGateway, sock: Any) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)
        gw.writing = False

    def _on_register_write(self, client: mqtt.Client, gw: LightGateway, sock: Any) -> None:
        if not gw.writing:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, gw)
                gw.writing = True

    def _on_unregister_write(self, client: mqtt.Client, gw: LightGateway, sock: Any) -> None:
        if gw.writing:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.modify(sock, selectors.EVENT_READ, gw)
            gw.writing = False

    def _on_connect(
        self, client: mqtt.Client, gw: LightGateway, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        gw.connecting = False
        if reason.is_failure:
            self.connect_errors += 1
            return  # the broker closes the connection; on_disconnect schedules the next try
        gw.connects += 1
        client.subscribe(f"carebed/v1/{gw.gw}/down/#", qos=1)

    def _on_subscribe(
        self, client: mqtt.Client, gw: LightGateway, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            self.subscribe_refused += 1
            gw.refusals += 1
            delay = min(SUBSCRIBE_RETRY_CAP_S, SUBSCRIBE_RETRY_MIN_S * 2 ** (gw.refusals - 1))
            due = time.monotonic() + delay * self.random.uniform(0.8, 1.2)
            heapq.heappush(self._resubscribes, (due, next(self._order), gw))
            return
        gw.refusals = 0
        ts = self._ts()
        status = {
            "v": 1,
            "gw": gw.gw,
            "state": "online",
            "since": ts,
            "version": VERSION,
            "boot_id": gw.boot_id,
        }
        client.publish(f"carebed/v1/{gw.gw}/status", json.dumps(status), qos=1, retain=True)
        if gw.seq == 0:
            self._publish_event(gw, "gateway.started", ts, boot_id=gw.boot_id)
        if gw.slot < 0:
            gw.slot = len(self._online)
            self._online.append(gw)
        gw.online = True

    def _on_disconnect(
        self, client: mqtt.Client, gw: LightGateway, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        gw.connecting = False
        if gw.slot >= 0:  # swap-remove from the online list
            last = self._online.pop()
            if last is not gw:
                self._online[gw.slot] = last
                last.slot = gw.slot
            gw.slot = -1
        if gw.online:
            self.disconnects += 1
        gw.online = False
        if reason != 0:  # the link was lost (not our own DISCONNECT): come back
            self._schedule_reconnect(gw, time.monotonic())

    def _on_message(self, client: mqtt.Client, gw: LightGateway, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if not msg.topic.endswith("/down/ack"):
            return  # commands: none are sent to light gateways
        try:
            body = json.loads(msg.payload)
            ids = [str(i) for i in body["ids"]]
            by = str(body.get("by") or "")
        except (ValueError, KeyError, TypeError):
            return
        for alarm_id in ids:
            alarm = gw.pending.pop(alarm_id, None)
            if alarm is None:
                self.acks_duplicate += 1
                continue
            self.acks_received += 1
            self.new_acks.append([alarm_id, now, alarm.attempt])
            if gw.online:
                self._publish_event(
                    gw, "audit.alarm_acknowledged", self._ts(), by=by, alarm_id=alarm_id
                )


def nodelay(sock: Any) -> None:
    """TCP_NODELAY: paho leaves Nagle's algorithm on, so a small publication written while an
    earlier segment is unacknowledged waits for the peer's delayed ACK (about 40 ms here)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to ``wanted`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def _rss_kib() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------- the child process


def serve(fleet: LightFleet, commands: IO[bytes], answers: IO[str]) -> None:
    """Run ``fleet`` under the control of JSON lines on ``commands``, answering on ``answers``.

    Commands: ``connect`` (``count``, ``per_s``, ``timeout_s``: answered when that many more
    are online, or at the timeout), ``rate`` (``events_per_s``, ``alarm_share``), ``snapshot``
    (with ``seqs``: every gateway's last seq), ``stop``."""
    fd = commands.fileno()
    os.set_blocking(fd, False)
    fleet.selector.register(fd, selectors.EVENT_READ, "control")
    buffer = b""
    waiting: tuple[int, float] | None = None  # online count to reach, deadline
    started_at = 0.0

    def answer(obj: dict[str, Any]) -> None:
        answers.write(json.dumps(obj) + "\n")
        answers.flush()

    while True:
        for _data, _mask in fleet.iterate(MAX_SELECT_S):
            chunk = os.read(fd, 65536)
            if not chunk:
                fleet.stop()
                return
            buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            command = json.loads(line)
            op = command["op"]
            if op == "connect":
                target = fleet.online + int(command["count"])
                fleet.add(int(command["count"]), float(command.get("per_s", 200)))
                waiting = (min(target, fleet.capacity), time.monotonic() + command["timeout_s"])
                started_at = time.monotonic()
            elif op == "rate":
                fleet.set_rate(float(command["events_per_s"]), float(command["alarm_share"]))
                answer({"op": "rate"})
            elif op == "snapshot":
                snap = fleet.snapshot()
                if command.get("seqs"):
                    snap["seqs"] = fleet.last_seqs()
                answer({"op": "snapshot", **snap})
            elif op == "stop":
                fleet.stop()
                answer({"op": "stopped", "seqs": fleet.last_seqs(), **fleet.snapshot()})
                return
        if waiting is not None and (fleet.online >= waiting[0] or time.monotonic() > waiting[1]):
            answer(
                {
                    "op": "connected",
                    "online": fleet.online,
                    "seconds": time.monotonic() - started_at,
                    "connect_errors": fleet.connect_errors,
                }
            )
            waiting = None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m platformkit.fleet.light",
        description="Light gateways driven by JSON commands on stdin (docs/FLEET.md).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", required=True, help="comma-separated MQTT ports (cluster nodes)")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5")
    parser.add_argument("--prefix", required=True, help="gateway ids are PREFIX-NNNNN")
    parser.add_argument("--indices", required=True, help="FIRST:STOP:STEP of the gateway numbers")
    parser.add_argument("--ack-timeout", type=float, default=ACK_TIMEOUT_S)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    first, stop, step = (int(x) for x in args.indices.split(":"))
    fleet = LightFleet(
        args.host,
        [int(p) for p in args.ports.split(",")],
        args.protocol,
        prefix=args.prefix,
        indices=range(first, stop, step),
        ack_timeout_s=args.ack_timeout,
        seed=args.seed,
    )
    serve(fleet, sys.stdin.buffer, sys.stdout)
    return 0


# ---------------------------------------------------------------------- the controller's side


class LightProcess:
    """A ``python -m platformkit.fleet.light`` child and its command line."""

    def __init__(
        self,
        *,
        host: str,
        ports: Sequence[int],
        protocol: str,
        prefix: str,
        indices: range,
        ack_timeout_s: float,
        log: Path,
        seed: int = 1,
    ) -> None:
        argv = [
            sys.executable,
            "-m",
            "platformkit.fleet.light",
            *("--host", host),
            *("--ports", ",".join(str(p) for p in ports)),
            *("--protocol", protocol),
            *("--prefix", prefix),
            *("--indices", f"{indices.start}:{indices.stop}:{indices.step}"),
            *("--ack-timeout", str(ack_timeout_s)),
            *("--seed", str(seed)),
        ]
        self.log = log
        with log.open("ab") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=Path(__file__).resolve().parents[2],
            )
        self._answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="light.read", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, command: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def answer(self, op: str, timeout_s: float) -> dict[str, Any]:
        try:
            reply = self._answers.get(timeout=timeout_s)
        except queue.Empty:
            raise LightError(
                f"light gateways (pid {self.pid}): no {op!r} within {timeout_s} s"
            ) from None
        if reply is None:
            raise LightError(f"light gateways (pid {self.pid}) exited; see {self.log}")
        if reply.get("op") != op:
            raise LightError(f"light gateways (pid {self.pid}): {reply.get('op')!r}, not {op!r}")
        return reply

    def request(self, command: dict[str, Any], op: str, timeout_s: float = 30.0) -> dict[str, Any]:
        self.send(command)
        return self.answer(op, timeout_s)

    def close(self, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """An orderly stop; its last snapshot (with every gateway's last seq), or None."""
        reply = None
        with contextlib.suppress(LightError, OSError, ValueError):
            reply = self.request({"op": "stop"}, "stopped", timeout_s)
        with contextlib.suppress(OSError, ValueError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return reply

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._answers.put(json.loads(line))
        self._answers.put(None)


if __name__ == "__main__":
    raise SystemExit(main())
