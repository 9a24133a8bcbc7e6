"""The ingest's parsing of what gateways publish: topics and payloads against the exported
schema, from the gateway's code or from the file ``carebed schema uplink`` writes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cli.main import main as carebed
from platformkit.ingest.contract import (
    EVENT_CLASSES,
    ContractError,
    ContractValidator,
    Topic,
    parse_topic,
)

EVENT = {
    "id": "01a251ba-7974-7631-9014-dd921b24925e",
    "seq": 7,
    "kind": "alarm.button",
    "ts": "2026-12-07T18:18:25.123Z",
    "ts_synced": True,
    "device": "btn-00A1B2C3",
    "data": {"press": "short", "battery": 80, "rssi": -60},
    "attempt": 1,
}

gateway_ids = st.from_regex(r"\A[a-z0-9][a-z0-9-]{2,20}\Z")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def validator() -> ContractValidator:
    return ContractValidator.exported()


def payload(gw: str = "gw-a", **event: Any) -> bytes:
    return json.dumps({"v": 1, "gw": gw, "events": [{**EVENT, **event}]}).encode()


def test_the_schema_file_that_carebed_prints_is_the_one_the_ingest_uses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert carebed(["schema", "uplink"]) == 0
    path = tmp_path / "carebed-uplink-v1.json"
    path.write_text(capsys.readouterr().out)
    from_file = ContractValidator.from_file(path)
    (event,) = from_file.events(Topic("gw-a", "up", "alarm"), payload())
    assert (event.gw, event.seq, event.kind, event.klass, event.attempt) == (
        "gw-a",
        7,
        "alarm.button",
        "alarm",
        1,
    )
    assert event.ts.isoformat() == "2026-12-07T18:18:25.123000+00:00"


def test_what_the_contract_forbids_is_refused(validator: ContractValidator) -> None:
    alarm = Topic("gw-a", "up", "alarm")
    with pytest.raises(ContractError, match="published on up/telemetry"):
        validator.events(Topic("gw-a", "up", "telemetry"), payload())
    with pytest.raises(ContractError, match="published under 'gw-a'"):
        validator.events(alarm, payload(gw="gw-b"))
    with pytest.raises(ContractError, match="an alarm message with 2 events"):
        validator.events(
            alarm, json.dumps({"v": 1, "gw": "gw-a", "events": [EVENT, EVENT]}).encode()
        )
    with pytest.raises(ContractError, match="seq"):
        validator.events(alarm, payload(seq=0))
    with pytest.raises(ContractError, match="over 256 KiB"):
        validator.events(alarm, b" " * (256 * 1024 + 1))


@given(gw=gateway_ids, klass=st.sampled_from(sorted(EVENT_CLASSES)))
def test_uplink_topics_parse(gw: str, klass: str) -> None:
    assert parse_topic(f"carebed/v1/{gw}/up/{klass}") == Topic(gw, "up", klass)
    assert parse_topic(f"carebed/v1/{gw}/status") == Topic(gw, "status")


@given(topic=st.text(max_size=60))
def test_any_topic_parses_or_raises_contract_error(topic: str) -> None:
    try:
        parsed = parse_topic(topic)
    except ContractError:
        return
    assert topic.startswith(f"carebed/v1/{parsed.gw}/")


@given(raw=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_payload_is_accepted_or_raises_contract_error(
    validator: ContractValidator, raw: bytes
) -> None:
    with contextlib.suppress(ContractError):
        validator.events(Topic("gw-a", "up", "telemetry"), raw)
    with contextlib.suppress(ContractError):
        validator.status(Topic("gw-a", "status"), raw)


@given(event=st.fixed_dictionaries({}, optional={k: json_values for k in EVENT}))
def test_any_event_object_is_accepted_or_raises_contract_error(
    validator: ContractValidator, event: dict[str, Any]
) -> None:
    raw = json.dumps({"v": 1, "gw": "gw-a", "events": [{**EVENT, **event}]}).encode()
    with contextlib.suppress(ContractError):
        validator.events(Topic("gw-a", "up", "alarm"), raw)


any_texts = st.text(st.characters(codec=None, categories=None), max_size=8)
pattern_times = st.from_regex(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")


@given(
    event=st.fixed_dictionaries(
        {},
        optional={
            "id": any_texts,
            "ts": pattern_times,
            "seq": st.integers(min_value=1),
            "attempt": st.integers(min_value=1),
            "device": any_texts.map(lambda t: f"btn-{t}"),
            "data": st.dictionaries(any_texts, any_texts, max_size=2).map(
                lambda extra: {**extra, "press": "short", "battery": None, "rssi": None}
            ),
        },
    )
)
def test_what_the_patterns_let_through_is_accepted_or_raises_contract_error(
    validator: ContractValidator, event: dict[str, Any]
) -> None:
    """Times the calendar lacks, NUL characters and lone surrogates (as JSON escapes): a
    ContractError like any other breach, never another exception that would stop a worker."""
    raw = json.dumps({"v": 1, "gw": "gw-a", "events": [{**EVENT, **event}]}).encode()
    try:
        (parsed,) = validator.events(Topic("gw-a", "up", "alarm"), raw)
    except ContractError:
        return
    for text in (parsed.id, parsed.data_json, parsed.device or ""):
        assert "\x00" not in text
        text.encode("utf-8")
    status = {
        "v": 1,
        "gw": "gw-a",
        "state": "online",
        "since": event.get("ts", EVENT["ts"]),
        "version": event.get("id", "0.1.0"),
        "boot_id": "b",
    }
    with contextlib.suppress(ContractError):
        validator.status(Topic("gw-a", "status"), json.dumps(status).encode())


def test_a_time_the_calendar_lacks_and_non_json_numbers_are_contract_errors(
    validator: ContractValidator,
) -> None:
    with pytest.raises(ContractError, match="not a time"):
        validator.events(Topic("gw-a", "up", "alarm"), payload(ts="2026-13-45T10:00:00.000Z"))
    with pytest.raises(ContractError, match="NaN is not a JSON number"):
        validator.events(
            Topic("gw-a", "up", "telemetry"),
            payload(kind="telemetry.vitals", device=None, data={"heart_rate": float("nan")}),
        )
    with pytest.raises(ContractError, match=r"^events\[0\]\.id: a NUL character"):
        validator.events(Topic("gw-a", "up", "alarm"), payload(id="a\u0000"))
    with pytest.raises(ContractError, match=r"^events\[0\]\.device: not Unicode text"):
        validator.events(Topic("gw-a", "up", "alarm"), payload(device="btn-\udc00"))


def test_unknown_fields_of_data_are_accepted_as_the_contract_says_and_kept(
    validator: ContractValidator,
) -> None:
    """A newer gateway's addition to ``data`` (nested objects too) is stored, not rejected;
    the envelope and the event's own fields are the contract's whole list."""
    alarm = Topic("gw-a", "up", "alarm")
    data = {**EVENT["data"], "pressure_hpa": 1013}  # type: ignore[dict-item]
    (event,) = validator.events(alarm, payload(data=data))
    assert event.data["pressure_hpa"] == 1013
    result = {
        "cmd_id": "c-1",
        "ok": False,
        "result": None,
        "error": {"code": "busy", "message": "later", "retry_after_s": 5},
    }
    (event,) = validator.events(
        Topic("gw-a", "up", "cmdres"), payload(kind="cmd.result", device=None, data=result)
    )
    assert event.data["error"]["retry_after_s"] == 5
    with pytest.raises(ContractError, match="'mood' was unexpected"):
        validator.events(alarm, payload(mood="calm"))
    with pytest.raises(ContractError, match="'region' was unexpected"):
        validator.events(
            alarm, json.dumps({"v": 1, "gw": "gw-a", "region": "x", "events": [EVENT]}).encode()
        )
    # Known fields are checked as before.
    with pytest.raises(ContractError, match="battery"):
        validator.events(alarm, payload(data={**data, "battery": 101}))
    # The gateway's own export is unchanged: it promises to send only what it lists.
    assert validator.schema["events"]["$defs"]["ButtonAlarmData"]["additionalProperties"] is False


@given(text=any_texts, ascii_only=st.booleans())
def test_a_text_postgresql_cannot_store_is_refused_however_it_is_encoded(
    validator: ContractValidator, text: str, ascii_only: bool
) -> None:
    """As a \\u escape or (for a surrogate) as raw UTF-8 bytes that Python's decoder lets
    through: a NUL or a lone surrogate anywhere is refused, any other text is not."""
    body = {"v": 1, "gw": "gw-a", "events": [{**EVENT, "id": f"x{text}"}]}
    raw = json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    storable = "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    if storable:
        validator.events(Topic("gw-a", "up", "alarm"), raw)
    else:
        with pytest.raises(ContractError, match=r"^events\[0\]\.id: "):
            validator.events(Topic("gw-a", "up", "alarm"), raw)
