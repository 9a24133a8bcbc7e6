"""Fuzzing the watch's GATT parsers: only WatchFrameError, or a value within the datasheet's ranges.

The BLE link (drivers/watch/ble.py) drops and counts a payload that raises ``WatchFrameError``;
any other exception is a ``watch_handler_failed`` and, for a care alert, a new connection. So
every parser of drivers/watch/codec.py must, for any bytes at all, either raise that error or
return a value the datasheet allows -- and must accept every payload the datasheet allows.

Payloads come from a seeded generator (random, truncated, oversized, mutated spec vectors and
well-formed payloads of random flags) and from hypothesis. Counts are reduced in ``make test``;
``make soak`` runs the full seeded count and records it in docs/RELIABILITY.md.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.watch.codec import (
    BATTERY_MAX_PERCENT,
    WATCH_EPOCH,
    Battery,
    BloodPressure,
    CareAlert,
    HeartRate,
    PlxContinuous,
    PlxSpotCheck,
    Steps,
    Temperature,
    WatchFrameError,
    float32,
    parse_battery,
    parse_blood_pressure,
    parse_care_alert,
    parse_heart_rate,
    parse_plx_continuous,
    parse_plx_spot_check,
    parse_steps,
    parse_temperature,
    sfloat,
)
from tests.support.reliability import record, scaled

SEED = 20261207
PAYLOADS = scaled(12_000, 120_000)
HYPOTHESIS_EXAMPLES = 500
ATT_MAX_VALUE_BYTES = 512  # the longest attribute value BLE can carry
SFLOAT_MAX_ABS = 2048 * 10**7  # |mantissa| <= 2048, exponent <= 7
SFLOAT_SPECIALS = range(0x07FE, 0x0803)
FLOAT_SPECIALS = range(0x007F_FFFE, 0x0080_0003)
TIMESTAMP_BYTES = 7
U16_MAX, U24_MAX, U32_MAX = 0xFFFF, 0xFF_FFFF, 0xFFFF_FFFF
RR_MAX_MS = U16_MAX * 1000 / 1024

# The datasheet's vectors (specs/watch-ble.md), the seeds of the mutations.
SPEC_VECTORS: dict[str, list[str]] = {
    "heart_rate": ["06 48", "04 00", "16 4B 00 04 20 03", "09 82 00 23 01"],
    "battery": ["5A"],
    "plx_continuous": ["00 61 00 48 00", "00 FF 07 FF 07"],
    "plx_spot_check": ["01 61 00 48 00 EA 07 0B 1E 0A 0F 00"],
    "blood_pressure": [
        "04 78 00 50 00 5D 00 46 00",
        "06 8C 00 5A 00 69 00 EA 07 0B 1E 0A 0F 00 48 00",
    ],
    "temperature": ["00 6E 01 00 FF", "04 6E 01 00 FF 02", "01 DA 03 00 FF"],
    "care_alert": ["01 05 00 00 00 00", "02 06 80 51 01 00"],
    "steps": ["10 27 00 00"],
}
VECTORS = [bytes.fromhex(v) for group in SPEC_VECTORS.values() for v in group]


# --- What the datasheet allows: lengths from the flags, ranges of the values ---------------------


@dataclass(frozen=True, slots=True)
class Layout:
    """What a payload's flags announce: its exact length and where its timestamp is, if any."""

    length: int
    timestamp_at: int | None = None
    rr_tail: bool = False  # heart rate: the rest is RR intervals (at least one, whole u16s)


def _optional(flags: int, base: int, fields: list[tuple[int, int]]) -> tuple[int, int | None]:
    """Length of flags + ``base`` bytes + each (bit, size) field present; the timestamp offset."""
    length, timestamp_at = 1 + base, None
    for bit, size in fields:
        if flags & bit:
            if size == TIMESTAMP_BYTES:
                timestamp_at = length
            length += size
    return length, timestamp_at


def layout(name: str, data: bytes) -> Layout | None:
    """The layout the datasheet gives ``data`` (None when even the flags byte is missing)."""
    fixed = {"battery": 1, "steps": 4, "care_alert": 6}
    if name in fixed:
        return Layout(fixed[name])
    if not data:
        return None
    flags = data[0]
    if name == "heart_rate":
        length = 1 + (2 if flags & 0x01 else 1) + (2 if flags & 0x08 else 0)
        return Layout(length, rr_tail=bool(flags & 0x10))
    table = {
        "plx_continuous": (4, [(0x01, 4), (0x02, 4), (0x04, 2), (0x08, 3), (0x10, 2)]),
        "plx_spot_check": (4, [(0x01, 7), (0x02, 2), (0x04, 3), (0x08, 2)]),
        "blood_pressure": (6, [(0x02, 7), (0x04, 2), (0x08, 1), (0x10, 2)]),
        "temperature": (4, [(0x02, 7), (0x04, 1)]),
    }
    base, fields = table[name]
    length, timestamp_at = _optional(flags, base, fields)
    return Layout(length, timestamp_at)


def _valid_timestamp(raw: bytes) -> bool:
    year = int.from_bytes(raw[:2], "little")
    try:
        datetime(year, raw[2], raw[3], raw[4], raw[5], raw[6])
    except ValueError:
        return False
    return True


def datasheet_accepts(name: str, data: bytes) -> bool:
    """Whether the datasheet allows ``data`` (as codec.py reads it: strict lengths)."""
    shape = layout(name, data)
    if shape is None:
        return False
    if shape.rr_tail:
        rest = len(data) - shape.length
        if rest < 2 or rest % 2:
            return False
    elif len(data) != shape.length:
        return False
    if shape.timestamp_at is not None:
        return _valid_timestamp(data[shape.timestamp_at : shape.timestamp_at + TIMESTAMP_BYTES])
    return True


def _sfloat_ok(value: float | None, raw: int | None = None) -> bool:
    if raw is not None and (value is None) != (raw in SFLOAT_SPECIALS):
        return False  # a special value must never read as a number, nor a number as none
    return value is None or (math.isfinite(value) and abs(value) <= SFLOAT_MAX_ABS)


def _u16(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 2], "little")


def check_value(name: str, data: bytes, value: object) -> None:
    """Assert that a parsed ``value`` is within the datasheet's ranges for ``data``."""
    if name == "heart_rate":
        assert isinstance(value, HeartRate)
        flags = data[0]
        supported = bool(flags & 0x04)
        assert value.contact == (bool(flags & 0x02) if supported else None)
        assert value.worn == (value.contact is not False)
        if value.worn:
            assert value.heart_rate is not None and 0 <= value.heart_rate <= U16_MAX
        else:
            assert value.heart_rate is None  # not on the wrist: no reading
        assert value.energy_kj is None or 0 <= value.energy_kj <= U16_MAX
        assert all(0 <= rr <= RR_MAX_MS for rr in value.rr_ms)
    elif name == "battery":
        assert isinstance(value, Battery)
        assert value.level is None or 0 <= value.level <= BATTERY_MAX_PERCENT
        assert (value.level is None) == (data[0] > BATTERY_MAX_PERCENT)
    elif name == "steps":
        assert isinstance(value, Steps) and 0 <= value.steps <= U32_MAX
    elif name == "care_alert":
        assert isinstance(value, CareAlert)
        assert 0 <= value.event <= 0xFF and 0 <= value.alert_seq <= 0xFF
        assert value.is_alarm == (value.event in (1, 2))
        assert value.kind in {None, "sos", "fall", "fall_cancelled", "taken_off", "put_on"}
        latest = WATCH_EPOCH + timedelta(seconds=U32_MAX)
        assert value.watch_time is None or WATCH_EPOCH < value.watch_time <= latest
    elif name == "plx_continuous":
        assert isinstance(value, PlxContinuous)
        assert _sfloat_ok(value.spo2, _u16(data, 1)) and _sfloat_ok(value.pulse_rate, _u16(data, 3))
        for extra in (value.spo2_fast, value.pulse_rate_fast, value.spo2_slow):
            assert _sfloat_ok(extra)
        assert _sfloat_ok(value.pulse_rate_slow) and _sfloat_ok(value.pulse_amplitude_index)
        assert value.measurement_status is None or 0 <= value.measurement_status <= U16_MAX
        assert value.device_status is None or 0 <= value.device_status <= U24_MAX
    elif name == "plx_spot_check":
        assert isinstance(value, PlxSpotCheck)
        assert _sfloat_ok(value.spo2, _u16(data, 1)) and _sfloat_ok(value.pulse_rate, _u16(data, 3))
        assert _sfloat_ok(value.pulse_amplitude_index)
        assert value.clock_set == (not data[0] & 0x10)
        if not value.clock_set or not data[0] & 0x01:
            assert value.timestamp is None
        assert value.measurement_status is None or 0 <= value.measurement_status <= U16_MAX
        assert value.device_status is None or 0 <= value.device_status <= U24_MAX
    elif name == "blood_pressure":
        assert isinstance(value, BloodPressure)
        scale = 7.50062 if data[0] & 0x01 else 1.0
        for pressure, at in ((value.systolic, 1), (value.diastolic, 3), (value.map, 5)):
            raw = _u16(data, at)
            assert (pressure is None) == (raw in SFLOAT_SPECIALS)
            assert pressure is None or (
                math.isfinite(pressure) and abs(pressure) <= SFLOAT_MAX_ABS * scale + 0.1
            )
        assert _sfloat_ok(value.pulse_rate)
        assert value.user_id is None or 0 <= value.user_id <= 0xFF
        assert value.status is None or 0 <= value.status <= U16_MAX
    elif name == "temperature":
        assert isinstance(value, Temperature)
        raw = int.from_bytes(data[1:5], "little")
        assert (value.temperature_c is None) == (raw in FLOAT_SPECIALS)
        assert value.temperature_c is None or math.isfinite(value.temperature_c)
        assert value.type is None or 0 <= value.type <= 0xFF
    else:
        raise AssertionError(f"no range check for {name}")


PARSERS: dict[str, Callable[[bytes], object]] = {
    "heart_rate": parse_heart_rate,
    "battery": parse_battery,
    "plx_continuous": parse_plx_continuous,
    "plx_spot_check": parse_plx_spot_check,
    "blood_pressure": parse_blood_pressure,
    "temperature": parse_temperature,
    "care_alert": parse_care_alert,
    "steps": parse_steps,
}


def run_parser(name: str, data: bytes) -> bool:
    """Parse ``data``; True if accepted (and in range), False if rejected with WatchFrameError.

    Anything else -- another exception, a value out of range, a payload the datasheet allows
    rejected or one it does not allow accepted -- fails the test.
    """
    try:
        value = PARSERS[name](data)
    except WatchFrameError:
        assert not datasheet_accepts(name, data), f"{name} rejected a valid {data.hex(' ')}"
        return False
    except Exception as exc:  # what the BLE link would count as watch_handler_failed
        raise AssertionError(f"{name}({data.hex(' ')}) raised {exc!r}") from exc
    assert datasheet_accepts(name, data), f"{name} accepted an invalid {data.hex(' ')}"
    check_value(name, data, value)
    return True


# --- Payload generators -------------------------------------------------------------------------


def well_formed(rng: random.Random, name: str) -> bytes:
    """A payload the datasheet allows for ``name``: random flags, the length they announce."""
    if name in ("battery", "steps", "care_alert"):
        return rng.randbytes({"battery": 1, "steps": 4, "care_alert": 6}[name])
    flags = rng.randrange(256)
    shape = layout(name, bytes([flags]))
    assert shape is not None
    body = bytearray([flags]) + rng.randbytes(shape.length - 1)
    if shape.rr_tail:
        body += rng.randbytes(2 * rng.randint(1, 9))
    if shape.timestamp_at is not None:
        at = shape.timestamp_at
        when = datetime(2000, 1, 1) + timedelta(seconds=rng.randrange(40 * 365 * 86400))
        stamp = when.year.to_bytes(2, "little")
        stamp += bytes([when.month, when.day, when.hour, when.minute, when.second])
        body[at : at + TIMESTAMP_BYTES] = stamp
    return bytes(body)


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three random edits: flip a bit, overwrite, insert, delete, truncate, extend."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        edit = rng.randrange(6)
        at = rng.randrange(len(out) + 1)
        if edit == 0 and out:
            out[at % len(out)] ^= 1 << rng.randrange(8)
        elif edit == 1 and out:
            out[at % len(out)] = rng.randrange(256)
        elif edit == 2:
            out.insert(at, rng.randrange(256))
        elif edit == 3 and out:
            del out[at % len(out)]
        elif edit == 4:
            del out[at:]
        else:
            out += rng.randbytes(rng.randint(1, 8))
    return bytes(out)


def payloads(rng: random.Random, count: int) -> Counter[str]:
    """Feed ``count`` payloads through every parser; return how many of each class were made."""
    made: Counter[str] = Counter()
    names = list(PARSERS)
    for _ in range(count):
        roll = rng.random()
        if roll < 0.25:
            kind, data = "random", rng.randbytes(rng.randint(0, 24))
        elif roll < 0.30:
            kind, data = "oversized", rng.randbytes(rng.randint(25, ATT_MAX_VALUE_BYTES + 88))
        elif roll < 0.60:
            kind, data = "mutated_vector", mutate(rng, rng.choice(VECTORS))
        elif roll < 0.75:
            vector = rng.choice(VECTORS)
            kind, data = "truncated_vector", vector[: rng.randrange(len(vector))]
        else:
            kind, data = "well_formed", well_formed(rng, rng.choice(names))
        made[kind] += 1
        made["accepted"] += sum(run_parser(name, data) for name in names)
    return made


# --- Tests --------------------------------------------------------------------------------------


@pytest.mark.reliability
def test_every_gatt_parser_raises_only_its_error_or_returns_a_value_in_range() -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    made = payloads(rng, PAYLOADS)
    elapsed = time.monotonic() - started
    parses = PAYLOADS * len(PARSERS)
    assert made["well_formed"] > PAYLOADS // 10 and made["accepted"] >= made["well_formed"]
    record(
        "ble",
        "GATT payloads: random, oversized, truncated and mutated spec vectors, well-formed "
        "with random flags; each through all 8 parsers",
        count=PAYLOADS,
        lost=0,  # asserted in run_parser: no valid payload rejected, no other exception
        outcome=(
            f"{parses:,} parses in {elapsed:.1f} s: {made['accepted']:,} accepted within the "
            f"datasheet's ranges, {parses - made['accepted']:,} WatchFrameError, nothing else"
        ),
    )


def test_spec_vectors_pass_the_oracle() -> None:
    """The oracle agrees with the datasheet: each vector is accepted by its own parser."""
    for name, vectors in SPEC_VECTORS.items():
        for vector in vectors:
            assert run_parser(name, bytes.fromhex(vector)), (name, vector)


@settings(
    max_examples=HYPOTHESIS_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(list(PARSERS)),
    seed=st.integers(0, 2**32 - 1),
    tail=st.binary(max_size=ATT_MAX_VALUE_BYTES),
    cut=st.integers(0, 64),
)
def test_hypothesis_payloads_well_formed_cut_or_extended(
    name: str, seed: int, tail: bytes, cut: int
) -> None:
    data = well_formed(random.Random(seed), name)
    run_parser(name, data)
    run_parser(name, data[: max(0, len(data) - cut)])
    run_parser(name, data + tail)
    for other in PARSERS:  # the same bytes notified on another characteristic
        run_parser(other, data)


def test_every_sfloat_and_special_float_raw_is_a_number_or_none() -> None:
    for raw in range(U16_MAX + 1):
        value = sfloat(raw)
        assert _sfloat_ok(value, raw)
    for raw in [*FLOAT_SPECIALS, 0, U32_MAX, 0x7F7F_FFFF, 0x8080_0000]:
        value32 = float32(raw)
        assert (value32 is None) == (raw in FLOAT_SPECIALS)
        assert value32 is None or math.isfinite(value32)
