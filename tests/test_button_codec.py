"""The button receiver codec against the datasheet's vectors, and its decoder's properties."""

from __future__ import annotations

import contextlib
import itertools
import random
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.button.codec import (
    MAX_FRAME_BYTES,
    MAX_LEN,
    MIN_LEN,
    SYNC,
    Ack,
    ButtonEvent,
    ButtonEventCode,
    ButtonHeartbeat,
    Frame,
    FrameDecoder,
    FrameError,
    Indicate,
    Message,
    MsgType,
    Paired,
    PairMode,
    Pattern,
    ReceiverStatus,
    StatusRequest,
    UnknownMessage,
    crc16_ccitt_false,
    device_id,
    encode_ack,
    encode_button_event,
    encode_frame,
    encode_heartbeat,
    encode_indicate,
    encode_pair_mode,
    encode_paired,
    encode_receiver_status,
    encode_status_request,
    parse,
)
from tests.support.reliability import record, scaled

BUTTON = 0x00A1B2C3


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text)


# --- The datasheet's example frames -------------------------------------------------------------

SPEC_VECTORS: list[tuple[str, Message]] = [
    (
        "A5 5A 09 01 07 00 A1 B2 C3 01 57 C3 47 76",
        ButtonEvent(
            seq=7, button_id=BUTTON, event=ButtonEventCode.SHORT_PRESS, battery=87, rssi=-61
        ),
    ),
    (
        "A5 5A 09 01 08 00 A1 B2 C3 02 57 C3 C7 E4",
        ButtonEvent(
            seq=8, button_id=BUTTON, event=ButtonEventCode.LONG_PRESS, battery=87, rssi=-61
        ),
    ),
    (
        "A5 5A 09 01 09 00 A1 B2 C3 03 56 C1 A4 74",
        ButtonEvent(seq=9, button_id=BUTTON, event=ButtonEventCode.CANCEL, battery=86, rssi=-63),
    ),
    (
        "A5 5A 08 02 0A 00 A1 B2 C3 0F B0 19 AB",
        ButtonHeartbeat(seq=10, button_id=BUTTON, battery=15, rssi=-80),
    ),
    (
        "A5 5A 09 10 0B 01 04 00 00 0E 10 01 F7 F5",
        ReceiverStatus(seq=11, fw_major=1, fw_minor=4, uptime_s=3600, flags=0x01),
    ),
    ("A5 5A 03 80 00 07 54 A1", Ack(seq=0, acked_seq=7)),
    (
        "A5 5A 07 81 01 00 A1 B2 C3 02 CF 06",
        Indicate(seq=1, button_id=BUTTON, pattern=Pattern.ACKNOWLEDGED),
    ),
]


def test_crc_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1


@pytest.mark.parametrize(("frame_hex", "expected"), SPEC_VECTORS)
def test_spec_example_frames_decode_to_the_spec_values(frame_hex: str, expected: Message) -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(hexbytes(frame_hex))
    assert len(frames) == 1
    message = parse(frames[0])
    assert message == expected
    assert type(message) is type(expected)
    assert frames[0].raw == hexbytes(frame_hex)
    assert (decoder.bad_crc, decoder.bad_length, decoder.garbage_bytes) == (0, 0, 0)


def test_spec_example_field_values_spelled_out() -> None:
    press = parse(FrameDecoder().feed(hexbytes(SPEC_VECTORS[0][0]))[0])
    assert isinstance(press, ButtonEvent)
    assert (press.button_id, press.event, press.battery, press.rssi) == (0x00A1B2C3, 1, 87, -61)
    assert device_id(press.button_id) == "btn-00A1B2C3"
    status = parse(FrameDecoder().feed(hexbytes(SPEC_VECTORS[4][0]))[0])
    assert isinstance(status, ReceiverStatus)
    assert (status.fw_major, status.fw_minor, status.uptime_s) == (1, 4, 3600)
    assert status.mains_lost
    assert not status.jamming


def test_gateway_examples_encode_byte_for_byte() -> None:
    assert encode_ack(0, 7) == hexbytes("A5 5A 03 80 00 07 54 A1")
    assert encode_indicate(1, BUTTON, Pattern.ACKNOWLEDGED) == hexbytes(
        "A5 5A 07 81 01 00 A1 B2 C3 02 CF 06"
    )


def test_receiver_examples_encode_byte_for_byte() -> None:
    assert encode_button_event(7, BUTTON, 1, 87, -61) == hexbytes(SPEC_VECTORS[0][0])
    assert encode_button_event(8, BUTTON, 2, 87, -61) == hexbytes(SPEC_VECTORS[1][0])
    assert encode_button_event(9, BUTTON, 3, 86, -63) == hexbytes(SPEC_VECTORS[2][0])
    assert encode_heartbeat(10, BUTTON, 15, -80) == hexbytes(SPEC_VECTORS[3][0])
    assert encode_receiver_status(11, 1, 4, 3600, 0x01) == hexbytes(SPEC_VECTORS[4][0])


def test_message_type_numbers() -> None:
    assert [int(t) for t in MsgType] == [0x01, 0x02, 0x10, 0x11, 0x80, 0x81, 0x82, 0x83]
    assert [int(c) for c in ButtonEventCode] == [1, 2, 3, 4, 5]
    assert [int(p) for p in Pattern] == [1, 2, 3, 4]


# --- Field rules --------------------------------------------------------------------------------


def test_unknown_markers_decode_to_none() -> None:
    event = parse(Frame(MsgType.BUTTON_EVENT, 3, hexbytes("00A1B2C3 01 FF 7F")))
    assert event == ButtonEvent(seq=3, button_id=BUTTON, event=1, battery=None, rssi=None)
    heartbeat = parse(Frame(MsgType.BUTTON_HEARTBEAT, 4, hexbytes("00A1B2C3 FF 7F")))
    assert heartbeat == ButtonHeartbeat(seq=4, button_id=BUTTON, battery=None, rssi=None)
    assert encode_button_event(3, BUTTON, 1, None, None) == encode_frame(
        MsgType.BUTTON_EVENT, 3, hexbytes("00A1B2C3 01 FF 7F")
    )
    assert encode_heartbeat(4, BUTTON, None, None) == encode_frame(
        MsgType.BUTTON_HEARTBEAT, 4, hexbytes("00A1B2C3 FF 7F")
    )


def test_undefined_battery_values_are_unknown_and_the_event_is_kept() -> None:
    # 101..254 are not defined by the datasheet: the press must not be lost over it.
    event = parse(Frame(MsgType.BUTTON_EVENT, 3, hexbytes("00A1B2C3 02 96 C3")))
    assert event == ButtonEvent(seq=3, button_id=BUTTON, event=2, battery=None, rssi=-61)


def test_unknown_event_code_is_reported_not_guessed() -> None:
    event = parse(Frame(MsgType.BUTTON_EVENT, 3, hexbytes("00A1B2C3 2A 50 C3")))
    assert isinstance(event, ButtonEvent)
    assert event.event == 0x2A


def test_receiver_flags_ignore_reserved_bits() -> None:
    status = ReceiverStatus(seq=0, fw_major=1, fw_minor=4, uptime_s=0, flags=0xFC)
    assert (status.mains_lost, status.jamming) == (False, False)
    status = ReceiverStatus(seq=0, fw_major=1, fw_minor=4, uptime_s=0, flags=0x02)
    assert (status.mains_lost, status.jamming) == (False, True)


def test_unknown_type_is_returned_as_unknown_message() -> None:
    frames = FrameDecoder().feed(encode_frame(0x42, 9, b"\x01\x02"))
    assert frames == [Frame(0x42, 9, b"\x01\x02")]
    assert parse(frames[0]) == UnknownMessage(seq=9, type=0x42, payload=b"\x01\x02")


KNOWN_PAYLOAD_BYTES = {
    MsgType.BUTTON_EVENT: 7,
    MsgType.BUTTON_HEARTBEAT: 6,
    MsgType.RECEIVER_STATUS: 7,
    MsgType.PAIRED: 4,
    MsgType.ACK: 1,
    MsgType.INDICATE: 5,
    MsgType.PAIR_MODE: 1,
    MsgType.STATUS_REQUEST: 0,
}


@pytest.mark.parametrize("msg_type", list(MsgType))
def test_known_type_with_wrong_payload_length_is_a_frame_error(msg_type: MsgType) -> None:
    size = KNOWN_PAYLOAD_BYTES[msg_type]
    parse(Frame(msg_type, 0, b"\x01" * size))  # the right length parses
    for wrong in {0, size - 1, size + 1, 62} - {size, -1}:
        with pytest.raises(FrameError):
            parse(Frame(msg_type, 0, b"\x01" * wrong))


def test_pair_mode_duration_zero_is_a_frame_error() -> None:
    with pytest.raises(FrameError):
        parse(Frame(MsgType.PAIR_MODE, 0, b"\x00"))
    assert parse(Frame(MsgType.PAIR_MODE, 0, b"\xff")) == PairMode(seq=0, duration_s=255)


@pytest.mark.parametrize(
    "encode",
    [
        lambda: encode_frame(0x01, 0, b"\x00" * (MAX_LEN - 1)),  # LEN 65
        lambda: encode_frame(0x01, 256, b""),
        lambda: encode_frame(0x01, -1, b""),
        lambda: encode_frame(0x100, 0, b""),
        lambda: encode_ack(0, 256),
        lambda: encode_pair_mode(0, 0),
        lambda: encode_pair_mode(0, 256),
        lambda: encode_button_event(0, BUTTON, 1, 101, -61),
        lambda: encode_button_event(0, BUTTON, 1, 0xFF, -61),
        lambda: encode_button_event(0, BUTTON, 1, 50, 127),
        lambda: encode_button_event(0, BUTTON, 1, 50, -129),
        lambda: encode_button_event(0, 1 << 32, 1, 50, -61),
        lambda: encode_heartbeat(0, -1, 50, -61),
        lambda: encode_receiver_status(0, 1, 4, 1 << 32, 0),
        lambda: encode_indicate(0, BUTTON, 256),
        lambda: encode_paired(0, 1 << 32),
        lambda: Frame(0x01, 0, b"\x00" * (MAX_LEN - 1)),
        lambda: device_id(-1),
    ],
)
def test_encoders_refuse_out_of_range_values(encode: Callable[[], object]) -> None:
    with pytest.raises(FrameError):
        encode()


def test_largest_and_smallest_frames() -> None:
    assert len(encode_frame(0x01, 0, b"\x00" * (MAX_LEN - 2))) == MAX_FRAME_BYTES
    assert encode_status_request(5) == SYNC + bytes((MIN_LEN, 0x83, 5)) + (
        crc16_ccitt_false(bytes((MIN_LEN, 0x83, 5))).to_bytes(2, "big")
    )


# --- Decoder: resynchronisation -----------------------------------------------------------------

PRESS = hexbytes(SPEC_VECTORS[0][0])
ACK = hexbytes(SPEC_VECTORS[5][0])


def test_bad_length_drops_the_sync_and_keeps_scanning() -> None:
    decoder = FrameDecoder()
    frames = decoder.feed(SYNC + b"\x41" + PRESS + SYNC + b"\x01" + ACK)
    assert frames == [parse_frame(PRESS), parse_frame(ACK)]
    assert (decoder.bad_length, decoder.bad_crc) == (2, 0)
    assert decoder.garbage_bytes == 6


def test_a_valid_frame_inside_a_bad_crc_frame_is_found() -> None:
    # A sync and a LEN that claims the next 64 bytes: the valid frame sits inside them.
    bogus = SYNC + bytes((MAX_LEN,)) + b"\x00\x01"
    stream = bogus + PRESS + b"\x00" * (MAX_FRAME_BYTES - len(bogus) - len(PRESS)) + ACK
    decoder = FrameDecoder()
    assert decoder.feed(stream) == [parse_frame(PRESS), parse_frame(ACK)]
    assert decoder.bad_crc == 1


def test_corrupted_frame_is_counted_and_the_next_one_found() -> None:
    damaged = bytearray(PRESS)
    damaged[7] ^= 0x10
    decoder = FrameDecoder()
    assert decoder.feed(bytes(damaged) + ACK) == [parse_frame(ACK)]
    assert (decoder.bad_crc, decoder.garbage_bytes) == (1, len(PRESS))


def test_truncated_frame_waits_then_resynchronises_on_the_next_one() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(PRESS[:6]) == []
    assert decoder.buffered_bytes == 6
    # The sender gave up on the truncated frame: the next frame completes the bogus one's bytes,
    # the CRC fails and the valid frame inside is found.
    assert decoder.feed(PRESS + ACK) == [parse_frame(PRESS), parse_frame(ACK)]
    assert decoder.bad_crc == 1


def test_truncated_frame_completes_when_the_rest_arrives() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\xa5") == []
    assert decoder.feed(PRESS[1:9]) == []
    assert decoder.feed(PRESS[9:]) == [parse_frame(PRESS)]
    assert decoder.garbage_bytes == 1
    assert decoder.buffered_bytes == 0


def test_garbage_never_grows_the_buffer() -> None:
    decoder = FrameDecoder()
    noise = bytes(range(256)) * 64 + (SYNC + b"\x40") * 500 + b"\xa5" * 1000
    for _ in range(20):
        assert decoder.feed(noise) == []
        assert decoder.buffered_bytes < MAX_FRAME_BYTES
    assert decoder.feed(SYNC + b"\x40" + b"\x00" * 65) == []
    assert decoder.buffered_bytes == MAX_FRAME_BYTES - 1


def parse_frame(raw: bytes) -> Frame:
    return Frame(type=raw[3], seq=raw[4], payload=raw[5:-2])


# --- Strategies ---------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFF_FFFF)
battery = st.none() | st.integers(0, 100)
rssi = st.none() | st.integers(-128, 126)
known_types = {int(t) for t in MsgType}

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(ButtonEvent, seq=u8, button_id=u32, event=u8, battery=battery, rssi=rssi),
    st.builds(ButtonHeartbeat, seq=u8, button_id=u32, battery=battery, rssi=rssi),
    st.builds(ReceiverStatus, seq=u8, fw_major=u8, fw_minor=u8, uptime_s=u32, flags=u8),
    st.builds(Paired, seq=u8, button_id=u32),
    st.builds(
        UnknownMessage,
        seq=u8,
        type=u8.filter(lambda t: t not in known_types),
        payload=st.binary(max_size=MAX_LEN - 2),
    ),
    st.builds(Ack, seq=u8, acked_seq=u8),
    st.builds(Indicate, seq=u8, button_id=u32, pattern=u8),
    st.builds(PairMode, seq=u8, duration_s=st.integers(1, 255)),
    st.builds(StatusRequest, seq=u8),
)


def encode_message(message: Message) -> bytes:
    match message:
        case ButtonEvent(seq, button_id, event, battery, rssi):
            return encode_button_event(seq, button_id, event, battery, rssi)
        case ButtonHeartbeat(seq, button_id, battery, rssi):
            return encode_heartbeat(seq, button_id, battery, rssi)
        case ReceiverStatus(seq, fw_major, fw_minor, uptime_s, flags):
            return encode_receiver_status(seq, fw_major, fw_minor, uptime_s, flags)
        case Paired(seq, button_id):
            return encode_paired(seq, button_id)
        case UnknownMessage(seq, msg_type, payload):
            return encode_frame(msg_type, seq, payload)
        case Ack(seq, acked_seq):
            return encode_ack(seq, acked_seq)
        case Indicate(seq, button_id, pattern):
            return encode_indicate(seq, button_id, pattern)
        case PairMode(seq, duration_s):
            return encode_pair_mode(seq, duration_s)
        case StatusRequest(seq):
            return encode_status_request(seq)
    raise AssertionError(message)


# Any CRC-valid frame, of any type and payload: parse may reject it, the decoder must return it.
raw_frames = st.builds(
    encode_frame, type=u8, seq=u8, payload=st.binary(max_size=MAX_LEN - 2)
) | messages.map(encode_message)


@st.composite
def damaged_frames(draw: st.DrawFn) -> bytes:
    """A valid frame, truncated or with one byte changed (may hit sync, LEN, body or CRC)."""
    raw = bytearray(draw(raw_frames))
    if draw(st.booleans()):
        return bytes(raw[: draw(st.integers(1, len(raw) - 1))])
    index = draw(st.integers(0, len(raw) - 1))
    raw[index] ^= draw(st.integers(1, 255))
    return bytes(raw)


def without_sync(data: bytes) -> bytes:
    while SYNC in data:
        data = data.replace(SYNC, SYNC[:1])
    return data


# Noise that cannot contain a sync word (nor complete one with a frame that follows it, since a
# frame starts with A5 5A): a stream of such noise and frames holds exactly those frames.
clean_noise = st.binary(max_size=40).map(without_sync)
# Noise as a real line has it: random bytes, bare sync words, damaged and truncated frames.
noise = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([SYNC, SYNC[:1], SYNC + b"\x40", SYNC + b"\x01", SYNC + b"\xff"]),
    damaged_frames(),
)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def feed_all(decoder: FrameDecoder, chunks: Sequence[bytes]) -> list[Frame]:
    frames: list[Frame] = []
    for chunk in chunks:
        frames += decoder.feed(chunk)
        assert decoder.buffered_bytes < MAX_FRAME_BYTES
    return frames


def reference_decode(stream: bytes) -> tuple[list[Frame], int, int]:
    """The datasheet's framing rules applied to a whole stream at once: frames, bad CRC, bad LEN."""
    frames: list[Frame] = []
    bad_crc = bad_length = 0
    position = 0
    while (start := stream.find(SYNC, position)) >= 0 and start + 3 <= len(stream):
        length = stream[start + 2]
        if not MIN_LEN <= length <= MAX_LEN:
            bad_length += 1
            position = start + 2
            continue
        end = start + 3 + length + 2
        if end > len(stream):
            break
        body = stream[start + 2 : start + 3 + length]
        if crc16_ccitt_false(body) == int.from_bytes(stream[end - 2 : end], "big"):
            frames.append(Frame(body[1], body[2], body[3:]))
            position = end
        else:
            bad_crc += 1
            position = start + 2
    return frames, bad_crc, bad_length


cuts = st.lists(st.integers(min_value=0), max_size=30)


# --- Properties ---------------------------------------------------------------------------------


@given(stream=st.lists(st.binary() | raw_frames | noise, max_size=12).map(b"".join), cuts=cuts)
def test_decoder_never_raises_and_parse_raises_only_frame_error(
    stream: bytes, cuts: list[int]
) -> None:
    decoder = FrameDecoder()
    frames = feed_all(decoder, split(stream, cuts))
    accounted = sum(len(frame.raw) for frame in frames) + decoder.garbage_bytes
    assert accounted + decoder.buffered_bytes == len(stream)
    for frame in frames:
        with contextlib.suppress(FrameError):
            parse(frame)


@given(
    pieces=st.lists(st.tuples(clean_noise, raw_frames), max_size=8),
    tail=clean_noise,
    cuts=cuts,
)
def test_every_frame_in_sync_free_noise_is_found_once_in_order(
    pieces: list[tuple[bytes, bytes]], tail: bytes, cuts: list[int]
) -> None:
    stream = b"".join(garbage + frame for garbage, frame in pieces) + tail
    decoder = FrameDecoder()
    frames = feed_all(decoder, split(stream, cuts))
    assert [frame.raw for frame in frames] == [frame for _, frame in pieces]
    assert (decoder.bad_crc, decoder.bad_length) == (0, 0)
    noise_bytes = sum(len(garbage) for garbage, _ in pieces) + len(tail)
    assert decoder.garbage_bytes + decoder.buffered_bytes == noise_bytes


@given(pieces=st.lists(noise | raw_frames, max_size=12), cuts=cuts)
def test_any_chunking_decodes_like_the_reference_on_the_whole_stream(
    pieces: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(pieces)
    expected, bad_crc, bad_length = reference_decode(stream)
    decoder = FrameDecoder()
    assert feed_all(decoder, split(stream, cuts)) == expected
    assert (decoder.bad_crc, decoder.bad_length) == (bad_crc, bad_length)


@given(message=messages, cuts=cuts)
def test_round_trip_whole_bytewise_and_split(message: Message, cuts: list[int]) -> None:
    raw = encode_message(message)
    chunkings = {
        "whole": [raw],
        "bytewise": [raw[i : i + 1] for i in range(len(raw))],
        "split": split(raw, cuts),
    }
    for how, chunks in chunkings.items():
        decoder = FrameDecoder()
        frames = feed_all(decoder, chunks)
        assert len(frames) == 1, how
        assert frames[0].raw == raw, how
        assert parse(frames[0]) == message, how
        assert (decoder.garbage_bytes, decoder.buffered_bytes) == (0, 0), how


@given(messages=st.lists(messages, max_size=10), cuts=cuts)
def test_back_to_back_messages_round_trip(messages: list[Message], cuts: list[int]) -> None:
    stream = b"".join(encode_message(message) for message in messages)
    frames = feed_all(FrameDecoder(), split(stream, cuts))
    assert [parse(frame) for frame in frames] == messages


# --- Fuzzing: a long, hostile line with presses planted in it ----------------------------------


def hostile_noise(rng: random.Random) -> bytes:
    """One piece of what a bad line can carry: random bytes, bare and doubled sync words, LENs
    out of range, damaged and truncated frames of every type."""
    choice = rng.random()
    if choice < 1 / 3:
        return rng.randbytes(rng.randint(1, 300))
    if choice < 0.45:
        return rng.choice([SYNC, SYNC[:1], SYNC * 2, SYNC[:1] + SYNC, SYNC + b"\x40"])
    if choice < 0.6:
        return SYNC + bytes([rng.choice([0, 1, *range(MAX_LEN + 1, 256)])])
    length = rng.randint(0, MAX_LEN - 2)
    raw = bytearray(encode_frame(rng.randint(0, 255), rng.randint(0, 255), rng.randbytes(length)))
    if rng.random() < 0.5:
        return bytes(raw[: rng.randint(1, len(raw) - 1)])  # truncated: the rest never comes
    raw[rng.randrange(len(raw))] ^= rng.randint(1, 255)  # one byte changed
    return bytes(raw)


def hostile_line(rng: random.Random, size: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """At least ``size`` bytes of hostile noise with valid press frames planted among them,
    often right after damage; returns the stream and (offset, frame) of each planted frame."""
    out = bytearray()
    planted: list[tuple[int, bytes]] = []
    while len(out) < size:
        if rng.random() < 0.75:
            out += hostile_noise(rng)
            continue
        seq, button_id = rng.randint(0, 255), rng.getrandbits(32)
        frame = encode_button_event(seq, button_id, ButtonEventCode.SHORT_PRESS, 50, -70)
        planted.append((len(out), frame))
        out += frame
    return bytes(out), planted


def chunks_of(rng: random.Random, stream: bytes) -> list[bytes]:
    """The stream as reads return it: mostly small pieces, sometimes one byte, sometimes 4 KiB."""
    pieces: list[bytes] = []
    position = 0
    while position < len(stream):
        size = rng.choice([1, rng.randint(1, 64), rng.randint(1, 4096)])
        pieces.append(stream[position : position + size])
        position += size
    return pieces


@pytest.mark.reliability
def test_a_million_hostile_bytes_hide_no_planted_press_and_invent_no_frame() -> None:
    rng = random.Random(20261207)
    size = scaled(1_000_000, 4_000_000)
    stream, planted = hostile_line(rng, size)
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for chunk in chunks_of(rng, stream):
        frames += decoder.feed(chunk)  # raises nothing at all
        assert decoder.buffered_bytes < MAX_FRAME_BYTES
    rejected = 0
    for frame in frames:
        try:
            parse(frame)
        except FrameError:
            rejected += 1
    # Never invents one: exactly the frames that the datasheet's rules find in the whole stream
    # at once, each a CRC-valid frame really on the line.
    expected, bad_crc, bad_length = reference_decode(stream)
    assert frames == expected
    assert (decoder.bad_crc, decoder.bad_length) == (bad_crc, bad_length)
    accounted = sum(len(frame.raw) for frame in frames) + decoder.garbage_bytes
    assert accounted + decoder.buffered_bytes == len(stream)
    # Finds every planted press where it was planted, unless the press is not a frame on the
    # line: a damaged frame just before it, completed by its first bytes, can happen to be
    # CRC-valid (a truncated frame's last CRC byte is A5 once in 256), and then the press's
    # sync is inside that frame. The receiver retransmits such a press, as any it had no ACK for.
    spans: list[tuple[int, int]] = []
    position = 0
    for frame in frames:
        position = stream.index(frame.raw, position)
        spans.append((position, position + len(frame.raw)))
        position += len(frame.raw)
    found = {first for first, _ in spans}
    missing = [offset for offset, _ in planted if offset not in found]
    masked = [o for o in missing if any(first < o < end for first, end in spans)]
    assert missing == masked
    accidental = len(frames) - (len(planted) - len(masked))
    record(
        "serial",
        "random bytes, sync words, bad LEN, damaged and truncated frames, presses planted",
        count=len(stream),
        lost=0,
        outcome=(
            f"{len(planted) - len(masked)} of {len(planted)} planted presses found, the other "
            f"{len(masked)} inside a CRC-valid frame that damage and the press made (the receiver "
            f"repeats it); no frame invented ({decoder.bad_crc} bad CRC, {decoder.bad_length} "
            f"bad LEN dropped, {accidental} CRC-valid frames by chance, {rejected} rejected by "
            "parse)"
        ),
    )
