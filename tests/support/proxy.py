"""A fault-injecting TCP proxy between the gateway and a real broker, switched from the test."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from hil.sim.broker import HOST, Mosquitto

Mode = Literal["pass", "drop", "blackhole", "delay", "throttle", "reset"]
MODES: tuple[Mode, ...] = ("drop", "blackhole", "delay", "throttle", "reset")
CHUNK_BYTES = 64 * 1024
THROTTLE_SLICES_PER_S = 20  # a throttled direction writes this many slices per second
CALL_TIMEOUT_S = 10.0
_T = TypeVar("_T")


class ProxyError(Exception):
    """The proxy could not start or could not carry out a switch."""


@dataclass(slots=True)
class ProxyStats:
    accepted: int = 0  # client connections accepted
    dropped: int = 0  # connections closed by "drop"
    reset: int = 0  # connections reset by "reset"
    blackholed_bytes: int = 0  # bytes swallowed by "blackhole"
    forwarded_bytes: int = 0


class _Pipe:
    """One client connection and its upstream connection: two directions, each with a queue."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.writers = (client[1], upstream[1])
        self.tasks = [
            asyncio.create_task(self._direction(client[0], upstream[1])),
            asyncio.create_task(self._direction(upstream[0], client[1])),
        ]

    async def _direction(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        try:
            while True:
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    break
                if self.proxy.mode == "blackhole":
                    self.proxy.stats.blackholed_bytes += len(data)
                    continue
                queue.put_nowait((time.monotonic(), data))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await sender
            self.close()

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            arrived, data = item
            if self.proxy.mode == "delay":
                wait = arrived + self.proxy.delay_s - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            while data:
                if self.proxy.mode == "blackhole":  # switched while queued: swallowed too
                    self.proxy.stats.blackholed_bytes += len(data)
                    break
                if self.proxy.mode == "throttle":
                    step = max(1, self.proxy.rate_bps // THROTTLE_SLICES_PER_S)
                    piece, data = data[:step], data[step:]
                    await self._write(writer, piece)
                    await asyncio.sleep(len(piece) / self.proxy.rate_bps)
                else:
                    piece, data = data, b""
                    await self._write(writer, piece)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()
        self.proxy.stats.forwarded_bytes += len(data)

    def close(self, *, reset: bool = False) -> None:
        for writer in self.writers:
            sock = writer.get_extra_info("socket")
            if reset and sock is not None:
                with contextlib.suppress(OSError):
                    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        self.proxy.pipes.discard(self)


class FaultProxy:
    """Listens on a free 127.0.0.1 port and forwards to ``broker``, in a thread of its own.

    Modes (``set_mode``), applied to existing connections and new ones alike:
    - ``pass``: forward both ways;
    - ``drop``: close both sides at once (FIN), and every new connection at once;
    - ``blackhole``: keep connections open and accept new ones, but forward nothing either way
      (a half-open link: the bytes are swallowed silently);
    - ``delay``: forward each chunk ``delay_s`` after it arrived, in order;
    - ``throttle``: forward at most ``rate_bps`` bytes per second in each direction;
    - ``reset``: reset both sides (RST, via SO_LINGER 0), and every new connection at once.
    """

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self.host = HOST
        self.port = 0
        self.mode: Mode = "pass"
        self.delay_s = 0.0
        self.rate_bps = 1_000_000
        self.stats = ProxyStats()
        self.pipes: set[_Pipe] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(CALL_TIMEOUT_S) or self._server is None:
            raise ProxyError("the proxy did not start")

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopped.wait()
        self._server.close()
        for pipe in list(self.pipes):
            pipe.close()
        tasks = [task for pipe in list(self.pipes) for task in pipe.tasks]
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    def close(self) -> None:
        if self._loop is not None and self._stopped is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(CALL_TIMEOUT_S)
            self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- switching ---------------------------------------------------------------------------

    def set_mode(self, mode: Mode, *, delay_s: float = 0.5, rate_bps: int = 20_000) -> None:
        """Switch now; returns once existing connections have been dropped or reset."""
        self._call(self._switch(mode, delay_s, rate_bps))

    async def _switch(self, mode: Mode, delay_s: float, rate_bps: int) -> None:
        self.delay_s, self.rate_bps, self.mode = delay_s, rate_bps, mode
        if mode in ("drop", "reset"):
            for pipe in list(self.pipes):
                pipe.close(reset=mode == "reset")
                if mode == "reset":
                    self.stats.reset += 1
                else:
                    self.stats.dropped += 1

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coro.close()
            raise ProxyError("the proxy is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_S)

    @property
    def connections(self) -> int:
        return len(self.pipes)

    # -- connections -------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self.mode in ("drop", "reset"):
            sock = writer.get_extra_info("socket")
            if self.mode == "reset" and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            return
        try:
            upstream = await asyncio.open_connection(self.broker.host, self.broker.port)
        except OSError:
            writer.close()
            return
        self.pipes.add(_Pipe(self, (reader, writer), upstream))
