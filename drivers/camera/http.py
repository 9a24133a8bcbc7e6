"""Client of the camera's HTTP trigger API, version 1 (Digest auth, pinned TLS, typed errors).

Implements ``specs/camera-http.md`` section 1. Every request is bounded by ``request_timeout_s``
(httpx's per-operation timeouts plus an overall ``asyncio.timeout``), and every failure surfaces as
a ``drivers.camera.errors.CameraError`` subclass: a camera answering garbage never crashes the
caller.

Certificate pinning
-------------------
Cameras present a self-signed certificate that is pinned by the SHA-256 of its DER encoding. No
CA can vouch for it, so the SSL context does not verify a chain (``CERT_NONE``, no hostname check)
and the pin is checked instead, *inside the TLS handshake*: ``SSLContext.sslobject_class`` (a
documented hook since Python 3.7) makes every ``wrap_bio`` of this context return
``_PinnedSSLObject``, whose ``do_handshake`` compares the peer certificate's DER SHA-256 with the
pin as soon as the handshake completes and raises ``ssl.SSLCertVerificationError`` otherwise.
httpcore (through anyio or asyncio's SSL protocol) runs TLS over memory BIOs with exactly this
object, so the failed handshake aborts the connection before httpx writes a single byte of HTTP:
no request line, no ``Authorization`` header, no body ever leaves the gateway. Checking after the
request (a response hook, ``response.extensions["network_stream"]``) would be too late, and
trusting the certificate as a CA would also depend on its validity dates and extensions, which
self-signed camera certificates often get wrong; the fingerprint is what the installer recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import ssl
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Literal, Self
from urllib.parse import quote

import httpx

from drivers.camera.errors import (
    CameraAuthError,
    CameraBusyError,
    CameraCertificateError,
    CameraConfigError,
    CameraError,
    CameraPrivacyError,
    CameraProtocolError,
    CameraUnavailableError,
)

REQUEST_TIMEOUT_S = 5.0
CALL_STATES: Final = frozenset({"ringing", "connected", "ended", "failed"})
CALL_REASONS: Final = frozenset({"alarm", "platform"})
_FINGERPRINT_HEX = re.compile(r"^[0-9a-f]{64}$")
_HTTP_SERVER_ERROR = 500

CallReason = Literal["alarm", "platform"]


@dataclass(frozen=True, slots=True)
class CameraStatus:
    """``GET /api/v1/status``."""

    model: str
    firmware: str
    privacy_mode: bool


@dataclass(frozen=True, slots=True)
class CallStarted:
    """``POST /api/v1/calls`` accepted (201)."""

    call_id: str
    state: str


@dataclass(frozen=True, slots=True)
class CallState:
    """``GET /api/v1/calls/{call_id}``; ``reason`` is the camera's free text (or None)."""

    call_id: str
    state: str
    reason: str | None


def normalize_fingerprint(fingerprint: str) -> str:
    """Lower-case hex without separators; CameraConfigError unless it is 32 bytes of SHA-256."""
    hexdigits = fingerprint.replace(":", "").replace(" ", "").lower()
    if not _FINGERPRINT_HEX.match(hexdigits):
        raise CameraConfigError(
            "camera TLS fingerprint must be the SHA-256 of the certificate (64 hex digits, "
            "colons allowed)"
        )
    return hexdigits


class _PinMismatchError(ssl.SSLCertVerificationError):
    """Raised in the handshake when the peer certificate is not the pinned one."""

    def __init__(self, expected: str, actual: str | None) -> None:
        super().__init__(f"certificate sha256 {actual} does not match the pin {expected}")
        self.expected = expected
        self.actual = actual


def pinned_ssl_context(fingerprint: str) -> ssl.SSLContext:
    """A client SSL context that accepts exactly the certificate with this SHA-256 fingerprint."""
    expected = normalize_fingerprint(fingerprint)

    class _PinnedSSLObject(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()
            der = self.getpeercert(binary_form=True)
            actual = hashlib.sha256(der).hexdigest() if der else None
            if actual != expected:
                raise _PinMismatchError(expected, actual)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The chain is not verified by a CA: the pin in _PinnedSSLObject replaces it (module docstring).
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.sslobject_class = _PinnedSSLObject
    return context


def _pin_mismatch(exc: BaseException) -> _PinMismatchError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _PinMismatchError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class HttpCamera:
    """The camera's HTTP API. Use as ``async with HttpCamera(...) as camera``.

    ``base_url`` is ``http://host[:port]`` or ``https://host[:port]``; https requires
    ``fingerprint_sha256`` (the pinned certificate) and http refuses one. ``transport`` is for
    unit tests (``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        user: str,
        password: str,
        fingerprint_sha256: str | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme == "https":
            if fingerprint_sha256 is None:
                raise CameraConfigError("https camera needs its certificate's SHA-256 fingerprint")
            verify: ssl.SSLContext | bool = pinned_ssl_context(fingerprint_sha256)
        elif url.scheme == "http":
            if fingerprint_sha256 is not None:
                raise CameraConfigError("a certificate fingerprint needs an https:// camera URL")
            verify = False  # plain http: no TLS at all (and no CA bundle loaded on the loop)
        else:
            raise CameraConfigError(f"camera URL must be http:// or https://, not {base_url!r}")
        self.base_url = str(url).rstrip("/")
        self.request_timeout_s = request_timeout_s
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            auth=httpx.DigestAuth(user, password),
            verify=verify,
            timeout=httpx.Timeout(request_timeout_s),
            transport=transport,
            trust_env=False,  # no proxy or CA bundle from the environment for a LAN device
            follow_redirects=False,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- API ------------------------------------------------------------------------------------

    async def status(self) -> CameraStatus:
        """Reachability check: model, firmware and whether the privacy shutter is closed."""
        body = _object(await self._request("GET", "/api/v1/status", expect=200))
        return CameraStatus(
            model=_string(body, "model"),
            firmware=_string(body, "firmware"),
            privacy_mode=_boolean(body, "privacy_mode"),
        )

    async def start_call(self, reason: CallReason, alarm_id: str | None) -> CallStarted:
        """Ask the camera to call the platform. CameraBusyError names the call already running."""
        if reason not in CALL_REASONS:
            raise ValueError(f"call reason must be one of {sorted(CALL_REASONS)}, not {reason!r}")
        payload = {"reason": reason, "alarm_id": alarm_id, "callee": "platform"}
        body = _object(await self._request("POST", "/api/v1/calls", expect=201, json_body=payload))
        return CallStarted(call_id=_call_id(body), state=_state(body))

    async def call_state(self, call_id: str) -> CallState:
        """Where the call ``call_id`` is: ringing, connected, ended or failed."""
        body = _object(await self._request("GET", _call_path(call_id), expect=200))
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise CameraProtocolError(f"call reason is not a string: {reason!r}")
        return CallState(call_id=_call_id(body), state=_state(body), reason=reason)

    async def hang_up(self, call_id: str) -> None:
        """End the call ``call_id``."""
        await self._request("DELETE", _call_path(call_id), expect=204)

    # --- the edge: httpx and HTTP statuses become CameraError -----------------------------------

    async def _request(
        self, method: str, path: str, *, expect: int, json_body: dict[str, Any] | None = None
    ) -> Any:
        try:
            async with asyncio.timeout(self.request_timeout_s):
                response = await self._client.request(method, path, json=json_body)
        except TimeoutError as exc:
            raise CameraUnavailableError(f"{method} {path}: no answer in time") from exc
        except httpx.TimeoutException as exc:
            raise CameraUnavailableError(f"{method} {path}: timeout ({exc!r})") from exc
        except httpx.TransportError as exc:
            mismatch = _pin_mismatch(exc)
            if mismatch is not None:
                raise CameraCertificateError(
                    expected=mismatch.expected, actual=mismatch.actual
                ) from exc
            raise CameraUnavailableError(f"{method} {path}: {exc!r}") from exc
        except httpx.HTTPError as exc:  # decoding errors and the like: the camera's fault
            raise CameraProtocolError(f"{method} {path}: {exc!r}") from exc
        return _check(method, path, response, expect)


def _check(method: str, path: str, response: httpx.Response, expect: int) -> Any:
    status = response.status_code
    if status == expect:
        return None if status == 204 else _json(response)
    if status == 401:
        raise CameraAuthError(f"{method} {path}: camera refused the credentials")
    if status == 409:
        body = _json(response)
        if isinstance(body, dict) and body.get("error") == "busy":
            raise CameraBusyError(_call_id(body))
        raise CameraProtocolError(f"409 without a busy call: {body!r}", status=status)
    if status == 423:
        raise CameraPrivacyError(f"{method} {path}: privacy mode")
    if status >= _HTTP_SERVER_ERROR:
        raise CameraUnavailableError(f"{method} {path}: HTTP {status}", status=status)
    raise CameraProtocolError(f"{method} {path}: unexpected HTTP {status}", status=status)


def _json(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CameraProtocolError(
            f"HTTP {response.status_code} body is not UTF-8 JSON", status=response.status_code
        ) from exc


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise CameraProtocolError(f"expected a JSON object, got {type(body).__name__}")
    return body


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise CameraProtocolError(f"{key!r} is not a string: {value!r}")
    return value


def _boolean(body: dict[str, Any], key: str) -> bool:
    value = body.get(key)
    if not isinstance(value, bool):
        raise CameraProtocolError(f"{key!r} is not a boolean: {value!r}")
    return value


def _call_id(body: dict[str, Any]) -> str:
    # The datasheet does not say whether ids are strings or numbers: accept both, keep text.
    value = body.get("call_id")
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise CameraProtocolError(f"'call_id' is not an id: {value!r}")
    return str(value)


def _state(body: dict[str, Any]) -> str:
    value = body.get("state")
    if value not in CALL_STATES:
        raise CameraProtocolError(f"'state' is not a call state: {value!r}")
    return str(value)


def _call_path(call_id: str) -> str:
    if not call_id:
        raise CameraProtocolError("empty call id")
    return f"/api/v1/calls/{quote(call_id, safe='')}"


__all__ = [
    "CALL_STATES",
    "CallReason",
    "CallStarted",
    "CallState",
    "CameraError",
    "CameraStatus",
    "HttpCamera",
    "normalize_fingerprint",
    "pinned_ssl_context",
]
