"""The uplink in a whole gateway, against a real Mosquitto: delivery, alarms, acks, commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.clock import ManualClock
from gateway.events import StoredEvent
from gateway.uplink import build_messages
from tests.gateway_rig import kinds, running_gateway, wait_platform, wait_until
from tests.support.broker import Mosquitto
from tests.support.platform import PlatformClient

BUTTON = {"press": "short", "battery": 90, "rssi": -55}


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
            await wait_until(rig.gateway.uplink.connected.is_set, 10, "connection")
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
        await wait_until(lambda: rig.gateway.commands.rejected == 1, 10, "counted rejection")


async def test_puback_with_failure_reason_is_not_a_delivery(
    tmp_path: Path, mosquitto_tls: Mosquitto, platform_tls: PlatformClient
) -> None:
    # gw-a configured with gw-b's certificate: the ACL (on the certificate identity) refuses
    # every publication into gw-a's topics with PUBACK 0x87, which paho reports as published.
    with capture_logs() as logs:
        async with running_gateway(tmp_path, mosquitto_tls, cert_of="gw-b") as rig:
            await rig.gateway.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
            await wait_until(lambda: rig.gateway.uplink.stats.rejected_messages >= 2, 20, "0x87")
            stats = await rig.gateway.outbox.call(rig.gateway.store.stats)
            assert stats.queued.get("alarm") == 1
            assert stats.queued.get("gateway") == 1  # gateway.started, also refused
            held = await rig.gateway.outbox.call(rig.gateway.store.held_alarms)
            assert held and held[0].attempt == 1
    rejected = [e for e in logs if e["event"] == "publish_rejected"]
    assert rejected and all(e["code"] == 0x87 for e in rejected)
    assert not platform_tls.events()


async def test_tls_gateway_with_its_own_certificate_delivers(
    tmp_path: Path, mosquitto_tls: Mosquitto, platform_tls: PlatformClient
) -> None:
    async with running_gateway(tmp_path, mosquitto_tls) as rig:
        alarm_id = await rig.gateway.alarms.raise_alarm("alarm.button", BUTTON, "btn-00000001")
        await wait_platform(platform_tls, lambda p: len(kinds(p, "alarm.button")) == 1, "alarm")
        assert kinds(platform_tls, "alarm.button")[0]["id"] == alarm_id
        assert rig.gateway.uplink.stats.rejected_messages == 0


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_both_protocol_versions_deliver_and_keep_the_session(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, protocol: str
) -> None:
    async with running_gateway(tmp_path, mosquitto, mqtt={"protocol": protocol}) as rig:
        await wait_until(rig.gateway.uplink.connected.is_set, 10, "connection")
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
