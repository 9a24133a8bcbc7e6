"""Pure codec of the health watch's BLE GATT payloads, version 1 (no I/O).

The watch vendor's datasheet (specs/watch-ble.md) is implemented exactly; its hex test vectors are
the tests in ``tests/test_watch_codec.py``. Every parser takes the characteristic value as notified
(little endian) and returns a frozen dataclass, or raises ``WatchFrameError`` -- the only exception
the parsers raise -- so that the connection handler can drop and count a bad payload. The
encoders write what the watch sends (the simulated watch uses them; each is read back by its
parser in the tests) and the Alert Confirm the gateway writes.

Choices where the datasheet leaves room:

- Strict length: flags announcing more bytes than were sent, and trailing bytes beyond what the
  flags announce (or beyond a fixed-size value), are both rejected with ``WatchFrameError``. A
  Heart Rate Measurement with the RR flag must carry at least one whole RR interval (u16).
- IEEE-11073 special values (NaN, NRes, +INF, -INF, reserved) decode to ``None``: no valid reading.
  Numbers decode to the nearest float of their exact decimal value (``36.5``, not ``36.49999``).
- kPa is converted to mmHg (x 7.50062) and degF to degC, both rounded to 0.1.
- Timestamps (7 bytes) are the watch's local time, returned as naive ``datetime``; an impossible
  date or time (including the SIG's "unknown" zero year/month/day) raises ``WatchFrameError``. A
  PLX spot-check whose flags say "device clock not set" has its timestamp reported as ``None``.
- Battery levels above 100 (reserved) are reported as ``None`` rather than rejecting the payload.
- Care Alert ``watch_time`` is UTC (seconds since 2000-01-01T00:00:00Z); 0 means "not set" (None).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import IntEnum

# --- UUIDs --------------------------------------------------------------------------------------


def _sig_uuid(short: int) -> str:
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


HEART_RATE_SERVICE = _sig_uuid(0x180D)
HEART_RATE_MEASUREMENT = _sig_uuid(0x2A37)
BATTERY_SERVICE = _sig_uuid(0x180F)
BATTERY_LEVEL = _sig_uuid(0x2A19)
PULSE_OXIMETER_SERVICE = _sig_uuid(0x1822)
PLX_CONTINUOUS_MEASUREMENT = _sig_uuid(0x2A5F)
PLX_SPOT_CHECK_MEASUREMENT = _sig_uuid(0x2A5E)
BLOOD_PRESSURE_SERVICE = _sig_uuid(0x1810)
BLOOD_PRESSURE_MEASUREMENT = _sig_uuid(0x2A35)
HEALTH_THERMOMETER_SERVICE = _sig_uuid(0x1809)
TEMPERATURE_MEASUREMENT = _sig_uuid(0x2A1C)

CARE_SERVICE = "8f3c0001-6c2a-4a6e-9b1f-4c1a2e7d0b01"
CARE_ALERT = "8f3c0002-6c2a-4a6e-9b1f-4c1a2e7d0b01"
ALERT_CONFIRM = "8f3c0003-6c2a-4a6e-9b1f-4c1a2e7d0b01"
STEPS = "8f3c0004-6c2a-4a6e-9b1f-4c1a2e7d0b01"

# --- Constants ----------------------------------------------------------------------------------

KPA_TO_MMHG = 7.50062
BATTERY_MAX_PERCENT = 100
WATCH_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
RR_UNITS_PER_SECOND = 1024

_U8_MAX = 0xFF
_SFLOAT_SPECIAL = range(0x07FE, 0x0803)  # +INF, NaN, NRes, reserved, -INF (exponent 0)
_FLOAT_SPECIAL = range(0x007F_FFFE, 0x0080_0003)

_HR_U16 = 0x01
_HR_CONTACT_DETECTED = 0x02
_HR_CONTACT_SUPPORTED = 0x04
_HR_ENERGY = 0x08
_HR_RR = 0x10

_PLXC_FAST = 0x01
_PLXC_SLOW = 0x02
_PLXC_STATUS = 0x04
_PLXC_DEVICE_STATUS = 0x08
_PLXC_PAI = 0x10

_PLXS_TIMESTAMP = 0x01
_PLXS_STATUS = 0x02
_PLXS_DEVICE_STATUS = 0x04
_PLXS_PAI = 0x08
_PLXS_CLOCK_NOT_SET = 0x10

_BP_KPA = 0x01
_BP_TIMESTAMP = 0x02
_BP_PULSE = 0x04
_BP_USER = 0x08
_BP_STATUS = 0x10

_TEMP_FAHRENHEIT = 0x01
_TEMP_TIMESTAMP = 0x02
_TEMP_TYPE = 0x04

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TIMESTAMP = struct.Struct("<HBBBBB")
_CARE_ALERT = struct.Struct("<BBI")
_SFLOAT_NAN = 0x07FF
_FLOAT_NAN = 0x007F_FFFF


class WatchFrameError(ValueError):
    """A truncated or inconsistent characteristic value: drop it and count it."""


class CareEvent(IntEnum):
    """Care Alert ``event`` values the datasheet defines (others are kept as raw ints)."""

    SOS = 0x01
    FALL = 0x02
    FALL_CANCELLED = 0x03
    TAKEN_OFF = 0x04
    PUT_ON = 0x05


class AlertConfirmStatus(IntEnum):
    """Alert Confirm ``status``: what the watch shows the wearer."""

    RECEIVED = 0x01
    ACKNOWLEDGED = 0x02
    NOT_DELIVERED = 0x03


_EVENT_KINDS: dict[int, str] = {
    CareEvent.SOS: "sos",
    CareEvent.FALL: "fall",
    CareEvent.FALL_CANCELLED: "fall_cancelled",
    CareEvent.TAKEN_OFF: "taken_off",
    CareEvent.PUT_ON: "put_on",
}

# --- IEEE-11073 numbers -------------------------------------------------------------------------


def sfloat(raw: int) -> float | None:
    """IEEE-11073 16-bit SFLOAT; None for NaN, NRes, +INF, -INF and reserved."""
    if not 0 <= raw <= 0xFFFF:
        raise WatchFrameError(f"SFLOAT raw {raw} outside 0..0xFFFF")
    if raw in _SFLOAT_SPECIAL:
        return None
    return _decimal(_signed(raw & 0x0FFF, 12), _signed(raw >> 12, 4))


def float32(raw: int) -> float | None:
    """IEEE-11073 32-bit FLOAT; None for NaN, NRes, +INF, -INF and reserved."""
    if not 0 <= raw <= 0xFFFF_FFFF:
        raise WatchFrameError(f"FLOAT raw {raw} outside 0..0xFFFFFFFF")
    if raw in _FLOAT_SPECIAL:
        return None
    return _decimal(_signed(raw & 0xFF_FFFF, 24), _signed(raw >> 24, 8))


def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value & (1 << (bits - 1)) else value


def _decimal(mantissa: int, exponent: int) -> float:
    # The nearest float to the exact decimal mantissa x 10^exponent (36.5, never 36.49999...).
    return float(Decimal(mantissa).scaleb(exponent))


# --- Reader -------------------------------------------------------------------------------------


class _Reader:
    def __init__(self, name: str, data: bytes) -> None:
        self._name = name
        self._data = bytes(data)
        self._pos = 0

    def take(self, count: int, what: str) -> bytes:
        end = self._pos + count
        if end > len(self._data):
            raise WatchFrameError(
                f"{self._name}: {what} needs bytes {self._pos}..{end - 1}, "
                f"only {len(self._data)} sent"
            )
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def uint(self, count: int, what: str) -> int:
        return int.from_bytes(self.take(count, what), "little")

    def sfloat(self, what: str) -> float | None:
        return sfloat(self.uint(2, what))

    def float32(self, what: str) -> float | None:
        return float32(self.uint(4, what))

    def timestamp(self) -> datetime:
        year, month, day, hours, minutes, seconds = _TIMESTAMP.unpack(
            self.take(_TIMESTAMP.size, "timestamp")
        )
        try:
            return datetime(year, month, day, hours, minutes, seconds)  # watch local time
        except ValueError as exc:
            raise WatchFrameError(
                f"{self._name}: invalid timestamp "
                f"{year:04}-{month:02}-{day:02} {hours:02}:{minutes:02}:{seconds:02}"
            ) from exc

    def finish(self) -> None:
        if self._pos != len(self._data):
            raise WatchFrameError(
                f"{self._name}: {len(self._data) - self._pos} trailing bytes "
                f"beyond the {self._pos} the flags announce"
            )


# --- Heart rate, battery, steps -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeartRate:
    """Heart Rate Measurement (0x2A37).

    ``contact`` is None when the watch does not support contact detection. ``worn`` is False only
    when contact detection is supported and no contact is detected; then ``heart_rate`` is None
    (the value sent is not a reading). ``rr_ms`` are the RR intervals in milliseconds.
    """

    heart_rate: int | None
    contact: bool | None
    worn: bool
    energy_kj: int | None
    rr_ms: tuple[float, ...]


def parse_heart_rate(data: bytes) -> HeartRate:
    reader = _Reader("heart rate", data)
    flags = reader.uint(1, "flags")
    heart_rate = reader.uint(2 if flags & _HR_U16 else 1, "heart rate")
    energy_kj = reader.uint(2, "energy expended") if flags & _HR_ENERGY else None
    rr_ms: tuple[float, ...] = ()
    if flags & _HR_RR:
        if reader.remaining() < 2 or reader.remaining() % 2:
            raise WatchFrameError(
                f"heart rate: RR intervals need whole u16 values, {reader.remaining()} bytes sent"
            )
        count = reader.remaining() // 2
        rr_ms = tuple(
            reader.uint(2, "RR interval") * 1000 / RR_UNITS_PER_SECOND for _ in range(count)
        )
    reader.finish()
    supported = bool(flags & _HR_CONTACT_SUPPORTED)
    contact = bool(flags & _HR_CONTACT_DETECTED) if supported else None
    worn = contact is not False
    return HeartRate(
        heart_rate=heart_rate if worn else None,
        contact=contact,
        worn=worn,
        energy_kj=energy_kj,
        rr_ms=rr_ms,
    )


@dataclass(frozen=True, slots=True)
class Battery:
    """Battery Level (0x2A19) in percent; None for the reserved values 101..255."""

    level: int | None


def parse_battery(data: bytes) -> Battery:
    reader = _Reader("battery", data)
    level = reader.uint(1, "level")
    reader.finish()
    return Battery(level if level <= BATTERY_MAX_PERCENT else None)


@dataclass(frozen=True, slots=True)
class Steps:
    """Steps (vendor): steps today."""

    steps: int


def parse_steps(data: bytes) -> Steps:
    reader = _Reader("steps", data)
    steps = reader.uint(4, "steps")
    reader.finish()
    return Steps(steps)


# --- Pulse oximeter -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlxContinuous:
    """PLX Continuous Measurement (0x2A5F); every number is None on a special value or absent."""

    spo2: float | None
    pulse_rate: float | None
    spo2_fast: float | None = None
    pulse_rate_fast: float | None = None
    spo2_slow: float | None = None
    pulse_rate_slow: float | None = None
    measurement_status: int | None = None
    device_status: int | None = None
    pulse_amplitude_index: float | None = None


def parse_plx_continuous(data: bytes) -> PlxContinuous:
    reader = _Reader("PLX continuous", data)
    flags = reader.uint(1, "flags")
    spo2 = reader.sfloat("SpO2")
    pulse_rate = reader.sfloat("pulse rate")
    spo2_fast = pulse_rate_fast = spo2_slow = pulse_rate_slow = None
    if flags & _PLXC_FAST:
        spo2_fast = reader.sfloat("SpO2 fast")
        pulse_rate_fast = reader.sfloat("pulse rate fast")
    if flags & _PLXC_SLOW:
        spo2_slow = reader.sfloat("SpO2 slow")
        pulse_rate_slow = reader.sfloat("pulse rate slow")
    status = reader.uint(2, "measurement status") if flags & _PLXC_STATUS else None
    device_status = reader.uint(3, "device status") if flags & _PLXC_DEVICE_STATUS else None
    pai = reader.sfloat("pulse amplitude index") if flags & _PLXC_PAI else None
    reader.finish()
    return PlxContinuous(
        spo2=spo2,
        pulse_rate=pulse_rate,
        spo2_fast=spo2_fast,
        pulse_rate_fast=pulse_rate_fast,
        spo2_slow=spo2_slow,
        pulse_rate_slow=pulse_rate_slow,
        measurement_status=status,
        device_status=device_status,
        pulse_amplitude_index=pai,
    )


@dataclass(frozen=True, slots=True)
class PlxSpotCheck:
    """PLX Spot-Check Measurement (0x2A5E).

    ``timestamp`` is None when absent or when the flags say the device clock is not set.
    """

    spo2: float | None
    pulse_rate: float | None
    timestamp: datetime | None = None
    measurement_status: int | None = None
    device_status: int | None = None
    pulse_amplitude_index: float | None = None
    clock_set: bool = True


def parse_plx_spot_check(data: bytes) -> PlxSpotCheck:
    reader = _Reader("PLX spot-check", data)
    flags = reader.uint(1, "flags")
    spo2 = reader.sfloat("SpO2")
    pulse_rate = reader.sfloat("pulse rate")
    timestamp = reader.timestamp() if flags & _PLXS_TIMESTAMP else None
    status = reader.uint(2, "measurement status") if flags & _PLXS_STATUS else None
    device_status = reader.uint(3, "device status") if flags & _PLXS_DEVICE_STATUS else None
    pai = reader.sfloat("pulse amplitude index") if flags & _PLXS_PAI else None
    reader.finish()
    clock_set = not flags & _PLXS_CLOCK_NOT_SET
    return PlxSpotCheck(
        spo2=spo2,
        pulse_rate=pulse_rate,
        timestamp=timestamp if clock_set else None,
        measurement_status=status,
        device_status=device_status,
        pulse_amplitude_index=pai,
        clock_set=clock_set,
    )


# --- Blood pressure, temperature ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BloodPressure:
    """Blood Pressure Measurement (0x2A35); pressures in mmHg (kPa converted, rounded to 0.1)."""

    systolic: float | None
    diastolic: float | None
    map: float | None
    timestamp: datetime | None = None
    pulse_rate: float | None = None
    user_id: int | None = None
    status: int | None = None


def parse_blood_pressure(data: bytes) -> BloodPressure:
    reader = _Reader("blood pressure", data)
    flags = reader.uint(1, "flags")
    kpa = bool(flags & _BP_KPA)
    systolic = _mmhg(reader.sfloat("systolic"), kpa=kpa)
    diastolic = _mmhg(reader.sfloat("diastolic"), kpa=kpa)
    mean = _mmhg(reader.sfloat("mean arterial pressure"), kpa=kpa)
    timestamp = reader.timestamp() if flags & _BP_TIMESTAMP else None
    pulse_rate = reader.sfloat("pulse rate") if flags & _BP_PULSE else None
    user_id = reader.uint(1, "user id") if flags & _BP_USER else None
    status = reader.uint(2, "measurement status") if flags & _BP_STATUS else None
    reader.finish()
    return BloodPressure(
        systolic=systolic,
        diastolic=diastolic,
        map=mean,
        timestamp=timestamp,
        pulse_rate=pulse_rate,
        user_id=user_id,
        status=status,
    )


def _mmhg(value: float | None, *, kpa: bool) -> float | None:
    if value is None or not kpa:
        return value
    return round(value * KPA_TO_MMHG, 1)


@dataclass(frozen=True, slots=True)
class Temperature:
    """Temperature Measurement (0x2A1C) in degC (degF converted, rounded to 0.1)."""

    temperature_c: float | None
    timestamp: datetime | None = None
    type: int | None = None


def parse_temperature(data: bytes) -> Temperature:
    reader = _Reader("temperature", data)
    flags = reader.uint(1, "flags")
    value = reader.float32("temperature")
    timestamp = reader.timestamp() if flags & _TEMP_TIMESTAMP else None
    type_ = reader.uint(1, "temperature type") if flags & _TEMP_TYPE else None
    reader.finish()
    if value is not None and flags & _TEMP_FAHRENHEIT:
        value = round((value - 32) * 5 / 9, 1)
    return Temperature(temperature_c=value, timestamp=timestamp, type=type_)


# --- Vendor care service ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CareAlert:
    """Care Alert (vendor). ``event`` is the raw u8 (see ``CareEvent``; unknown values are kept).

    ``watch_time`` is None when the watch's clock is not set (0).
    """

    event: int
    alert_seq: int
    watch_time: datetime | None

    @property
    def kind(self) -> str | None:
        """The event's name ("sos", "fall", "fall_cancelled", ...); None when unknown."""
        return _EVENT_KINDS.get(self.event)

    @property
    def is_alarm(self) -> bool:
        return self.event in (CareEvent.SOS, CareEvent.FALL)


def parse_care_alert(data: bytes) -> CareAlert:
    if len(data) != _CARE_ALERT.size:
        raise WatchFrameError(f"care alert: {len(data)} bytes, expected {_CARE_ALERT.size}")
    event, alert_seq, seconds = _CARE_ALERT.unpack(data)
    watch_time = WATCH_EPOCH + timedelta(seconds=seconds) if seconds else None
    return CareAlert(event=event, alert_seq=alert_seq, watch_time=watch_time)


def encode_alert_confirm(alert_seq: int, status: int) -> bytes:
    """The Alert Confirm value for ``alert_seq`` (u8) with ``status`` (see AlertConfirmStatus)."""
    if not 0 <= alert_seq <= _U8_MAX:
        raise WatchFrameError(f"alert_seq {alert_seq} outside 0..255")
    if status not in tuple(AlertConfirmStatus):
        raise WatchFrameError(f"alert confirm status {status} outside 1..3")
    return bytes((alert_seq, status))


# --- Encoders (what the watch sends; the simulated watch and the round-trip tests use them) ----


def encode_sfloat(value: float | None) -> bytes:
    """IEEE-11073 16-bit SFLOAT (little endian); None is NaN. Exact when the value has few enough
    digits (97, 36.5, 120), otherwise rounded to the 12-bit mantissa."""
    if value is None:
        return _U16.pack(_SFLOAT_NAN)
    mantissa, exponent = _decimal_parts(value, mantissa_max=0x07FD, exponent_range=(-8, 7))
    return _U16.pack(((exponent & 0x0F) << 12) | (mantissa & 0x0FFF))


def encode_float(value: float | None) -> bytes:
    """IEEE-11073 32-bit FLOAT (little endian); None is NaN."""
    if value is None:
        return _U32.pack(_FLOAT_NAN)
    mantissa, exponent = _decimal_parts(value, mantissa_max=0x7FFFFD, exponent_range=(-128, 127))
    return _U32.pack(((exponent & 0xFF) << 24) | (mantissa & 0xFFFFFF))


def _decimal_parts(
    value: float, *, mantissa_max: int, exponent_range: tuple[int, int]
) -> tuple[int, int]:
    """The (mantissa, exponent) with the fewest decimals that states ``value`` exactly, or the
    most precise one that fits."""
    exact = Decimal(repr(value))
    low, high = exponent_range
    best: tuple[int, int] | None = None
    for exponent in range(0, low - 1, -1):
        scaled = exact.scaleb(-exponent)
        mantissa = int(scaled.to_integral_value())
        if abs(mantissa) > mantissa_max:
            break
        best = (mantissa, exponent)
        if scaled == mantissa:
            return best
    if best is not None:
        return best
    for exponent in range(1, high + 1):
        mantissa = int(exact.scaleb(-exponent).to_integral_value())
        if abs(mantissa) <= mantissa_max:
            return mantissa, exponent
    raise WatchFrameError(f"{value} does not fit an IEEE-11073 float")


def encode_timestamp(when: datetime) -> bytes:
    """The 7-byte date-time (year u16, month, day, hours, minutes, seconds)."""
    return _TIMESTAMP.pack(when.year, when.month, when.day, when.hour, when.minute, when.second)


def encode_heart_rate(
    bpm: int,
    *,
    contact: bool | None = True,
    energy_kj: int | None = None,
    rr_intervals_s: Sequence[float] = (),
) -> bytes:
    """Heart Rate Measurement (0x2A37). ``contact``: True "supported, detected", False
    "supported, not detected" (not worn), None "not supported". u16 format above 255 bpm."""
    flags = 0
    body = bytearray()
    if bpm > _U8_MAX:
        flags |= _HR_U16
        body += _U16.pack(bpm)
    else:
        body += _U8.pack(bpm)
    if contact is not None:
        flags |= _HR_CONTACT_SUPPORTED | (_HR_CONTACT_DETECTED if contact else 0)
    if energy_kj is not None:
        flags |= _HR_ENERGY
        body += _U16.pack(energy_kj)
    if rr_intervals_s:
        flags |= _HR_RR
        for rr in rr_intervals_s:
            body += _U16.pack(round(rr * RR_UNITS_PER_SECOND))
    return bytes((flags,)) + bytes(body)


def encode_battery(percent: int) -> bytes:
    """Battery Level (0x2A19)."""
    return _U8.pack(percent)


def encode_steps(steps: int) -> bytes:
    """Steps (vendor): steps today, u32."""
    return _U32.pack(steps)


def encode_plx_continuous(spo2: float | None, pulse_rate: float | None) -> bytes:
    """PLX Continuous Measurement (0x2A5F) without optional fields; None is NaN (probe off)."""
    return b"\x00" + encode_sfloat(spo2) + encode_sfloat(pulse_rate)


def encode_plx_spot_check(
    spo2: float | None, pulse_rate: float | None, *, timestamp: datetime | None = None
) -> bytes:
    """PLX Spot-Check Measurement (0x2A5E), with the measurement time when given."""
    flags = _PLXS_TIMESTAMP if timestamp is not None else 0x00
    body = encode_sfloat(spo2) + encode_sfloat(pulse_rate)
    if timestamp is not None:
        body += encode_timestamp(timestamp)
    return bytes((flags,)) + body


def encode_blood_pressure(
    systolic: float,
    diastolic: float,
    mean: float,
    *,
    kpa: bool = False,
    timestamp: datetime | None = None,
    pulse_rate: float | None = None,
    user_id: int | None = None,
    status: int | None = None,
) -> bytes:
    """Blood Pressure Measurement (0x2A35), in mmHg unless ``kpa``."""
    flags = _BP_KPA if kpa else 0x00
    body = encode_sfloat(systolic) + encode_sfloat(diastolic) + encode_sfloat(mean)
    if timestamp is not None:
        flags |= _BP_TIMESTAMP
        body += encode_timestamp(timestamp)
    if pulse_rate is not None:
        flags |= _BP_PULSE
        body += encode_sfloat(pulse_rate)
    if user_id is not None:
        flags |= _BP_USER
        body += _U8.pack(user_id)
    if status is not None:
        flags |= _BP_STATUS
        body += _U16.pack(status)
    return bytes((flags,)) + body


def encode_temperature(
    value: float,
    *,
    fahrenheit: bool = False,
    timestamp: datetime | None = None,
    temperature_type: int | None = None,
) -> bytes:
    """Temperature Measurement (0x2A1C), in degC unless ``fahrenheit``."""
    flags = _TEMP_FAHRENHEIT if fahrenheit else 0x00
    body = encode_float(value)
    if timestamp is not None:
        flags |= _TEMP_TIMESTAMP
        body += encode_timestamp(timestamp)
    if temperature_type is not None:
        flags |= _TEMP_TYPE
        body += _U8.pack(temperature_type)
    return bytes((flags,)) + body


def encode_care_alert(event: int, alert_seq: int, watch_time: int = 0) -> bytes:
    """Care Alert (vendor): event u8, alert_seq u8, watch_time u32 (0 = clock not set)."""
    return _CARE_ALERT.pack(event, alert_seq, watch_time)


def device_id(address: str) -> str:
    """The platform's id of a watch: ``watch-`` and its BLE address, upper case, no colons."""
    digits = address.replace(":", "").upper()
    if len(digits) != 12 or any(c not in "0123456789ABCDEF" for c in digits):
        raise WatchFrameError(f"BLE address {address!r} is not 6 hex bytes")
    return f"watch-{digits}"
