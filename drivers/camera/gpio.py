"""The dry-contact trigger: a relay on a GPIO line closes the camera's alarm input for a pulse."""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

log = structlog.get_logger("drivers.camera.gpio")


class OutputLine(Protocol):
    """One GPIO line driven as an output (``GpiodLine``; ``hil.sim.gpio.SimLine`` in tests)."""

    def set_active(self, active: bool) -> None: ...
    def close(self) -> None: ...


class GpiodLine:
    """A line of a Linux GPIO character device, through the libgpiod v2 bindings."""

    def __init__(self, chip: str, line: int, *, active_low: bool = False) -> None:
        import gpiod  # noqa: PLC0415 - only gateways with a relay need the bindings loaded
        from gpiod.line import Direction, Value  # noqa: PLC0415

        self._values = (Value.INACTIVE, Value.ACTIVE)
        self._line = line
        self._request = gpiod.request_lines(
            chip,
            consumer="carebed-camera",
            config={
                line: gpiod.LineSettings(
                    direction=Direction.OUTPUT, output_value=Value.INACTIVE, active_low=active_low
                )
            },
        )

    def set_active(self, active: bool) -> None:
        self._request.set_value(self._line, self._values[int(active)])

    def close(self) -> None:
        self._request.release()


class UnavailableLine:
    """Stands for a relay line that could not be opened: every pulse fails with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def set_active(self, active: bool) -> None:
        raise OSError(f"relay line unavailable: {self.reason}")

    def close(self) -> None:
        pass


class RelayTrigger:
    """Closes the relay for ``pulse_s``, then opens it again, whatever happens in between."""

    def __init__(self, line: OutputLine, pulse_s: float) -> None:
        self.line = line
        self.pulse_s = pulse_s
        self._lock = asyncio.Lock()

    async def pulse(self) -> None:
        async with self._lock:  # one pulse at a time: two alarms do not make one long pulse
            self.line.set_active(True)
            try:
                await asyncio.sleep(self.pulse_s)
            finally:
                self.line.set_active(False)
        log.info("camera_relay_pulsed", pulse_s=self.pulse_s)
