"""The interfaces between device drivers and the gateway core (Protocols only)."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from gateway.core.kinds import AlarmKind, EventKind


class AlarmState(StrEnum):
    """Where an alarm is on its way to the care platform; drivers turn it into feedback."""

    RECEIVED = "received"  # stored durably on the gateway
    DELIVERED = "delivered"  # the broker has it
    ACKNOWLEDGED = "acknowledged"  # the platform's alarm desk confirmed it: help is on the way
    UNDELIVERED = "undelivered"  # uplink down, or no acknowledgement in time


class EventSink(Protocol):
    """Where drivers put what they observed."""

    async def emit(self, kind: EventKind, data: dict[str, Any], device: str | None = None) -> str:
        """Store an event (an alarm durably before returning); return its id."""
        ...


class FaultSource(Protocol):
    """A component that can find something a person must repair (a damaged pairing file)."""

    def faults(self) -> list[dict[str, Any]]:
        """The current faults, each ``{"code", "device", "message", "since"}`` (events.Fault)."""
        ...

    def on_faults_changed(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever a fault appears or ends."""
        ...


class AlarmListener(Protocol):
    """Told every time an alarm changes state."""

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None: ...


class AlarmRaiser(Protocol):
    """Raises an alarm durably and follows it to the platform (``AlarmTracker``)."""

    async def raise_alarm(
        self, kind: AlarmKind, data: dict[str, Any], device: str | None, *, key: str | None = None
    ) -> str:
        """Store an alarm durably; return its id. ``key`` names what the producer raises it
        for (a watch's alert): raised again under the same key (a repeat, also after a restart),
        nothing is stored and the id of the alarm stored the first time is returned."""
        ...
