"""The local control socket: installer commands (``carebed button …``) reach the running daemon.

A unix socket (0660, group carebed) in systemd's RuntimeDirectory /run/carebed (0750), or in the
state directory where there is none; one JSON request line per connection (``{"cmd": NAME,
"args": {...}, "lang": "zh_CN"}``), one or more JSON reply lines, at most a few connections at
once. What the replies say for a person (errors) is in the request's language. Local only:
nothing from the network reaches it, and its commands neither run programs nor read files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import structlog

from gateway.core.errors import ControlError
from gateway.core.i18n import _, reader_language, speaking

log = structlog.get_logger("gateway.app.control")

REQUEST_LIMIT_BYTES = 64 * 1024
REQUEST_TIMEOUT_S = 10.0
MAX_CLIENTS = 4
# A command that talks to a device (pairing a watch, a camera call) may take this long.
LONG_REPLY_S = 120.0
# How long a client waits for each reply line before it calls the daemon hung.
CLIENT_TIMEOUT_S = 30.0

Handler = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._clients = 0

    async def run(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a previous run
        server = await asyncio.start_unix_server(
            self._serve, path=str(self.path), limit=REQUEST_LIMIT_BYTES
        )
        os.chmod(self.path, 0o660)
        log.info("control_socket_ready", path=str(self.path))
        try:
            async with server:
                await server.serve_forever()
        finally:
            with contextlib.suppress(OSError):
                self.path.unlink()

    def _parse(self, request: object) -> tuple[str, Handler, dict[str, Any]]:
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            raise ControlError(_('a request is {"cmd": NAME, "args": {...}}'))
        handler = self.handlers.get(request["cmd"])
        if handler is None:
            raise ControlError(_("unknown command {cmd}").format(cmd=repr(request["cmd"])))
        args = request.get("args") or {}
        if not isinstance(args, dict):
            raise ControlError(_("args must be an object"))
        return request["cmd"], handler, args

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.write(b'{"error": "busy: too many control connections"}\n')
            writer.close()
            return
        self._clients += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                line = await reader.readline()
            request = json.loads(line)
            with speaking(request.get("lang") if isinstance(request, dict) else None):
                cmd, handler, args = self._parse(request)
                log.info("control_command", cmd=cmd)
                async for reply in handler(args):
                    writer.write(json.dumps(reply).encode() + b"\n")
                    await writer.drain()
        except (ControlError, ValueError, TimeoutError) as exc:
            writer.write(json.dumps({"error": str(exc)}).encode() + b"\n")
        except Exception as exc:
            log.exception("control_command_failed")
            writer.write(json.dumps({"error": f"internal error: {exc!r}"}).encode() + b"\n")
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            self._clients -= 1
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


class NoAnswer(ControlError):
    """The socket is there and takes the request, but the daemon says nothing (hung)."""


def no_answer(path: Path, seconds: float) -> str:
    return _(
        "the daemon is not answering on {path} (nothing within {seconds:.0f} s): see "
        "journalctl -u carebed -n 100, then systemctl restart carebed"
    ).format(path=path, seconds=seconds)


async def request(
    path: Path, cmd: str, args: dict[str, Any], reply_timeout_s: float = CLIENT_TIMEOUT_S
) -> AsyncIterator[dict[str, Any]]:
    """The client side: send one request, yield the replies until the daemon closes. No
    reply line within ``reply_timeout_s`` of the last one: ``NoAnswer``."""
    async with asyncio.timeout(reply_timeout_s):
        reader, writer = await asyncio.open_unix_connection(str(path), limit=REQUEST_LIMIT_BYTES)
    try:
        request = {"cmd": cmd, "args": args, "lang": reader_language()}
        writer.write(json.dumps(request).encode() + b"\n")
        while True:
            try:
                async with asyncio.timeout(reply_timeout_s):
                    await writer.drain()
                    line = await reader.readline()
            except TimeoutError:
                raise NoAnswer(no_answer(path, reply_timeout_s)) from None
            if not line:
                return
            try:
                reply = json.loads(line)
            except ValueError as exc:
                raise ControlError(
                    _("the daemon sent a reply that is not JSON: {error}").format(error=exc)
                ) from None
            if not isinstance(reply, dict):
                raise ControlError(_("the daemon sent a reply that is not an object"))
            yield reply
    finally:
        writer.close()


async def ask(
    path: Path,
    cmd: str,
    args: dict[str, Any],
    on_reply: Callable[[dict[str, Any]], None] | None = None,
    reply_timeout_s: float = CLIENT_TIMEOUT_S,
) -> list[dict[str, Any]]:
    """Send one request and collect its replies (``on_reply`` sees each as it comes); the
    daemon's error reply becomes a ``ControlError``, its silence a ``NoAnswer``."""
    replies = []
    async for reply in request(path, cmd, args, reply_timeout_s):
        if "error" in reply:
            raise ControlError(reply["error"])
        if on_reply is not None:
            on_reply(reply)
        replies.append(reply)
    return replies


def daemon_absent(exc: OSError) -> bool:
    """Nothing listens on the socket: the daemon is not running."""
    return isinstance(exc, FileNotFoundError | ConnectionRefusedError)


def unreachable(path: Path, exc: OSError) -> str:
    """What to tell the installer when the socket is there but cannot be used."""
    if isinstance(exc, PermissionError):
        return _(
            "not allowed to use {path}: run as root, or as a member of the carebed group"
        ).format(path=path)
    return _("cannot reach the daemon at {path}: {error}").format(path=path, error=exc)


def run_client(socket: Path, talk: Callable[[], None], without_daemon: Callable[[], int]) -> int:
    """A CLI's exchange with the daemon, ``talk``: 0 when it went through; the daemon's refusal
    or an unusable socket is one line on stderr and 1; no daemon at all, ``without_daemon()``."""
    try:
        talk()
    except OSError as exc:
        if daemon_absent(exc):
            return without_daemon()
        print(f"carebed: {unreachable(socket, exc)}", file=sys.stderr)
        return 1
    except ControlError as exc:
        print(f"carebed: {exc}", file=sys.stderr)
        return 1
    return 0
