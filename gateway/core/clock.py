"""Wall time, monotonic time and the clock's synchronisation state, injectable for tests."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
_TIME_ERROR = 5  # adjtimex(2): clock not synchronised
_TIMEX_BYTES = 512  # larger than struct timex on every Linux ABI; modes=0 reads only


class Clock(Protocol):
    """Where the gateway reads time from."""

    def wall(self) -> float:
        """Seconds since the Unix epoch (may be far off before the first sync)."""
        ...

    def monotonic_ns(self) -> int:
        """Nanoseconds of a clock that never jumps, shared by every process of this boot."""
        ...

    def is_synced(self) -> bool:
        """Whether the wall clock is known to be synchronised."""
        ...


class _Adjtimex:
    """The kernel's view (adjtimex with modes=0, read-only); libc is loaded once."""

    def __init__(self) -> None:
        self._call: Callable[[ctypes.Array[ctypes.c_char]], int] | None = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            self._call = libc.adjtimex
        except (OSError, AttributeError):
            self._call = None

    def synced(self) -> bool | None:
        if self._call is None:
            return None
        buffer = ctypes.create_string_buffer(_TIMEX_BYTES)
        state = int(self._call(buffer))
        if state < 0:
            return None
        return state != _TIME_ERROR


class SystemClock:
    """The host's clocks; synchronised when systemd-timesyncd says so or the kernel does."""

    def __init__(self, flag_file: Path = TIMESYNC_FLAG, *, cache_s: float = 1.0) -> None:
        self._flag_file = flag_file
        self._adjtimex = _Adjtimex()
        self._cache_s = cache_s
        self._checked_at = -float("inf")
        self._synced = False

    def wall(self) -> float:
        return time.time()

    def monotonic_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def is_synced(self) -> bool:
        """Read at most once a second: every event asks, the answer changes once per boot."""
        now = time.monotonic()
        if now - self._checked_at >= self._cache_s:
            self._synced = self._flag_file.exists() or bool(self._adjtimex.synced())
            self._checked_at = now
        return self._synced


class ManualClock:
    """A clock the tests move by hand."""

    def __init__(self, wall: float = 1_700_000_000.0, *, synced: bool = True) -> None:
        self._wall = wall
        self._mono_ns = 1_000_000_000
        self.synced = synced

    def wall(self) -> float:
        return self._wall

    def monotonic_ns(self) -> int:
        return self._mono_ns

    def is_synced(self) -> bool:
        return self.synced

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono_ns += int(seconds * 1e9)

    def set_wall(self, wall: float) -> None:
        """A clock step, as NTP makes it: wall time jumps, monotonic time does not."""
        self._wall = wall


def read_boot_id(path: Path = BOOT_ID_FILE) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return "unknown"


def format_ts(moment: datetime) -> str:
    """RFC 3339, UTC, millisecond precision, ``Z`` suffix."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def ts_from_unix(seconds: float) -> str:
    return format_ts(datetime.fromtimestamp(seconds, UTC))
