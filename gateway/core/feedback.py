"""Feedback held back while an alarm is being stored, and given once it is settled.

A device is told "received" only once its alarm is stored; the alarm's later states
(acknowledged, not delivered) may be reported while that store is still being awaited. They are
held here and given after "received", so the device never shows them out of order.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class FeedbackHold(Generic[T]):
    """Between ``start`` and ``end`` (an alarm being stored), feedback is held, in order."""

    def __init__(self) -> None:
        self._held: list[T] | None = None

    @property
    def holding(self) -> bool:
        return self._held is not None

    def start(self) -> None:
        self._held = []

    def hold(self, item: T) -> bool:
        """Keep ``item`` for ``end`` when an alarm is being stored; False: give it now."""
        if self._held is None:
            return False
        self._held.append(item)
        return True

    def end(self) -> list[T]:
        """Stop holding; what was held, in the order it came, for the caller to give now."""
        held, self._held = self._held or [], None
        return held
