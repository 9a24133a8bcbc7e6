"""What the simulators share: ``async with`` starts and closes them; callers wait on their state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Self


class SimService:
    """Started on entering ``async with``, closed on leaving it."""

    async def start(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Observed:
    """State a test, a hil/ scenario or the demo waits on: ``wait_for`` re-checks its predicate
    at every ``_notify_change``.

    A condition variable without a lock: every waiter holds the current event; setting it wakes
    them all, and later waiters get a fresh one.
    """

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def _notify_change(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _timed_out(self, what: str) -> str:
        """The message of a wait that timed out."""
        return what

    async def wait_for(
        self,
        predicate: Callable[[Self], bool],
        timeout: float,  # noqa: ASYNC109 - the deadline is the caller's to say
        what: str,
    ) -> None:
        """Wait until ``predicate(self)`` holds; TimeoutError(what) after ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate(self):
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(self._timed_out(what)) from None
