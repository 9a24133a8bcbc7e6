"""Checks every uplink payload against the JSON Schema the gateway exports, and the contract's
rules that a schema cannot express (topic class, one event per alarm message, size)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema

from gateway.events import MAX_MESSAGE_BYTES, event_class, uplink_json_schema


@cache
def _validators() -> dict[str, jsonschema.protocols.Validator]:
    schemas = uplink_json_schema()
    return {
        name: jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
        for name, schema in schemas.items()
    }


def validate_uplink(topic: str, payload: dict[str, Any]) -> None:
    """Raise ``ValueError`` when ``payload`` on ``topic`` breaks the contract."""
    parts = topic.split("/")
    validators = _validators()
    if parts[-1] == "status" and len(parts) == 4:
        errors = list(validators["status"].iter_errors(payload))
    else:
        errors = list(validators["events"].iter_errors(payload))
        if not errors:
            klass = parts[4]
            for event in payload["events"]:
                if event_class(event["kind"]) != klass:
                    raise ValueError(f"{event['kind']} published on {topic}")
            if klass == "alarm" and len(payload["events"]) != 1:
                raise ValueError(f"alarm message with {len(payload['events'])} events")
            if len(json.dumps(payload, separators=(",", ":")).encode()) > MAX_MESSAGE_BYTES:
                raise ValueError("message larger than 256 KiB")
    if payload.get("gw") != parts[2]:
        raise ValueError(f"gw {payload.get('gw')!r} published on {topic}")
    if errors:
        raise ValueError("; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:3]))
