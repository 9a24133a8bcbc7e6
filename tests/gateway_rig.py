"""Runs a whole ``Gateway`` inside the test's event loop, against a real broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drivers.camera.gpio import OutputLine
from gateway.app import config
from gateway.app.daemon import Gateway
from gateway.app.sdnotify import SystemdNotifier
from gateway.core.clock import Clock
from hil.sim.broker import Mosquitto
from hil.sim.platform import PlatformClient
from tests.support.daemon import gateway_config


@dataclass
class RunningGateway:
    gateway: Gateway
    stop: asyncio.Event
    task: asyncio.Task[int]


def kinds(platform: PlatformClient, kind: str) -> list[dict[str, Any]]:
    """Every event of ``kind`` the platform received, in arrival order."""
    return [event for _, event in platform.events() if event["kind"] == kind]


async def wait_platform(
    platform: PlatformClient, predicate: Any, what: str, timeout: float = 20
) -> None:
    """``PlatformClient.wait_for`` from a coroutine, without blocking the gateway's loop."""
    await asyncio.to_thread(platform.wait_for, predicate, timeout, what)


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait for a condition the event loop makes true (polled between loop turns)."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    broker: Mosquitto,
    *,
    clock: Clock | None = None,
    gateway_id: str = "gw-a",
    cert_of: str | None = None,
    relay_line: OutputLine | None = None,
    **sections: dict[str, Any],
) -> AsyncIterator[RunningGateway]:
    path = gateway_config(tmp_path, broker, gateway_id=gateway_id, **sections)
    cfg = config.load(path)
    if cert_of is not None:
        assert broker.pki is not None and cfg.mqtt.tls is not None
        cert = broker.pki.client(cert_of)
        tls = cfg.mqtt.tls.model_copy(update={"cert_file": cert.cert, "key_file": cert.key})
        cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"tls": tls})})
    gateway = Gateway(
        cfg,
        clock=clock,
        notifier=SystemdNotifier(None),
        boot_id="test-boot",
        relay_line=relay_line,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop), name="gateway")
    try:
        async with asyncio.timeout(20):
            await gateway.started.wait()
        yield RunningGateway(gateway, stop, task)
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task
