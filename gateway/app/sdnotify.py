"""The systemd notify protocol: READY, STATUS, STOPPING and WATCHDOG datagrams to NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import structlog
from structlog.typing import FilteringBoundLogger

from gateway.core.i18n import _, ngettext

# Longest time one notification may block the caller: sendto() on a unix datagram socket waits
# while the receiver's queue is full. systemd drains its queue quickly; this only bounds the
# pathological case so that the event loop is never held for long.
SEND_TIMEOUT_S: Final = 1.0

_USEC_PER_S: Final = 1_000_000


class SystemdNotifier:
    """Tells the service manager about readiness, status, stopping and liveness.

    Without NOTIFY_SOCKET (not started by systemd, or Type= is not notify) every call is a
    no-op. Send errors are logged as ``sd_notify_failed`` and never raised: a gateway that
    cannot talk to systemd must keep relaying alarms.
    """

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        """Notify the socket at ``address`` (a path, or ``@name`` for the abstract namespace).

        ``watchdog_usec`` is the service's WatchdogSec in microseconds, None or <= 0 for none.
        """
        self._log: FilteringBoundLogger = structlog.get_logger(__name__)
        self._address = self._parse_address(address)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._sock: socket.socket | None = None
        self._closed = False
        self._consecutive_failures = 0

    @classmethod
    def from_env(cls) -> SystemdNotifier:
        """Build from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID as systemd sets them."""
        address = os.environ.get("NOTIFY_SOCKET") or None
        raw_usec = os.environ.get("WATCHDOG_USEC")
        raw_pid = os.environ.get("WATCHDOG_PID")
        watchdog_usec: int | None = None
        if raw_usec:
            log: FilteringBoundLogger = structlog.get_logger(__name__)
            try:
                watchdog_usec = int(raw_usec)
                watchdog_pid = int(raw_pid) if raw_pid else None
            except ValueError:
                log.warning("sd_watchdog_env_invalid", watchdog_usec=raw_usec, watchdog_pid=raw_pid)
                watchdog_usec = None
            else:
                if watchdog_pid is not None and watchdog_pid != os.getpid():
                    # The watchdog belongs to another process (e.g. a wrapper that exec'd us
                    # without clearing the variables): pinging it from here would lie.
                    log.info("sd_watchdog_not_ours", watchdog_pid=watchdog_pid, pid=os.getpid())
                    watchdog_usec = None
        return cls(address, watchdog_usec=watchdog_usec)

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to send to and close() was not called."""
        return self._address is not None and not self._closed

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), None when no watchdog."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / _USEC_PER_S

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (READY=1), optionally with a status line in the same datagram."""
        message = "READY=1"
        if status is not None:
            message += "\nSTATUS=" + _one_line(status)
        return self._send(message)

    def stopping(self) -> bool:
        """Shutdown has begun (STOPPING=1)."""
        return self._send("STOPPING=1")

    def status(self, text: str) -> bool:
        """Free-form status shown by ``systemctl status`` (STATUS=…)."""
        return self._send("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        """The service is alive (WATCHDOG=1); systemd restarts it if these stop."""
        return self._send("WATCHDOG=1")

    def close(self) -> None:
        """Release the socket; later notifications are silently dropped."""
        self._closed = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: str) -> bool:
        """Send one datagram; True if the kernel accepted it, False otherwise (never raises)."""
        if self._address is None or self._closed:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.settimeout(SEND_TIMEOUT_S)
                self._sock = sock
            self._sock.sendto(message.encode("utf-8", "backslashreplace"), self._address)
        except OSError as exc:  # includes TimeoutError, ConnectionRefusedError, FileNotFoundError
            self._consecutive_failures += 1
            # The first failure of a run is a warning; the repeats (a watchdog ping every few
            # seconds to a vanished socket) are debug, so they do not flood the journal.
            emit = self._log.warning if self._consecutive_failures == 1 else self._log.debug
            emit(
                "sd_notify_failed",
                notification=message,
                address=_display_address(self._address),
                errno=exc.errno,
                error=str(exc),
                consecutive_failures=self._consecutive_failures,
            )
            return False
        if self._consecutive_failures:
            self._log.info("sd_notify_recovered", failed_sends=self._consecutive_failures)
            self._consecutive_failures = 0
        return True

    def _parse_address(self, address: str | None) -> str | None:
        """Map NOTIFY_SOCKET to a sendto() address: '/path' as is, '@name' to '\\0name'."""
        if not address:
            return None
        if address.startswith("/"):
            return address
        if address.startswith("@") and len(address) > 1:
            return "\0" + address[1:]
        # e.g. "vsock:…" from systemd >= 254, which this gateway's systemd 252 never sets.
        self._log.warning("sd_notify_unsupported_address", address=address)
        return None


async def watchdog_loop(notifier: SystemdNotifier, interval_s: float) -> None:
    """Send WATCHDOG=1 every ``interval_s`` seconds from the running event loop until cancelled.

    The pings ride on the event loop on purpose: if the loop wedges, they stop, and systemd
    aborts and restarts the service once WatchdogSec has passed without one.
    """
    if not interval_s > 0:  # also rejects NaN
        raise ValueError(f"watchdog interval must be > 0 s, got {interval_s!r}")
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)


@dataclass(frozen=True, slots=True)
class GatewayState:
    """What ``systemctl status`` shows of the running gateway."""

    uplink_up: bool
    buttons: int | None  # paired buttons; None when no receiver is configured
    watches: int | None  # paired watches; None when no watch is configured
    alarms_pending: int

    def __str__(self) -> str:
        parts = [_("uplink up") if self.uplink_up else _("uplink DOWN")]
        if self.buttons is not None:
            parts.append(
                ngettext("{count} button", "{count} buttons", self.buttons).format(
                    count=self.buttons
                )
            )
        if self.watches is not None:
            parts.append(
                ngettext("{count} watch", "{count} watches", self.watches).format(
                    count=self.watches
                )
            )
        parts.append(
            ngettext("{count} alarm pending", "{count} alarms pending", self.alarms_pending).format(
                count=self.alarms_pending
            )
        )
        return _(", ").join(parts)


async def status_loop(
    notifier: SystemdNotifier,
    state: Callable[[], Awaitable[GatewayState]],
    interval_s: float,
) -> None:
    """Keep STATUS= showing ``state()``: looked at every ``interval_s``, sent when it changes."""
    if not interval_s > 0:
        raise ValueError(f"status interval must be > 0 s, got {interval_s!r}")
    shown: str | None = None
    while True:
        text = str(await state())
        if text != shown and notifier.status(text):
            shown = text
        await asyncio.sleep(interval_s)


def _one_line(text: str) -> str:
    """Keep a value on one line: a newline would start a new, forged assignment."""
    return text.replace("\r", " ").replace("\n", " ")


def _display_address(address: str) -> str:
    """The address as NOTIFY_SOCKET spells it, for logs."""
    return "@" + address[1:] if address.startswith("\0") else address
