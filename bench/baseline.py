"""The baseline (a child process): plain paho, one event per QoS 1 message, until every PUBACK.

Publishes the backlog's own events, each wrapped alone in the contract's envelope
``{"v":1,"gw":..,"events":[EVENT]}``, as fast as paho takes them with ``max_inflight`` messages
in flight, and reports the time from the first ``publish()`` to the last PUBACK.
"""

from __future__ import annotations

import argparse
import sqlite3
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from bench.common import cpu_seconds, emit, now_ns, proc_status_kb
from gateway.core.events import StoredEvent, payload_prefix
from gateway.store.spool import read_spool
from gateway.uplink.messages import topic_root

CONNECT_TIMEOUT_S = 10.0
# Messages handed to paho and not yet acknowledged, in flight or queued behind the window. paho
# refuses to queue more than its 65535 message ids, so the baseline cannot queue all 100k at once;
# 1000 keeps paho's queue far ahead of its window (it scans only the window on each PUBACK).
QUEUED_AHEAD = 1000


def load_payloads(db_path: Path, gateway_id: str, count: int) -> list[bytes]:
    """The first ``count`` telemetry events of the outbox, one contract message each."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT seq, id, kind, device, data, ts, ts_synced, attempt FROM events "
            "WHERE class='telemetry' ORDER BY seq LIMIT ?",
            (count,),
        ).fetchall()
    finally:
        db.close()
    # Telemetry written at the end of its window is in the spool beside the database.
    spooled = read_spool(db_path.with_name(db_path.name + ".spool"))
    rows = sorted(rows + [(*event, 1) for event in spooled])[:count]
    prefix = payload_prefix(gateway_id)
    payloads = []
    for seq, event_id, kind, device, data, ts, ts_synced, attempt in rows:
        event = StoredEvent(
            seq=seq,
            id=event_id,
            kind=kind,
            device=device,
            data_json=data,
            ts=ts,
            ts_synced=bool(ts_synced),
            attempt=attempt,
        )
        payloads.append(f"{prefix}{event.wire_json()}]}}".encode())
    return payloads


class Publisher:
    def __init__(self, host: str, port: int, gateway_id: str, max_inflight: int) -> None:
        self.window = threading.BoundedSemaphore(max(QUEUED_AHEAD, max_inflight))
        self.expected = 0
        self.acked = 0
        self.refused = 0
        self.last_ack_ns = 0
        self.done = threading.Event()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=gateway_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)  # no limit: paho queues what is not in flight
        self.client.on_connect = self._on_connect
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=60, clean_start=True)
        self.client.loop_start()
        if not self.connected.wait(CONNECT_TIMEOUT_S):
            raise TimeoutError("baseline publisher: no CONNACK")

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        self.connected.set()

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Any
    ) -> None:
        self.acked += 1
        self.window.release()
        if reason.is_failure:
            self.refused += 1
        if self.acked >= self.expected:
            self.last_ack_ns = now_ns()
            self.done.set()

    def publish_all(self, topic: str, payloads: list[bytes], timeout_s: float) -> int:
        self.expected = len(payloads)
        first_ns = now_ns()
        for payload in payloads:
            if not self.window.acquire(timeout=timeout_s):
                raise TimeoutError(f"no PUBACK for {timeout_s} s")
            info = self.client.publish(topic, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
        if not self.done.wait(timeout_s):
            raise TimeoutError(f"{self.acked} of {self.expected} PUBACKs after {timeout_s} s")
        return first_ns

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backlog", type=Path, required=True, help="outbox file to read events")
    parser.add_argument("--gateway-id", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--max-inflight", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    payloads = load_payloads(args.backlog, args.gateway_id, args.events)
    publisher = Publisher("127.0.0.1", args.port, args.gateway_id, args.max_inflight)
    emit({"event": "ready", "messages": len(payloads)})
    cpu_before = cpu_seconds()
    try:
        first_ns = publisher.publish_all(
            f"{topic_root(args.gateway_id)}/up/telemetry", payloads, args.timeout
        )
    finally:
        publisher.close()
    emit(
        {
            "event": "result",
            "messages": len(payloads),
            "payload_bytes": sum(len(p) for p in payloads),
            "first_publish_ns": first_ns,
            "last_puback_ns": publisher.last_ack_ns,
            "refused": publisher.refused,
            "cpu_s": cpu_seconds() - cpu_before,
            "vmhwm_kb": proc_status_kb("VmHWM"),
        }
    )


if __name__ == "__main__":
    main()
