"""The interfaces between device drivers and the gateway core (Protocols only)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

from gateway.core.events import AlarmKind, EventKind


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


class AlarmListener(Protocol):
    """Told every time an alarm changes state."""

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None: ...


class AlarmRaiser(Protocol):
    """Raises an alarm durably and follows it to the platform (``AlarmTracker``)."""

    async def raise_alarm(
        self, kind: AlarmKind, data: dict[str, Any], device: str | None
    ) -> str: ...
