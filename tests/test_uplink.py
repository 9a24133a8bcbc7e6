"""The uplink in a whole gateway, against a real Mosquitto: delivery, alarms, acks, commands."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from gateway.app.alarms import AlarmTracker
from gateway.app.commands import CommandProcessor
from gateway.app.config import MqttSection
from gateway.core.clock import ManualClock, SystemClock
from gateway.core.events import NewEvent, StoredEvent, WireRun
from gateway.core.ports import AlarmState
from gateway.store.alarms import AlarmTiming, HeldAlarm
from gateway.store.outbox import Outbox
from gateway.store.sink import EventFactory, OutboxSink
from gateway.store.sqlite import SqliteStore
from gateway.uplink import link as uplink_module
from gateway.uplink.link import MqttUplink
from gateway.uplink.messages import build_messages
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient, raw_publisher
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until
from tests.support.daemon import GatewayProcess, gateway_config
from tests.support.reliability import record, scaled

BUTTON = {"press": "short", "battery": 90, "rssi": -55}
ACK_TOPIC = "carebed/v1/gw-a/down/ack"
CMD_TOPIC = "carebed/v1/gw-a/down/cmd"


async def test_events_reach_the_platform_in_batches_per_class(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with running_gateway(tmp_path, mosquitto, outbox={"group_commit_s": 0.2}) as rig:
        sink = rig.gateway.sink
        for i in range(1200):
            await sink.emit("telemetry.vitals", {"heart_rate": 60 + i % 50}, "watch-AABBCCDDEEFF")
        await wait_platform(
            platform, lambda p: len(kinds(p, "telemetry.vitals")) == 1200, "1200 vitals"
        )
    telemetry = [m for m in platform.messages if m.topic.endswith("/up/telemetry")]
    assert max(len(m.payload["events"]) for m in telemetry if m.payload) == 500
    assert len(telemetry) < 20
    status = [m for m in platform.messages if m.topic == "carebed/v1/gw-a/status"]
    assert [m.payload["state"] for m in status if m.payload] == ["online", "offline"]
    started = kinds(platform, "gateway.started")
    stopping = kinds(platform, "gateway.stopping")
    assert len(started) == 1 and len(stopping) == 1
    assert stopping[0]["seq"] == max(e["seq"] for _, e in platform.events())


async def test_alarm_resent_with_attempt_2_until_acknowledged(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    clock = ManualClock(wall=1_800_000_000.0)
    async with running_gateway(
        tmp_path, mosquitto, clock=clock, alarms={"ack_timeout_s": 30, "resend_interval_s": 60}
    ) as rig:
        alarm_id = await rig.gateway.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 1, "the alarm")
        await wait_until(
            lambda: rig.gateway.store.in_flight() == 0,
            10,
            "the PUBACK of the alarm",
        )
        clock.advance(31)  # past the ack timeout
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) == 2, "a resend")
        first, second = kinds(platform, "alarm.button")
        assert (
            (second["id"], second["seq"]) == (first["id"], first["seq"]) == (alarm_id, first["seq"])
        )
        assert (first["attempt"], second["attempt"]) == (1, 2)

        platform.publish(
            "carebed/v1/gw-a/down/ack",
            {"v": 1, "ids": [alarm_id], "by": "operator-7", "ts": "2026-11-30T10:00:00.000Z"},
        )
        await wait_platform(
            platform, lambda p: len(kinds(p, "audit.alarm_acknowledged")) == 1, "the audit event"
        )
        (audit,) = kinds(platform, "audit.alarm_acknowledged")
        assert audit["data"]["alarm_id"] == alarm_id and audit["data"]["who"] == "operator-7"
        clock.advance(3600)  # many resend intervals later...
        await rig.gateway.sink.emit("telemetry.vitals", {"heart_rate": 70}, "watch-AABBCCDDEEFF")
        # ...the uplink looks for due alarms before every claim: the marker proves it looked.
        await wait_platform(platform, lambda p: len(kinds(p, "telemetry.vitals")) == 1, "marker")
        assert len(kinds(platform, "alarm.button")) == 2


async def test_ack_for_an_unknown_alarm_is_ignored(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    with capture_logs() as logs:
        async with running_gateway(tmp_path, mosquitto) as rig:
            await wait_until(rig.gateway.uplink.subscribed.is_set, 10, "the downlink's SUBSCRIBE")
            platform.publish("carebed/v1/gw-a/down/ack", {"v": 1, "ids": ["nope"], "by": "op"})
            platform.publish("carebed/v1/gw-a/down/ack", {"not": "an ack"})
            await wait_until(
                lambda: any(e["event"] == "ack_for_unknown_alarm" for e in logs), 10, "the log"
            )
            await wait_until(lambda: rig.gateway.uplink.stats.downlink_rejected == 1, 10, "count")
    assert not kinds(platform, "audit.alarm_acknowledged")


async def command(platform: PlatformClient, body: dict[str, Any], n: int) -> dict[str, Any]:
    platform.publish("carebed/v1/gw-a/down/cmd", body)
    await wait_platform(platform, lambda p: len(kinds(p, "cmd.result")) >= n, f"result {n}")
    return kinds(platform, "cmd.result")[n - 1]["data"]


async def test_commands_ping_status_idempotency_expiry_and_errors(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with running_gateway(tmp_path, mosquitto) as rig:
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "connection")
        ping = {"v": 1, "id": "c-1", "name": "ping", "args": {}, "expires_at": None}
        assert await command(platform, ping, 1) == {
            "cmd_id": "c-1",
            "ok": True,
            "result": {"pong": True},
            "error": None,
        }
        assert await command(platform, ping, 2) == await command(platform, ping, 3)
        status = await command(platform, {"v": 1, "id": "c-2", "name": "status"}, 4)
        assert status["ok"] and {"uptime_s", "queued", "devices", "version"} <= set(
            status["result"]
        )
        expired = {"v": 1, "id": "c-3", "name": "ping", "expires_at": "2020-01-01T00:00:00Z"}
        assert (await command(platform, expired, 5))["error"]["code"] == "expired"
        unknown = {"v": 1, "id": "c-4", "name": "reboot", "args": {}}
        assert (await command(platform, unknown, 6))["error"]["code"] == "unknown_command"
        bad_args = {"v": 1, "id": "c-5", "name": "ping", "args": {"x": 1}}
        assert (await command(platform, bad_args, 7))["error"]["code"] == "invalid_args"
        platform.publish("carebed/v1/gw-a/down/cmd", {"name": "ping"})  # no id: cannot answer
        await wait_until(lambda: rig.gateway.commands.stats.rejected == 1, 10, "counted rejection")


async def test_puback_with_failure_reason_is_not_a_delivery(
    tmp_path: Path, mosquitto_tls: Mosquitto, platform_tls: PlatformClient
) -> None:
    # gw-a configured with gw-b's certificate: the ACL (on the certificate identity) refuses
    # every publication into gw-a's topics with PUBACK 0x87, which paho reports as published.
    with capture_logs() as logs:
        async with running_gateway(tmp_path, mosquitto_tls, cert_of="gw-b") as rig:
            await rig.gateway.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
            await wait_until(lambda: rig.gateway.uplink.stats.rejected_messages >= 2, 20, "0x87")
            stats = await rig.gateway.outbox.stats()
            assert stats.queued.get("alarm") == 1
            assert stats.queued.get("gateway") == 1  # gateway.started, also refused
            held = await rig.gateway.outbox.held_alarms()
            assert held and held[0].attempt == 1
    rejected = [e for e in logs if e["event"] == "publish_rejected"]
    assert rejected and all(e["code"] == 0x87 for e in rejected)
    assert not platform_tls.events()


async def test_a_publication_nobody_subscribed_to_is_kept_and_sent_again(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    # Before the platform's consumer subscribes (as after a Mosquitto restart, which does not
    # restore shared subscriptions), MQTT 5 PUBACKs with 0x10 "No matching subscribers": the
    # broker handed the events to nobody, so they stay in the outbox and go again.
    with capture_logs() as logs:
        async with running_gateway(tmp_path, mosquitto) as rig:
            alarm_id = await rig.gateway.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
            await wait_until(lambda: rig.gateway.uplink.stats.unheard_messages >= 2, 20, "0x10")
            stats = await rig.gateway.outbox.stats()
            assert stats.queued.get("alarm") == 1
            assert stats.queued.get("gateway") == 1  # gateway.started, heard by nobody either
            with PlatformClient(mosquitto) as platform:
                await wait_platform(
                    platform,
                    lambda p: kinds(p, "alarm.button") and kinds(p, "gateway.started"),
                    "the events sent again once the platform subscribed",
                )
                assert kinds(platform, "alarm.button")[0]["id"] == alarm_id
    unheard = [e for e in logs if e["event"] == "publish_unheard"]
    assert unheard and {e["topic"] for e in unheard} >= {
        "carebed/v1/gw-a/up/alarm",
        "carebed/v1/gw-a/up/gateway",
    }
    assert not [e for e in logs if e["event"] == "publish_rejected"]


async def test_tls_gateway_with_its_own_certificate_delivers(
    tmp_path: Path, mosquitto_tls: Mosquitto, platform_tls: PlatformClient
) -> None:
    async with running_gateway(tmp_path, mosquitto_tls) as rig:
        alarm_id = await rig.gateway.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
        await wait_platform(platform_tls, lambda p: len(kinds(p, "alarm.button")) == 1, "alarm")
        assert kinds(platform_tls, "alarm.button")[0]["id"] == alarm_id
        assert rig.gateway.uplink.stats.rejected_messages == 0
        # An alarm is never held back behind unacknowledged segments (Nagle), over TLS too.
        assert rig.gateway.uplink._client is not None
        assert rig.gateway.uplink._client.no_delay()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_both_protocol_versions_deliver_and_keep_the_session(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, protocol: str
) -> None:
    async with running_gateway(tmp_path, mosquitto, mqtt={"protocol": protocol}) as rig:
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "connection")
        assert rig.gateway.uplink._client is not None
        assert rig.gateway.uplink._client.no_delay()
        # The broker has its SUBSCRIBE once it has passed on an event the gateway published after
        # it on the same connection (``connected`` is set before the SUBACK).
        await wait_platform(platform, lambda p: len(kinds(p, "gateway.started")) == 1, "started")
        platform.publish(
            "carebed/v1/gw-a/down/cmd", {"v": 1, "id": "p-1", "name": "ping", "args": {}}
        )
        await wait_platform(platform, lambda p: len(kinds(p, "cmd.result")) == 1, "result")
    # While the gateway is away, a command is queued in its persistent session...
    platform.publish("carebed/v1/gw-a/down/cmd", {"v": 1, "id": "p-2", "name": "ping", "args": {}})
    async with running_gateway(tmp_path, mosquitto, mqtt={"protocol": protocol}):
        # ...and answered when it comes back.
        await wait_platform(platform, lambda p: len(kinds(p, "cmd.result")) == 2, "queued command")


def test_batches_respect_the_contract_limits() -> None:
    big = "x" * 3000
    events = (
        [
            StoredEvent(
                i,
                f"id-{i}",
                "audit.command",
                None,
                json.dumps({"who": "a", "what": big}),
                "2026-01-01T00:00:00.000Z",
                True,
                1,
            )
            for i in range(1, 201)
        ]
        + [
            StoredEvent(
                1000 + i,
                f"t-{i}",
                "telemetry.vitals",
                None,
                '{"heart_rate":1}',
                "2026-01-01T00:00:00.000Z",
                True,
                1,
            )
            for i in range(1201)
        ]
        + [StoredEvent(5000, "a-1", "alarm.fall", None, "{}", "2026-01-01T00:00:00.000Z", True, 1)]
    )
    messages = build_messages("gw-a", events)
    assert messages[0].topic.endswith("/up/alarm") and messages[0].seqs == (5000,)
    for message in messages:
        body = json.loads(message.payload)
        assert 1 <= len(body["events"]) <= 500
        assert len(message.payload) <= 256 * 1024
    telemetry = [m for m in messages if m.topic.endswith("/up/telemetry")]
    assert [len(m.seqs) for m in telemetry] == [500, 500, 201]
    audit = [m for m in messages if m.topic.endswith("/up/audit")]
    assert len(audit) == 3  # 200 events of ~3 KiB do not fit 256 KiB twice
    assert sorted(s for m in messages for s in m.seqs) == sorted(e.seq for e in events)


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(min_value=1, max_value=1200),
    sizes=st.lists(st.integers(min_value=0, max_value=6000), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=1200), max_size=6),
    before=st.integers(min_value=0, max_value=3),
)
def test_stretches_of_wire_json_make_the_same_messages_as_their_events(
    count: int, sizes: list[int], cuts: list[int], before: int
) -> None:
    """A claim's ``WireRun``s (the spool's events as their stored JSON) are packed exactly as
    the same events one by one: same payloads, same seqs, the same splits at 500 events and
    256 KiB, whatever stretches they come in and whatever precedes them."""
    events = [
        StoredEvent(
            seq,
            f"id-{seq}",
            "telemetry.vitals",
            "watch-AABBCCDDEEFF",
            json.dumps({"w": "x" * sizes[seq % len(sizes)]}),
            "2026-01-01T00:00:00.000Z",
            seq % 3 != 0,
            1,
        )
        for seq in range(1, count + 1)
    ]
    wires = [event.wire_json() for event in events]
    starts = [0]
    for wire in wires:
        starts.append(starts[-1] + len(wire) + 1)
    seqs = [event.seq for event in events]
    text = ",".join(wires)
    bounds = sorted({min(before, count), *(min(cut, count) for cut in cuts), count})
    runs = [
        WireRun("telemetry", seqs, text, starts, lo, hi)
        for lo, hi in itertools.pairwise(bounds)
        if hi > lo
    ]
    head = events[: bounds[0]]  # one by one, then the rest in stretches
    expected = build_messages("gw-a", events)
    assert build_messages("gw-a", [*head, *runs]) == expected
    for message in expected:
        assert 1 <= len(message.seqs) <= 500
        assert len(message.payload) <= 256 * 1024 or len(message.seqs) == 1


async def test_an_alarm_overtakes_a_draining_backlog(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    backlog = 30_000
    mosquitto.stop()
    async with running_gateway(tmp_path, mosquitto, outbox={"group_commit_s": 0.5}) as rig:
        for i in range(backlog):
            await rig.gateway.sink.emit("telemetry.vitals", {"heart_rate": i % 200}, None)
        await rig.gateway.outbox.flush()
        await asyncio.to_thread(mosquitto.start)
        stats = rig.gateway.uplink.stats
        await wait_until(lambda: stats.published_events >= 1000, 30, "the drain to begin")
        alarm_id = await rig.gateway.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
        published_before_alarm = stats.published_events
        await wait_platform(
            platform, lambda p: len(kinds(p, "telemetry.vitals")) == backlog, "the backlog", 60
        )
    assert published_before_alarm < backlog / 2
    topics = [m.topic.rsplit("/", 1)[-1] for m in platform.messages if "/up/" in m.topic]
    alarm_at = next(
        i for i, m in enumerate(platform.messages) if m.payload and m.topic.endswith("/up/alarm")
    )
    telemetry_after = topics[alarm_at:].count("telemetry")
    assert telemetry_after > 0, "the backlog was already out: nothing was overtaken"
    assert kinds(platform, "alarm.button")[0]["id"] == alarm_id


async def test_a_half_open_link_is_detected_and_replaced(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    # A frozen broker keeps the TCP connection open and answers nothing: no PUBACK, no PINGRESP.
    async with running_gateway(tmp_path, mosquitto, mqtt={"keepalive_s": 5}) as rig:
        uplink = rig.gateway.uplink
        await wait_until(uplink.connected.is_set, 10, "connection")
        await asyncio.to_thread(mosquitto.freeze)
        try:
            alarm_id = await rig.gateway.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
            await wait_until(lambda: not uplink.connected.is_set(), 20, "the half-open link to go")
        finally:
            await asyncio.to_thread(mosquitto.thaw)
        await wait_until(lambda: uplink.stats.connects >= 2, 30, "a new connection")
        await wait_platform(
            platform,
            lambda p: any(e["id"] == alarm_id for e in kinds(p, "alarm.button")),
            "the alarm after the thaw",
        )


# --------------------------------------------------------------------------- store failures


class FlakyStore(SqliteStore):
    """The real store, whose named methods raise while they are in ``failing`` (as a full or
    failing disk makes them raise)."""

    def __init__(self, path: Path, timing: AlarmTiming, factory: EventFactory) -> None:
        super().__init__(
            path,
            max_bytes=64 * 1024 * 1024,
            timing=timing,
            make_dropped=lambda count, ranges, reason: factory.make(
                "gateway.dropped", {"count": count, "seq_ranges": ranges, "reason": reason}
            ),
            boot_id="test-boot",
        )
        self.failing: set[str] = set()
        self.failures: Counter[str] = Counter()

    def _fail(self, name: str) -> None:
        if name in self.failing:
            self.failures[name] += 1
            raise sqlite3.OperationalError("database or disk is full")

    def promote_due_alarms(self) -> tuple[list[HeldAlarm], list[HeldAlarm]]:
        self._fail("promote_due_alarms")
        return super().promote_due_alarms()

    def claim_wire(self, max_events: int) -> list[StoredEvent | WireRun]:
        self._fail("claim")
        return super().claim_wire(max_events)

    def acknowledge_alarms(
        self, ids: Sequence[str], make_audit: Callable[[HeldAlarm], NewEvent] | None = None
    ) -> list[HeldAlarm]:
        self._fail("acknowledge_alarms")
        return super().acknowledge_alarms(ids, make_audit)

    def insert(self, events: Sequence[NewEvent], **options: Any) -> list[int]:
        if any(event.kind.startswith("audit.") for event in events):
            self._fail("insert_audit")
        return super().insert(events, **options)

    def command_result(self, cmd_id: str) -> str | None:
        self._fail("command_result")
        return super().command_result(cmd_id)

    def remember_command(self, cmd_id: str, result_json: str, keep: int = 10_000) -> None:
        self._fail("remember_command")
        super().remember_command(cmd_id, result_json, keep)


def watch_pubacks(rig: UplinkRig, topic: str) -> list[bool]:
    """For each PUBACK the uplink sends for ``topic``: whether the store was failing then."""
    sent: list[bool] = []
    puback = rig.uplink._puback

    def recording(item: Any) -> None:
        if item.topic == topic:
            sent.append(bool(rig.store.failing))
        puback(item)

    rig.uplink._puback = recording  # type: ignore[method-assign]
    return sent


class Listener:
    """What the senior is told, in order, with the time and what else had happened by then."""

    def __init__(self, progress: Callable[[], int] = lambda: 0) -> None:
        self.states: list[tuple[str, AlarmState, float, int]] = []
        self._progress = progress

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None:
        self.states.append((alarm_id, state, time.monotonic(), self._progress()))

    def told(self, alarm_id: str) -> list[AlarmState]:
        return [state for aid, state, _, _ in self.states if aid == alarm_id]


@dataclass
class UplinkRig:
    store: FlakyStore
    outbox: Outbox
    sink: OutboxSink
    alarms: AlarmTracker
    uplink: MqttUplink
    listener: Listener


@asynccontextmanager
async def uplink_rig(
    tmp_path: Path, broker: Mosquitto, timing: AlarmTiming, *, keepalive_s: int = 5
) -> AsyncIterator[UplinkRig]:
    """The uplink alone, on a store that can be made to fail, against a real broker."""
    clock = SystemClock()
    factory = EventFactory(clock, "test-boot")
    store = FlakyStore(tmp_path / "outbox.sqlite3", timing, factory)
    outbox = Outbox(store, group_commit_s=0.05)
    await outbox.open()
    sink = OutboxSink(outbox, factory)
    alarms = AlarmTracker(sink)
    listener = Listener()
    alarms.subscribe(listener)
    commands = CommandProcessor(outbox, sink, clock)
    settings = MqttSection(
        host=broker.host,
        port=broker.port,
        plaintext=True,
        keepalive_s=keepalive_s,
        backoff_min_s=0.1,
        backoff_cap_s=1.0,
        connect_timeout_s=3.0,
    )
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
    task = asyncio.create_task(uplink.run(), name="test.uplink")
    try:
        await wait_until(uplink.connected.is_set, 10, "the link")
        yield UplinkRig(store, outbox, sink, alarms, uplink, listener)
    finally:
        store.failing.clear()
        await uplink.stop(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await outbox.close()


@pytest.mark.reliability
async def test_a_failing_store_does_not_tear_down_the_link(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    timing = AlarmTiming(ack_timeout_s=0.5, resend_interval_s=0.5)
    async with uplink_rig(tmp_path, mosquitto, timing) as rig:
        # Promotions fail for good: whatever can still be published is.
        rig.store.failing.add("promote_due_alarms")
        alarm_id = await rig.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
        for i in range(50):
            await rig.sink.emit("telemetry.vitals", {"heart_rate": 60 + i}, None)
        await wait_platform(
            platform,
            lambda p: len(kinds(p, "telemetry.vitals")) == 50 and kinds(p, "alarm.button"),
            "the alarm and the telemetry",
        )
        # Claims fail for a while too: nothing goes out, the link stays, then everything does.
        rig.store.failing.add("claim")
        for i in range(50):
            await rig.sink.emit("telemetry.vitals", {"heart_rate": 60 + i}, None)
        await wait_until(lambda: rig.store.failures["claim"] >= 5, 10, "claims to fail")
        rig.store.failing.clear()
        await wait_platform(
            platform, lambda p: len(kinds(p, "telemetry.vitals")) == 100, "the rest, afterwards"
        )
        # Resends resume once promotions work again, and the ack ends them.
        await wait_platform(platform, lambda p: len(kinds(p, "alarm.button")) >= 2, "a resend")
        await asyncio.to_thread(
            platform.publish, "carebed/v1/gw-a/down/ack", {"v": 1, "ids": [alarm_id], "by": "op"}
        )
        await wait_until(lambda: AlarmState.ACKNOWLEDGED in rig.listener.told(alarm_id), 10, "ack")
        assert rig.uplink.stats.connects == 1, "a failing store made the link go down"
        # Every call that raised was counted (and retried); promotions are looked for at most
        # every PROMOTE_SPACING_S, so there are fewer of them than rounds of the drain.
        assert rig.store.failures["promote_due_alarms"] >= 1
        assert rig.uplink.stats.store_failures == sum(rig.store.failures.values())
    record(
        "disk",
        "store calls of the uplink raising (promote_due_alarms, claim), link up",
        count=sum(rig.store.failures.values()),
        lost=0,
        outcome="retried with back-off on the same link; alarm and telemetry delivered",
    )


@pytest.mark.reliability
async def test_an_ack_that_fails_to_apply_is_kept_and_applied_later(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    timing = AlarmTiming(ack_timeout_s=0.5, resend_interval_s=0.5)
    async with uplink_rig(tmp_path, mosquitto, timing) as rig:
        alarm_id = await rig.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
        await wait_platform(platform, lambda p: kinds(p, "alarm.button"), "the alarm")
        pubacks = watch_pubacks(rig, ACK_TOPIC)
        rig.store.failing.add("acknowledge_alarms")
        await asyncio.to_thread(
            platform.publish, "carebed/v1/gw-a/down/ack", {"v": 1, "ids": [alarm_id], "by": "op"}
        )
        # The senior hears "help is on the way" although the store cannot apply the ack...
        await wait_until(
            lambda: AlarmState.ACKNOWLEDGED in rig.listener.told(alarm_id), 10, "the news"
        )
        await wait_until(lambda: rig.store.failures["acknowledge_alarms"] >= 3, 10, "failures")
        # ...for longer than the ack timeout: the alarm is not resent meanwhile.
        await asyncio.sleep(2 * timing.ack_timeout_s)
        resent_while_failing = len(kinds(platform, "alarm.button")) - 1
        rig.store.failing.clear()
        async with asyncio.timeout(10):  # applied later, without the platform sending it again
            while await rig.outbox.held_alarms():
                await asyncio.sleep(0.05)
        await wait_platform(platform, lambda p: kinds(p, "audit.alarm_acknowledged"), "audit")
        await wait_until(lambda: len(pubacks) == 1, 10, "the PUBACK")
        assert rig.uplink.stats.connects == 1
    assert pubacks == [False], "the ack was PUBACKed while it could not be applied"
    assert resent_while_failing == 0
    assert rig.listener.told(alarm_id)[-1] == AlarmState.ACKNOWLEDGED
    record(
        "disk",
        "down/ack whose application fails (acknowledge_alarms raising)",
        count=rig.store.failures["acknowledge_alarms"],
        lost=0,
        outcome="senior told at once, no resend meanwhile, PUBACK only once applied",
    )


# --------------------------------------------------------------------------- downlink load


@pytest.mark.reliability
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_an_ack_overtakes_5000_queued_commands(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, protocol: str
) -> None:
    # On 3.1.1 the gateway announces no Receive Maximum: the broker's own per-client in-flight
    # window applies (max_inflight_messages, 100 here as in the shipped configuration).
    commands = 5000
    async with running_gateway(tmp_path, mosquitto, mqtt={"protocol": protocol}) as rig:
        stats = rig.gateway.commands.stats
        listener = Listener(progress=lambda: stats.handled)
        rig.gateway.alarms.subscribe(listener)
        alarm_id = await rig.gateway.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
        await wait_platform(platform, lambda p: kinds(p, "alarm.button"), "the alarm")
        with raw_publisher(mosquitto) as raw:
            for i in range(commands):
                body = {"v": 1, "id": f"q-{i}", "name": "ping", "args": {}}
                raw.publish(CMD_TOPIC, json.dumps(body).encode(), wait=False)
            ack = {"v": 1, "ids": [alarm_id], "by": "desk"}
            await asyncio.to_thread(raw.publish, ACK_TOPIC, json.dumps(ack).encode())
            sent = time.monotonic()
        await wait_until(
            lambda: AlarmState.ACKNOWLEDGED in listener.told(alarm_id), 20, "help on the way"
        )
        (told_at, handled_before) = next(
            (t, n) for aid, s, t, n in listener.states if s == AlarmState.ACKNOWLEDGED
        )
    latency = max(0.0, told_at - sent)
    assert handled_before < commands / 2, f"the ack waited for {handled_before} commands"
    assert latency < 1.0
    record(
        "downlink",
        f"down/ack sent behind {commands} queued commands (MQTT {protocol})",
        count=1,
        lost=0,
        outcome=(
            f"help-on-the-way {latency * 1000:.0f} ms after the ack reached the broker, "
            f"{handled_before} commands answered before it"
        ),
    )


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.reliability
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_oversized_downlink_leaves_memory_bounded_and_the_link_up(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, protocol: str
) -> None:
    count = scaled(12, 40)
    config = gateway_config(tmp_path, mosquitto, mqtt={"protocol": protocol})
    daemon = GatewayProcess(config, tmp_path / "gateway.log")
    daemon.start()
    try:
        platform.wait_for(lambda p: kinds(p, "gateway.started"), 20, "the daemon")
        assert daemon.proc is not None
        baseline_kib = _rss_peak_kib(daemon.proc.pid)
        big = b'{"v":1,"ids":["' + b"x" * (8 * 1024 * 1024) + b'"],"by":"flood"}'
        with raw_publisher(mosquitto) as raw:
            for _ in range(count):
                raw.publish(ACK_TOPIC, big)
            raw.publish(CMD_TOPIC, b'{"v":1,"id":"big","name":"ping","pad":"' + big + b'"}')
            raw.publish(ACK_TOPIC, b'{"v":1,"ids":["' + b"y" * 70_000 + b'"]}')  # > 64 KiB
        # The link is up and acks work: a test alarm goes round.
        platform.publish(CMD_TOPIC, {"v": 1, "id": "t-1", "name": "test_alarm", "args": {}})
        platform.wait_for(lambda p: kinds(p, "alarm.button"), 20, "the test alarm")
        alarm_id = kinds(platform, "alarm.button")[0]["id"]
        platform.publish(ACK_TOPIC, {"v": 1, "ids": [alarm_id], "by": "desk"})
        platform.wait_for(lambda p: kinds(p, "audit.alarm_acknowledged"), 20, "the audit event")
        peak_kib = _rss_peak_kib(daemon.proc.pid)
    finally:
        daemon.terminate()
    logs = [json.loads(line) for line in daemon.log_text().splitlines() if line.startswith("{")]
    refused = [e for e in logs if e["event"] == "downlink_refused"]
    assert sum(1 for e in logs if e["event"] == "uplink_connected") == 1
    if protocol == "3.1.1":  # MQTT 5: the broker was told the limit and kept them
        assert len(refused) == count + 2
    assert len(refused) >= 1  # the 70 kB ack is under the packet limit, over the ack limit
    growth_mib = (peak_kib - baseline_kib) / 1024
    assert growth_mib < 48, f"peak RSS grew by {growth_mib:.0f} MiB"
    record(
        "downlink",
        f"{count} acks and a command of 8 MiB, an ack of 70 kB (MQTT {protocol})",
        count=count + 2,
        lost=0,
        outcome=(
            f"refused unread: {len(refused)} by the gateway"
            + (", the rest by the broker (Maximum Packet Size)" if protocol == "5" else "")
            + f"; peak RSS +{growth_mib:.0f} MiB, link up, the next alarm acknowledged"
        ),
    )


# --------------------------------------------------------------------------- durability


@pytest.mark.reliability
def test_the_audit_of_an_ack_survives_kill_9_right_after_the_ack(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    cycles = scaled(3, 20)
    config = gateway_config(tmp_path, mosquitto, outbox={"group_commit_s": 1.0})
    log_path = tmp_path / "gateway.log"
    daemon = GatewayProcess(config, log_path)
    lost = duplicated = 0
    try:
        for cycle in range(cycles):
            daemon.start()
            platform.wait_for(
                lambda p, n=cycle + 1: len(kinds(p, "gateway.started")) >= n, 20, "the daemon"
            )
            body = {"v": 1, "id": f"t-{cycle}", "name": "test_alarm", "args": {}}
            platform.publish(CMD_TOPIC, body)
            platform.wait_for(
                lambda p, n=cycle + 1: len({e["id"] for e in kinds(p, "alarm.button")}) >= n,
                20,
                "the test alarm",
            )
            alarm_id = kinds(platform, "alarm.button")[-1]["id"]
            offset = log_path.stat().st_size
            platform.publish(ACK_TOPIC, {"v": 1, "ids": [alarm_id], "by": "desk"})
            # Killed after the alarm was deleted and before the PUBACK went out: the broker
            # sends the ack again, the alarm is gone by then, the audit event must be stored.
            _wait_log(log_path, offset, "ack_applied", alarm_id)
            daemon.kill()
            daemon.start()
            try:
                platform.wait_for(
                    lambda p, a=alarm_id: any(
                        e["data"]["alarm_id"] == a for e in kinds(p, "audit.alarm_acknowledged")
                    ),
                    20,
                    "the audit event after the restart",
                )
            except TimeoutError:
                lost += 1
            # A redelivered ack comes before a later command, and its events before the
            # command's result: once that is in, a second audit event would be too.
            platform.publish(CMD_TOPIC, {"v": 1, "id": f"m-{cycle}", "name": "ping", "args": {}})
            platform.wait_for(
                lambda p, c=f"m-{cycle}": any(
                    e["data"]["cmd_id"] == c for e in kinds(p, "cmd.result")
                ),
                20,
                "the marker command's result",
            )
            daemon.kill()
            # Distinct events: a retransmission of the same one (same id) is at-least-once.
            audits = kinds(platform, "audit.alarm_acknowledged")
            duplicated += len({e["id"] for e in audits if e["data"]["alarm_id"] == alarm_id}) - 1
    finally:
        daemon.close()
    assert lost == 0
    assert duplicated == 0
    record(
        "durability",
        "kill -9 after an ack was applied, before its PUBACK (group commit 1 s)",
        count=cycles,
        lost=lost,
        outcome="audit.alarm_acknowledged stored with the deletion: it arrived exactly once",
    )


def _wait_log(path: Path, offset: int, event: str, alarm_id: str) -> None:
    """Poll the daemon's JSON log (flushed per line) for one event about ``alarm_id``."""
    deadline = time.monotonic() + 20
    with path.open("rb") as handle:
        handle.seek(offset)
        pending = b""
        while time.monotonic() < deadline:
            pending += handle.read()
            lines = pending.split(b"\n")
            pending = lines.pop()
            for line in lines:
                if f'"event": "{event}"'.encode() in line and alarm_id.encode() in line:
                    return
            time.sleep(0.001)
    raise AssertionError(f"no {event} for {alarm_id} in the log")


@pytest.mark.reliability
async def test_commands_beyond_the_queue_bound_are_received_again_not_lost(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uplink_module, "MAX_QUEUED_COMMANDS", 20)  # a bound a burst goes over
    commands = 400
    async with running_gateway(tmp_path, mosquitto) as rig:
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "connection")
        with raw_publisher(mosquitto) as raw:
            for i in range(commands):
                body = {"v": 1, "id": f"b-{i}", "name": "ping", "args": {}}
                raw.publish(CMD_TOPIC, json.dumps(body).encode(), wait=False)
            raw.publish(CMD_TOPIC, b'{"v":1,"id":"b-end","name":"ping"}')
        await wait_platform(
            platform,
            lambda p: (
                {e["data"]["cmd_id"] for e in kinds(p, "cmd.result")}
                >= {f"b-{i}" for i in range(commands)}
            ),
            "a result for every command",
            30,
        )
        stats = rig.gateway.uplink.stats
        deferred, connects = stats.commands_deferred, stats.connects
    assert deferred > 0 and connects >= 2
    record(
        "downlink",
        f"a burst of {commands} commands over a command queue bounded at 20",
        count=commands,
        lost=0,
        outcome=(
            f"{deferred} left unacknowledged and received again after {connects - 1} "
            "session renewals; every command answered"
        ),
    )


# --------------------------------------------------------------------------- review fixes


@pytest.mark.reliability
async def test_the_audit_of_an_ack_is_stored_with_the_deletion_while_inserts_fail(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    timing = AlarmTiming(ack_timeout_s=30, resend_interval_s=30)
    async with uplink_rig(tmp_path, mosquitto, timing) as rig:
        alarm_id = await rig.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
        await wait_platform(platform, lambda p: kinds(p, "alarm.button"), "the alarm")
        rig.store.failing.add("insert_audit")  # the ordinary write path of events fails
        await asyncio.to_thread(
            platform.publish, ACK_TOPIC, {"v": 1, "ids": [alarm_id], "by": "desk"}
        )
        async with asyncio.timeout(10):
            while await rig.outbox.held_alarms():
                await asyncio.sleep(0.02)
        # The alarm is gone from the store: its audit event is on disk with it.
        db = sqlite3.connect(f"file:{rig.store.path}?mode=ro", uri=True)
        stored = [
            json.loads(data)["alarm_id"]
            for (data,) in db.execute(
                "SELECT data FROM events WHERE kind='audit.alarm_acknowledged'"
            )
        ]
        db.close()
        # Unless it went out meanwhile (published from the store, then deleted after its
        # PUBACK): then it reaches the platform below, and it can only have come from the store.
        assert stored in ([alarm_id], []), stored
        await wait_platform(
            platform, lambda p: kinds(p, "audit.alarm_acknowledged"), "the audit event"
        )
    assert [e["data"]["alarm_id"] for e in kinds(platform, "audit.alarm_acknowledged")] == [
        alarm_id
    ]
    record(
        "disk",
        "down/ack applied while inserting events fails",
        count=1,
        lost=0,
        outcome="audit.alarm_acknowledged written in the transaction that deletes the alarm",
    )


@pytest.mark.reliability
async def test_a_command_whose_store_call_fails_is_answered_not_dropped(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    timing = AlarmTiming()
    async with uplink_rig(tmp_path, mosquitto, timing) as rig:
        # The store cannot say whether the command ran: not PUBACKed, received again later.
        rig.store.failing.add("command_result")
        await asyncio.to_thread(
            platform.publish, CMD_TOPIC, {"v": 1, "id": "c-1", "name": "ping", "args": {}}
        )
        await wait_until(lambda: rig.store.failures["command_result"] >= 1, 10, "a failure")
        rig.store.failing.clear()
        await wait_platform(
            platform,
            lambda p: any(e["data"]["cmd_id"] == "c-1" for e in kinds(p, "cmd.result")),
            "the result of c-1, after the store recovered",
        )
        # The command ran but its result cannot be remembered: answered all the same.
        rig.store.failing.add("remember_command")
        await asyncio.to_thread(
            platform.publish, CMD_TOPIC, {"v": 1, "id": "c-2", "name": "ping", "args": {}}
        )
        await wait_platform(
            platform,
            lambda p: any(e["data"]["cmd_id"] == "c-2" for e in kinds(p, "cmd.result")),
            "the result of c-2 while remembering fails",
        )
        failures = sum(rig.store.failures.values())
    record(
        "downlink",
        "down/cmd whose store calls fail (command_result, remember_command)",
        count=2,
        lost=0,
        outcome=f"{failures} store failures; not PUBACKed until answerable, every command answered",
    )


@pytest.mark.reliability
async def test_acks_beyond_the_queue_bound_are_received_again_without_losing_the_link(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uplink_module, "MAX_QUEUED_ACKS", 5)
    acks = 300
    timing = AlarmTiming()
    async with uplink_rig(tmp_path, mosquitto, timing) as rig:
        alarm_id = await rig.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
        await wait_platform(platform, lambda p: kinds(p, "alarm.button"), "the alarm")
        with capture_logs() as logs, raw_publisher(mosquitto) as raw:
            for i in range(acks):
                body = {"v": 1, "ids": [f"unknown-{i}"], "by": "desk"}
                raw.publish(ACK_TOPIC, json.dumps(body).encode(), wait=False)
            ack = {"v": 1, "ids": [alarm_id], "by": "desk"}
            await asyncio.to_thread(raw.publish, ACK_TOPIC, json.dumps(ack).encode())
            await wait_platform(
                platform, lambda p: kinds(p, "audit.alarm_acknowledged"), "the audit event"
            )
            await wait_until(lambda: rig.uplink.stats.acks_applied >= acks + 1, 20, "every ack")
        deferred = rig.uplink.stats.acks_deferred
    events = [e["event"] for e in logs]
    assert deferred > 0
    assert "uplink_lost" not in events, "an overflowing ack queue was taken for a lost link"
    statuses = [m.payload for m in platform.messages if m.topic.endswith("/status")]
    assert not [p for p in statuses if p and p.get("reason") == "lost"]
    assert AlarmState.UNDELIVERED not in rig.listener.told(alarm_id)[2:]
    record(
        "downlink",
        f"a burst of {acks} acks over an ack queue bounded at 5",
        count=acks + 1,
        lost=0,
        outcome=f"{deferred} left unacknowledged and received again after a session renewal "
        "(no will, no back-off); every ack applied",
    )


async def test_a_session_renewal_does_not_tell_held_alarms_not_delivered(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uplink_module, "MAX_QUEUED_COMMANDS", 5)
    async with uplink_rig(tmp_path, mosquitto, AlarmTiming()) as rig:
        alarm_id = await rig.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
        await wait_until(
            lambda: AlarmState.DELIVERED in rig.listener.told(alarm_id), 10, "delivered"
        )
        with raw_publisher(mosquitto) as raw:
            for i in range(100):
                body = {"v": 1, "id": f"r-{i}", "name": "ping", "args": {}}
                raw.publish(CMD_TOPIC, json.dumps(body).encode(), wait=i == 99)
        await wait_until(lambda: rig.uplink.stats.connects >= 2, 20, "a session renewal")
        await wait_platform(
            platform, lambda p: len(kinds(p, "cmd.result")) >= 100, "every command answered"
        )
    told = rig.listener.told(alarm_id)
    assert told == [AlarmState.RECEIVED, AlarmState.DELIVERED], told


async def test_a_quarantined_alarm_is_told_not_delivered(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    timing = AlarmTiming()
    factory = EventFactory(SystemClock(), "test-boot")
    store = FlakyStore(tmp_path / "outbox.sqlite3", timing, factory)
    store.open()
    damaged = factory.make("alarm.button", BUTTON, "btn-00000001")
    store.insert([damaged])
    store.close()
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    db.execute("UPDATE events SET data=substr(data, 2) WHERE id=?", (damaged.id,))
    db.commit()
    db.close()
    async with uplink_rig(tmp_path, mosquitto, timing) as rig:
        await wait_until(
            lambda: AlarmState.UNDELIVERED in rig.listener.told(damaged.id), 10, "not delivered"
        )
        assert not await rig.outbox.held_alarms()
    assert not kinds(platform, "alarm.button")


async def test_an_idle_healthy_link_is_not_declared_silent(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    keepalive_s = 5
    async with uplink_rig(tmp_path, mosquitto, AlarmTiming(), keepalive_s=keepalive_s) as rig:
        # Nothing to send, nothing to receive: only PINGRESPs keep the link known to be alive.
        deadline = time.monotonic() + 3 * keepalive_s
        while time.monotonic() < deadline:
            assert rig.uplink.connected.is_set()
            await asyncio.sleep(0.1)
        assert rig.uplink.stats.silent_links == 0
        assert rig.uplink.stats.connects == 1


async def test_a_stop_while_deferred_commands_drain_says_offline(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(uplink_module, "MAX_QUEUED_COMMANDS", 5)
    async with uplink_rig(tmp_path, mosquitto, AlarmTiming()) as rig:
        with raw_publisher(mosquitto) as raw:
            for i in range(200):
                body = {"v": 1, "id": f"s-{i}", "name": "ping", "args": {}}
                raw.publish(CMD_TOPIC, json.dumps(body).encode(), wait=i == 199)
        await wait_until(lambda: rig.uplink.stats.commands_deferred > 0, 10, "a deferral")
        await rig.uplink.stop(3.0)  # while the queue drains: no renewal now
    await wait_platform(
        platform,
        lambda p: any(
            m.payload and m.payload.get("reason") == "shutdown"
            for m in p.messages
            if m.topic.endswith("/status")
        ),
        "the offline status",
    )
    statuses = [m.payload for m in platform.messages if m.topic.endswith("/status")]
    assert statuses[-1] == {"v": 1, "gw": "gw-a", "state": "offline", "reason": "shutdown"}


def _store_bytes(path: Path) -> bytes:
    """The database and its -wal file as they are on disk now."""
    return b"".join(
        Path(f"{path}{suffix}").read_bytes()
        for suffix in ("", "-wal")
        if Path(f"{path}{suffix}").exists()
    )


async def test_telemetry_delivered_within_its_window_is_never_written(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient
) -> None:
    async with running_gateway(tmp_path, mosquitto, outbox={"group_commit_s": 60}) as rig:
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "connection")
        ids = []
        for n in range(50):
            event_id = await rig.gateway.sink.emit(
                "telemetry.vitals", {"heart_rate": 60 + n % 40}, "watch-AABBCCDDEEFF"
            )
            ids.append(event_id)
            await asyncio.sleep(0.005)
        await wait_platform(
            platform, lambda p: len(kinds(p, "telemetry.vitals")) == 50, "the 50 vitals"
        )
        await wait_until(lambda: rig.gateway.outbox.buffered == 0, 10, "their PUBACKs")
        on_disk = _store_bytes(rig.gateway.outbox.path)
        assert not [i for i in ids if i.encode() in on_disk], "delivered telemetry was written"
    assert [e["id"] for e in kinds(platform, "telemetry.vitals")] == ids
