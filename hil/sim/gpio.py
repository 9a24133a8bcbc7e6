"""A simulated GPIO output line that records every change with its monotonic time."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class SimLine:
    """Stands in for a GPIO line where no chip (nor the kernel's gpio-sim) exists."""

    changes: list[tuple[bool, float]] = field(default_factory=list)
    closed: bool = False

    def set_active(self, active: bool) -> None:
        if self.closed:
            raise OSError("the line was released")
        self.changes.append((active, time.monotonic()))

    def close(self) -> None:
        self.closed = True

    @property
    def active(self) -> bool:
        return bool(self.changes) and self.changes[-1][0]

    def pulses_s(self) -> list[float]:
        """Durations of the completed active periods."""
        out, since = [], None
        for active, at in self.changes:
            if active and since is None:
                since = at
            elif not active and since is not None:
                out.append(at - since)
                since = None
        return out
