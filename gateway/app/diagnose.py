"""What the installer's tools ask of the running daemon over the control socket.

``doctor``: what only the daemon can tell, because it holds the serial port, the Bluetooth
adapter and the broker session (``carebed doctor`` checks the rest itself). ``test_alarm``: the
platform's ``test_alarm`` raised locally (``alarm.button`` with ``data.test: true`` from the
receiver, so the camera is not called and no button is told), followed to the platform's
acknowledgement, each step with its time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import Field

from drivers.camera.policy import CameraPolicy
from drivers.watch.fleet import WatchFleet
from gateway.app.alarms import AlarmTracker
from gateway.app.handlers import Args, NoArgs, control_args
from gateway.core.clock import Clock
from gateway.core.ports import AlarmState, EventSink
from gateway.store.outbox import Outbox
from gateway.uplink.link import MqttUplink

PROBE_TIMEOUT_S = 10.0
PROBE_POLL_S = 0.05
# The doctor's run, as the platform sees it: a security-relevant local action (it connects as
# the gateway), told with the gateway's next seq like every event.
DOCTOR_AUDIT = {
    "who": "installer",
    "what": "doctor",
    "why": "carebed doctor checks that the broker takes this gateway's events",
}
MAX_TEST_ALARM_WAIT_S = 3600


class Receiver(Protocol):
    def status(self) -> dict[str, Any]: ...

    async def request_status(self, timeout_s: float) -> dict[str, Any] | None: ...


class DaemonDiagnosis:
    """The control socket's ``doctor``."""

    def __init__(
        self,
        *,
        uplink: MqttUplink,
        button: Receiver | None,
        receiver_answer_s: float = 5.0,
        watches: WatchFleet | None,
        camera: CameraPolicy | None,
        clock: Clock,
        sink: EventSink | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        self._uplink = uplink
        self._sink = sink
        self._outbox = outbox
        self._button = button
        self._receiver_answer_s = receiver_answer_s
        self._watches = watches
        self._camera = camera
        self._clock = clock

    async def _probe(self) -> dict[str, Any] | None:
        """The broker's answer to an event on up/: an ``audit.command`` telling of the doctor's
        run, stored and sent like any event (its seq from the outbox), followed until the
        broker took it (the outbox holds no audit event any more) or refused it."""
        if not self._uplink.connected.is_set():
            return None
        topic = self._uplink.topics.status.removesuffix("/status") + "/up/audit"
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                if self._sink is None or self._outbox is None:
                    return {"refused": await self._uplink.probe_publish()}
                refused_before = self._uplink.stats.rejected_messages
                unheard_before = self._uplink.stats.unheard_messages
                await self._sink.emit("audit.command", dict(DOCTOR_AUDIT))
                await self._outbox.flush()
                while True:
                    if self._uplink.stats.rejected_messages > refused_before:
                        return {"refused": "refused by the broker (see the log)", "topic": topic}
                    if self._uplink.stats.unheard_messages > unheard_before:
                        # Taken, and matched by nobody: the platform is not subscribed (yet).
                        return {"refused": None, "unheard": True, "topic": topic}
                    if not (await self._outbox.stats()).queued.get("audit"):
                        return {"refused": None, "topic": topic}
                    await asyncio.sleep(PROBE_POLL_S)
        except TimeoutError:
            return {"error": f"no PUBACK within {PROBE_TIMEOUT_S:.0f} s"}
        except Exception as exc:  # noqa: BLE001 - the link's trouble, told to the installer
            return {"error": str(exc) or type(exc).__name__}

    async def _button_status(self) -> dict[str, Any] | None:
        """The receiver's state, with its answer to a STATUS_REQUEST asked now."""
        if self._button is None:
            return None
        answer = await self._button.request_status(self._receiver_answer_s)
        return {**self._button.status(), "answer": answer}

    async def control_doctor(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        control_args(NoArgs, args)
        probe = await self._probe()
        yield {
            "clock_synced": self._clock.is_synced(),
            "wall": self._clock.wall(),
            "uplink": {
                "connected": self._uplink.connected.is_set(),
                "rejected_messages": self._uplink.stats.rejected_messages,
                "probe": probe,
            },
            "button": await self._button_status(),
            "watches": None if self._watches is None else self._watches.status(),
            "camera": None if self._camera is None else await self._camera.check(),
        }


class TestAlarmArgs(Args):
    """``test_alarm`` from the socket: how long to wait for the platform's acknowledgement."""

    timeout_s: int = Field(
        120,
        ge=1,
        le=MAX_TEST_ALARM_WAIT_S,
        description=f"an integer from 1 to {MAX_TEST_ALARM_WAIT_S}",
    )


class _Steps:
    """An ``AlarmListener`` noting when each alarm reached each state (wall time)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.reached: dict[tuple[str, AlarmState], float] = {}
        self.changed = asyncio.Event()

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None:
        self.reached.setdefault((alarm_id, state), self._clock.wall())
        self.changed.set()


class TestAlarm:
    """The control socket's ``test_alarm``: stored, published, acknowledged, as they happen."""

    def __init__(self, gateway_id: str, alarms: AlarmTracker, clock: Clock) -> None:
        self._gateway_id = gateway_id
        self._alarms = alarms
        self._clock = clock

    async def control_test_alarm(self, args: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        wait = control_args(TestAlarmArgs, args)
        steps = _Steps(self._clock)
        self._alarms.subscribe(steps)
        try:
            data = {"press": "short", "battery": None, "rssi": None, "test": True}
            device = f"rcv-{self._gateway_id}"
            alarm_id = await self._alarms.raise_alarm("alarm.button", data, device)
            stored = steps.reached.get((alarm_id, AlarmState.RECEIVED), self._clock.wall())
            yield {"event": "stored", "alarm_id": alarm_id, "device": device, "at": stored}
            wanted = [
                ("published", AlarmState.DELIVERED),
                ("acknowledged", AlarmState.ACKNOWLEDGED),
            ]
            acknowledged = (alarm_id, AlarmState.ACKNOWLEDGED)
            try:
                async with asyncio.timeout(wait.timeout_s):
                    for name, state in wanted:
                        # The platform's ack may be applied before the broker's PUBACK: the
                        # alarm is then no longer held, its PUBACK tells nothing, and the ack
                        # says the broker took it.
                        while (alarm_id, state) not in steps.reached and (
                            acknowledged not in steps.reached
                        ):
                            steps.changed.clear()
                            await steps.changed.wait()
                        at = steps.reached.get((alarm_id, state), steps.reached.get(acknowledged))
                        yield {"event": name, "alarm_id": alarm_id, "at": at}
            except TimeoutError:
                missing = next(
                    (n for n, s in wanted if (alarm_id, s) not in steps.reached), "acknowledged"
                )
                yield {
                    "event": "timeout",
                    "alarm_id": alarm_id,
                    "waiting_for": missing,
                    "timeout_s": wait.timeout_s,
                    "link_up": self._uplink_up(),
                }
        finally:
            self._alarms.unsubscribe(steps)

    def _uplink_up(self) -> bool:
        return self._alarms.link_up
