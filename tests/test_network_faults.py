"""Network faults between the gateway and a real Mosquitto, through the fault-injecting proxy."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from tests.gateway_rig import RunningGateway, kinds, running_gateway, wait_platform, wait_until
from tests.support.proxy import FaultProxy, Mode
from tests.support.reliability import record, scaled

BUTTON = {"press": "short", "battery": 90, "rssi": -55}
KEEPALIVE_S = 5  # the smallest the configuration allows
TELEMETRY_EVERY_S = 0.02
ALARM_EVERY_S = 0.7
FAULT_S = {"drop": 2.0, "reset": 2.0, "delay": 3.0, "throttle": 3.0}
DETECTION_SLACK_S = 0.3  # one turn of the drain loop and the teardown's first steps


@pytest.fixture
def proxy(mosquitto: Mosquitto) -> Iterator[FaultProxy]:
    with FaultProxy(mosquitto) as running:
        yield running


class Traffic:
    """Telemetry and alarms from the gateway; the platform acknowledges every alarm it gets."""

    def __init__(self, rig: RunningGateway, platform: PlatformClient) -> None:
        self.rig = rig
        self.platform = platform
        self.alarm_ids: list[str] = []
        self.acked: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def _produce(self) -> None:
        next_alarm = time.monotonic()
        while True:
            await self.rig.gateway.sink.emit("telemetry.vitals", {"heart_rate": 70}, None)
            if time.monotonic() >= next_alarm:
                alarm_id = await self.rig.gateway.alarms.raise_alarm(
                    "alarm.button", BUTTON, "btn-00000001"
                )
                self.alarm_ids.append(alarm_id)
                next_alarm += ALARM_EVERY_S
            await asyncio.sleep(TELEMETRY_EVERY_S)

    async def _acknowledge(self) -> None:
        while True:
            seen = {event["id"] for event in kinds(self.platform, "alarm.button")}
            for alarm_id in sorted(seen - self.acked):
                body = {"v": 1, "ids": [alarm_id], "by": "desk-1"}
                await asyncio.to_thread(self.platform.publish, "carebed/v1/gw-a/down/ack", body)
                self.acked.add(alarm_id)
            await asyncio.sleep(0.05)

    @contextlib.asynccontextmanager
    async def flowing(self) -> AsyncIterator[None]:
        self._tasks = [
            asyncio.create_task(self._produce(), name="test.produce"),
            asyncio.create_task(self._acknowledge(), name="test.acknowledge"),
        ]
        try:
            yield
        finally:
            self._tasks[0].cancel()
            await asyncio.gather(self._tasks[0], return_exceptions=True)

    async def settle(self, timeout: float = 30) -> tuple[int, int]:
        """Wait (bounded) until every seq arrived and every alarm was acknowledged and audited;
        return (seqs, lost), lost counted from what the platform received."""
        gateway = self.rig.gateway
        await gateway.outbox.flush()
        last = (await gateway.outbox.stats()).last_seq
        try:
            await wait_platform(
                self.platform, lambda p: p.complete_up_to("gw-a") >= last, f"seqs 1..{last}"
            )
            async with asyncio.timeout(timeout):
                while await gateway.outbox.held_alarms():
                    await asyncio.sleep(0.05)
            await wait_platform(
                self.platform,
                lambda p: (
                    {e["data"]["alarm_id"] for e in kinds(p, "audit.alarm_acknowledged")}
                    >= set(self.alarm_ids)
                ),
                "an audit event for every alarm",
            )
        except (AssertionError, TimeoutError):
            pass  # counted below: what did not arrive is lost
        finally:
            self._tasks[1].cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        missing_seqs = set(range(1, last + 1)) - set(self.platform.seq_ids("gw-a"))
        arrived = {e["id"] for e in kinds(self.platform, "alarm.button")}
        audited = {e["data"]["alarm_id"] for e in kinds(self.platform, "audit.alarm_acknowledged")}
        unaudited = set(self.alarm_ids) - audited  # an ack or its audit lost
        return last, len(missing_seqs) + len((set(self.alarm_ids) - arrived) | unaudited)


@pytest.mark.reliability
async def test_a_blackholed_link_is_replaced_within_one_and_a_half_keepalives(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, proxy: FaultProxy
) -> None:
    cycles = scaled(1, 3)
    detections: list[float] = []
    async with running_gateway(
        tmp_path, mosquitto, mqtt={"port": proxy.port, "keepalive_s": KEEPALIVE_S}
    ) as rig:
        uplink = rig.gateway.uplink
        traffic = Traffic(rig, platform)
        async with traffic.flowing():
            for cycle in range(cycles):
                await wait_until(uplink.connected.is_set, 20, "the link")
                await asyncio.sleep(1.0)  # traffic on a healthy link
                connects = uplink.stats.connects
                await asyncio.to_thread(proxy.set_mode, "blackhole")
                began = time.monotonic()
                await wait_until(lambda: not uplink.connected.is_set(), 20, "the link to go")
                detections.append(time.monotonic() - began)
                await asyncio.to_thread(proxy.set_mode, "pass")
                await wait_until(
                    lambda c=connects: uplink.stats.connects > c, 20, f"reconnect {cycle}"
                )
        seqs, lost = await traffic.settle()
    assert max(detections) <= 1.5 * KEEPALIVE_S + DETECTION_SLACK_S, detections
    assert uplink.stats.silent_links >= cycles
    record(
        "network",
        "half-open link (proxy blackholes both ways), alarms and telemetry flowing",
        count=cycles,
        lost=lost,
        outcome=(
            f"detected after {max(detections):.1f} s at most (keepalive {KEEPALIVE_S} s), "
            f"reconnected; {seqs} seqs and {len(traffic.alarm_ids)} alarms sent, {lost} lost"
        ),
    )
    assert lost == 0


@pytest.mark.reliability
@pytest.mark.parametrize("mode", ["drop", "reset", "delay", "throttle"])
async def test_nothing_is_lost_across_a_network_fault(
    tmp_path: Path, mosquitto: Mosquitto, platform: PlatformClient, proxy: FaultProxy, mode: Mode
) -> None:
    cycles = scaled(1, 5)
    async with running_gateway(
        tmp_path, mosquitto, mqtt={"port": proxy.port, "keepalive_s": KEEPALIVE_S}
    ) as rig:
        uplink = rig.gateway.uplink
        traffic = Traffic(rig, platform)
        async with traffic.flowing():
            for _ in range(cycles):
                await wait_until(uplink.connected.is_set, 20, "the link")
                await asyncio.sleep(1.0)
                await asyncio.to_thread(proxy.set_mode, mode, delay_s=0.5, rate_bps=20_000)
                await asyncio.sleep(FAULT_S[mode])
                await asyncio.to_thread(proxy.set_mode, "pass")
        seqs, lost = await traffic.settle()
    if mode in ("drop", "reset"):
        assert uplink.stats.connects >= cycles + 1
    record(
        "network",
        f"proxy {mode} for {FAULT_S[mode]} s, alarms and telemetry flowing",
        count=cycles,
        lost=lost,
        outcome=(
            f"{seqs} seqs and {len(traffic.alarm_ids)} alarms sent, {lost} lost (seq never "
            f"received, alarm not delivered or not audited); {uplink.stats.connects} connections"
        ),
    )
    assert lost == 0
