"""Named long-lived tasks, restarted with back-off when they crash, stopped within a bound."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from gateway.core.backoff import Backoff

log = structlog.get_logger("gateway.core.supervisor")

Factory = Callable[[], Coroutine[Any, Any, None]]


class Supervisor:
    """Runs each component's ``run()`` as a named task; a crash is logged and the task restarted."""

    def __init__(self, *, restart_base_s: float = 1.0, restart_cap_s: float = 60.0) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._restart_base_s = restart_base_s
        self._restart_cap_s = restart_cap_s

    def start(self, name: str, factory: Factory) -> None:
        self._tasks[name] = asyncio.get_running_loop().create_task(
            self._keep_running(name, factory), name=name
        )

    async def _keep_running(self, name: str, factory: Factory) -> None:
        backoff = Backoff(self._restart_base_s, self._restart_cap_s)
        while True:
            try:
                await factory()
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = backoff.next_delay()
                log.exception("task_crashed", task=name, restart_in_s=round(delay, 2))
                await asyncio.sleep(delay)
            else:
                log.info("task_finished", task=name)
                return

    async def stop(self, name: str, timeout_s: float = 5.0) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            await _cancel(task, timeout_s)

    async def stop_all(self, timeout_s: float = 5.0) -> None:
        tasks, self._tasks = list(self._tasks.values()), {}
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            log.error("task_did_not_stop", task=task.get_name())
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("task_failed", task=task.get_name(), error=repr(task.exception()))


async def _cancel(task: asyncio.Task[None], timeout_s: float) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        async with asyncio.timeout(timeout_s):
            await task
    if not task.done():
        log.error("task_did_not_stop", task=task.get_name())
