"""Pure codec of the emergency-button receiver's serial protocol, version 1 (no I/O).

Frame: ``A5 5A | LEN | TYPE | SEQ | PAYLOAD | CRC16`` where LEN counts TYPE + SEQ + PAYLOAD (2..64)
and the CRC (CRC-16/CCITT-FALSE, big endian) covers LEN, TYPE, SEQ and PAYLOAD. The receiver's
datasheet (specs/button-receiver-serial.md) is implemented exactly; its example frames are the
test vectors in ``tests/test_button_codec.py``.

Two layers:

- ``FrameDecoder`` turns any chunking of bytes into CRC-valid ``Frame`` objects (any TYPE), never
  raises and resynchronises on garbage, counting what it dropped.
- ``parse`` turns a ``Frame`` into a typed message, raising ``FrameError`` when the payload does not
  fit a known TYPE and returning ``UnknownMessage`` for an unknown TYPE (the link ACKs those).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

SYNC = b"\xa5\x5a"
MIN_LEN = 2  # LEN counts TYPE + SEQ + PAYLOAD
MAX_LEN = 64
HEADER_BYTES = len(SYNC) + 1  # sync + LEN
CRC_BYTES = 2
MAX_PAYLOAD_BYTES = MAX_LEN - 2
MAX_FRAME_BYTES = HEADER_BYTES + MAX_LEN + CRC_BYTES  # 69

BATTERY_UNKNOWN = 0xFF
RSSI_UNKNOWN = 0x7F
BATTERY_MAX_PERCENT = 100
FLAG_MAINS_LOST = 0x01
FLAG_JAMMING = 0x02

_U8_MAX = 0xFF
_U32_MAX = 0xFFFF_FFFF
_SYNC_FIRST = SYNC[0]


class FrameError(ValueError):
    """A frame or field that does not fit the protocol: drop it and count it."""


class MsgType(IntEnum):
    """TYPE byte. 0x01..0x7F: receiver -> gateway; 0x80..: gateway -> receiver."""

    BUTTON_EVENT = 0x01
    BUTTON_HEARTBEAT = 0x02
    RECEIVER_STATUS = 0x10
    PAIRED = 0x11
    ACK = 0x80
    INDICATE = 0x81
    PAIR_MODE = 0x82
    STATUS_REQUEST = 0x83


class ButtonEventCode(IntEnum):
    """BUTTON_EVENT ``event`` values the datasheet defines (others are reported as raw ints)."""

    SHORT_PRESS = 1
    LONG_PRESS = 2
    CANCEL = 3
    LOW_BATTERY = 4
    TAMPER = 5


class Pattern(IntEnum):
    """INDICATE ``pattern`` values: the senior's light and voice feedback."""

    RECEIVED = 1
    ACKNOWLEDGED = 2
    NOT_DELIVERED = 3
    CANCEL_ACCEPTED = 4


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, xorout 0."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


# --- Frames -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    """A CRC-valid frame of any TYPE (validated at construction so that it can be re-encoded)."""

    type: int
    seq: int
    payload: bytes

    def __post_init__(self) -> None:
        _check_u8("type", self.type)
        _check_u8("seq", self.seq)
        if len(self.payload) > MAX_PAYLOAD_BYTES:
            raise FrameError(f"payload of {len(self.payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")

    @property
    def raw(self) -> bytes:
        """The frame as it goes on the line (sync, LEN, ..., CRC)."""
        return encode_frame(self.type, self.seq, self.payload)


def encode_frame(type: int, seq: int, payload: bytes) -> bytes:
    """Frame ``payload`` with sync, LEN and CRC; FrameError on LEN, TYPE or SEQ out of range."""
    _check_u8("type", type)
    _check_u8("seq", seq)
    length = 2 + len(payload)
    if not MIN_LEN <= length <= MAX_LEN:
        raise FrameError(f"LEN {length} outside {MIN_LEN}..{MAX_LEN}")
    body = bytes((length, type, seq)) + payload
    return SYNC + body + crc16_ccitt_false(body).to_bytes(CRC_BYTES, "big")


class FrameDecoder:
    """Incremental frame decoder: feed any chunking of the byte stream, get valid frames in order.

    Never raises. Resynchronises on the next sync word after garbage; a bad LEN or a bad CRC drops
    only the two sync bytes, so a valid frame that starts inside a damaged one is still found. A
    truncated frame waits for more bytes; the buffer never holds more than ``MAX_FRAME_BYTES - 1``
    bytes between calls, whatever is fed.

    Counters: ``bad_crc`` and ``bad_length`` count damaged frames; ``garbage_bytes`` counts every
    byte dropped (including the sync bytes of damaged frames), so that the bytes fed are always
    ``sum(len(frame.raw)) + garbage_bytes + buffered_bytes``.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.bad_crc = 0
        self.bad_length = 0
        self.garbage_bytes = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes held back: the start of a frame (or a lone 0xA5) waiting for the rest."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        buffer += data
        frames: list[Frame] = []
        while True:
            start = buffer.find(SYNC)
            if start < 0:
                # Keep a trailing 0xA5: it may be the first half of a sync word.
                keep = 1 if buffer and buffer[-1] == _SYNC_FIRST else 0
                self._drop(len(buffer) - keep)
                return frames
            self._drop(start)
            if len(buffer) < HEADER_BYTES:
                return frames
            length = buffer[2]
            if not MIN_LEN <= length <= MAX_LEN:
                self.bad_length += 1
                self._drop(len(SYNC))
                continue
            end = HEADER_BYTES + length + CRC_BYTES
            if len(buffer) < end:
                return frames
            body = bytes(buffer[2 : HEADER_BYTES + length])
            received_crc = int.from_bytes(buffer[HEADER_BYTES + length : end], "big")
            if crc16_ccitt_false(body) != received_crc:
                self.bad_crc += 1
                self._drop(len(SYNC))
                continue
            frames.append(Frame(type=body[1], seq=body[2], payload=body[3:]))
            del buffer[:end]

    def _drop(self, count: int) -> None:
        if count:
            self.garbage_bytes += count
            del self._buffer[:count]


# --- Messages -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ButtonEvent:
    """BUTTON_EVENT. ``event`` is the raw u8 (see ``ButtonEventCode``; unknown values are kept).

    ``battery`` is None when the receiver reports 0xFF (unknown), and also for 101..254, which the
    datasheet does not define: a press is never dropped because of its battery field.
    ``rssi`` (dBm) is None for 0x7F (unknown).
    """

    seq: int
    button_id: int
    event: int
    battery: int | None
    rssi: int | None


@dataclass(frozen=True, slots=True)
class ButtonHeartbeat:
    """BUTTON_HEARTBEAT (supervision); battery and rssi as in ``ButtonEvent``."""

    seq: int
    button_id: int
    battery: int | None
    rssi: int | None


@dataclass(frozen=True, slots=True)
class ReceiverStatus:
    """RECEIVER_STATUS. ``flags`` is the raw byte; reserved bits are kept but mean nothing."""

    seq: int
    fw_major: int
    fw_minor: int
    uptime_s: int
    flags: int

    @property
    def mains_lost(self) -> bool:
        return bool(self.flags & FLAG_MAINS_LOST)

    @property
    def jamming(self) -> bool:
        return bool(self.flags & FLAG_JAMMING)


@dataclass(frozen=True, slots=True)
class Paired:
    """PAIRED: a button was pressed while pairing was open."""

    seq: int
    button_id: int


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A CRC-valid frame of a TYPE this version does not know (acknowledged and counted)."""

    seq: int
    type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    """ACK (gateway -> receiver) of the receiver frame ``acked_seq``."""

    seq: int
    acked_seq: int


@dataclass(frozen=True, slots=True)
class Indicate:
    """INDICATE (gateway -> receiver); ``pattern`` is the raw u8 (see ``Pattern``)."""

    seq: int
    button_id: int
    pattern: int


@dataclass(frozen=True, slots=True)
class PairMode:
    """PAIR_MODE (gateway -> receiver): open pairing for ``duration_s`` (1..255)."""

    seq: int
    duration_s: int


@dataclass(frozen=True, slots=True)
class StatusRequest:
    """STATUS_REQUEST (gateway -> receiver): answer with RECEIVER_STATUS."""

    seq: int


Message = (
    ButtonEvent
    | ButtonHeartbeat
    | ReceiverStatus
    | Paired
    | UnknownMessage
    | Ack
    | Indicate
    | PairMode
    | StatusRequest
)

_BUTTON_EVENT = struct.Struct(">IBBb")
_HEARTBEAT = struct.Struct(">IBb")
_RECEIVER_STATUS = struct.Struct(">BBIB")
_PAIRED = struct.Struct(">I")
_ACK = struct.Struct(">B")
_INDICATE = struct.Struct(">IB")
_PAIR_MODE = struct.Struct(">B")


def parse(frame: Frame) -> Message:
    """The typed message in ``frame``; FrameError if the payload does not fit its TYPE."""
    payload = frame.payload
    seq = frame.seq
    match frame.type:
        case MsgType.BUTTON_EVENT:
            button_id, event, battery, rssi = _unpack(_BUTTON_EVENT, frame)
            return ButtonEvent(seq, button_id, event, _battery(battery), _rssi(rssi))
        case MsgType.BUTTON_HEARTBEAT:
            button_id, battery, rssi = _unpack(_HEARTBEAT, frame)
            return ButtonHeartbeat(seq, button_id, _battery(battery), _rssi(rssi))
        case MsgType.RECEIVER_STATUS:
            fw_major, fw_minor, uptime_s, flags = _unpack(_RECEIVER_STATUS, frame)
            return ReceiverStatus(seq, fw_major, fw_minor, uptime_s, flags)
        case MsgType.PAIRED:
            (button_id,) = _unpack(_PAIRED, frame)
            return Paired(seq, button_id)
        case MsgType.ACK:
            (acked_seq,) = _unpack(_ACK, frame)
            return Ack(seq, acked_seq)
        case MsgType.INDICATE:
            button_id, pattern = _unpack(_INDICATE, frame)
            return Indicate(seq, button_id, pattern)
        case MsgType.PAIR_MODE:
            (duration_s,) = _unpack(_PAIR_MODE, frame)
            if duration_s == 0:
                raise FrameError("PAIR_MODE duration_s 0 outside 1..255")
            return PairMode(seq, duration_s)
        case MsgType.STATUS_REQUEST:
            if payload:
                raise FrameError(f"STATUS_REQUEST payload of {len(payload)} bytes, expected 0")
            return StatusRequest(seq)
        case _:
            return UnknownMessage(seq, frame.type, payload)


def _unpack(layout: struct.Struct, frame: Frame) -> tuple[int, ...]:
    if len(frame.payload) != layout.size:
        name = MsgType(frame.type).name
        raise FrameError(f"{name} payload of {len(frame.payload)} bytes, expected {layout.size}")
    return layout.unpack(frame.payload)


def _battery(raw: int) -> int | None:
    return raw if raw <= BATTERY_MAX_PERCENT else None


def _rssi(raw: int) -> int | None:
    return None if raw == RSSI_UNKNOWN else raw


# --- Encoders -----------------------------------------------------------------------------------


def encode_ack(seq: int, acked_seq: int) -> bytes:
    _check_u8("acked_seq", acked_seq)
    return encode_frame(MsgType.ACK, seq, _ACK.pack(acked_seq))


def encode_indicate(seq: int, button_id: int, pattern: int) -> bytes:
    _check_u32("button_id", button_id)
    _check_u8("pattern", pattern)
    return encode_frame(MsgType.INDICATE, seq, _INDICATE.pack(button_id, pattern))


def encode_pair_mode(seq: int, duration_s: int) -> bytes:
    if not 1 <= duration_s <= _U8_MAX:
        raise FrameError(f"duration_s {duration_s} outside 1..255")
    return encode_frame(MsgType.PAIR_MODE, seq, _PAIR_MODE.pack(duration_s))


def encode_status_request(seq: int) -> bytes:
    return encode_frame(MsgType.STATUS_REQUEST, seq, b"")


def encode_button_event(
    seq: int, button_id: int, event: int, battery: int | None, rssi: int | None
) -> bytes:
    _check_u32("button_id", button_id)
    _check_u8("event", event)
    payload = _BUTTON_EVENT.pack(button_id, event, _battery_byte(battery), _rssi_byte(rssi))
    return encode_frame(MsgType.BUTTON_EVENT, seq, payload)


def encode_heartbeat(seq: int, button_id: int, battery: int | None, rssi: int | None) -> bytes:
    _check_u32("button_id", button_id)
    payload = _HEARTBEAT.pack(button_id, _battery_byte(battery), _rssi_byte(rssi))
    return encode_frame(MsgType.BUTTON_HEARTBEAT, seq, payload)


def encode_receiver_status(
    seq: int, fw_major: int, fw_minor: int, uptime_s: int, flags: int
) -> bytes:
    _check_u8("fw_major", fw_major)
    _check_u8("fw_minor", fw_minor)
    _check_u32("uptime_s", uptime_s)
    _check_u8("flags", flags)
    payload = _RECEIVER_STATUS.pack(fw_major, fw_minor, uptime_s, flags)
    return encode_frame(MsgType.RECEIVER_STATUS, seq, payload)


def encode_paired(seq: int, button_id: int) -> bytes:
    _check_u32("button_id", button_id)
    return encode_frame(MsgType.PAIRED, seq, _PAIRED.pack(button_id))


def device_id(button_id: int) -> str:
    """The platform's id of a button: ``btn-`` and 8 upper-case hex digits."""
    _check_u32("button_id", button_id)
    return f"btn-{button_id:08X}"


def _battery_byte(battery: int | None) -> int:
    if battery is None:
        return BATTERY_UNKNOWN
    if not 0 <= battery <= BATTERY_MAX_PERCENT:
        raise FrameError(f"battery {battery} outside 0..100 (None for unknown)")
    return battery


def _rssi_byte(rssi: int | None) -> int:
    if rssi is None:
        return RSSI_UNKNOWN
    if not -128 <= rssi < RSSI_UNKNOWN:
        raise FrameError(f"rssi {rssi} outside -128..126 (None for unknown)")
    return rssi


def _check_u8(name: str, value: int) -> None:
    if not 0 <= value <= _U8_MAX:
        raise FrameError(f"{name} {value} outside 0..255")


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= _U32_MAX:
        raise FrameError(f"{name} {value} outside 0..0xFFFFFFFF")
