"""What the ingest accepts: the gateway's exported JSON Schema and the contract's topic rules.

The schema is what ``carebed schema uplink`` prints (a file the platform keeps with its
deployment), or by default the one of the gateway code beside this package.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import jsonschema_rs

TOPIC_PREFIX = "carebed/v1/"
GATEWAY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,63}$")
EVENT_CLASSES = frozenset(("alarm", "telemetry", "device", "gateway", "camera", "audit", "cmdres"))
MAX_MESSAGE_BYTES = 256 * 1024
# What a text PostgreSQL cannot store looks like in a JSON message: a NUL or a UTF-16
# surrogate escape, or a surrogate encoded in UTF-8.
_SUSPECT_TEXT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])|\xed[\xa0-\xbf]")


class ContractError(ValueError):
    """A message that breaks the contract: rejected whole, kept for inspection, counted."""


@dataclass(frozen=True, slots=True)
class Topic:
    """``carebed/v1/GW/up/CLASS`` (``klass`` set) or ``carebed/v1/GW/status``."""

    gw: str
    kind: Literal["up", "status"]
    klass: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One EVENT of an uplink message, as the ingest stores it."""

    gw: str
    seq: int
    id: str
    kind: str
    klass: str
    ts: datetime
    ts_synced: bool
    device: str | None
    data: dict[str, Any]
    attempt: int

    @property
    def data_json(self) -> str:
        return json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Status:
    """A presence message (``carebed/v1/GW/status``); None fields are not in its state."""

    gw: str
    state: Literal["online", "offline"]
    reason: str | None
    since: datetime | None
    version: str | None
    boot_id: str | None


def parse_topic(topic: str) -> Topic:
    """The gateway and kind of an uplink topic (``ContractError`` for anything else)."""
    if not topic.startswith(TOPIC_PREFIX):
        raise ContractError(f"not a carebed v1 topic: {topic!r}")
    parts = topic[len(TOPIC_PREFIX) :].split("/")
    gw = parts[0]
    if GATEWAY_ID.match(gw) is None:
        raise ContractError(f"not a gateway id: {gw!r}")
    if parts[1:] == ["status"]:
        return Topic(gw, "status")
    if len(parts) == 3 and parts[1] == "up" and parts[2] in EVENT_CLASSES:
        return Topic(gw, "up", parts[2])
    raise ContractError(f"not an uplink topic: {topic!r}")


def event_class(kind: str) -> str:
    """The topic class of a kind (the part before the first dot; ``cmd.result``: cmdres)."""
    return "cmdres" if kind == "cmd.result" else kind.split(".", 1)[0]


def parse_ts(text: str) -> datetime:
    """A contract timestamp; ``ContractError`` for one that the schema's pattern lets through
    but the calendar does not have (``2026-13-45T10:00:00.000Z``)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise ContractError(f"not a time: {text!r} ({exc})") from exc


def consumer_view(schema: dict[str, Any]) -> dict[str, Any]:
    """The exported schema as a consumer must apply it: the gateway's export forbids fields it
    does not know (``additionalProperties: false``, what the gateway itself promises to send),
    but the contract says that unknown fields of an event's ``data`` must be ignored, so that a
    newer gateway may add one. Every object within ``data`` (its nested objects too) is opened;
    the envelope, the event's own fields and the status stay closed: the contract lists them
    whole, and a change there is a new version ``v``."""
    view = copy.deepcopy(schema)
    defs: dict[str, Any] = view["events"]["$defs"]
    opened: set[str] = set()

    def open_objects(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                open_objects(item)
            return
        if not isinstance(node, dict):
            return
        if node.get("additionalProperties") is False:
            node["additionalProperties"] = True
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.rsplit("/", 1)[-1]
            if name not in opened:
                opened.add(name)
                open_objects(defs[name])
        for key, value in node.items():
            if key != "$ref":
                open_objects(value)

    for name, branch in defs.items():
        if name.startswith("Event_") and "data" in branch.get("properties", {}):
            open_objects(branch["properties"]["data"])
    return view


def _validator(schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(schema)


class ContractValidator:
    """Checks uplink payloads against the exported JSON Schema and the rules a schema cannot
    say (the topic's gateway and class, one event per alarm message, the size).

    Each event is checked against the branch of its own kind (the schema's discriminator
    mapping): JSON Schema does not know ``discriminator`` and would try every branch.
    jsonschema-rs (compiled) checks an event in a few microseconds, the pure-Python
    jsonschema in about half a millisecond: the difference between a worker that validates
    and one that stores.
    """

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        events = consumer_view(schema)["events"]
        mapping = events["properties"]["events"]["items"]["discriminator"]["mapping"]
        defs = events["$defs"]
        # Each kind's branch itself (its $ref followed once), with the definitions it refers to.
        self._by_kind = {
            kind: _validator({**defs[ref.rsplit("/", 1)[-1]], "$defs": defs})
            for kind, ref in mapping.items()
        }
        envelope = copy.deepcopy(events)
        envelope["properties"]["events"]["items"] = {"type": "object"}
        self._envelope = _validator(envelope)
        self._status = _validator(schema["status"])

    @classmethod
    def exported(cls) -> ContractValidator:
        """The schema of the gateway code in this repository (``carebed schema uplink``)."""
        from gateway.core.events import uplink_json_schema  # noqa: PLC0415 - only when used

        return cls(uplink_json_schema())

    @classmethod
    def from_file(cls, path: Path) -> ContractValidator:
        """A schema saved with ``carebed schema uplink > FILE``."""
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def events(self, topic: Topic, raw: bytes) -> list[Event]:
        """The events of an ``up/CLASS`` message, or ``ContractError`` saying what is wrong."""
        if topic.kind != "up":
            raise ContractError(f"events published on carebed/v1/{topic.gw}/{topic.kind}")
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ContractError(f"message of {len(raw)} bytes, over 256 KiB")
        payload = _json_object(raw)
        _first_error(self._envelope, payload)
        if payload["gw"] != topic.gw:
            raise ContractError(f"gw {payload['gw']!r} published under {topic.gw!r}")
        events = payload["events"]
        if topic.klass == "alarm" and len(events) != 1:
            raise ContractError(f"an alarm message with {len(events)} events")
        out = []
        for n, event in enumerate(events):
            validator = self._by_kind.get(str(event.get("kind")))
            if validator is None:
                raise ContractError(f"events[{n}]: unknown kind {event.get('kind')!r}")
            _first_error(validator, event, f"events[{n}]")
            klass = event_class(event["kind"])
            if klass != topic.klass:
                raise ContractError(f"events[{n}]: {event['kind']} published on up/{topic.klass}")
            out.append(
                Event(
                    gw=topic.gw,
                    seq=event["seq"],
                    id=event["id"],
                    kind=event["kind"],
                    klass=klass,
                    ts=parse_ts(event["ts"]),
                    ts_synced=event["ts_synced"],
                    device=event["device"],
                    data=event["data"],
                    attempt=event["attempt"],
                )
            )
        return out

    def status(self, topic: Topic, raw: bytes) -> Status:
        """A presence message, or ``ContractError``."""
        payload = _json_object(raw)
        _first_error(self._status, payload)
        if payload["gw"] != topic.gw:
            raise ContractError(f"gw {payload['gw']!r} published under {topic.gw!r}")
        since = payload.get("since")
        return Status(
            gw=topic.gw,
            state=payload["state"],
            reason=payload.get("reason"),
            since=None if since is None else parse_ts(since),
            version=payload.get("version"),
            boot_id=payload.get("boot_id"),
        )


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(raw, parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ContractError(f"not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ContractError(f"not a JSON object: {type(payload).__name__}")
    # A NUL or a lone surrogate can only come as a \u escape (or, for a surrogate, as the
    # bytes ED A0..BF that Python's JSON decoder lets through): look only when there is one.
    if _SUSPECT_TEXT.search(raw) is not None:
        _check_texts(payload, "")
    return payload


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _check_texts(value: Any, where: str) -> None:
    """Refuse a text that neither PostgreSQL nor the schema validator can take: a NUL
    character (PostgreSQL's text and jsonb have none) or a lone UTF-16 surrogate (not
    Unicode text; it cannot be encoded in UTF-8)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ContractError(f"{where or 'the payload'}: a NUL character in a text")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ContractError(
                f"{where or 'the payload'}: not Unicode text ({exc.reason})"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_texts(key, where)
            name = key.encode("utf-8", "backslashreplace").decode()
            _check_texts(item, f"{where}.{name}" if where else name)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _check_texts(item, f"{where}[{n}]")


def _first_error(
    validator: jsonschema_rs.Draft202012Validator, instance: Any, where: str = ""
) -> None:
    if validator.is_valid(instance):  # the common case, without collecting errors
        return
    error = next(iter(validator.iter_errors(instance)))
    path = "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in error.instance_path)
    raise ContractError(f"{where}{path}: {error.message}"[:500])
