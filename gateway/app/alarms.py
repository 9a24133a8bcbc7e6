"""The alarm state machine: received → delivered → acknowledged, and feedback to listeners."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

import structlog

from gateway.core.events import NewEvent, is_alarm
from gateway.core.kinds import AlarmKind
from gateway.core.ports import AlarmListener, AlarmState
from gateway.store.alarms import HeldAlarm
from gateway.store.sink import OutboxSink

log = structlog.get_logger("gateway.app.alarms")

UNKNOWN_IDS_LOGGED = 5  # an ack naming many unknown ids is logged once, with the first few


class AlarmTracker:
    """Raises alarms, follows them to the platform's acknowledgement and tells the listeners.

    The durable part of the state (pending / delivered, attempt, next resend) lives in the outbox;
    this object turns its transitions into feedback and audit events.
    """

    def __init__(self, sink: OutboxSink) -> None:
        self.sink = sink
        self.link_up = False
        self._listeners: list[AlarmListener] = []

    def subscribe(self, listener: AlarmListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: AlarmListener) -> None:
        """Stop telling ``listener`` (one that follows a single alarm, e.g. a local test)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _tell(self, alarm_id: str, kind: str, device: str | None, state: AlarmState) -> None:
        for listener in self._listeners:
            try:
                listener.alarm_state_changed(alarm_id, kind, device, state)
            except Exception:
                log.exception("alarm_listener_failed", alarm_id=alarm_id, state=state.value)

    async def raise_alarm(
        self, kind: AlarmKind, data: dict[str, Any], device: str | None, *, key: str | None = None
    ) -> str:
        """Store an alarm durably; when this returns the senior may be told it was received.

        Under a ``key`` already stored (``AlarmRaiser``) the earlier alarm's id is returned and
        nothing is told: its states were told from its storing on, and follow as they come.
        """
        if not is_alarm(kind):
            raise ValueError(f"{kind!r} is not an alarm kind")
        alarm = self.sink.factory.make(kind, data, device)
        alarm_id = await self.sink.outbox.put(alarm, key=key)
        if alarm_id != alarm.id:
            log.info("alarm_already_stored", alarm_id=alarm_id, kind=kind, device=device, key=key)
            return alarm_id
        # Logged at the loop's next turn: what the producer does on "stored" (a watch's Alert
        # Confirm, a button's ACK) goes first; a log line costs about as much as a D-Bus write.
        asyncio.get_running_loop().call_soon(
            functools.partial(log.info, "alarm_stored", alarm_id=alarm_id, kind=kind, device=device)
        )
        self._tell(alarm_id, kind, device, AlarmState.RECEIVED)
        if not self.link_up:
            self._tell(alarm_id, kind, device, AlarmState.UNDELIVERED)
        return alarm_id

    def delivered(self, alarms: Sequence[HeldAlarm]) -> None:
        for alarm in alarms:
            log.info("alarm_delivered", alarm_id=alarm.id, seq=alarm.seq, attempt=alarm.attempt)
            self._tell(alarm.id, alarm.kind, alarm.device, AlarmState.DELIVERED)

    def resending(self, alarms: Sequence[HeldAlarm]) -> None:
        """No acknowledgement came in time: the alarm goes out again with a higher attempt."""
        for alarm in alarms:
            log.warning("alarm_not_acknowledged", alarm_id=alarm.id, attempt=alarm.attempt)
            self._tell(alarm.id, alarm.kind, alarm.device, AlarmState.UNDELIVERED)

    def given_up(self, alarms: Sequence[HeldAlarm]) -> None:
        """Resent for the whole give-up window without an acknowledgement: dropped."""
        for alarm in alarms:
            log.error("alarm_abandoned", alarm_id=alarm.id, attempt=alarm.attempt)
            self._tell(alarm.id, alarm.kind, alarm.device, AlarmState.UNDELIVERED)

    def damaged(self, alarms: Sequence[HeldAlarm]) -> None:
        """Found damaged in the store and quarantined: it will never be delivered."""
        for alarm in alarms:
            log.error("alarm_damaged", alarm_id=alarm.id, seq=alarm.seq)
            self._tell(alarm.id, alarm.kind, alarm.device, AlarmState.UNDELIVERED)

    def link_changed(self, up: bool, held: Sequence[HeldAlarm]) -> None:
        self.link_up = up
        if not up:
            for alarm in held:
                self._tell(alarm.id, alarm.kind, alarm.device, AlarmState.UNDELIVERED)

    def acknowledged(self, alarms: Sequence[HeldAlarm], by: str) -> None:
        """The platform's alarm desk confirmed these alarms: help is on the way.

        Told before the acknowledgement is applied to the store, so that a store that fails
        does not keep the news from the senior (telling twice is harmless).
        """
        for alarm in alarms:
            log.info("alarm_acknowledged", alarm_id=alarm.id, seq=alarm.seq, by=by)
            self._tell(alarm.id, alarm.kind, alarm.device, AlarmState.ACKNOWLEDGED)

    def unknown_acknowledged(self, alarm_ids: Sequence[str], by: str) -> None:
        """One line per acknowledgement, however many ids it names that the store does not hold."""
        if alarm_ids:
            log.info(
                "ack_for_unknown_alarm",
                count=len(alarm_ids),
                alarm_ids=list(alarm_ids[:UNKNOWN_IDS_LOGGED]),
                by=by,
            )

    def audit_event(self, alarm: HeldAlarm, by: str) -> NewEvent:
        """The ``audit.alarm_acknowledged`` of one alarm, stored with its acknowledgement."""
        return self.sink.factory.make(
            "audit.alarm_acknowledged",
            {"who": by, "what": "alarm acknowledged", "why": None, "alarm_id": alarm.id},
            alarm.device,
        )
