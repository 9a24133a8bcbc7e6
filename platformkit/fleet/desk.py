"""The operator beside the fleet: acknowledges every alarm as soon as it sees it, and keeps each
gateway's seq ledger.

A lean paho client (one thread), not the rig's ``PlatformClient``, which keeps every message: a
fleet sends hundreds of thousands. It sees the gateways' events in one of two ways:

- **from the broker** (no ingest beside the fleet): it subscribes to every gateway's ``up/#``,
  with ``share`` as one member of an MQTT 5 shared subscription (``$share/GROUP/…``);
- **from PostgreSQL** (``uplink=False``, the reference ingest beside the fleet): it subscribes
  to the statuses only and is told of each alarm the ingest stored (``alarm_stored``, fed by
  ``platformkit.fleet.ingest.StoredAlarms``), as the platform's desk is. The ingest's workers are
  then the uplink's only consumers: a second group of subscribers would make a gateway's
  publication a success while the workers' shared subscriptions are gone after a Mosquitto
  restart, and the ingest would never see it (docs/SCALE.md, "Findings").
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from hil.mqtt import ack_body, session_properties
from platformkit.fleet.completeness import SeqLedger
from platformkit.fleet.light import nodelay

UPLINK = "carebed/v1/+/up/#"
STATUS = "carebed/v1/+/status"
OPERATOR = "fleet-desk"
CONNECT_TIMEOUT_S = 10.0
KEEPALIVE_S = 30
SESSION_EXPIRY_S = 3600
MAX_INFLIGHT = 1000


class DeskError(Exception):
    """The desk could not connect or subscribe."""


@dataclass(slots=True)
class AlarmSeen:
    gw: str
    seq: int
    first_mono: float
    arrivals: int = 1
    max_attempt: int = 1
    ack_sent_mono: float | None = None
    acks_sent: int = 0


@dataclass(slots=True)
class GatewaySeen:
    ledger: SeqLedger = field(default_factory=SeqLedger)
    events: int = 0
    online: int = 0  # "online" presence messages
    lost: int = 0  # the will: the broker saw the link drop
    shutdown: int = 0


class Desk:
    """Subscribes to every gateway's ``up/#`` and ``status``; acks each alarm on arrival."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        protocol: str = "5",
        share: str | None = None,
        client_id: str = OPERATOR,
        uplink: bool = True,
    ) -> None:
        self.lock = threading.Lock()
        self.gateways: dict[str, GatewaySeen] = {}
        self.alarms: dict[str, AlarmSeen] = {}
        self.kinds: Counter[str] = Counter()
        self.messages = 0
        self.events = 0
        self.first_event_mono: float | None = None
        self.last_event_mono: float | None = None
        self.errors: list[str] = []
        self.ack_failures = 0
        self.connects = 0
        self._ready = threading.Event()
        self._refused: str | None = None
        v5 = protocol == "5"
        prefix = f"$share/{share}/" if share else ""
        self.source = "broker" if uplink else "postgres"
        self._topics = [(prefix + UPLINK, 1)] if uplink else []
        self._topics.append((prefix + STATUS, 1))
        # A persistent session (its own id per run): what arrives while the broker restarts is
        # kept for the desk, as for the ingest's workers.
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{client_id}-{os.getpid()}-{time.time_ns() % 10**9}",
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            clean_session=None if v5 else False,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.max_inflight_messages_set(MAX_INFLIGHT)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        # Without Nagle, as the light gateways: an ack's round trip is the broker's, not a
        # delayed ACK's (docs/FLEET.md, "Saturation").
        self._client.on_socket_open = lambda client, userdata, sock: nodelay(sock)
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        options: dict[str, Any] = {}
        if v5:
            options = {"clean_start": False, "properties": session_properties(SESSION_EXPIRY_S)}
        try:
            self._client.connect(host, port, KEEPALIVE_S, **options)
        except OSError as exc:
            raise DeskError(f"desk cannot connect to {host}:{port}: {exc}") from exc
        self._client.loop_start()
        if not self._ready.wait(CONNECT_TIMEOUT_S) or self._refused is not None:
            self.close()
            raise DeskError(f"desk on {host}:{port}: {self._refused or 'not subscribed in time'}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # ---------------------------------------------------------------- paho's thread

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        if reason.is_failure:
            self._refused = f"connection refused: {reason}"
            self._ready.set()
            return
        with self.lock:
            self.connects += 1
        # On every connect, session present or not: Mosquitto 2.0 restores a persistent
        # session's plain subscriptions after a restart but not its shared ones.
        client.subscribe(self._topics)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        refused = [str(r) for r in reasons if r.is_failure]
        if refused:
            self._refused = f"subscription refused: {refused}"
        self._ready.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        parts = msg.topic.split("/")
        try:
            body = json.loads(msg.payload)
        except ValueError:
            with self.lock:
                self.errors.append(f"{msg.topic}: not JSON")
            return
        if len(parts) < 4 or not isinstance(body, dict):
            return
        gw = parts[2]
        with self.lock:
            self.messages += 1
            seen = self.gateways.setdefault(gw, GatewaySeen())
            if parts[3] == "status":
                state, reason = body.get("state"), body.get("reason")
                if state == "online":
                    seen.online += 1
                elif reason == "lost":
                    seen.lost += 1
                elif reason == "shutdown":
                    seen.shutdown += 1
                return
            acks = self._record(gw, seen, body, now)
        for alarm_id in acks:
            self._ack(gw, alarm_id)

    def _record(self, gw: str, seen: GatewaySeen, body: dict[str, Any], now: float) -> list[str]:
        """Under the lock: the message's events into the ledger; the alarm ids to acknowledge."""
        acks: list[str] = []
        for event in body.get("events") or ():
            seq, kind = event.get("seq"), event.get("kind", "")
            if not isinstance(seq, int):
                self.errors.append(f"{gw}: an event without a seq")
                continue
            seen.ledger.add(seq)
            seen.events += 1
            self.events += 1
            self.kinds[kind] += 1
            if self.first_event_mono is None:
                self.first_event_mono = now
            self.last_event_mono = now
            if kind == "gateway.dropped":
                seen.ledger.explain((event.get("data") or {}).get("seq_ranges") or ())
            if kind.startswith("alarm."):
                alarm_id = str(event.get("id"))
                attempt = int(event.get("attempt") or 1)
                alarm = self.alarms.get(alarm_id)
                if alarm is None:
                    self.alarms[alarm_id] = AlarmSeen(gw, seq, now, max_attempt=attempt)
                else:
                    alarm.arrivals += 1
                    alarm.max_attempt = max(alarm.max_attempt, attempt)
                acks.append(alarm_id)  # every arrival: a resend means the last ack was lost
        return acks

    def alarm_stored(self, gw: str, alarm_id: str, seq: int, attempt: int, now: float) -> bool:
        """The ingest stored an alarm (``uplink=False``): seen now (the first time), and
        acknowledged; False when paho did not take the ack (it is asked again)."""
        with self.lock:
            if alarm_id not in self.alarms:
                self.alarms[alarm_id] = AlarmSeen(gw, seq, now, max_attempt=attempt)
        return self._ack(gw, alarm_id)

    def adopt_stored(
        self, ledgers: dict[str, SeqLedger], kinds: dict[str, int], span_s: float
    ) -> None:
        """The events as PostgreSQL holds them (``uplink=False``), for the report."""
        with self.lock:
            for gw, ledger in ledgers.items():
                self.gateways.setdefault(gw, GatewaySeen()).ledger = ledger
                self.gateways[gw].events = len(ledger.seen)
            self.kinds = Counter(kinds)
            self.events = sum(kinds.values())
            self.first_event_mono = 0.0
            self.last_event_mono = span_s

    def _ack(self, gw: str, alarm_id: str) -> bool:
        payload = json.dumps(ack_body([alarm_id], OPERATOR), separators=(",", ":"))
        sent = time.monotonic()
        info = self._client.publish(f"carebed/v1/{gw}/down/ack", payload, qos=1)
        with self.lock:
            # Not connected (the broker restarting): paho keeps the QoS 1 message and sends it
            # once connected again, so the ack is on its way all the same.
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self.ack_failures += 1
                return False
            alarm = self.alarms[alarm_id]
            alarm.acks_sent += 1
            if alarm.ack_sent_mono is None:
                alarm.ack_sent_mono = sent
        return True
