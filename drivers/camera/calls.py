"""One camera call per trigger: start it, follow it and report its ``camera.call`` states.

Pure asyncio: no MQTT, no SQLite. The caller passes a ``report`` callback and runs
``CallRunner.run`` in its own task, so a slow or broken camera never delays an alarm. Reported
states (specs/camera-http.md): ``requested`` when the camera accepted the request (or is busy with
a call that serves this trigger), ``started`` when the call becomes ``connected``, then ``ended``
or ``failed`` with an error: ``privacy_mode``, ``unauthorized``, ``unavailable``, ``protocol``,
``certificate``, or the camera's own reason for a failed call.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import structlog

from drivers.camera.errors import (
    CameraAuthError,
    CameraBusyError,
    CameraCertificateError,
    CameraError,
    CameraPrivacyError,
    CameraProtocolError,
    CameraUnavailableError,
)

if TYPE_CHECKING:  # httpx is loaded only where an HTTP camera is configured
    from drivers.camera.http import CallReason, CallStarted, CallState

POLL_INTERVAL_S = 1.0
BACKOFF_INITIAL_S = 1.0
BACKOFF_CAP_S = 10.0
TOTAL_BUDGET_S = 60.0  # datasheet: retry "within a bounded total time, default 60 s"
MAX_CALL_S = 3600.0  # a call still "connected" after this is no longer followed
MAX_REASON_CHARS = 120  # the camera's own words go into an event: keep them short

log = structlog.get_logger(__name__)


class CallApi(Protocol):
    """What the runner needs of a camera (``HttpCamera`` has it)."""

    async def start_call(self, reason: CallReason, alarm_id: str | None) -> CallStarted: ...

    async def call_state(self, call_id: str) -> CallState: ...


class CallReporter(Protocol):
    """Receives each ``camera.call`` state of the attempt."""

    def __call__(self, state: str, alarm_id: str | None, error: str | None) -> None: ...


def full_jitter(delay_s: float) -> float:
    """Default jitter: a random delay between half and all of ``delay_s``."""
    return random.uniform(delay_s / 2, delay_s)


def error_code(exc: CameraError) -> str:
    if isinstance(exc, CameraPrivacyError):
        return "privacy_mode"
    if isinstance(exc, CameraAuthError):
        return "unauthorized"
    if isinstance(exc, CameraCertificateError):
        return "certificate"
    if isinstance(exc, CameraUnavailableError):
        return "unavailable"
    if isinstance(exc, CameraProtocolError):
        return "protocol"
    return "camera_error"


class CallRunner:
    """Runs one call attempt for one trigger and reports its states through ``report``.

    Start: 5xx and timeouts are retried with capped, jittered exponential back-off until
    ``total_budget_s`` has passed since ``run`` began; 401, 423, garbage answers and a certificate
    that is not the pinned one fail at once (one request, no retry loop). 409 follows the running
    call. Follow: the call is polled every ``poll_interval_s``; transient errors are tolerated
    while the last good answer is younger than ``total_budget_s``.

    Timing is injected (``clock``, ``sleep``, ``jitter``) so tests drive it quickly.
    """

    def __init__(
        self,
        camera: CallApi,
        report: CallReporter,
        *,
        poll_interval_s: float = POLL_INTERVAL_S,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        total_budget_s: float = TOTAL_BUDGET_S,
        max_call_s: float = MAX_CALL_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        jitter: Callable[[float], float] = full_jitter,
    ) -> None:
        self._camera = camera
        self._report = report
        self.poll_interval_s = poll_interval_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_cap_s = backoff_cap_s
        self.total_budget_s = total_budget_s
        self.max_call_s = max_call_s
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter

    async def run(self, reason: CallReason, alarm_id: str | None) -> str:
        """Start, follow and report one call; return the last reported state."""
        call_id = await self._start(reason, alarm_id)
        if call_id is None:
            return "failed"
        return await self._follow(call_id, alarm_id)

    async def _start(self, reason: CallReason, alarm_id: str | None) -> str | None:
        deadline = self._clock() + self.total_budget_s
        attempt = 0
        while True:
            remaining_s = deadline - self._clock()
            try:
                async with asyncio.timeout(max(remaining_s, 0.0)):
                    started = await self._camera.start_call(reason, alarm_id)
            except CameraBusyError as exc:
                log.info("camera_busy_following", call_id=exc.call_id, alarm_id=alarm_id)
                self._report("requested", alarm_id, None)
                return exc.call_id
            except (CameraUnavailableError, TimeoutError) as exc:
                attempt += 1
                delay_s = self._jitter(
                    min(self.backoff_initial_s * 2 ** (attempt - 1), self.backoff_cap_s)
                )
                remaining_s = deadline - self._clock()
                log.warning(
                    "camera_call_retry", attempt=attempt, error=repr(exc), remaining_s=remaining_s
                )
                if remaining_s <= delay_s:
                    self._fail(alarm_id, "unavailable")
                    return None
                await self._sleep(delay_s)
                continue
            except CameraError as exc:
                self._fail(alarm_id, error_code(exc))
                return None
            log.info("camera_call_requested", call_id=started.call_id, alarm_id=alarm_id)
            self._report("requested", alarm_id, None)
            return started.call_id

    async def _follow(self, call_id: str, alarm_id: str | None) -> str:
        started = False
        began = last_good = self._clock()
        connected_at = 0.0
        while True:
            try:
                async with asyncio.timeout(self.total_budget_s):
                    state = await self._camera.call_state(call_id)
            except (CameraUnavailableError, TimeoutError) as exc:
                log.warning("camera_call_poll_failed", call_id=call_id, error=repr(exc))
                if self._clock() - last_good >= self.total_budget_s:
                    self._fail(alarm_id, "unavailable")
                    return "failed"
                await self._sleep(self.poll_interval_s)
                continue
            except CameraError as exc:
                self._fail(alarm_id, error_code(exc))
                return "failed"
            last_good = now = self._clock()
            if state.state == "ringing" and now - began >= self.total_budget_s:
                self._fail(alarm_id, "no_answer")  # nobody took it: stop following
                return "failed"
            if started and now - connected_at >= self.max_call_s:
                log.warning("camera_call_too_long", call_id=call_id, alarm_id=alarm_id)
                self._report("ended", alarm_id, None)
                return "ended"
            if state.state == "connected" and not started:
                started = True
                connected_at = now
                log.info("camera_call_started", call_id=call_id, alarm_id=alarm_id)
                self._report("started", alarm_id, None)
            elif state.state == "ended":
                log.info("camera_call_ended", call_id=call_id, alarm_id=alarm_id)
                self._report("ended", alarm_id, None)
                return "ended"
            elif state.state == "failed":
                self._fail(alarm_id, (state.reason or "call_failed")[:MAX_REASON_CHARS])
                return "failed"
            await self._sleep(self.poll_interval_s)

    def _fail(self, alarm_id: str | None, error: str) -> None:
        log.warning("camera_call_failed", alarm_id=alarm_id, error=error)
        self._report("failed", alarm_id, error)
