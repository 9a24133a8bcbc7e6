"""Which triggers may call the camera: one call per alarm, each in its own task, each audited."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from drivers.camera.calls import CallRunner, error_code
from drivers.camera.errors import CameraError
from drivers.camera.gpio import RelayTrigger
from gateway.core.ports import AlarmState, EventSink

if TYPE_CHECKING:  # httpx is loaded only where an HTTP camera is configured
    from drivers.camera.http import CallReason, HttpCamera

log = structlog.get_logger("drivers.camera")


class CameraSettings(Protocol):
    name: str
    call_on: tuple[str, ...]
    poll_interval_s: float
    total_budget_s: float


class CameraPolicy:
    """An ``AlarmListener`` that starts a camera call for the alarms the configuration names.

    A call runs in a task of its own: a camera that hangs, is slow, fails or answers garbage
    never touches the alarm path. An alarm is called once, however often it is resent (resends
    are not "received" again). Test alarms (device ``rcv-…``) never call. Every trigger leaves an
    ``audit.camera_activated`` event with its cause.
    """

    def __init__(
        self,
        settings: CameraSettings,
        *,
        sink: EventSink,
        camera_factory: Callable[[], HttpCamera] | None = None,
        relay: RelayTrigger | None = None,
    ) -> None:
        if (camera_factory is None) == (relay is None):
            raise ValueError("a camera is triggered over HTTP or by a relay: give exactly one")
        self.settings = settings
        self.sink = sink
        self.camera_factory = camera_factory
        self.relay = relay
        self.device = f"cam-{settings.name}"
        self._called: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def alarm_state_changed(
        self, alarm_id: str, kind: str, device: str | None, state: AlarmState
    ) -> None:
        if state is not AlarmState.RECEIVED or kind not in self.settings.call_on:
            return
        if device is not None and device.startswith("rcv-"):
            return  # the platform's test_alarm: the camera is not called
        if alarm_id in self._called:
            return
        self._called.add(alarm_id)
        self._spawn("alarm", alarm_id, who="gateway", why=kind)

    async def check(self) -> dict[str, Any]:
        """The installer's check: reachable, credentials accepted, privacy shutter state."""
        if self.camera_factory is None:
            return {"trigger": "relay", "checked": False, "why": "a dry contact cannot answer"}
        try:
            async with self.camera_factory() as camera:
                status = await camera.status()
        except CameraError as exc:
            return {
                "trigger": "http",
                "reachable": False,
                "error": error_code(exc),
                "detail": str(exc),
            }
        return {
            "trigger": "http",
            "reachable": True,
            "model": status.model,
            "firmware": status.firmware,
            "privacy_mode": status.privacy_mode,
        }

    def test_call(self) -> asyncio.Task[None] | None:
        """A local installer's test call: audited and reported like any other."""
        return self._spawn("platform", None, who="installer", why="installer test")

    def call_for_platform(self, alarm_id: str | None, why: str) -> None:
        """The platform's ``camera.call`` command (allowed only when configured)."""
        self._spawn("platform", alarm_id, who="platform", why=why)

    def _spawn(
        self, reason: CallReason, alarm_id: str | None, *, who: str, why: str
    ) -> asyncio.Task[None] | None:
        if self._closed:
            log.warning("camera_call_after_close", alarm_id=alarm_id)
            return None
        task = asyncio.get_running_loop().create_task(
            self._call(reason, alarm_id, who=who, why=why), name=f"camera[{self.device}].call"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, reason: CallReason, alarm_id: str | None, *, who: str, why: str) -> None:
        reports: asyncio.Queue[tuple[str, str | None, str | None] | None] = asyncio.Queue()

        def report(state: str, alarm_id: str | None, error: str | None) -> None:
            reports.put_nowait((state, alarm_id, error))

        async def publish() -> None:
            while (item := await reports.get()) is not None:
                state, alarm, error = item
                await self.sink.emit(
                    "camera.call", {"state": state, "alarm_id": alarm, "error": error}, self.device
                )

        try:
            audit: dict[str, Any] = {"who": who, "what": "camera call", "why": why}
            audit["alarm_id"] = alarm_id
            await self.sink.emit("audit.camera_activated", audit, self.device)
            publisher = asyncio.get_running_loop().create_task(publish())
            try:
                if self.relay is not None:
                    # A dry contact gives no feedback: "requested" is all that can be said.
                    await self.relay.pulse()
                    report("requested", alarm_id, None)
                    return
                assert self.camera_factory is not None
                async with self.camera_factory() as camera:
                    runner = CallRunner(
                        camera,
                        report,
                        poll_interval_s=self.settings.poll_interval_s,
                        total_budget_s=self.settings.total_budget_s,
                    )
                    await runner.run(reason, alarm_id)
            except CameraError as exc:
                report("failed", alarm_id, error_code(exc))
            except OSError as exc:  # e.g. the relay line
                log.error("camera_trigger_failed", alarm_id=alarm_id, error=str(exc))  # noqa: TRY400
                report("failed", alarm_id, "trigger_unavailable")
            finally:
                reports.put_nowait(None)
                await publisher
        except Exception:
            # Last resort: the platform still hears that this call did not happen.
            log.exception("camera_call_failed", alarm_id=alarm_id)
            with contextlib.suppress(Exception):
                await self.sink.emit(
                    "camera.call",
                    {"state": "failed", "alarm_id": alarm_id, "error": "internal"},
                    self.device,
                )

    async def close(self, timeout_s: float = 5.0) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        if self.relay is not None:
            self.relay.line.close()
