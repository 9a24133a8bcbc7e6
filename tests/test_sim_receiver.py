"""The simulated button receiver, seen from a gateway's side of a real pty through pyserial."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import serial

from drivers.button.codec import (
    Ack,
    ButtonEvent,
    ButtonEventCode,
    ButtonHeartbeat,
    Frame,
    FrameDecoder,
    Indicate,
    Message,
    Paired,
    PairMode,
    Pattern,
    ReceiverStatus,
    StatusRequest,
    encode_ack,
    encode_frame,
    encode_indicate,
    encode_pair_mode,
    encode_status_request,
    parse,
)
from hil.sim.receiver import SimReceiver

BUTTON = 0x00A1B2C3
OTHER = 0x0BADF00D
INTERVAL_S = 0.05
TIMEOUT_S = 5.0

M = TypeVar("M", bound=Message)


class GatewaySide:
    """The gateway's end of the line: pyserial on the simulator's port, reads off the loop."""

    def __init__(self, port: str) -> None:
        self.serial = serial.Serial(port, 9600, timeout=0.05)
        self.decoder = FrameDecoder()
        self.frames: list[tuple[float, Frame]] = []  # every frame read, with its arrival time
        self._unread: list[Frame] = []
        self._seq = 0

    def read_some(self) -> tuple[float, bytes]:
        """Blocking (run it in a thread): what arrived within the port's timeout."""
        data = self.serial.read(1)
        if data:
            data += self.serial.read(self.serial.in_waiting)
        return time.monotonic(), data

    async def next_frame(self, timeout: float = TIMEOUT_S) -> Frame:
        async with asyncio.timeout(timeout):
            while not self._unread:
                at, data = await asyncio.to_thread(self.read_some)
                for frame in self.decoder.feed(data):
                    self.frames.append((at, frame))
                    self._unread.append(frame)
        return self._unread.pop(0)

    async def next(self, kind: type[M], timeout: float = TIMEOUT_S) -> M:
        """The next message of ``kind``; messages of other kinds before it are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                message = parse(await self.next_frame())
                if isinstance(message, kind):
                    return message

    async def read_available(self) -> list[Frame]:
        """Whatever frames are already in the pty (nothing waits for more)."""
        data = await asyncio.to_thread(lambda: self.serial.read(self.serial.in_waiting))
        frames = self.decoder.feed(data)
        self._unread += frames
        return frames

    async def drain(self) -> None:
        """Read and forget whatever is already on the line."""
        await self.read_available()
        self._unread.clear()

    def send(self, raw: bytes) -> None:
        self.serial.write(raw)

    @property
    def last_seq(self) -> int:
        return self._seq

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def ack(self, seq: int) -> None:
        self.send(encode_ack(self.next_seq(), seq))

    def close(self) -> None:
        self.serial.close()


@asynccontextmanager
async def simulator(
    tmp_path: Path | None = None,
    *,
    max_retransmits: int = 10,
    fw: tuple[int, int] = (1, 4),
    status_interval_s: float = 60.0,
) -> AsyncIterator[SimReceiver]:
    sim = SimReceiver(
        link_path=None if tmp_path is None else tmp_path / "carebed-button",
        retransmit_interval_s=INTERVAL_S,
        max_retransmits=max_retransmits,
        fw=fw,
        status_interval_s=status_interval_s,
    )
    await sim.start()
    try:
        yield sim
    finally:
        await sim.close()
    # nothing of the simulator is left running
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


@contextmanager
def gateway_side(sim: SimReceiver) -> Iterator[GatewaySide]:
    line = GatewaySide(sim.port)
    try:
        yield line
    finally:
        line.close()


async def settle_status(sim: SimReceiver, line: GatewaySide) -> None:
    """ACK the start-up RECEIVER_STATUS, so that it does not interleave with what a test reads."""
    status = await line.next(ReceiverStatus)
    await ack_and_settle(sim, line, status.seq)


async def ack_and_settle(sim: SimReceiver, line: GatewaySide, seq: int) -> None:
    """ACK ``seq``, wait until the simulator stops resending it, forget the copies on the line."""
    line.ack(seq)
    await sim.wait_for(lambda s: seq not in s.pending_seqs, TIMEOUT_S, f"{seq} acknowledged")
    assert sim.acked(seq)
    await line.drain()


# --- Start-up and status ------------------------------------------------------------------------


async def test_port_is_the_link_and_the_receiver_announces_its_status(tmp_path: Path) -> None:
    async with simulator(tmp_path, fw=(2, 7)) as sim:
        link = tmp_path / "carebed-button"
        assert sim.port == str(link)
        assert link.is_symlink()
        assert os.readlink(link) == sim.slave_path
        assert sim.slave_path is not None
        assert sim.slave_path.startswith("/dev/pts/")
        with gateway_side(sim) as line:
            # pyserial flushes the input on open: the first copy is gone, a retransmission comes
            status = await line.next(ReceiverStatus)
            assert (status.fw_major, status.fw_minor, status.flags) == (2, 7, 0)
            assert status.uptime_s == 0
            assert status.seq == 0


async def test_without_a_link_the_port_is_the_pty_slave() -> None:
    async with simulator() as sim:
        assert sim.port == sim.slave_path
        with gateway_side(sim) as line:
            await line.next(ReceiverStatus)


async def test_status_request_is_answered(tmp_path: Path) -> None:
    async with simulator(tmp_path) as sim:
        with gateway_side(sim) as line:
            await settle_status(sim, line)
            line.send(encode_status_request(line.next_seq()))
            status = await line.next(ReceiverStatus)
            assert (status.fw_major, status.fw_minor, status.flags) == (1, 4, 0)
            assert status.seq == 1
            assert isinstance(sim.received[-1], StatusRequest)


async def test_flag_changes_send_status_and_repeats_do_not(tmp_path: Path) -> None:
    async with simulator(tmp_path) as sim:
        with gateway_side(sim) as line:
            await settle_status(sim, line)
            await sim.set_flags(mains_lost=True)
            status = await line.next(ReceiverStatus)
            assert (status.mains_lost, status.jamming, status.flags) == (True, False, 0x01)
            line.ack(status.seq)
            await sim.set_flags(mains_lost=True)  # no change: nothing sent
            await sim.set_flags(mains_lost=True, jamming=True)
            status = await line.next(ReceiverStatus)
            assert status.flags == 0x03
            line.ack(status.seq)
            await sim.set_flags()
            assert (await line.next(ReceiverStatus)).flags == 0
            statuses = [m for m in sim.sent if isinstance(m, ReceiverStatus)]
            assert [s.flags for s in statuses] == [0, 0x01, 0x03, 0]


async def test_status_is_sent_periodically(tmp_path: Path) -> None:
    async with simulator(tmp_path, status_interval_s=0.1) as sim:
        with gateway_side(sim) as line:
            seqs: set[int] = set()
            while len(seqs) < 3:
                status = await line.next(ReceiverStatus)
                line.ack(status.seq)
                seqs.add(status.seq)
            assert seqs == {0, 1, 2}


# --- Reliability: retransmissions and ACKs ------------------------------------------------------


async def test_unacknowledged_frame_is_retransmitted_unchanged_at_most_max_times(
    tmp_path: Path,
) -> None:
    async with simulator(tmp_path, max_retransmits=3) as sim:
        with gateway_side(sim) as line:
            await settle_status(sim, line)
            pressed_at = time.monotonic()
            seq = await sim.press(BUTTON)
            await sim.wait_for(lambda s: seq not in s.pending_seqs, TIMEOUT_S, "giving up")
            assert not sim.acked(seq)
            assert sim.transmissions(seq) == 4
            copies = [await line.next_frame() for _ in range(4)]
            assert len({frame.raw for frame in copies}) == 1
            assert parse(copies[0]) == ButtonEvent(
                seq, BUTTON, ButtonEventCode.SHORT_PRESS, 87, -61
            )
            # every copy left one interval after the previous one, not earlier
            arrivals = [at for at, frame in line.frames if frame in copies]
            for n, at in enumerate(arrivals):
                assert at >= pressed_at + n * INTERVAL_S * 0.95
            assert arrivals[-1] < pressed_at + 3 * INTERVAL_S + 2.0
            # and nothing more: the next frame on the line is the answer to a request
            assert await line.read_available() == []
            line.send(encode_status_request(line.next_seq()))
            status = parse(await line.next_frame())
            assert isinstance(status, ReceiverStatus)
            assert (status.seq, status.fw_major, status.flags) == (seq + 1, 1, 0)


async def test_default_timing_is_the_datasheets() -> None:
    sim = SimReceiver()
    assert (sim.retransmit_interval_s, sim.max_retransmits, sim.fw) == (0.5, 10, (1, 4))
    assert sim.status_interval_s == 60.0


async def test_ack_of_its_seq_stops_retransmission_and_other_acks_do_not(tmp_path: Path) -> None:
    async with simulator(tmp_path, max_retransmits=100) as sim:
        with gateway_side(sim) as line:
            await settle_status(sim, line)
            seq = await sim.press(BUTTON, long=True, battery=None, rssi=None)
            first = parse(await line.next_frame())
            assert first == ButtonEvent(seq, BUTTON, ButtonEventCode.LONG_PRESS, None, None)
            line.ack((seq + 1) & 0xFF)  # not its SEQ
            await sim.wait_for(
                lambda s: Ack(line.last_seq, (seq + 1) & 0xFF) in s.received, TIMEOUT_S, "the ACK"
            )
            before = sim.transmissions(seq)
            await sim.wait_for(lambda s: s.transmissions(seq) > before, TIMEOUT_S, "a resend")
            line.ack(seq)
            await sim.wait_for(lambda s: s.acked(seq), TIMEOUT_S, "acknowledged")
            await sim.wait_for(lambda s: not s.pending_seqs, TIMEOUT_S, "retransmission over")
            sent = sim.transmissions(seq)
            assert 2 <= sent < 100
            # all copies are on the line before the answer to a later request, and no more
            line.send(encode_status_request(line.next_seq()))
            await line.next(ReceiverStatus)
            copies = [f for _, f in line.frames if parse(f) == first]
            assert len(copies) == sent


async def test_withheld_acks_are_recorded_but_ignored(tmp_path: Path) -> None:
    async with simulator(tmp_path, max_retransmits=100) as sim:
        with gateway_side(sim) as line:
            await settle_status(sim, line)
            sim.withhold_acks = True
            seq = await sim.heartbeat(BUTTON, battery=10, rssi=-90)
            for _ in range(3):
                frame = await line.next_frame()
                assert parse(frame) == ButtonHeartbeat(seq, BUTTON, 10, -90)
                line.ack(seq)
            await sim.wait_for(
                lambda s: sum(isinstance(m, Ack) and m.acked_seq == seq for m in s.received) == 3,
                TIMEOUT_S,
                "three ACKs received",
            )
            assert not sim.acked(seq)
            assert seq in sim.pending_seqs
            sim.withhold_acks = False
            await line.next_frame()
            line.ack(seq)
            await sim.wait_for(lambda s: s.acked(seq), TIMEOUT_S, "acknowledged at last")


async def test_seq_wraps_and_writes_never_block(tmp_path: Path) -> None:
    # 2000 frames (26 KB) at once: more than a pty holds (~20 KB here) while nobody reads, so
    # the simulator must queue the rest and write it when the pty has room, in order.
    async with simulator(tmp_path, max_retransmits=0) as sim:
        with gateway_side(sim) as line:
            # (the start-up status, sent once before the port was opened, was flushed by pyserial)
            seqs = [await sim.heartbeat(BUTTON) for _ in range(2000)]
            assert seqs == [(1 + n) % 256 for n in range(2000)]
            received = [await line.next(ButtonHeartbeat) for _ in range(2000)]
            assert [m.seq for m in received] == seqs
            async with asyncio.timeout(TIMEOUT_S):
                await sim.send_raw(b"")  # returns once everything was handed to the pty


async def test_every_event_kind(tmp_path: Path) -> None:
    async with simulator(tmp_path) as sim:
        with gateway_side(sim) as line:
            await settle_status(sim, line)
            sent = [
                (await sim.press(BUTTON), ButtonEventCode.SHORT_PRESS, 87),
                (await sim.press(BUTTON, long=True), ButtonEventCode.LONG_PRESS, 87),
                (await sim.cancel(BUTTON), ButtonEventCode.CANCEL, 87),
                (await sim.low_battery(BUTTON), ButtonEventCode.LOW_BATTERY, 15),
                (await sim.tamper(BUTTON), ButtonEventCode.TAMPER, 87),
                (await sim.send_event(BUTTON, 0x2A), 0x2A, 87),
            ]
            for seq, code, battery in sent:
                event = await line.next(ButtonEvent)
                assert event == ButtonEvent(seq, BUTTON, code, battery, -61)
                line.ack(seq)
            await sim.wait_for(lambda s: all(s.acked(q) for q, _, _ in sent), TIMEOUT_S, "ACKs")


# --- What the gateway sends ---------------------------------------------------------------------


async def test_gateway_frames_are_recorded_in_order(tmp_path: Path) -> None:
    async with simulator(tmp_path) as sim:
        with gateway_side(sim) as line:
            line.send(b"\x00\xa5\x5a\x09noise")  # noise first: the simulator resynchronises
            line.send(encode_indicate(1, BUTTON, Pattern.RECEIVED))
            line.send(encode_indicate(2, OTHER, Pattern.NOT_DELIVERED))
            line.send(encode_frame(0x82, 3, b"\x00"))  # PAIR_MODE 0: does not parse
            line.send(encode_indicate(4, BUTTON, Pattern.ACKNOWLEDGED))
            await sim.wait_for(lambda s: len(s.received) == 3, TIMEOUT_S, "three frames")
            assert sim.indications(BUTTON) == [Pattern.RECEIVED, Pattern.ACKNOWLEDGED]
            assert sim.indications(OTHER) == [Pattern.NOT_DELIVERED]
            assert sim.received[1] == Indicate(2, OTHER, Pattern.NOT_DELIVERED)
            assert sim.bad_frames == 1
            assert not sim.pairing_open


async def test_garbage_and_raw_bytes_go_out_as_given(tmp_path: Path) -> None:
    async with simulator(tmp_path) as sim:
        with gateway_side(sim) as line:
            await settle_status(sim, line)
            garbage = b"\x00\xa5\xa5\x5a\x09junk"
            await sim.send_garbage(garbage)
            raw = encode_frame(0x42, 200, b"future")
            await sim.send_raw(raw)
            data = b""
            async with asyncio.timeout(TIMEOUT_S):
                while len(data) < len(garbage) + len(raw):
                    data += (await asyncio.to_thread(line.read_some))[1]
            assert data == garbage + raw


# --- Pairing ------------------------------------------------------------------------------------


async def test_pair_mode_then_pair_button_announces_paired(tmp_path: Path) -> None:
    async with simulator(tmp_path) as sim:
        with gateway_side(sim) as line:
            await settle_status(sim, line)
            assert await sim.pair_button(BUTTON) is None  # pairing closed: nothing happens
            line.send(encode_pair_mode(line.next_seq(), 30))
            await sim.wait_for(lambda s: s.pairing_open, TIMEOUT_S, "pairing open")
            assert sim.received[-1] == PairMode(line.last_seq, 30)
            seq = await sim.pair_button(BUTTON)
            assert seq is not None
            assert await line.next(Paired) == Paired(seq, BUTTON)
            await ack_and_settle(sim, line, seq)
            assert BUTTON in sim.paired
            assert await sim.pair_button(BUTTON) is None  # already paired
            # a press of an unpaired button while pairing is open: PAIRED, then the event
            press = await sim.press(OTHER)
            assert parse(await line.next_frame()) == Paired(press - 1, OTHER)
            assert parse(await line.next_frame()) == ButtonEvent(press, OTHER, 1, 87, -61)
            assert sim.paired == {BUTTON, OTHER}


async def test_pair_candidates_are_paired_when_pair_mode_opens_and_the_window_closes(
    tmp_path: Path,
) -> None:
    async with simulator(tmp_path) as sim:
        sim.pair_candidates = [BUTTON, OTHER]
        sim.paired = {OTHER}
        with gateway_side(sim) as line:
            await settle_status(sim, line)
            line.send(encode_pair_mode(line.next_seq(), 1))
            paired = await line.next(Paired)
            assert paired.button_id == BUTTON
            await ack_and_settle(sim, line, paired.seq)
            await sim.wait_for(lambda s: not s.pairing_open, 3.0, "the window to close")
            press = await sim.press(0x12345678)
            assert parse(await line.next_frame()) == ButtonEvent(press, 0x12345678, 1, 87, -61)
            assert [m for m in sim.sent if isinstance(m, Paired)] == [paired]


# --- Unplug and replug --------------------------------------------------------------------------


async def test_unplug_makes_the_gateways_port_fail_and_removes_the_link(tmp_path: Path) -> None:
    async with simulator(tmp_path) as sim:
        with gateway_side(sim) as line:
            await line.next(ReceiverStatus)
            slave = sim.slave_path
            assert slave is not None
            await sim.unplug()
            assert not (tmp_path / "carebed-button").exists()
            assert not (tmp_path / "carebed-button").is_symlink()
            assert not await asyncio.to_thread(os.path.exists, slave)
            with pytest.raises(serial.SerialException):
                await asyncio.to_thread(line.read_some)
            with pytest.raises(serial.SerialException):
                line.send(b"\x00")
            with pytest.raises(OSError, match=r"Errno 5"):  # a plain OSError from pyserial
                _ = line.serial.in_waiting
            await sim.press(BUTTON)  # into the void: no error


async def test_raw_reads_on_the_slave_fail_after_unplug() -> None:
    async with simulator() as sim:
        fd = os.open(sim.port, os.O_RDWR | os.O_NOCTTY)
        try:
            await sim.unplug()
            # a hung-up pty slave reads end-of-file at once, and refuses writes
            assert os.read(fd, 16) == b""
            with pytest.raises(OSError, match=r"Errno 5"):
                os.write(fd, b"\x00")
        finally:
            os.close(fd)


async def test_replug_gives_a_working_port_at_the_same_link(tmp_path: Path) -> None:
    async with simulator(tmp_path, max_retransmits=200) as sim:
        link = tmp_path / "carebed-button"
        with gateway_side(sim) as line:
            await settle_status(sim, line)
            await sim.unplug()
        lost = await sim.press(BUTTON)  # sent while unplugged; its retransmissions go on
        await sim.replug()
        assert link.is_symlink()
        assert os.readlink(link) == sim.slave_path
        with gateway_side(sim) as line:
            seen: set[type[Message]] = set()
            while {ReceiverStatus, ButtonEvent} - seen:
                message = parse(await line.next_frame())
                seen.add(type(message))
                if isinstance(message, ButtonEvent):
                    assert message.seq == lost
                    line.ack(message.seq)
                if isinstance(message, ReceiverStatus):
                    line.ack(message.seq)
            await sim.wait_for(lambda s: s.acked(lost), TIMEOUT_S, "the lost press acknowledged")
            seq = await sim.press(OTHER)
            event = await line.next(ButtonEvent)
            assert (event.seq, event.button_id) == (seq, OTHER)
            line.ack(seq)
            await sim.wait_for(lambda s: s.acked(seq), TIMEOUT_S, "acknowledged after replug")


# --- The helper itself --------------------------------------------------------------------------


async def test_wait_for_raises_timeout_error_with_what_on_timeout(tmp_path: Path) -> None:
    async with simulator(tmp_path) as sim:
        with pytest.raises(TimeoutError, match="a frame that never comes"):
            await sim.wait_for(lambda s: False, 0.05, "a frame that never comes")


async def test_close_is_idempotent_and_removes_the_link(tmp_path: Path) -> None:
    sim = SimReceiver(link_path=tmp_path / "carebed-button", retransmit_interval_s=INTERVAL_S)
    await sim.start()
    await sim.press(BUTTON)
    await sim.close()
    await sim.close()
    assert not (tmp_path / "carebed-button").is_symlink()
    with pytest.raises(RuntimeError):
        await sim.press(BUTTON)
    with pytest.raises(RuntimeError):
        await sim.replug()
