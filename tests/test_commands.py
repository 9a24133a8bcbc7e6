"""Commands with bad fields, through a real broker: every readable id gets its ``cmd.result``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.app.commands import (
    MAX_COMMAND_BYTES,
    MAX_COMMAND_ID_CHARS,
    CommandMessage,
    InvalidCommandError,
    parse_command,
)
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient, raw_publisher
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until
from tests.support.reliability import record

CMD_TOPIC = "carebed/v1/gw-a/down/cmd"

# A readable id and one bad field each: answered invalid_args, never run.
INVALID: dict[str, dict[str, Any]] = {
    "args a list": {"v": 1, "name": "ping", "args": [1, 2]},
    "args a string": {"v": 1, "name": "ping", "args": "x"},
    "args a number": {"v": 1, "name": "ping", "args": 7},
    "name an int": {"v": 1, "name": 5, "args": {}},
    "name missing": {"v": 1, "args": {}},
    "name empty": {"v": 1, "name": "", "args": {}},
    "name too long": {"v": 1, "name": "p" * 65},
    "expires_at garbage": {"v": 1, "name": "ping", "expires_at": "next tuesday"},
    "expires_at a number": {"v": 1, "name": "ping", "expires_at": 1_800_000_000},
    "expires_at an object": {"v": 1, "name": "ping", "expires_at": {"at": 1}},
    "v missing": {"name": "ping", "args": {}},
    "v a string": {"v": "1", "name": "ping", "args": {}},
    "v true": {"v": True, "name": "ping", "args": {}},
    "v a float": {"v": 1.0, "name": "ping", "args": {}},
    "v 2": {"v": 2, "name": "ping", "args": {}},
    "over 64 KiB": {"v": 1, "name": "ping", "args": {"pad": "x" * (MAX_COMMAND_BYTES + 10)}},
}

# No id a result could be addressed to: counted and logged, not answered.
UNANSWERABLE: dict[str, bytes] = {
    "id empty": b'{"v":1,"id":"","name":"ping"}',
    "id of 10 000 characters": json.dumps({"v": 1, "id": "i" * 10_000, "name": "ping"}).encode(),
    "id a number": b'{"v":1,"id":12,"name":"ping"}',
    "id a lone surrogate": b'{"v":1,"id":"\\ud800","name":"ping"}',
    "id null": b'{"v":1,"id":null,"name":"ping"}',
    "no id": b'{"v":1,"name":"ping"}',
    "not JSON": b"{not json",
    "a JSON list": b'[{"v":1,"id":"x","name":"ping"}]',
    "not UTF-8": b'{"v":1,"id":"\xff\xfe","name":"ping"}',
    "nested 100 000 deep": b"[" * 100_000 + b"]" * 100_000,
}


@pytest.fixture
def raw(mosquitto: Mosquitto) -> Iterator[PlatformClient]:
    with raw_publisher(mosquitto) as publisher:
        yield publisher


@pytest.mark.reliability
async def test_every_command_with_a_readable_id_gets_invalid_args(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, raw: PlatformClient
) -> None:
    async with running_gateway(tmp_path, mosquitto) as rig:
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "connection")
        for n, body in enumerate(INVALID.values()):
            raw.publish(CMD_TOPIC, json.dumps({"id": f"bad-{n}", **body}).encode())
        for payload in UNANSWERABLE.values():
            raw.publish(CMD_TOPIC, payload)
        raw.publish(CMD_TOPIC, b'{"v":1,"id":"last","name":"ping","args":null}')
        # Commands are handled in order: once "last" is answered, all the others were handled.
        await wait_platform(
            platform,
            lambda p: any(e["data"]["cmd_id"] == "last" for e in kinds(p, "cmd.result")),
            "the result of the last command",
        )
        stats = rig.gateway.commands.stats
        assert stats.rejected == len(UNANSWERABLE)
        assert rig.gateway.uplink.connected.is_set() and rig.gateway.uplink.stats.connects == 1
    results = {e["data"]["cmd_id"]: e["data"] for e in kinds(platform, "cmd.result")}
    assert results.pop("last") == {
        "cmd_id": "last",
        "ok": True,
        "result": {"pong": True},
        "error": None,
    }
    assert sorted(results) == sorted(f"bad-{n}" for n in range(len(INVALID)))
    for n, case in enumerate(INVALID):
        result = results[f"bad-{n}"]
        assert not result["ok"] and result["result"] is None, case
        assert result["error"]["code"] == "invalid_args", case
    assert stats.invalid == len(INVALID)
    record(
        "downlink",
        "commands with a readable id and a bad field (args, name, v, expires_at, > 64 KiB)",
        count=len(INVALID),
        lost=0,
        outcome="each answered invalid_args on up/cmdres, none run",
    )
    record(
        "downlink",
        "commands without a usable id (empty, 10 000 characters, not text, not JSON, deep)",
        count=len(UNANSWERABLE),
        lost=0,
        outcome="counted and logged (command_rejected), no result, the link stayed up",
    )


async def test_an_expired_command_with_a_naive_timestamp_counts_as_utc(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, raw: PlatformClient
) -> None:
    async with running_gateway(tmp_path, mosquitto) as rig:
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "connection")
        raw.publish(CMD_TOPIC, b'{"v":1,"id":"e-1","name":"ping","expires_at":"2020-01-01T00:00"}')
        await wait_platform(platform, lambda p: len(kinds(p, "cmd.result")) == 1, "the result")
    assert kinds(platform, "cmd.result")[0]["data"]["error"]["code"] == "expired"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_field = st.one_of(_json, st.just(1), st.just("ping"), st.just({}), st.just("2030-01-01T00:00:00Z"))
_command = st.fixed_dictionaries(
    {},
    optional={
        "v": _field,
        "id": st.one_of(
            _field, st.text(min_size=0, max_size=200), st.sampled_from(["\ud800", "a\udfff"])
        ),
        "name": _field,
        "args": _field,
        "expires_at": _field,
    },
)


@given(_command)
def test_parse_command_answers_exactly_the_readable_ids(document: dict[str, Any]) -> None:
    payload = json.dumps(document).encode()
    cmd_id = document.get("id")
    readable = (
        isinstance(cmd_id, str)
        and 1 <= len(cmd_id) <= MAX_COMMAND_ID_CHARS
        and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in cmd_id)
    )
    try:
        parsed = parse_command(payload)
    except InvalidCommandError as exc:
        invalid_id: str | None = exc.cmd_id
    else:
        invalid_id = None
    if invalid_id is not None:
        assert readable and invalid_id == cmd_id
        return
    if isinstance(parsed, str):
        assert not readable
        return
    assert isinstance(parsed, CommandMessage) and parsed.id == cmd_id
    assert type(document["v"]) is int and document["v"] == 1
    assert isinstance(parsed.name, str) and isinstance(parsed.args, dict)
