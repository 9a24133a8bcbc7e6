"""A faithful voice-call camera speaking the HTTP trigger API, for tests, the demo and hil/."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import re
import secrets
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hil.sim.service import SimService

REALM = "carebed-sim-camera"
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
CONNECT_DELAY_S = 0.2
CERT_VALIDITY_DAYS = 30
_DIGEST_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]+))')
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    423: "Locked",
    503: "Service Unavailable",
}

Algorithm = Literal["MD5", "SHA-256"]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request the camera received (whatever its answer)."""

    method: str
    path: str
    json: Any
    authorization: str | None  # the raw Authorization header: credentials were sent
    authorized: bool  # the Digest response was valid


@dataclass(slots=True)
class SimCall:
    """A call: ringing, connected after ``connect_delay_s``, ended after ``duration_s`` more."""

    call_id: str
    reason: str
    alarm_id: str | None
    created: float
    connect_delay_s: float
    duration_s: float | None
    fail_reason: str | None = None
    hung_up: bool = False

    def state(self, now: float) -> tuple[str, str | None]:
        if self.hung_up:
            return "ended", "hung_up"
        connected_at = self.created + self.connect_delay_s
        if now < connected_at:
            return "ringing", None
        if self.fail_reason is not None:
            return "failed", self.fail_reason
        if self.duration_s is not None and now >= connected_at + self.duration_s:
            return "ended", "completed"
        return "connected", None


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class SimCamera(SimService):
    """The camera of ``specs/camera-http.md`` on 127.0.0.1, over http or https.

    Digest authentication (``algorithm`` MD5 or SHA-256, qop=auth) with ``user`` / ``password``.
    A POST while a call is ringing or connected answers 409 with that call's id (``begin_call``
    starts one from the camera's side, as the senior's own call would). Fault modes:
    ``privacy_mode`` (423 on POST, reported by status), ``fail_next(n)`` (503 for the next n
    requests), ``hang`` (read the request, never answer), ``garbage`` (answer every authorised
    request with ``garbage_body`` and the expected status). ``https=True`` serves a freshly made
    self-signed certificate whose DER SHA-256 is ``fingerprint_sha256``. ``requests`` records
    every complete request received.
    """

    def __init__(
        self,
        *,
        user: str = "admin",
        password: str = "secret",  # noqa: S107 - the simulator's default, not a secret
        algorithm: Algorithm = "MD5",
        https: bool = False,
        connect_delay_s: float = CONNECT_DELAY_S,
        call_duration_s: float | None = None,
        model: str = "SimCam 1",
        firmware: str = "1.0.0",
    ) -> None:
        self.user = user
        self.password = password
        self.algorithm: Algorithm = algorithm
        self.https = https
        self.connect_delay_s = connect_delay_s
        self.call_duration_s = call_duration_s
        self.model = model
        self.firmware = firmware
        self.privacy_mode = False
        self.hang = False
        self.garbage = False
        self.garbage_body = b"<html>camera says hello</html>"
        self.fail_calls_with: str | None = None  # calls end "failed" with this reason
        self.requests: list[RecordedRequest] = []
        self.calls: dict[str, SimCall] = {}
        self.fingerprint_sha256: str | None = None
        self._fail_next = 0
        self._nonces: set[str] = set()
        self._opaque = secrets.token_hex(8)
        self._next_call = 1
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._ssl: ssl.SSLContext | None = None
        self.port = 0

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        scheme = "https" if self.https else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self.https:
            self._ssl = self._make_tls()
        self._server = await asyncio.start_server(
            self._handle,
            "127.0.0.1",
            0,
            ssl=self._ssl,
            ssl_handshake_timeout=5.0 if self._ssl else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _make_tls(self) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "simcam.local")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=CERT_VALIDITY_DAYS))
            .sign(key, hashes.SHA256())
        )
        self.fingerprint_sha256 = cert.fingerprint(hashes.SHA256()).hex()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with tempfile.TemporaryDirectory(prefix="simcam-") as directory:
            cert_path = Path(directory) / "cert.pem"
            key_path = Path(directory) / "key.pem"
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            key_path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            context.load_cert_chain(cert_path, key_path)
        return context

    # --- controls -------------------------------------------------------------------------------

    def fail_next(self, count: int) -> None:
        """Answer the next ``count`` requests with 503, then behave normally."""
        self._fail_next = count

    def begin_call(self, reason: str = "local") -> str:
        """Start a call from the camera's side (makes the camera busy); return its id."""
        return self._new_call(reason, None).call_id

    def active_call(self) -> SimCall | None:
        now = time.monotonic()
        for call in self.calls.values():
            if call.state(now)[0] in ("ringing", "connected"):
                return call
        return None

    def hang_up_all(self) -> None:
        for call in self.calls.values():
            call.hung_up = True

    def _new_call(self, reason: str, alarm_id: str | None) -> SimCall:
        call = SimCall(
            call_id=f"call-{self._next_call}",
            reason=reason,
            alarm_id=alarm_id,
            created=time.monotonic(),
            connect_delay_s=self.connect_delay_s,
            duration_s=self.call_duration_s,
            fail_reason=self.fail_calls_with,
        )
        self._next_call += 1
        self.calls[call.call_id] = call
        return call

    # --- HTTP/1.1 -------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                request = await self._read_request(reader)
                if request is None:
                    return
                method, path, headers, body = request
                reply = self._respond(method, path, headers, body)
                if reply is None:  # hang: never answer, until the client gives up or we close
                    await reader.read()
                    return
                writer.write(_encode(reply))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _read_request(
        self, reader: asyncio.StreamReader
    ) -> tuple[str, str, dict[str, str], bytes] | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        if len(head) > MAX_HEADER_BYTES:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = min(int(headers.get("content-length", "0")), MAX_BODY_BYTES)
        body = await reader.readexactly(length) if length else b""
        return method, target, headers, body

    def _respond(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> _Reply | None:
        authorization = headers.get("authorization")
        authorized = self._check_digest(method, authorization)
        try:
            payload: Any = json.loads(body) if body else None
        except ValueError:
            payload = body.decode("utf-8", "replace")
        self.requests.append(RecordedRequest(method, path, payload, authorization, authorized))
        if self.hang:
            return None
        if self._fail_next > 0:
            self._fail_next -= 1
            return _json_reply(503, {"error": "unavailable"})
        if not authorized:
            return self._challenge()
        reply = self._route(method, path, payload)
        if self.garbage and reply.status != 401:
            return _Reply(reply.status if reply.status != 204 else 200, self.garbage_body)
        return reply

    def _route(self, method: str, path: str, payload: Any) -> _Reply:
        if path == "/api/v1/status":
            if method != "GET":
                return _json_reply(405, {"error": "method"})
            return _json_reply(
                200,
                {"model": self.model, "firmware": self.firmware, "privacy_mode": self.privacy_mode},
            )
        if path == "/api/v1/calls":
            if method != "POST":
                return _json_reply(405, {"error": "method"})
            return self._post_call(payload)
        if path.startswith("/api/v1/calls/"):
            call = self.calls.get(path.removeprefix("/api/v1/calls/"))
            if call is None:
                return _json_reply(404, {"error": "not_found"})
            if method == "GET":
                state, reason = call.state(time.monotonic())
                return _json_reply(200, {"call_id": call.call_id, "state": state, "reason": reason})
            if method == "DELETE":
                call.hung_up = True
                return _Reply(204)
            return _json_reply(405, {"error": "method"})
        return _json_reply(404, {"error": "not_found"})

    def _post_call(self, payload: Any) -> _Reply:
        if (
            not isinstance(payload, dict)
            or payload.get("reason") not in ("alarm", "platform")
            or payload.get("callee") != "platform"
            or not isinstance(payload.get("alarm_id"), str | None)
        ):
            return _json_reply(400, {"error": "bad_request"})
        if self.privacy_mode:
            return _json_reply(423, {"error": "privacy_mode"})
        active = self.active_call()
        if active is not None:
            return _json_reply(409, {"error": "busy", "call_id": active.call_id})
        call = self._new_call(payload["reason"], payload["alarm_id"])
        return _json_reply(201, {"call_id": call.call_id, "state": "ringing"})

    # --- Digest (RFC 7616, qop=auth) ------------------------------------------------------------

    def _challenge(self) -> _Reply:
        nonce = secrets.token_hex(16)
        self._nonces.add(nonce)
        value = (
            f'Digest realm="{REALM}", qop="auth", algorithm={self.algorithm}, '
            f'nonce="{nonce}", opaque="{self._opaque}"'
        )
        return _Reply(401, b'{"error":"unauthorized"}', {"WWW-Authenticate": value})

    def _check_digest(self, method: str, header: str | None) -> bool:
        if header is None or not header.startswith("Digest "):
            return False
        params = {m[0].lower(): m[1] or m[2] for m in _DIGEST_PARAM.findall(header[7:])}
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm != self.algorithm or params.get("nonce") not in self._nonces:
            return False
        if params.get("username") != self.user or params.get("realm") != REALM:
            return False
        if params.get("qop") != "auth":
            return False
        digest = _HASHES[algorithm]

        def h(text: str) -> str:
            return digest(text.encode()).hexdigest()

        ha1 = h(f"{self.user}:{REALM}:{self.password}")
        ha2 = h(f"{method}:{params.get('uri', '')}")
        expected = h(
            f"{ha1}:{params['nonce']}:{params.get('nc', '')}:{params.get('cnonce', '')}:auth:{ha2}"
        )
        return secrets.compare_digest(expected, params.get("response", ""))


def _json_reply(status: int, body: dict[str, Any]) -> _Reply:
    return _Reply(status, json.dumps(body).encode(), {"Content-Type": "application/json"})


def _encode(reply: _Reply) -> bytes:
    lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in reply.headers.items()]
    if reply.status != 204:
        lines.append(f"Content-Length: {len(reply.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (
        b"" if reply.status == 204 else reply.body
    )
