"""Checks every uplink payload against the JSON Schema the gateway exports, and the contract's
rules that a schema cannot express (topic class, one event per alarm message, size)."""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

import jsonschema

from gateway.core.events import MAX_MESSAGE_BYTES, uplink_json_schema
from gateway.core.kinds import event_class


def _validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@cache
def _validators() -> dict[str, jsonschema.protocols.Validator]:
    schemas = uplink_json_schema()
    return {name: _validator(schema) for name, schema in schemas.items()}


@cache
def _event_validators() -> dict[str, jsonschema.protocols.Validator]:
    """One validator per kind, chosen by the schema's discriminator mapping.

    jsonschema ignores OpenAPI's ``discriminator`` and would try every branch of the ``oneOf``
    for every event; choosing the branch by ``kind`` gives the same verdict much faster.
    """
    schema = uplink_json_schema()["events"]
    mapping = schema["properties"]["events"]["items"]["discriminator"]["mapping"]
    defs = schema["$defs"]
    return {kind: _validator({"$ref": ref, "$defs": defs}) for kind, ref in mapping.items()}


@cache
def _envelope_validator() -> jsonschema.protocols.Validator:
    """The events payload's schema with each event only required to be an object."""
    schema = copy.deepcopy(uplink_json_schema()["events"])
    schema["properties"]["events"]["items"] = {"type": "object"}
    return _validator(schema)


def _event_errors(payload: dict[str, Any]) -> list[Any]:
    """Errors of the envelope, then of each event against the branch of its own kind."""
    errors = list(_envelope_validator().iter_errors(payload))
    events = payload.get("events")
    if errors or not isinstance(events, list):
        return errors
    by_kind = _event_validators()
    for event in events:
        validator = by_kind.get(str(event.get("kind")))
        if validator is None:
            raise ValueError(f"unknown event kind {event.get('kind')!r}")
        errors.extend(validator.iter_errors(event))
    return errors


def validate_uplink(topic: str, payload: dict[str, Any]) -> None:
    """Raise ``ValueError`` when ``payload`` on ``topic`` breaks the contract."""
    parts = topic.split("/")
    validators = _validators()
    if parts[-1] == "status" and len(parts) == 4:
        errors = list(validators["status"].iter_errors(payload))
    else:
        errors = _event_errors(payload)
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
