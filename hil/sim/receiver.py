"""A faithful emergency-button receiver on a real pseudo-terminal, for tests, the demo and hil/."""

from __future__ import annotations

import asyncio
import os
import tty
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.button.codec import (
    FLAG_JAMMING,
    FLAG_MAINS_LOST,
    Ack,
    ButtonEventCode,
    Frame,
    FrameDecoder,
    FrameError,
    Indicate,
    Message,
    PairMode,
    StatusRequest,
    encode_button_event,
    encode_heartbeat,
    encode_paired,
    encode_receiver_status,
    parse,
)
from hil.sim.service import Observed, SimService

READ_CHUNK_BYTES = 4096
RETRANSMIT_INTERVAL_S = 0.5  # datasheet: every 500 ms ...
MAX_RETRANSMITS = 10  # ... at most 10 times
STATUS_INTERVAL_S = 60.0  # datasheet: RECEIVER_STATUS every 60 s
_U32_MAX = 0xFFFF_FFFF


@dataclass(slots=True)
class _Outgoing:
    """A receiver frame waiting for its ACK."""

    seq: int
    raw: bytes
    acked: asyncio.Event = field(default_factory=asyncio.Event)
    transmissions: int = 0
    finished: bool = False  # acknowledged, or retransmissions exhausted


class SimReceiver(SimService, Observed):
    """The receiver (base unit) of the datasheet, seen from the gateway as a serial port.

    It owns the master side of a pty and keeps the slave open itself (so its writes never fail
    while the gateway has the port closed); ``port`` is what the gateway opens. Every frame it
    sends waits for an ACK of its SEQ and is retransmitted unchanged every
    ``retransmit_interval_s``, at most ``max_retransmits`` times. It answers STATUS_REQUEST,
    honours PAIR_MODE, and records every gateway frame in ``received``.

    It behaves as a receiver with its own power supply behind a USB-serial adapter: ``unplug``
    removes the device node, frames sent meanwhile are lost on the wire but their retransmissions
    continue, so they can reach the gateway after ``replug``.

    Note: pyserial flushes the input buffer when it opens a port, so bytes written before the
    gateway opened the port are lost, as on a real line; the retransmissions bring them again.
    """

    def __init__(
        self,
        *,
        link_path: Path | None = None,
        retransmit_interval_s: float = RETRANSMIT_INTERVAL_S,
        max_retransmits: int = MAX_RETRANSMITS,
        fw: tuple[int, int] = (1, 4),
        status_interval_s: float = STATUS_INTERVAL_S,
    ) -> None:
        self.link_path = link_path
        self.retransmit_interval_s = retransmit_interval_s
        self.max_retransmits = max_retransmits
        self.fw = fw
        self.status_interval_s = status_interval_s
        self.withhold_acks = False
        self.paired: set[int] = set()
        self.pair_candidates: list[int] = []
        self.received: list[Message] = []
        self.sent: list[Message] = []  # each receiver frame once (retransmissions not repeated)
        self.bad_frames = 0  # gateway frames with a valid CRC that did not parse
        self.dropped_bytes = 0  # written while unplugged
        self._flags = 0
        self._next_seq = 0
        self._outgoing: dict[int, _Outgoing] = {}
        self._acked: set[int] = set()
        self._pair_until = 0.0
        self._pair_timer: asyncio.TimerHandle | None = None
        self._started_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._master_fd: int | None = None
        self._slave_fd: int | None = None
        self._slave_path: str | None = None
        self._decoder = FrameDecoder()
        self._out = bytearray()
        self._writer_registered = False
        self._drained = asyncio.Event()
        self._drained.set()
        super().__init__()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # --- Life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the pty (pointing ``link_path`` at it) and send RECEIVER_STATUS, as at power-up."""
        if self._loop is not None:
            raise RuntimeError("SimReceiver already started")
        self._loop = asyncio.get_running_loop()
        self._started_at = self._loop.time()
        self._open_pty()
        self._spawn(self._periodic_status(), "sim-receiver.status")
        self._send_status()

    async def close(self) -> None:
        """Stop retransmitting, close the pty and remove the link. Idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pair_timer is not None:
            self._pair_timer.cancel()
        self._close_pty()
        self._notify_change()

    @property
    def port(self) -> str:
        """The path the gateway opens: ``link_path`` if given, else the pty's slave path."""
        if self.link_path is not None:
            return str(self.link_path)
        if self._slave_path is None:
            raise RuntimeError("SimReceiver not started")
        return self._slave_path

    @property
    def slave_path(self) -> str | None:
        """The current pty slave (``/dev/pts/N``), None while unplugged."""
        return self._slave_path

    @property
    def plugged(self) -> bool:
        return self._master_fd is not None

    async def unplug(self) -> None:
        """Pull the USB adapter: the pty goes away (the gateway's reads and writes on it fail) and
        ``link_path`` is removed. Frames in flight keep being retransmitted into the void."""
        self._close_pty()
        self._notify_change()

    async def replug(self) -> None:
        """Plug the adapter back: a new pty (its number may be reused), ``link_path`` re-pointed,
        RECEIVER_STATUS sent."""
        if self._loop is None or self._closed:
            raise RuntimeError("SimReceiver not running")
        self._close_pty()
        self._open_pty()
        self._send_status()
        self._notify_change()

    # --- Receiver -> gateway --------------------------------------------------------------------

    async def press(
        self,
        button_id: int,
        *,
        long: bool = False,
        battery: int | None = 87,
        rssi: int | None = -61,
    ) -> int:
        """A press of the alarm key; returns the BUTTON_EVENT's SEQ. While pairing is open, an
        unpaired button is first announced with PAIRED (the event is forwarded all the same)."""
        if self.pairing_open and button_id not in self.paired:
            self._announce_paired(button_id)
        code = ButtonEventCode.LONG_PRESS if long else ButtonEventCode.SHORT_PRESS
        return self._send_event(button_id, code, battery, rssi)

    async def cancel(
        self, button_id: int, *, battery: int | None = 87, rssi: int | None = -61
    ) -> int:
        return self._send_event(button_id, ButtonEventCode.CANCEL, battery, rssi)

    async def low_battery(
        self, button_id: int, *, battery: int | None = 15, rssi: int | None = -61
    ) -> int:
        return self._send_event(button_id, ButtonEventCode.LOW_BATTERY, battery, rssi)

    async def tamper(
        self, button_id: int, *, battery: int | None = 87, rssi: int | None = -61
    ) -> int:
        return self._send_event(button_id, ButtonEventCode.TAMPER, battery, rssi)

    async def send_event(
        self, button_id: int, event: int, *, battery: int | None = 87, rssi: int | None = -61
    ) -> int:
        """A BUTTON_EVENT with any event code (including ones the datasheet does not define)."""
        return self._send_event(button_id, event, battery, rssi)

    async def heartbeat(
        self, button_id: int, *, battery: int | None = 87, rssi: int | None = -61
    ) -> int:
        return self._send(lambda seq: encode_heartbeat(seq, button_id, battery, rssi))

    async def pair_button(self, button_id: int) -> int | None:
        """Press a button's pairing key: PAIRED if pairing is open and the button is not paired
        yet (returns its SEQ), otherwise nothing happens (None)."""
        if not self.pairing_open or button_id in self.paired:
            return None
        return self._announce_paired(button_id)

    async def set_flags(self, mains_lost: bool = False, jamming: bool = False) -> None:
        """Set the status flags; RECEIVER_STATUS is sent when they change."""
        flags = (FLAG_MAINS_LOST if mains_lost else 0) | (FLAG_JAMMING if jamming else 0)
        if flags != self._flags:
            self._flags = flags
            self._send_status()

    async def send_status(self) -> int:
        """Send RECEIVER_STATUS now, unasked; returns its SEQ."""
        return self._send_status()

    async def send_garbage(self, data: bytes) -> None:
        """Line noise; returns once it is in the pty."""
        await self.send_raw(data)

    async def send_raw(self, data: bytes) -> None:
        """Any bytes, unframed and never retransmitted; returns once they are in the pty."""
        self._write(data)
        await self._drained.wait()

    # --- State ----------------------------------------------------------------------------------

    @property
    def flags(self) -> int:
        return self._flags

    @property
    def uptime_s(self) -> int:
        if self._loop is None:
            return 0
        return min(int(self._loop.time() - self._started_at), _U32_MAX)

    @property
    def pairing_open(self) -> bool:
        return self._loop is not None and self._loop.time() < self._pair_until

    def acked(self, seq: int) -> bool:
        """Whether the latest frame sent with ``seq`` was acknowledged (ACKs are not counted
        while ``withhold_acks`` is set)."""
        return seq in self._acked

    def transmissions(self, seq: int) -> int:
        """How many times the latest frame with ``seq`` went out (1 + retransmissions)."""
        outgoing = self._outgoing.get(seq)
        return 0 if outgoing is None else outgoing.transmissions

    @property
    def pending_seqs(self) -> frozenset[int]:
        """SEQs still being retransmitted (neither acknowledged nor given up)."""
        return frozenset(seq for seq, out in self._outgoing.items() if not out.finished)

    def indications(self, button_id: int) -> list[int]:
        """Patterns of the INDICATE frames received for ``button_id``, in order."""
        return [
            m.pattern for m in self.received if isinstance(m, Indicate) and m.button_id == button_id
        ]

    # --- Internals ------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send_status(self) -> int:
        fw_major, fw_minor = self.fw
        return self._send(
            lambda seq: encode_receiver_status(seq, fw_major, fw_minor, self.uptime_s, self._flags)
        )

    def _send_event(self, button_id: int, event: int, battery: int | None, rssi: int | None) -> int:
        return self._send(lambda seq: encode_button_event(seq, button_id, event, battery, rssi))

    def _announce_paired(self, button_id: int) -> int:
        seq = self._send(lambda seq: encode_paired(seq, button_id))
        self.paired.add(button_id)
        return seq

    def _send(self, build: Callable[[int], bytes]) -> int:
        """Send a receiver frame now and retransmit it until its ACK; return its SEQ."""
        if self._loop is None or self._closed:
            raise RuntimeError("SimReceiver not running")
        seq = self._next_seq
        raw = build(seq)  # FrameError on bad fields, before the SEQ is used
        self._next_seq = (seq + 1) & 0xFF
        previous = self._outgoing.get(seq)
        if previous is not None:
            previous.finished = True
            previous.acked.set()  # a wrapped SEQ replaces the old frame
        self._acked.discard(seq)
        outgoing = _Outgoing(seq=seq, raw=raw)
        self._outgoing[seq] = outgoing
        self.sent.append(parse(Frame(raw[3], raw[4], raw[5:-2])))
        self._transmit(outgoing)
        self._spawn(self._retransmit(outgoing), f"sim-receiver.retransmit[{seq}]")
        return seq

    def _transmit(self, outgoing: _Outgoing) -> None:
        outgoing.transmissions += 1
        self._write(outgoing.raw)
        self._notify_change()

    async def _retransmit(self, outgoing: _Outgoing) -> None:
        for attempt in range(self.max_retransmits + 1):
            try:
                async with asyncio.timeout(self.retransmit_interval_s):
                    await outgoing.acked.wait()
            except TimeoutError:
                if attempt < self.max_retransmits:
                    self._transmit(outgoing)
            else:
                break
        outgoing.finished = True
        self._notify_change()

    async def _periodic_status(self) -> None:
        while True:
            await asyncio.sleep(self.status_interval_s)
            self._send_status()

    def _open_pty(self) -> None:
        assert self._loop is not None
        master_fd, slave_fd = os.openpty()
        # A UART is byte-transparent: no echo, no line editing, no CR/LF translation.
        tty.setraw(slave_fd)
        os.set_blocking(master_fd, False)
        self._master_fd, self._slave_fd = master_fd, slave_fd
        self._slave_path = os.ttyname(slave_fd)
        self._decoder = FrameDecoder()
        if self.link_path is not None:
            temporary = self.link_path.with_name(f".{self.link_path.name}.{os.getpid()}.new")
            temporary.unlink(missing_ok=True)
            temporary.symlink_to(self._slave_path)
            temporary.replace(self.link_path)  # atomic, like udev re-pointing its symlink
        self._loop.add_reader(master_fd, self._on_readable)

    def _close_pty(self) -> None:
        if self.link_path is not None and self._master_fd is not None:
            self.link_path.unlink(missing_ok=True)
        if self._master_fd is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._master_fd)
            if self._writer_registered:
                self._loop.remove_writer(self._master_fd)
                self._writer_registered = False
            os.close(self._master_fd)
            self._master_fd = None
        if self._slave_fd is not None:
            os.close(self._slave_fd)
            self._slave_fd = None
        self._slave_path = None
        self.dropped_bytes += len(self._out)
        self._out.clear()
        self._drained.set()

    def _on_readable(self) -> None:
        assert self._master_fd is not None
        try:
            data = os.read(self._master_fd, READ_CHUNK_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            # Cannot happen while we hold the slave open; never spin on a hung-up master.
            assert self._loop is not None
            self._loop.remove_reader(self._master_fd)
            return
        for frame in self._decoder.feed(data):
            try:
                message = parse(frame)
            except FrameError:
                self.bad_frames += 1
                continue
            self.received.append(message)
            self._handle(message)
        self._notify_change()

    def _handle(self, message: Message) -> None:
        match message:
            case Ack(acked_seq=acked_seq) if not self.withhold_acks:
                outgoing = self._outgoing.get(acked_seq)
                if outgoing is not None:
                    self._acked.add(acked_seq)
                    outgoing.acked.set()
            case StatusRequest():
                self._send_status()
            case PairMode(duration_s=duration_s):
                assert self._loop is not None
                self._pair_until = self._loop.time() + duration_s
                # wake waiters when the window closes, so "pairing closed" can be waited for
                if self._pair_timer is not None:
                    self._pair_timer.cancel()
                self._pair_timer = self._loop.call_at(self._pair_until, self._notify_change)
                for button_id in self.pair_candidates:
                    if button_id not in self.paired:
                        self._announce_paired(button_id)
            case _:
                pass

    def _write(self, data: bytes) -> None:
        if self._master_fd is None:
            self.dropped_bytes += len(data)
            return
        self._out += data
        if not self._writer_registered:
            self._flush()

    def _flush(self) -> None:
        assert self._loop is not None
        fd = self._master_fd
        if fd is None:
            return
        try:
            written = os.write(fd, self._out)
        except BlockingIOError:
            written = 0
        except OSError:
            written = len(self._out)  # the line is gone: the bytes are lost
            self.dropped_bytes += written
        del self._out[:written]
        if self._out:
            self._drained.clear()
            if not self._writer_registered:
                self._loop.add_writer(fd, self._flush)
                self._writer_registered = True
        else:
            self._drained.set()
            if self._writer_registered:
                self._loop.remove_writer(fd)
                self._writer_registered = False
