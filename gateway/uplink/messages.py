"""The uplink's messages, per the contract: topics, events batched into publications, acks parsed.

Pure: no I/O, no MQTT client.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.core.events import (
    CONTRACT_VERSION,
    MAX_EVENTS_PER_MESSAGE,
    MAX_MESSAGE_BYTES,
    StoredEvent,
    WireRun,
    payload_prefix,
)

# Downlink limits, checked on paho's thread before a payload is copied or parsed. Larger ones are
# refused (counted, logged, PUBACKed so that they are not redelivered); MQTT 5 brokers are told
# the packet limit in CONNECT and do not send them at all.
MAX_ACK_BYTES = 64 * 1024  # 1000 ids of 36 characters and their quotes fit with room to spare
MAX_COMMAND_PAYLOAD_BYTES = 256 * 1024  # over 64 KiB a command is only read for its id
PACKET_OVERHEAD_BYTES = 1024  # fixed header, topic and properties of one PUBLISH
MAX_PACKET_BYTES = MAX_COMMAND_PAYLOAD_BYTES + PACKET_OVERHEAD_BYTES
MAX_ACK_ID_CHARS = 128
MAX_ACK_BY_CHARS = 128


def topic_root(gateway_id: str) -> str:
    return f"carebed/v1/{gateway_id}"


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one gateway that are not built per event class."""

    status: str  # retained presence, and the will
    downlink: str  # the subscription
    ack: str
    command: str

    @classmethod
    def of(cls, gateway_id: str) -> Topics:
        root = topic_root(gateway_id)
        return cls(f"{root}/status", f"{root}/down/#", f"{root}/down/ack", f"{root}/down/cmd")

    def read_limits(self) -> dict[str, int]:
        """Downlink topic → the largest payload read from it; other topics are refused unread."""
        return {self.ack: MAX_ACK_BYTES, self.command: MAX_COMMAND_PAYLOAD_BYTES}


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT publication: events of one class, or a control message."""

    topic: str
    payload: bytes
    seqs: tuple[int, ...] = ()
    is_alarm: bool = False
    retain: bool = False
    alarm_id: str | None = None  # the event id of an alarm message


def build_messages(gateway_id: str, events: Sequence[StoredEvent | WireRun]) -> list[Message]:
    """Group claimed events into publications: alarms alone and first, then per class in order,
    at most 500 events and 256 KiB each. A ``WireRun`` goes in as its JSON, split only where a
    message is full."""
    root = topic_root(gateway_id)
    prefix = payload_prefix(gateway_id)
    messages: list[Message] = []
    by_class: dict[str, list[StoredEvent | WireRun]] = {}
    classes: dict[str, str] = {}  # kind → class: a batch has few kinds
    for event in events:
        if isinstance(event, WireRun):
            by_class.setdefault(event.event_class, []).append(event)
            continue
        klass = classes.get(event.kind)
        if klass is None:
            klass = classes[event.kind] = event.event_class
        if klass == "alarm":
            body = f"{prefix}{event.wire_json()}]}}".encode()
            messages.append(
                Message(f"{root}/up/alarm", body, (event.seq,), is_alarm=True, alarm_id=event.id)
            )
        else:
            by_class.setdefault(klass, []).append(event)
    overhead = len(prefix) + 2
    devices: dict[str | None, str] = {}  # device → its JSON: a batch has few devices
    for klass, members in by_class.items():
        parts: list[str] = []
        seqs: list[int] = []
        size = overhead
        count = 0
        for event in members:
            if isinstance(event, WireRun):
                lo, hi = event.lo, event.hi
                while lo < hi:
                    # As many as fit, by count and by size (``starts`` increase).
                    top = min(hi, lo + MAX_EVENTS_PER_MESSAGE - count)
                    limit = event.starts[lo] + MAX_MESSAGE_BYTES - size
                    fit = bisect.bisect_right(event.starts, limit, lo, top + 1) - 1
                    if fit <= lo:
                        if count:  # full: the next message
                            messages.append(_pack(root, klass, prefix, parts, seqs))
                            parts, seqs, size, count = [], [], overhead, 0
                            continue
                        fit = lo + 1  # one larger than a message goes alone
                    parts.append(event.json(lo, fit))
                    seqs += event.seqs[lo:fit]
                    size += event.size(lo, fit) + 1
                    count += fit - lo
                    lo = fit
                continue
            device = devices.get(event.device)
            if device is None:
                device = devices[event.device] = json.dumps(event.device)
            text = event.wire_json(device)
            if count and (
                count >= MAX_EVENTS_PER_MESSAGE or size + len(text) + 1 > MAX_MESSAGE_BYTES
            ):
                messages.append(_pack(root, klass, prefix, parts, seqs))
                parts, seqs, size, count = [], [], overhead, 0
            parts.append(text)
            seqs.append(event.seq)
            size += len(text) + 1
            count += 1
        if parts:
            messages.append(_pack(root, klass, prefix, parts, seqs))
    return messages


def _pack(root: str, klass: str, prefix: str, parts: list[str], seqs: list[int]) -> Message:
    body = (prefix + ",".join(parts) + "]}").encode()
    return Message(f"{root}/up/{klass}", body, tuple(seqs))


class AckMessage(BaseModel):
    """``down/ack``, strictly: ``"v": "1"`` is not version 1, and an id is text."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)
    v: int
    ids: list[Annotated[str, Field(min_length=1, max_length=MAX_ACK_ID_CHARS)]] = Field(
        max_length=1000
    )
    by: Annotated[str, Field(max_length=MAX_ACK_BY_CHARS)] = "unknown"


def parse_ack(payload: bytes) -> AckMessage | str:
    """The acknowledgement, or why it is refused (its size was checked on arrival)."""
    try:
        ack = AckMessage.model_validate_json(payload)
    except ValidationError as exc:
        return f"not an ack ({exc.error_count()} errors)"
    if ack.v != CONTRACT_VERSION:
        return f"contract version {ack.v} unsupported"
    return ack
