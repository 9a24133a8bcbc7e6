"""bleak against the fake BlueZ: a private system bus for one test, and its clean-up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hil.sim.dbus import PrivateSystemBus


async def close_bleak_manager() -> None:
    """bleak keeps one BlueZ manager (and its bus connection) per event loop; close this loop's
    so that no connection outlives the test's bus."""
    from bleak.backends.bluezdbus import manager as bluez_manager

    instance = bluez_manager._global_instances.pop(asyncio.get_running_loop(), None)
    if instance is None or instance._bus is None:
        return
    instance._bus.disconnect()
    with contextlib.suppress(Exception):
        await instance._bus.wait_for_disconnect()  # type: ignore[no-untyped-call]
    if instance._bus_watcher_task is not None:
        await instance._bus_watcher_task


@contextlib.asynccontextmanager
async def private_system_bus(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[str]:
    """A private dbus-daemon; bleak finds it through DBUS_SYSTEM_BUS_ADDRESS."""
    async with PrivateSystemBus(directory) as bus:
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        try:
            yield bus.address
        finally:
            await close_bleak_manager()
