"""Injected outages: a home's link to the broker cut (reset) and refused for a while.

Homes chosen for an outage connect through a port of this relay instead of the broker's: one
thread, one event loop, one listening port per home. ``cut`` resets the home's connections and
refuses new ones (the home's internet is gone); ``restore`` lets them through again. The broker
sees the connection drop and publishes the home's will; the gateway sees its link lost and keeps
its events, alarms included, until it can reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

HOST = "127.0.0.1"
CHUNK_BYTES = 64 * 1024
_T = TypeVar("_T")


class OutageError(Exception):
    """The relay could not start or open a home's port."""


@dataclass(slots=True)
class _Home:
    server: asyncio.Server | None = None
    upstream_port: int = 0
    cut: bool = False
    writers: set[asyncio.StreamWriter] = field(default_factory=set)
    cuts: int = 0
    refused: int = 0  # connections refused while cut


class OutageRelay:
    """A TCP relay per home, each of which can be cut and restored."""

    def __init__(self, upstream_host: str) -> None:
        self.upstream_host = upstream_host
        self._homes: dict[str, _Home] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleet.outages")
        self._thread.daemon = True
        self._thread.start()

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> Future[_T]:
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def add(self, name: str, upstream_port: int) -> int:
        """Open the home's port (on 127.0.0.1) to the broker's ``upstream_port``; its number."""
        return await asyncio.wrap_future(self._submit(self._add(name, upstream_port)))

    async def cut(self, name: str) -> None:
        await asyncio.wrap_future(self._submit(self._cut(name)))

    async def restore(self, name: str) -> None:
        await asyncio.wrap_future(self._submit(self._restore(name)))

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: {"cuts": h.cuts, "refused": h.refused} for name, h in self._homes.items()}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._submit(self._close()).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    # ---------------------------------------------------------------------- the relay's loop

    async def _add(self, name: str, upstream_port: int) -> int:
        home = self._homes.setdefault(name, _Home(upstream_port=upstream_port))

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._relay(home, reader, writer)

        try:
            home.server = await asyncio.start_server(accept, HOST, 0)
        except OSError as exc:
            raise OutageError(f"cannot open a relay port for {name}: {exc}") from exc
        port: int = home.server.sockets[0].getsockname()[1]
        return port

    async def _cut(self, name: str) -> None:
        home = self._homes[name]
        home.cut = True
        home.cuts += 1
        for writer in list(home.writers):
            writer.transport.abort()  # a reset: the gateway and the broker both see it at once
        home.writers.clear()

    async def _restore(self, name: str) -> None:
        self._homes[name].cut = False

    async def _close(self) -> None:
        for home in self._homes.values():
            if home.server is not None:
                home.server.close()
            for writer in home.writers:
                writer.transport.abort()

    async def _relay(
        self, home: _Home, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if home.cut:
            home.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, home.upstream_port
            )
        except OSError:
            writer.transport.abort()
            return
        home.writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                home.writers.discard(end)
                end.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK_BYTES):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
