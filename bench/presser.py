"""The emergency-button receiver as a child process of the bench: presses, stamped at the pty.

Runs the simulated receiver (``hil.sim.receiver.SimReceiver``) on a real pseudo-terminal, in
a process and event loop of its own, so that the gateway's loop is not shared. ``--link`` is made
a symlink to the pty's slave: the gateway's ``[button] port``.

Each press is a BUTTON_EVENT (short press) of its own button id, ``--first-button`` + n, so the
``alarm.button`` the platform gets names its press (``btn-XXXXXXXX``) exactly. Its stamp is
CLOCK_MONOTONIC right after the ``write()`` that put the frame's last byte into the pty master
returned. One press at a time: the next goes ``--spacing-ms`` after the previous one, and never
before the previous one was ACKed (i.e. its alarm was stored).

Protocol: JSON lines on stdout, commands on stdin.

- out ``ready`` (``port``: the symlink), then ``linked`` once the gateway opened the port (its
  STATUS_REQUEST came);
- in ``go``: start pressing; in ``stop``: no more presses after the one in progress;
- out ``result`` once ``--presses`` presses are made or ``stop`` came: per press
  ``[button id, SEQ, written ns, ACKed ns, transmissions]``;
- in ``exit`` (or end of file): close the pty and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import BUTTON_ID_BASE, emit, now_ns
from drivers.button.codec import StatusRequest
from hil.sim.receiver import RETRANSMIT_INTERVAL_S, SimReceiver

LINK_TIMEOUT_S = 30.0
ACK_TIMEOUT_S = 30.0
STATUS_INTERVAL_S = 3600.0  # no periodic RECEIVER_STATUS during a run


class StampingReceiver(SimReceiver):
    """The simulated receiver, stamping when its output buffer was last emptied into the pty."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._written_ns: int | None = None

    def _flush(self) -> None:
        super()._flush()
        if not self._out:  # the last byte queued is in the pty
            self._written_ns = now_ns()

    def take_written_ns(self) -> int | None:
        """When everything written since the last call was in the pty; None if not all yet."""
        stamp, self._written_ns = self._written_ns, None
        return stamp


class Commands:
    """Lines on stdin, as asyncio events: ``go``, ``stop``, ``exit`` (also end of file)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.stop = asyncio.Event()
        self.exit = asyncio.Event()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, args=(loop,), daemon=True).start()

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        for line in sys.stdin:
            event = {"go": self.go, "stop": self.stop, "exit": self.exit}.get(line.strip())
            if event is not None:
                loop.call_soon_threadsafe(event.set)
        loop.call_soon_threadsafe(self._end)

    def _end(self) -> None:
        """End of file, at once on the loop: ``stop`` before ``go``, so that a press loop that
        had not begun never presses (one callback: the reading thread cannot be switched out
        between two of them)."""
        for event in (self.stop, self.exit, self.go):
            event.set()


async def _sleep_unless(event: asyncio.Event, delay_s: float) -> None:
    """Sleep ``delay_s``, or less if ``event`` is set meanwhile."""
    if delay_s > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await event.wait()


def _acked(seq: int) -> Callable[[SimReceiver], bool]:
    return lambda sim: sim.acked(seq)


async def press_loop(
    sim: StampingReceiver, count: int, spacing_s: float, first_button: int, stop: asyncio.Event
) -> list[tuple[int, int, int, int, int]]:
    loop = asyncio.get_running_loop()
    presses: list[tuple[int, int, int, int, int]] = []
    next_at = loop.time()
    for n in range(count):
        await _sleep_unless(stop, next_at - loop.time())
        if stop.is_set():
            break
        button = first_button + n
        sim.take_written_ns()
        pressed_at = loop.time()
        seq = await sim.press(button)
        written_ns = sim.take_written_ns()
        if written_ns is None:
            raise RuntimeError(f"press {n}: the pty did not take the whole frame at once")
        await sim.wait_for(_acked(seq), ACK_TIMEOUT_S, f"the ACK of press {n}")
        acked_ns = now_ns()
        # Retransmissions stop at the ACK; read now, before the 8-bit SEQ comes round again.
        presses.append((button, seq, written_ns, acked_ns, sim.transmissions(seq)))
        next_at = pressed_at + spacing_s
    return presses


async def run(args: argparse.Namespace) -> None:
    commands = Commands()
    sim = StampingReceiver(
        link_path=args.link,
        retransmit_interval_s=args.retransmit_s,
        status_interval_s=STATUS_INTERVAL_S,
    )
    await sim.start()
    try:
        emit({"event": "ready", "port": sim.port, "slave": sim.slave_path})
        # The gateway asks for the receiver's status once it has the port open: from then on,
        # what the receiver writes reaches it. (pyserial flushed the RECEIVER_STATUS of start()
        # when it opened the port; its retransmission comes within 0.5 s, among the presses, as
        # a real receiver's periodic status would.)
        await sim.wait_for(
            lambda s: any(isinstance(m, StatusRequest) for m in s.received),
            LINK_TIMEOUT_S,
            "the gateway to open the port (its STATUS_REQUEST)",
        )
        emit({"event": "linked", "linked_ns": now_ns()})
        await commands.go.wait()
        presses = await press_loop(
            sim, args.presses, args.spacing_ms / 1000, args.first_button, commands.stop
        )
        emit(
            {
                "event": "result",
                "presses": presses,
                "sent_frames": len(sim.sent),
                "received_frames": len(sim.received),
                "bad_frames": sim.bad_frames,
            }
        )
        await commands.exit.wait()
    finally:
        await sim.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--link", type=Path, required=True, help="symlink to the pty's slave")
    parser.add_argument("--presses", type=int, required=True, help="at most this many presses")
    parser.add_argument("--spacing-ms", type=float, default=5.0)
    parser.add_argument("--first-button", type=int, default=BUTTON_ID_BASE)
    parser.add_argument(
        "--retransmit-s",
        type=float,
        default=RETRANSMIT_INTERVAL_S,
        help="the receiver's retransmission interval for unACKed frames (datasheet: 0.5 s)",
    )
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
