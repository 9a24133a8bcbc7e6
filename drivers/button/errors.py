"""Typed errors of the button driver, split by what the caller should do.

::

    DriverError                       (gateway.core.errors)
    └── ReceiverError                 root: the button receiver's serial link
        └── ReceiverUnavailableError  not connected, or it did not take a frame -> tell the
                                      caller to try later (the link reopens the port itself)

    StateFileError                    (gateway.core.errors)
    └── PairingError                  the pairing list cannot be read or written -> never taken
                                      as "no buttons"; the daemon exits 1 and systemd tries again

``PairingError`` is a state-file error, not a receiver's: what to do about it is the same for
every state file. It is defined here so that the driver's errors are found in one place.
"""

from __future__ import annotations

from gateway.core.errors import DriverError, StateFileError

__all__ = ["PairingError", "ReceiverError", "ReceiverUnavailableError"]


class ReceiverError(DriverError):
    """Root of the errors of the button receiver's serial link."""


class ReceiverUnavailableError(ReceiverError):
    """The receiver cannot be used now (``port`` is where it was last seen, None if never)."""

    def __init__(self, message: str, *, port: str | None) -> None:
        super().__init__(message)
        self.port = port


class PairingError(StateFileError):
    """The pairing list cannot be read or written (not damaged: unreadable)."""
