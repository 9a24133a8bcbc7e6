"""The platform's side for the bench: a plain paho subscriber that counts events cheaply."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from bench.common import now_ns

SUBSCRIPTION = "carebed/v1/+/up/#"
CONNECT_TIMEOUT_S = 10.0
_SEQ = re.compile(rb'"seq":(\d+)')


class SubscriberError(Exception):
    """The bench subscriber could not connect, or what it waited for did not arrive."""


@dataclass(slots=True)
class Tally:
    """What one gateway id sent during one run."""

    seqs: dict[str, set[int]] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    reached_ns: dict[str, int] = field(default_factory=dict)
    first_ns: dict[str, int] = field(default_factory=dict)
    alarm_first_ns: dict[str, int] = field(default_factory=dict)
    # alarm.button events by device (``btn-…``): when the first one arrived, and their alarm ids
    button_first_ns: dict[str, int] = field(default_factory=dict)
    button_alarm_ids: dict[str, set[str]] = field(default_factory=dict)

    def unique(self, klass: str) -> int:
        return len(self.seqs.get(klass, ()))

    def duplicates(self, klass: str) -> int:
        return self.events.get(klass, 0) - self.unique(klass)


class EventCounter:
    """Subscribes to every gateway's ``up/#`` at QoS 1 and counts unique event seqs per class.

    Events are counted with a regular expression over the payload (``"seq":N``), not by parsing
    JSON, so that the subscriber is never what limits a 100k-event drain. Alarm messages (one event
    each) are parsed to stamp the first arrival of each alarm id, with CLOCK_MONOTONIC, and of the
    first ``alarm.button`` of each device.
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str = "bench-platform",
        subscription: str = SUBSCRIPTION,
    ) -> None:
        self._subscription = subscription
        self._cond = threading.Condition()
        self._tallies: dict[str, Tally] = {}
        self._subscribed = False
        self._error: str | None = None
        self.strays = 0
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=60, clean_start=True)
        self._client.loop_start()
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._subscribed or self._error is not None, CONNECT_TIMEOUT_S
            )
        if not ok or self._error is not None:
            self.close()
            raise SubscriberError(self._error or "not subscribed in time")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    # ---------------------------------------------------------------------------- the bench side

    def track(self, gateway_id: str, **targets: int) -> Tally:
        """Count for ``gateway_id`` (a fresh one per run); stamp when each target is met."""
        tally = Tally(targets=dict(targets))
        with self._cond:
            self._tallies[gateway_id] = tally
        return tally

    def wait(self, gateway_id: str, klass: str, timeout_s: float) -> int:
        """Block until the target of ``klass`` is met; return when it was (monotonic ns)."""
        with self._cond:
            tally = self._tallies[gateway_id]
            if not self._cond.wait_for(lambda: klass in tally.reached_ns, timeout_s):
                raise SubscriberError(
                    f"{gateway_id}: {tally.unique(klass)} of {tally.targets.get(klass)} "
                    f"{klass} events after {timeout_s} s"
                )
            return tally.reached_ns[klass]

    def wait_first(self, gateway_id: str, klass: str, timeout_s: float) -> int:
        """Block until the first message of ``klass`` arrived; return when it did."""
        with self._cond:
            tally = self._tallies[gateway_id]
            if not self._cond.wait_for(lambda: klass in tally.first_ns, timeout_s):
                raise SubscriberError(f"{gateway_id}: no {klass} message after {timeout_s} s")
            return tally.first_ns[klass]

    def wait_buttons(self, gateway_id: str, devices: Collection[str], timeout_s: float) -> None:
        """Block until an ``alarm.button`` of each of ``devices`` arrived."""
        with self._cond:
            tally = self._tallies[gateway_id]

            def missing() -> list[str]:
                return [d for d in devices if d not in tally.button_first_ns]

            if not self._cond.wait_for(lambda: not missing(), timeout_s):
                raise SubscriberError(
                    f"{gateway_id}: no alarm.button from {len(missing())} of {len(devices)} "
                    f"buttons after {timeout_s} s (first: {missing()[:3]})"
                )

    def snapshot(self, gateway_id: str) -> Tally:
        with self._cond:
            return self._tallies[gateway_id]

    def forget(self, gateway_id: str) -> None:
        """Drop a finished run's tally (its seq sets); later messages count as strays."""
        with self._cond:
            self._tallies.pop(gateway_id, None)

    # ---------------------------------------------------------------------------- paho thread

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        with self._cond:
            if reason.is_failure:
                self._error = f"connection refused: {reason}"
            else:
                client.subscribe(self._subscription, qos=1)
            self._cond.notify_all()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], props: Any
    ) -> None:
        with self._cond:
            if any(reason.is_failure for reason in reasons):
                self._error = f"subscription refused: {reasons}"
            else:
                self._subscribed = True
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        stamp = now_ns()
        parts = msg.topic.split("/")
        if len(parts) != 5:
            return
        gateway_id, klass = parts[2], parts[4]
        payload = bytes(msg.payload)
        seqs = [int(raw) for raw in _SEQ.findall(payload)]
        alarm_ids: list[str] = []
        buttons: list[tuple[str, str]] = []  # (device, alarm id) of each alarm.button
        if klass == "alarm":
            events = json.loads(payload).get("events", [])
            alarm_ids = [str(event["id"]) for event in events]
            buttons = [
                (str(event["device"]), str(event["id"]))
                for event in events
                if event.get("kind") == "alarm.button" and event.get("device")
            ]
        with self._cond:
            tally = self._tallies.get(gateway_id)
            if tally is None:
                self.strays += 1
                return
            tally.messages[klass] = tally.messages.get(klass, 0) + 1
            tally.events[klass] = tally.events.get(klass, 0) + len(seqs)
            if klass not in tally.first_ns:
                tally.first_ns[klass] = stamp
                self._cond.notify_all()
            seen = tally.seqs.setdefault(klass, set())
            seen.update(seqs)
            for alarm_id in alarm_ids:
                tally.alarm_first_ns.setdefault(alarm_id, stamp)
            for device, alarm_id in buttons:
                tally.button_first_ns.setdefault(device, stamp)
                tally.button_alarm_ids.setdefault(device, set()).add(alarm_id)
            if buttons:
                self._cond.notify_all()
            target = tally.targets.get(klass)
            if target is not None and klass not in tally.reached_ns and len(seen) >= target:
                tally.reached_ns[klass] = stamp
                self._cond.notify_all()
