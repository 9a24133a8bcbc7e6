"""Platform commands from ``down/cmd``: validation, idempotency by id, expiry, dispatch, results."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from gateway.core.clock import Clock
from gateway.core.errors import CommandError
from gateway.core.events import CONTRACT_VERSION
from gateway.core.i18n import english
from gateway.store.outbox import Outbox
from gateway.store.sink import OutboxSink

log = structlog.get_logger("gateway.app.commands")

MAX_COMMAND_BYTES = 64 * 1024  # larger commands are answered invalid_args, never run
MAX_COMMAND_ID_CHARS = 128  # longer (or empty, or not text) ids cannot be answered
MAX_COMMAND_NAME_CHARS = 64
MAX_EXPIRES_AT_CHARS = 64

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class CommandMessage:
    """A command whose every field was checked against the contract."""

    id: str
    name: str
    args: dict[str, Any]
    expires_at: datetime | None


class InvalidCommandError(CommandError):
    """A command with a usable id and a bad field: answered ``invalid_args``, never run."""

    def __init__(self, cmd_id: str, message: str) -> None:
        super().__init__("invalid_args", message)
        self.cmd_id = cmd_id


@dataclass(frozen=True, slots=True)
class Command:
    handler: Handler
    audited: bool  # commands that change something leave an audit.command event


@dataclass(slots=True)
class CommandStats:
    handled: int = 0  # answered with a cmd.result (executed, repeated, refused or invalid)
    invalid: int = 0  # answered invalid_args by validation
    rejected: int = 0  # not answered: not JSON, not an object, or no usable id


def read_command_id(document: object) -> str | None:
    """The id a ``cmd.result`` can be addressed to: text of 1 to 128 characters that is valid
    Unicode (JSON can carry a lone surrogate, which no store or platform can), else None."""
    if not isinstance(document, dict):
        return None
    cmd_id = document.get("id")
    if not isinstance(cmd_id, str) or not 1 <= len(cmd_id) <= MAX_COMMAND_ID_CHARS:
        return None
    try:
        cmd_id.encode()
    except UnicodeEncodeError:
        return None
    return cmd_id


def parse_command(payload: bytes) -> CommandMessage | str:
    """Check a ``down/cmd`` payload field by field, strictly (``"v": "1"`` is not version 1).

    Returns the command; or raises ``InvalidCommandError`` for a bad command with a usable id;
    or returns a short reason (``str``) when there is no id to answer to.
    """
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return "not JSON"
    if not isinstance(document, dict):
        return "not a JSON object"
    cmd_id = read_command_id(document)
    if cmd_id is None:
        return "no usable id" if "id" in document else "no id"
    if len(payload) > MAX_COMMAND_BYTES:
        raise InvalidCommandError(cmd_id, f"command larger than {MAX_COMMAND_BYTES} bytes")
    version = document.get("v")
    if type(version) is not int:
        raise InvalidCommandError(cmd_id, "v: missing or not an integer")
    if version != CONTRACT_VERSION:
        raise InvalidCommandError(cmd_id, f"contract version {version} unsupported")
    name = document.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_COMMAND_NAME_CHARS:
        raise InvalidCommandError(
            cmd_id, f"name: missing or not text of 1 to {MAX_COMMAND_NAME_CHARS} characters"
        )
    args = document.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidCommandError(cmd_id, "args: not an object")
    return CommandMessage(cmd_id, name, args, _expires_at(cmd_id, document.get("expires_at")))


def _expires_at(cmd_id: str, value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_EXPIRES_AT_CHARS:
        raise InvalidCommandError(cmd_id, "expires_at: not an RFC 3339 timestamp or null")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidCommandError(cmd_id, "expires_at: not an RFC 3339 timestamp") from None
    if parsed.tzinfo is None:  # the contract's timestamps are UTC
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


class CommandProcessor:
    """Runs each command id at most once and answers every one with a ``cmd.result``."""

    def __init__(self, outbox: Outbox, sink: OutboxSink, clock: Clock) -> None:
        self.outbox = outbox
        self.sink = sink
        self.clock = clock
        self.stats = CommandStats()
        self._commands: dict[str, Command] = {}

    def register(self, name: str, handler: Handler, *, audited: bool = True) -> None:
        self._commands[name] = Command(handler, audited)

    async def handle(self, payload: bytes) -> None:
        """Validate, run once, answer.

        Raises if the store cannot say whether the command ran already: it is then not
        acknowledged to the broker, and comes again.
        """
        try:
            message = parse_command(payload)
        except InvalidCommandError as exc:
            self.stats.invalid += 1
            log.warning("command_invalid", cmd_id=exc.cmd_id, why=exc.message, size=len(payload))
            await self._answer(_error(exc.cmd_id, exc.code, exc.message))
            return
        if isinstance(message, str):
            self.stats.rejected += 1
            log.warning("command_rejected", why=message, size=len(payload))
            return
        stored = await self.outbox.command_result(message.id)
        if stored is not None:
            log.info("command_repeated", cmd_id=message.id, name=message.name)
            await self._answer(json.loads(stored))
            return
        result = await self._execute(message)
        try:
            await self.outbox.remember_command(
                message.id,
                json.dumps(result, separators=(",", ":")),
            )
        except Exception as exc:  # noqa: BLE001 - it ran: the answer goes out regardless
            log.error("command_not_remembered", cmd_id=message.id, error=repr(exc))  # noqa: TRY400
        await self._answer(result)

    async def _answer(self, result: dict[str, Any]) -> None:
        await self.sink.emit("cmd.result", result)
        self.stats.handled += 1

    async def _execute(self, message: CommandMessage) -> dict[str, Any]:
        expires_at = message.expires_at
        if expires_at is not None and self.clock.wall() > expires_at.timestamp():
            log.info("command_expired", cmd_id=message.id, name=message.name)
            return _error(message.id, "expired", "the command expired before it arrived")
        command = self._commands.get(message.name)
        if command is None:
            log.info("command_unknown", cmd_id=message.id, name=message.name)
            return _error(message.id, "unknown_command", f"no command named {message.name!r}")
        try:
            with english():  # the platform reads the messages as written
                result = await command.handler(dict(message.args))
        except CommandError as exc:
            log.info("command_failed", cmd_id=message.id, name=message.name, code=exc.code)
            return _error(message.id, exc.code, exc.message)
        except Exception:
            log.exception("command_crashed", cmd_id=message.id, name=message.name)
            return _error(message.id, "internal", "the gateway failed to run the command")
        log.info("command_done", cmd_id=message.id, name=message.name)
        if command.audited:
            await self.sink.emit(
                "audit.command",
                {"who": "platform", "what": message.name, "why": None, "cmd_id": message.id},
            )
        return {"cmd_id": message.id, "ok": True, "result": result, "error": None}


def _error(cmd_id: str, code: str, message: str) -> dict[str, Any]:
    return {
        "cmd_id": cmd_id,
        "ok": False,
        "result": None,
        "error": {"code": code, "message": message},
    }
