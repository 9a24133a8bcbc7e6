"""Platform commands from ``down/cmd``: validation, idempotency by id, expiry, dispatch, results."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.clock import Clock
from gateway.emitter import OutboxSink
from gateway.errors import CommandError
from gateway.events import CONTRACT_VERSION
from gateway.outbox import Outbox

log = structlog.get_logger("gateway.commands")

MAX_COMMAND_BYTES = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class CommandMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: int
    id: Annotated[str, Field(min_length=1, max_length=128)]
    name: Annotated[str, Field(min_length=1, max_length=64)]
    args: dict[str, Any] = Field(default_factory=dict)
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Command:
    handler: Handler
    audited: bool  # commands that change something leave an audit.command event


class CommandProcessor:
    """Runs each command id at most once and answers every one with a ``cmd.result``."""

    def __init__(self, outbox: Outbox, sink: OutboxSink, clock: Clock, *, max_age_s: float) -> None:
        self.outbox = outbox
        self.sink = sink
        self.clock = clock
        self.max_age_s = max_age_s
        self.rejected = 0
        self._commands: dict[str, Command] = {}

    def register(self, name: str, handler: Handler, *, audited: bool = True) -> None:
        self._commands[name] = Command(handler, audited)

    async def handle(self, payload: bytes) -> None:
        message = self._parse(payload)
        if message is None:
            return
        stored = await self.outbox.call(self.outbox.store.command_result, message.id)
        if stored is not None:
            log.info("command_repeated", cmd_id=message.id, name=message.name)
            await self.sink.emit("cmd.result", json.loads(stored))
            return
        result = await self._execute(message)
        await self.outbox.call(
            self.outbox.store.remember_command,
            message.id,
            json.dumps(result, separators=(",", ":")),
        )
        await self.sink.emit("cmd.result", result)

    def _parse(self, payload: bytes) -> CommandMessage | None:
        if len(payload) > MAX_COMMAND_BYTES:
            self.rejected += 1
            log.warning("command_rejected", why="too large", size=len(payload))
            return None
        try:
            return CommandMessage.model_validate_json(payload)
        except ValidationError as exc:
            self.rejected += 1
            log.warning(
                "command_rejected",
                why="not a command message",
                errors=[f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()][:5],
            )
            return None

    async def _execute(self, message: CommandMessage) -> dict[str, Any]:
        if message.v != CONTRACT_VERSION:
            return _error(message.id, "invalid_args", f"contract version {message.v} unsupported")
        if message.expires_at is not None:
            expires_at = message.expires_at
            if expires_at.tzinfo is None:  # the contract's timestamps are UTC
                expires_at = expires_at.replace(tzinfo=UTC)
            expires = expires_at.timestamp()
            if self.clock.wall() > expires:
                log.info("command_expired", cmd_id=message.id, name=message.name)
                return _error(message.id, "expired", "the command expired before it arrived")
        command = self._commands.get(message.name)
        if command is None:
            log.info("command_unknown", cmd_id=message.id, name=message.name)
            return _error(message.id, "unknown_command", f"no command named {message.name!r}")
        try:
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


def no_args(args: dict[str, Any]) -> None:
    if args:
        raise CommandError("invalid_args", f"takes no arguments, got {sorted(args)}")
