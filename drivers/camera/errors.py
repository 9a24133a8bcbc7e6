"""Typed errors of the camera's HTTP API, split by what the caller should do.

::

    CameraError                  root: anything the camera driver raises (a DriverError)
    ├── CameraUnavailableError   transient: 5xx, timeout, refused or dropped connection -> retry
    │                            with back-off within a bounded total time
    ├── CameraBusyError          409: a call is already running (``call_id``) -> follow that call
    ├── CameraAuthError          401: bad credentials -> report, never retry in a loop
    ├── CameraPrivacyError       423: the privacy shutter is closed -> report, never override
    ├── CameraProtocolError      an answer that does not fit the datasheet -> report
    ├── CameraCertificateError   the TLS peer is not the pinned certificate -> report; nothing
    │                            (no credentials, no body) was sent
    └── CameraConfigError        base URL / pin do not fit together -> exit with a clear message
"""

from __future__ import annotations

from gateway.core.errors import DriverError


class CameraError(DriverError):
    """Root of every error of the camera driver."""


class CameraUnavailableError(CameraError):
    """Transient: 5xx answer (``status``), timeout or connection error (``status`` is None)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CameraBusyError(CameraError):
    """409: the camera already runs the call ``call_id``; that call serves this trigger."""

    def __init__(self, call_id: str) -> None:
        super().__init__(f"camera busy with call {call_id!r}")
        self.call_id = call_id


class CameraAuthError(CameraError):
    """401: the camera refused the user and password (Digest)."""


class CameraPrivacyError(CameraError):
    """423: the senior closed the privacy shutter."""


class CameraProtocolError(CameraError):
    """The camera answered something the datasheet does not allow (status, body or shape)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class CameraCertificateError(CameraError):
    """The camera's TLS certificate does not match the pinned SHA-256 fingerprint."""

    def __init__(self, *, expected: str, actual: str | None) -> None:
        super().__init__(f"camera certificate sha256 {actual} is not the pinned {expected}")
        self.expected = expected
        self.actual = actual


class CameraConfigError(CameraError):
    """The camera configuration cannot work (for instance https without a pinned fingerprint)."""
