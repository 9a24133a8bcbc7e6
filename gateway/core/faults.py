"""Faults: what a person must repair on the gateway, told to whoever reports them."""

from __future__ import annotations

from collections.abc import Callable


class FaultListeners:
    """The callbacks of ``FaultSource.on_faults_changed``, called when a fault appears or ends."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def notify(self) -> None:
        for callback in self._callbacks:
            callback()
