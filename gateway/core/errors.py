"""Every error carebed raises, under one root, split by what the caller should do.

::

    CarebedError
    ├── ConfigError            exit with a clear message (status 78); systemd must not restart
    ├── StateFileError         a state file (paired buttons, watches) cannot be read: never
    │   │                      taken as empty; the daemon exits 1 and systemd tries again
    │   ├── PairingError       the receiver's pairing list        (drivers.button.errors)
    │   └── WatchListError     the watch list                     (drivers.watch.errors)
    ├── StoreError             the outbox database
    │   ├── StoreCorruptError  damaged file: moved aside and reported, a fresh store is created
    │   ├── StoreFullError     no room on the disk even after making some: retry later
    │   └── StoreVersionError  schema newer than this build: stop and report (permanent)
    ├── UplinkError            the MQTT link
    │   ├── UplinkTransientError   retry with capped, jittered back-off
    │   └── UplinkAuthError        refused credentials: retry at the back-off cap, report
    ├── CommandError           a platform command that cannot be run; carries the contract's code
    │   └── InvalidCommandError  a bad field in a command with an id: answered invalid_args
    ├── ControlError           a control-socket request that cannot be served; told to the caller
    └── DriverError            a device: each driver package draws its own subtree
        ├── ReceiverError      the button receiver's serial link  (drivers.button.errors)
        ├── WatchError         a watch's BLE link, a watch check   (drivers.watch.errors)
        └── CameraError        the camera's HTTP API or relay     (drivers.camera.errors)

Frame and payload errors of the device codecs (``drivers.*.codec``) are ``ValueError``s: they are
counted rejections of bad input, never raised past the driver.
"""

from __future__ import annotations


class CarebedError(Exception):
    """Root of every error raised by the gateway core."""


class ConfigError(CarebedError):
    """The configuration is invalid. Each problem names the key, what is wrong and the fix."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__(f"{path}: " + "; ".join(problems))


class StateFileError(CarebedError):
    """A state file cannot be read (not damaged: unreadable). Never taken as 'empty'."""


class StoreError(CarebedError):
    """The outbox database failed."""


class StoreCorruptError(StoreError):
    """The outbox database is damaged."""


class StoreFullError(StoreError):
    """The disk is full: the outbox made what room it could and still cannot write."""


class StoreVersionError(StoreError):
    """The outbox database was written by a newer carebed."""


class UplinkError(CarebedError):
    """The MQTT uplink failed."""


class UplinkTransientError(UplinkError):
    """A connection attempt or link failed in a way that may pass: retry with back-off."""


class UplinkAuthError(UplinkError):
    """The broker refused the gateway's credentials."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"broker refused the connection: {reason}")


class CommandError(CarebedError):
    """A platform command failed with one of the contract's error codes."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class ControlError(CarebedError):
    """A control request that cannot be served; its message goes back to the caller."""


class DriverError(CarebedError):
    """Root of the errors of the device drivers (``drivers.*``); each draws its subtree."""
