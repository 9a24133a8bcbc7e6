"""Downlink fuzzing: malformed, oversized and wrong-type commands and acks, with counts."""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.app.alarms import AlarmTracker
from gateway.app.commands import MAX_COMMAND_ID_CHARS, CommandProcessor
from gateway.app.config import MqttSection
from gateway.app.handlers import NoArgs, command_args
from gateway.core.clock import SystemClock
from gateway.core.errors import CommandError
from gateway.store.alarms import AlarmTiming
from gateway.store.outbox import Outbox
from gateway.store.sink import EventFactory, OutboxSink
from gateway.store.sqlite import SqliteStore
from gateway.uplink.link import MqttUplink
from gateway.uplink.messages import MAX_ACK_BYTES, AckMessage, parse_ack
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient, raw_publisher
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until
from tests.support.reliability import record, scaled

CMD_TOPIC = "carebed/v1/gw-a/down/cmd"
ACK_TOPIC = "carebed/v1/gw-a/down/ack"
WEIRD: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**70,
    1.5,
    "",
    "1",
    "ping",
    "x" * 300,
    [],
    [1, "a"],
    {},
    {"a": {"b": []}},
    "2030-01-01T00:00:00Z",
    "2020-01-01T00:00:00Z",
    "not a date",
    "\u0000\ud7ff\U0001f600",
    "\ud800",  # a lone surrogate: valid JSON, not valid Unicode
]


def readable_id(payload: bytes) -> str | None:
    """The contract's rule, independent of the code under test: a JSON object whose id is text
    of 1 to 128 characters, without lone surrogates."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    cmd_id = document.get("id")
    if not isinstance(cmd_id, str) or not 1 <= len(cmd_id) <= MAX_COMMAND_ID_CHARS:
        return None
    return None if any(0xD800 <= ord(ch) <= 0xDFFF for ch in cmd_id) else cmd_id


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    choice = rng.randrange(5)
    if choice == 0 and data:  # truncated
        return data[: rng.randrange(len(data))]
    if choice == 1 and data:  # flipped bytes
        raw = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if choice == 2:  # random bytes
        return rng.randbytes(rng.randint(0, 200))
    if choice == 3:  # deep nesting
        depth = rng.choice([10, 1000, 50_000])
        return b"[" * depth + b"]" * depth
    return data + rng.choice([b"", b"}", b"\xff", b" " * 10, b"garbage"])


def fuzzed_command(rng: random.Random, n: int) -> bytes:
    """A command with random wrong fields, sometimes broken as bytes, sometimes oversized."""
    document: dict[str, Any] = {
        "v": 1,
        "id": f"f-{n}",
        "name": rng.choice(["ping", "status", "echo", "nope"]),
        "args": {},
        "expires_at": None,
    }
    for key in rng.sample(list(document), rng.randint(0, 3)):
        if rng.random() < 0.3:
            del document[key]
        else:
            document[key] = rng.choice(WEIRD)
    if rng.random() < 0.05:
        document["id"] = f"f-{n - 1}"  # a repeat of an earlier id
    if rng.random() < 0.01:
        document["pad"] = "x" * rng.choice([70_000, 200_000])
    payload = json.dumps(document).encode()
    if rng.random() < 0.25:
        payload = _mutate_bytes(rng, payload)
    return payload


def fuzzed_ack(rng: random.Random, alarm_ids: list[str]) -> bytes:
    document: dict[str, Any] = {
        "v": 1,
        "ids": rng.sample(alarm_ids, min(len(alarm_ids), rng.randint(0, 2))),
        "by": "desk",
    }
    for key in rng.sample(list(document), rng.randint(0, 2)):
        if rng.random() < 0.3:
            del document[key]
        else:
            document[key] = rng.choice(WEIRD)
    if rng.random() < 0.02:
        document["ids"] = ["y" * 100] * 1000  # over 64 KiB
    payload = json.dumps(document).encode()
    if rng.random() < 0.25:
        payload = _mutate_bytes(rng, payload)
    return payload


@dataclass
class Handlers:
    store: SqliteStore
    outbox: Outbox
    alarms: AlarmTracker
    commands: CommandProcessor
    uplink: MqttUplink


@asynccontextmanager
async def handlers(tmp_path: Path) -> AsyncIterator[Handlers]:
    """The real downlink handlers on a real store; no broker needed to call them."""
    clock = SystemClock()
    factory = EventFactory(clock, "test-boot")
    store = SqliteStore(
        tmp_path / "outbox.sqlite3",
        max_bytes=256 * 1024 * 1024,
        timing=AlarmTiming(),
        make_dropped=lambda count, ranges, reason: factory.make(
            "gateway.dropped", {"count": count, "seq_ranges": ranges, "reason": reason}
        ),
        boot_id="test-boot",
    )
    outbox = Outbox(store, group_commit_s=0.2)
    await outbox.open()
    sink = OutboxSink(outbox, factory)
    alarms = AlarmTracker(sink)
    commands = CommandProcessor(outbox, sink, clock)

    async def ping(args: dict[str, Any]) -> dict[str, Any]:
        command_args(NoArgs, args)
        return {"pong": True}

    async def echo(args: dict[str, Any]) -> dict[str, Any]:
        if set(args) - {"text"} or not isinstance(args.get("text", ""), str):
            raise CommandError("invalid_args", "takes text")
        return {"text": args.get("text", "")}

    commands.register("ping", ping, audited=False)
    commands.register("echo", echo)
    settings = MqttSection(host="127.0.0.1", port=1, plaintext=True)
    uplink = MqttUplink(
        "gw-a",
        settings,
        outbox,
        alarms,
        commands.handle,
        username="gw-a",
        version="0.0.0",
        boot_id="test-boot",
    )
    try:
        yield Handlers(store, outbox, alarms, commands, uplink)
    finally:
        await outbox.close()


def _count_results(store: SqliteStore) -> int:
    db = store._require()
    return int(db.execute("SELECT COUNT(*) FROM events WHERE kind='cmd.result'").fetchone()[0])


@pytest.mark.reliability
async def test_fuzzed_commands_through_the_real_handler(tmp_path: Path) -> None:
    count = scaled(2_000, 12_000)
    rng = random.Random(9)
    answerable = 0
    async with handlers(tmp_path) as rig:
        for n in range(count):
            payload = fuzzed_command(rng, n)
            if readable_id(payload) is not None:
                answerable += 1
            await rig.commands.handle(payload)  # never raises
        await rig.outbox.flush()
        results = await rig.outbox._call(_count_results, rig.store)
        stats = rig.commands.stats
    assert results == answerable == stats.handled
    assert stats.rejected == count - answerable
    assert stats.invalid > 0 and stats.rejected > 0
    record(
        "downlink",
        "malformed, oversized and wrong-type commands (seeded generator, the real handler)",
        count=count,
        lost=0,
        outcome=(
            f"{answerable} with a readable id each answered once ({stats.invalid} invalid_args), "
            f"{stats.rejected} without one counted; no exception"
        ),
    )


@pytest.mark.reliability
async def test_fuzzed_acks_through_the_real_handler(tmp_path: Path) -> None:
    count = scaled(2_000, 10_000)
    rng = random.Random(11)
    refused = applied = 0
    acked: set[str] = set()
    async with handlers(tmp_path) as rig:
        alarm_ids = [
            await rig.alarms.raise_alarm(
                "alarm.button", {"press": "short", "battery": None, "rssi": None}, "btn-00000001"
            )
            for _ in range(50)
        ]
        for _ in range(count):
            payload = fuzzed_ack(rng, alarm_ids)
            if len(payload) > MAX_ACK_BYTES:  # refused unread on arrival, as the uplink does
                refused += 1
                continue
            ack = parse_ack(payload)  # never raises
            if isinstance(ack, str):
                refused += 1
                continue
            assert ack.v == 1
            await rig.uplink.apply_acks([ack])
            acked.update(ack.ids)
            applied += 1
        held = await rig.outbox.held_alarms()
        await rig.outbox.flush()
    assert refused > count / 10 and applied > count / 10
    # every id that came in a valid ack was acknowledged; the others are still held
    assert acked & set(alarm_ids)
    assert {alarm.id for alarm in held} == set(alarm_ids) - acked
    record(
        "downlink",
        "malformed, oversized and wrong-type acks (seeded generator, the real handler)",
        count=count,
        lost=0,
        outcome=f"{refused} refused, {applied} applied; no exception, alarms acknowledged",
    )


_ack_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "v": st.one_of(_ack_value, st.just(1)),
            "ids": st.one_of(_ack_value, st.lists(st.text(max_size=140), max_size=5)),
            "by": st.one_of(_ack_value, st.text(max_size=140)),
        },
    )
)
def test_parse_ack_is_strict_and_never_raises(document: dict[str, Any]) -> None:
    ack = parse_ack(json.dumps(document).encode())
    if isinstance(ack, AckMessage):
        assert type(document["v"]) is int and document["v"] == 1
        assert all(isinstance(i, str) and 1 <= len(i) <= 128 for i in document.get("ids", []))


@pytest.fixture
def raw(mosquitto: Mosquitto) -> Iterator[PlatformClient]:
    with raw_publisher(mosquitto) as publisher:
        yield publisher


@pytest.mark.reliability
async def test_fuzzed_downlink_through_the_broker(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, raw: PlatformClient
) -> None:
    count = scaled(300, 2_000)
    rng = random.Random(5)
    answerable: set[str] = set()
    async with running_gateway(tmp_path, mosquitto) as rig:
        uplink = rig.gateway.uplink
        await wait_until(uplink.connected.is_set, 10, "connection")
        alarm_ids = [
            await rig.gateway.alarms.raise_alarm(
                "alarm.button", {"press": "short", "battery": None, "rssi": None}, None
            )
            for _ in range(5)
        ]
        for n in range(count):
            if rng.random() < 0.7:
                payload = fuzzed_command(rng, n)
                cmd_id = readable_id(payload)
                if cmd_id is not None:
                    answerable.add(cmd_id)
                raw.publish(CMD_TOPIC, payload, wait=False)
            else:
                raw.publish(ACK_TOPIC, fuzzed_ack(rng, alarm_ids), wait=False)
        raw.publish(CMD_TOPIC, b'{"v":1,"id":"the-end","name":"ping"}')
        await wait_platform(
            platform,
            lambda p: any(e["data"]["cmd_id"] == "the-end" for e in kinds(p, "cmd.result")),
            "the last command's result",
            30,
        )
        assert uplink.connected.is_set() and uplink.stats.connects == 1
        tasks = (uplink._downlink_task, uplink._downlink_ack_task, uplink._alarm_task)
        assert all(task is not None and not task.done() for task in tasks)
    answered = {e["data"]["cmd_id"] for e in kinds(platform, "cmd.result")} - {"the-end"}
    assert answered == answerable
    record(
        "downlink",
        "malformed commands and acks through Mosquitto (seeded generator)",
        count=count,
        lost=0,
        outcome=(f"{len(answerable)} readable ids all answered; link and downlink tasks stayed up"),
    )


@pytest.mark.reliability
async def test_a_batch_of_acks_naming_many_unknown_ids_is_applied_at_once(
    tmp_path: Path,
) -> None:
    acks, ids_each = 1000, 1000  # the queue bound, each ack full: 1000 operators, 1M ids
    async with handlers(tmp_path) as rig:
        alarm_id = await rig.alarms.raise_alarm(
            "alarm.button", {"press": "short", "battery": None, "rssi": None}, "btn-00000001"
        )
        batch = [
            AckMessage(v=1, ids=[f"u-{n}-{i}" for i in range(ids_each)], by=f"operator-{n}")
            for n in range(acks)
        ]
        batch.append(AckMessage(v=1, ids=[alarm_id], by="desk"))
        with capture_logs() as logs:
            began = time.monotonic()
            await rig.uplink.apply_acks(batch)
            took_s = time.monotonic() - began
        held = await rig.outbox.held_alarms()
    unknown = [e for e in logs if e["event"] == "ack_for_unknown_alarm"]
    assert held == []
    assert len(unknown) == acks, "one line per ack, not per id"
    assert all(e["count"] == ids_each and len(e["alarm_ids"]) <= 5 for e in unknown)
    assert took_s < 3.0, f"{took_s:.2f} s"
    record(
        "downlink",
        f"{acks} acks applied together, {acks * ids_each} unknown ids, {acks} operators",
        count=acks + 1,
        lost=0,
        outcome=f"applied in {took_s * 1000:.0f} ms, {len(unknown)} log lines",
    )
