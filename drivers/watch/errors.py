"""Typed errors of the watch driver, split by what the caller should do.

::

    WatchError             root: anything the watch driver raises (a DriverError)
    ├── WatchLinkError     the BLE link was lost or failed -> reconnect with back-off
    ├── WatchCheckError    a watch could not be checked (not found, refused, unreadable) -> tell
    │                      the installer why, never retry in a loop
    └── WatchListError     the watch list cannot be read or written -> never taken as empty; it
                           is also a ``StateFileError`` (the daemon exits 1, systemd tries again)

``LINK_ERRORS`` are what bleak and BlueZ raise when a link or a GATT operation fails (a stalled
BlueZ shows as a timeout, a dropped bus connection as ``EOFError``): the watch's code catches them
under that one name, at the edge, and turns them into the errors above or a counted retry.
"""

from __future__ import annotations

from bleak.exc import BleakError

from gateway.core.errors import DriverError, StateFileError

LINK_ERRORS: tuple[type[Exception], ...] = (BleakError, TimeoutError, EOFError, OSError)


class WatchError(DriverError):
    """Root of every error of the watch driver."""


class WatchLinkError(WatchError):
    """The link to a watch is lost or must be made again (stalled, silent, refused writes)."""


class WatchCheckError(WatchError):
    """A watch could not be checked (not found, refused the connection): the reason says why."""


class WatchListError(WatchError, StateFileError):
    """The watch list cannot be read or written (not damaged: unreadable)."""
