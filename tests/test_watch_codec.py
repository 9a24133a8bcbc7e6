"""The watch codec against the datasheet's hex vectors, its parsers' properties, and its
encoders read back by its parsers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.watch.codec import (
    ALERT_CONFIRM,
    BATTERY_LEVEL,
    CARE_ALERT,
    CARE_SERVICE,
    HEART_RATE_MEASUREMENT,
    HEART_RATE_SERVICE,
    KPA_TO_MMHG,
    RR_UNITS_PER_SECOND,
    STEPS,
    TEMPERATURE_MEASUREMENT,
    WATCH_EPOCH,
    AlertConfirmStatus,
    Battery,
    BloodPressure,
    CareAlert,
    HeartRate,
    PlxContinuous,
    PlxSpotCheck,
    Steps,
    Temperature,
    WatchFrameError,
    device_id,
    encode_alert_confirm,
    encode_battery,
    encode_blood_pressure,
    encode_care_alert,
    encode_float,
    encode_heart_rate,
    encode_plx_continuous,
    encode_plx_spot_check,
    encode_sfloat,
    encode_steps,
    encode_temperature,
    encode_timestamp,
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

PARSERS: list[Callable[[bytes], object]] = [
    parse_heart_rate,
    parse_battery,
    parse_plx_continuous,
    parse_plx_spot_check,
    parse_blood_pressure,
    parse_temperature,
    parse_care_alert,
    parse_steps,
]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- Datasheet vectors --------------------------------------------------------------------------


def test_heart_rate_contact_detected_72() -> None:
    assert parse_heart_rate(h("06 48")) == HeartRate(72, True, True, None, ())


def test_heart_rate_not_worn_is_no_reading() -> None:
    assert parse_heart_rate(h("04 00")) == HeartRate(None, False, False, None, ())


def test_heart_rate_rr_intervals() -> None:
    assert parse_heart_rate(h("16 4B 00 04 20 03")) == HeartRate(
        75, True, True, None, (1000.0, 781.25)
    )


def test_heart_rate_u16_and_energy() -> None:
    # No contact bits: not supported, so contact is None and the watch counts as worn.
    assert parse_heart_rate(h("09 82 00 23 01")) == HeartRate(130, None, True, 291, ())


def test_battery_90() -> None:
    assert parse_battery(h("5A")) == Battery(90)


def test_plx_continuous_97_72() -> None:
    assert parse_plx_continuous(h("00 61 00 48 00")) == PlxContinuous(spo2=97.0, pulse_rate=72.0)


def test_plx_continuous_probe_off_is_no_reading() -> None:
    assert parse_plx_continuous(h("00 FF 07 FF 07")) == PlxContinuous(spo2=None, pulse_rate=None)


def test_blood_pressure_with_pulse() -> None:
    bp = parse_blood_pressure(h("04 78 00 50 00 5D 00 46 00"))
    assert bp == BloodPressure(120.0, 80.0, 93.0, pulse_rate=70.0)


def test_blood_pressure_with_timestamp() -> None:
    bp = parse_blood_pressure(h("06 8C 00 5A 00 69 00 EA 07 0B 1E 0A 0F 00 48 00"))
    assert bp == BloodPressure(
        140.0, 90.0, 105.0, timestamp=datetime(2026, 11, 30, 10, 15, 0), pulse_rate=72.0
    )


def test_temperature_celsius() -> None:
    assert parse_temperature(h("00 6E 01 00 FF")) == Temperature(36.6)


def test_temperature_type() -> None:
    assert parse_temperature(h("04 6E 01 00 FF 02")) == Temperature(36.6, type=2)


def test_temperature_fahrenheit_converted() -> None:
    assert parse_temperature(h("01 DA 03 00 FF")) == Temperature(37.0)


@pytest.mark.parametrize(
    ("raw", "value"),
    [("6D F1", 36.5), ("FF 07", None), ("00 08", None), ("FE 07", None), ("02 08", None)],
)
def test_sfloat_vectors(raw: str, value: float | None) -> None:
    assert sfloat(int.from_bytes(h(raw), "little")) == value


def test_sfloat_reserved_is_none() -> None:
    assert sfloat(0x0801) is None


@pytest.mark.parametrize("raw", [0x007FFFFF, 0x00800000, 0x007FFFFE, 0x00800002, 0x00800001])
def test_float32_specials_are_none(raw: int) -> None:
    assert float32(raw) is None


def test_float32_exact_decimal() -> None:
    assert float32(0xFF00016E) == 36.6
    assert repr(float32(0xFE000E47)) == "36.55"


def test_care_alert_sos_clock_not_set() -> None:
    alert = parse_care_alert(h("01 05 00 00 00 00"))
    assert alert == CareAlert(event=1, alert_seq=5, watch_time=None)
    assert alert.kind == "sos"


def test_care_alert_fall_with_time() -> None:
    alert = parse_care_alert(h("02 06 80 51 01 00"))
    assert alert == CareAlert(event=2, alert_seq=6, watch_time=datetime(2000, 1, 2, tzinfo=UTC))
    assert alert.kind == "fall"


@pytest.mark.parametrize(
    ("event", "kind"),
    [(3, "fall_cancelled"), (4, "taken_off"), (5, "put_on"), (0, None), (0x42, None)],
)
def test_care_alert_kinds_unknown_kept(event: int, kind: str | None) -> None:
    alert = parse_care_alert(bytes((event, 1, 0, 0, 0, 0)))
    assert (alert.event, alert.kind) == (event, kind)


def test_steps() -> None:
    assert parse_steps(h("10 27 00 00")) == Steps(10000)


def test_alert_confirm() -> None:
    assert encode_alert_confirm(5, AlertConfirmStatus.RECEIVED) == h("05 01")
    assert encode_alert_confirm(255, 3) == h("FF 03")
    for seq, status in ((256, 1), (-1, 1), (1, 0), (1, 4)):
        with pytest.raises(WatchFrameError):
            encode_alert_confirm(seq, status)


def test_device_id_and_uuids() -> None:
    assert device_id("aa:bb:cc:dd:ee:ff") == "watch-AABBCCDDEEFF"
    with pytest.raises(WatchFrameError):
        device_id("AA:BB:CC")
    assert HEART_RATE_MEASUREMENT == "00002a37-0000-1000-8000-00805f9b34fb"
    assert HEART_RATE_SERVICE == "0000180d-0000-1000-8000-00805f9b34fb"
    assert BATTERY_LEVEL == "00002a19-0000-1000-8000-00805f9b34fb"
    assert TEMPERATURE_MEASUREMENT == "00002a1c-0000-1000-8000-00805f9b34fb"
    assert CARE_SERVICE == "8f3c0001-6c2a-4a6e-9b1f-4c1a2e7d0b01"
    assert CARE_ALERT.startswith("8f3c0002")
    assert ALERT_CONFIRM.startswith("8f3c0003")
    assert STEPS.startswith("8f3c0004")


# --- Conversions and optional fields ------------------------------------------------------------


def test_blood_pressure_kpa_converted() -> None:
    # 16.0 / 10.7 / 12.4 kPa (exponent -1), pulse stays in bpm.
    bp = parse_blood_pressure(h("05 A0 F0 6B F0 7C F0 46 00"))
    assert (bp.systolic, bp.diastolic, bp.map, bp.pulse_rate) == (120.0, 80.3, 93.0, 70.0)


def test_blood_pressure_user_and_status() -> None:
    bp = parse_blood_pressure(h("18 78 00 50 00 5D 00 02 05 00"))
    assert (bp.user_id, bp.status, bp.pulse_rate, bp.timestamp) == (2, 5, None, None)


def test_temperature_fahrenheit_with_timestamp() -> None:
    # 100.4 degF = 38.0 degC, 2026-01-31 23:59:59.
    t = parse_temperature(h("03 EC 03 00 FF EA 07 01 1F 17 3B 3B"))
    assert t == Temperature(38.0, timestamp=datetime(2026, 1, 31, 23, 59, 59))


def test_plx_continuous_all_optional_fields() -> None:
    plx = parse_plx_continuous(h("1F 61 00 48 00 62 00 49 00 60 00 47 00 34 12 01 02 03 FF 07"))
    assert plx == PlxContinuous(97.0, 72.0, 98.0, 73.0, 96.0, 71.0, 0x1234, 0x030201, None)


def test_plx_spot_check_timestamp_and_clock_not_set() -> None:
    stamp = "EA 07 0B 1E 0A 0F 00"
    plx = parse_plx_spot_check(h("01 61 00 48 00 " + stamp))
    assert (plx.spo2, plx.pulse_rate, plx.timestamp) == (97.0, 72.0, datetime(2026, 11, 30, 10, 15))
    unset = parse_plx_spot_check(h("11 61 00 48 00 " + stamp))
    assert (unset.timestamp, unset.clock_set) == (None, False)


def test_battery_reserved_is_none() -> None:
    assert parse_battery(h("65")) == Battery(None)


# --- Rejected payloads --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "payload"),
    [
        (parse_heart_rate, ""),
        (parse_heart_rate, "01 82"),  # u16 heart rate, one byte
        (parse_heart_rate, "08 48 23"),  # energy announced, one byte
        (parse_heart_rate, "10 48"),  # RR announced, none sent
        (parse_heart_rate, "10 48 00 04 20"),  # half an RR interval
        (parse_heart_rate, "06 48 00"),  # trailing byte
        (parse_battery, ""),
        (parse_battery, "5A 00"),
        (parse_plx_continuous, "00 61 00 48"),
        (parse_plx_continuous, "01 61 00 48 00 62 00"),
        (parse_plx_continuous, "08 61 00 48 00 01 02"),
        (parse_plx_continuous, "00 61 00 48 00 00"),
        (parse_plx_spot_check, "01 61 00 48 00 EA 07 0B 1E 0A 0F"),
        (parse_blood_pressure, "04 78 00 50 00 5D 00"),
        (parse_blood_pressure, "02 78 00 50 00 5D 00 EA 07 0B"),
        (parse_blood_pressure, "00 78 00 50 00 5D 00 46"),
        (parse_blood_pressure, "02 78 00 50 00 5D 00 EA 07 0D 1E 0A 0F 00"),  # month 13
        (parse_blood_pressure, "02 78 00 50 00 5D 00 EA 07 02 1E 0A 0F 00"),  # 30 February
        (parse_blood_pressure, "02 78 00 50 00 5D 00 EA 07 0B 1E 18 0F 00"),  # 24 h
        (parse_temperature, "00 6E 01 00"),
        (parse_temperature, "04 6E 01 00 FF"),
        (parse_temperature, "00 6E 01 00 FF 02"),
        (parse_care_alert, "01 05 00 00 00"),
        (parse_care_alert, "01 05 00 00 00 00 00"),
        (parse_steps, "10 27 00"),
        (parse_steps, "10 27 00 00 00"),
    ],
)
def test_truncated_or_inconsistent_rejected(parse: Callable[[bytes], object], payload: str) -> None:
    with pytest.raises(WatchFrameError):
        parse(h(payload))


# --- Properties ---------------------------------------------------------------------------------


@pytest.mark.parametrize("parse", PARSERS)
@given(data=st.binary(max_size=40))
def test_parsers_raise_only_watch_frame_error(
    parse: Callable[[bytes], object], data: bytes
) -> None:
    with contextlib.suppress(WatchFrameError):
        parse(data)


def _exact(value: float | None) -> Fraction:
    assert value is not None
    return Fraction(repr(value))  # the shortest decimal that round-trips


@given(
    mantissa=st.integers(-2048, 2047),
    exponent=st.integers(-8, 7),
)
def test_sfloat_round_trip(mantissa: int, exponent: int) -> None:
    raw = ((exponent & 0xF) << 12) | (mantissa & 0xFFF)
    if exponent == 0 and 0x07FE <= raw <= 0x0802:
        assert sfloat(raw) is None
    else:
        assert _exact(sfloat(raw)) == Fraction(Decimal(mantissa).scaleb(exponent))


@given(
    mantissa=st.integers(-(2**23), 2**23 - 1),
    exponent=st.integers(-128, 127),
)
def test_float32_round_trip(mantissa: int, exponent: int) -> None:
    raw = ((exponent & 0xFF) << 24) | (mantissa & 0xFF_FFFF)
    if exponent == 0 and 0x007F_FFFE <= raw <= 0x0080_0002:
        assert float32(raw) is None
    else:
        assert _exact(float32(raw)) == Fraction(Decimal(mantissa).scaleb(exponent))


@given(raw=st.integers(0, 0xFFFF))
def test_sfloat_any_raw_is_number_or_none(raw: int) -> None:
    value = sfloat(raw)
    assert value is None or isinstance(value, float)


def test_sfloat_out_of_range_rejected() -> None:
    with pytest.raises(WatchFrameError):
        sfloat(0x10000)
    with pytest.raises(WatchFrameError):
        float32(-1)


# --- Encoders: what they write, the parsers read back -------------------------------------------


def _decimals(max_mantissa: int, exponents: tuple[int, int]) -> st.SearchStrategy[float]:
    """Numbers the watch states exactly: a mantissa that fits, a small power of ten."""
    return st.builds(
        lambda mantissa, exponent: float(Decimal(mantissa).scaleb(exponent)),
        st.integers(-max_mantissa, max_mantissa),
        st.integers(*exponents),
    )


SFLOATS = _decimals(0x07FD, (-3, 3))
FLOATS = _decimals(0x7F_FFFD, (-6, 3))
READINGS = st.none() | SFLOATS
TIMESTAMPS = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda when: when.replace(microsecond=0)
)
U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)


@given(value=SFLOATS)
def test_sfloat_encoder_round_trip(value: float) -> None:
    assert sfloat(int.from_bytes(encode_sfloat(value), "little")) == value


@given(value=FLOATS)
def test_float_encoder_round_trip(value: float) -> None:
    assert float32(int.from_bytes(encode_float(value), "little")) == value


def test_float_encoders_nan_and_too_large() -> None:
    assert sfloat(int.from_bytes(encode_sfloat(None), "little")) is None
    assert float32(int.from_bytes(encode_float(None), "little")) is None
    with pytest.raises(WatchFrameError):
        encode_sfloat(1e20)
    with pytest.raises(WatchFrameError):
        encode_float(1e200)


@given(when=TIMESTAMPS)
def test_timestamp_round_trip(when: datetime) -> None:
    assert parse_plx_spot_check(b"\x01" + encode_sfloat(97) * 2 + encode_timestamp(when)) == (
        PlxSpotCheck(97.0, 97.0, timestamp=when)
    )


@given(
    bpm=st.integers(0, 0xFFFF),
    contact=st.none() | st.booleans(),
    energy_kj=st.none() | U16,
    rr_units=st.lists(U16, max_size=8),
)
def test_heart_rate_round_trip(
    bpm: int, contact: bool | None, energy_kj: int | None, rr_units: list[int]
) -> None:
    rr_s = [units / RR_UNITS_PER_SECOND for units in rr_units]
    reading = parse_heart_rate(
        encode_heart_rate(bpm, contact=contact, energy_kj=energy_kj, rr_intervals_s=rr_s)
    )
    worn = contact is not False
    assert reading == HeartRate(
        heart_rate=bpm if worn else None,
        contact=contact,
        worn=worn,
        energy_kj=energy_kj,
        rr_ms=tuple(units * 1000 / RR_UNITS_PER_SECOND for units in rr_units),
    )


@given(percent=U8)
def test_battery_round_trip(percent: int) -> None:
    assert parse_battery(encode_battery(percent)) == Battery(percent if percent <= 100 else None)


@given(steps=st.integers(0, 0xFFFF_FFFF))
def test_steps_round_trip(steps: int) -> None:
    assert parse_steps(encode_steps(steps)) == Steps(steps)


@given(spo2=READINGS, pulse_rate=READINGS)
def test_plx_continuous_round_trip(spo2: float | None, pulse_rate: float | None) -> None:
    assert parse_plx_continuous(encode_plx_continuous(spo2, pulse_rate)) == PlxContinuous(
        spo2, pulse_rate
    )


@given(spo2=READINGS, pulse_rate=READINGS, timestamp=st.none() | TIMESTAMPS)
def test_plx_spot_check_round_trip(
    spo2: float | None, pulse_rate: float | None, timestamp: datetime | None
) -> None:
    payload = encode_plx_spot_check(spo2, pulse_rate, timestamp=timestamp)
    assert parse_plx_spot_check(payload) == PlxSpotCheck(spo2, pulse_rate, timestamp=timestamp)


@given(
    pressures=st.tuples(SFLOATS, SFLOATS, SFLOATS),
    kpa=st.booleans(),
    timestamp=st.none() | TIMESTAMPS,
    pulse_rate=READINGS,
    user_id=st.none() | U8,
    status=st.none() | U16,
)
def test_blood_pressure_round_trip(
    *,
    pressures: tuple[float, float, float],
    kpa: bool,
    timestamp: datetime | None,
    pulse_rate: float | None,
    user_id: int | None,
    status: int | None,
) -> None:
    payload = encode_blood_pressure(
        *pressures,
        kpa=kpa,
        timestamp=timestamp,
        pulse_rate=pulse_rate,
        user_id=user_id,
        status=status,
    )
    systolic, diastolic, mean = (round(p * KPA_TO_MMHG, 1) if kpa else p for p in pressures)
    assert parse_blood_pressure(payload) == BloodPressure(
        systolic, diastolic, mean, timestamp, pulse_rate, user_id, status
    )


@given(
    value=FLOATS,
    fahrenheit=st.booleans(),
    timestamp=st.none() | TIMESTAMPS,
    temperature_type=st.none() | U8,
)
def test_temperature_round_trip(
    value: float, fahrenheit: bool, timestamp: datetime | None, temperature_type: int | None
) -> None:
    payload = encode_temperature(
        value, fahrenheit=fahrenheit, timestamp=timestamp, temperature_type=temperature_type
    )
    celsius = round((value - 32) * 5 / 9, 1) if fahrenheit else value
    assert parse_temperature(payload) == Temperature(celsius, timestamp, temperature_type)


@given(event=U8, alert_seq=U8, watch_time=st.integers(0, 0xFFFF_FFFF))
def test_care_alert_round_trip(event: int, alert_seq: int, watch_time: int) -> None:
    when = WATCH_EPOCH + timedelta(seconds=watch_time) if watch_time else None
    assert parse_care_alert(encode_care_alert(event, alert_seq, watch_time)) == CareAlert(
        event, alert_seq, when
    )
