"""The settings the platform may change (``config.set``): validated, persisted, and diffed.

Only the vital-sign reporting intervals and edge rules (``vitals``) and the heartbeat interval
(``heartbeat_s``) can be changed remotely; credentials, devices, the camera and paths cannot.
The platform's changes are kept in ``remote-settings.json`` in the state directory and laid over
the configuration file at every start, so a restart does not undo them. A damaged file is moved
aside and the configuration file's values apply (logged): never a crash.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.app.config import GatewayConfig, VitalsSection
from gateway.core.errors import CommandError
from gateway.core.files import write_atomic

log = structlog.get_logger("gateway.app.settings")

REMOTE_KEYS = ("vitals", "heartbeat_s")


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _remote_part(cfg: GatewayConfig) -> dict[str, Any]:
    return {"vitals": cfg.vitals.model_dump(), "heartbeat_s": cfg.gateway.heartbeat_s}


class _RemotePart(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    vitals: VitalsSection
    heartbeat_s: Annotated[float, Field(ge=1, le=3600)]


def _with(cfg: GatewayConfig, remote: dict[str, Any]) -> GatewayConfig:
    """``cfg`` with the remote part replaced; raises ``ValidationError``."""
    part = _RemotePart.model_validate(remote)
    gateway = cfg.gateway.model_copy(update={"heartbeat_s": part.heartbeat_s})
    return cfg.model_copy(update={"vitals": part.vitals, "gateway": gateway})


def _problems(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False)[:5]:
        key = ".".join(str(part) for part in error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"]
        message = message.removeprefix("Value error, ")
        parts.append(message if message.startswith("vitals.") else f"{key}: {message}")
    return "; ".join(parts)


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return nested


class RemoteSettings:
    """The platform's overlay on the configuration file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.overlay: dict[str, Any] = {}

    def load(self, local: GatewayConfig) -> GatewayConfig:
        """The configuration to run with: the file's, with the platform's changes laid over."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return local
        except OSError as exc:
            log.error(  # noqa: TRY400 - the reason is in the message
                "remote_settings_unreadable", path=str(self.path), error=exc.strerror
            )
            return local
        try:
            overlay = json.loads(text)
            if not isinstance(overlay, dict) or set(overlay) - set(REMOTE_KEYS):
                raise ValueError("not a settings object")  # noqa: TRY301 - one handler below
            effective = _with(local, _merge(_remote_part(local), overlay))
        except (ValueError, ValidationError) as exc:
            aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
            with contextlib.suppress(OSError):
                self.path.replace(aside)
            log.error(  # noqa: TRY400 - the reason is in the message
                "remote_settings_damaged", path=str(self.path), moved_to=str(aside), error=str(exc)
            )
            return local
        self.overlay = overlay
        log.info("remote_settings_applied", keys=sorted(_flatten(overlay, "")))
        return effective

    def apply(
        self, current: GatewayConfig, args: dict[str, Any]
    ) -> tuple[GatewayConfig, list[dict[str, Any]]]:
        """Validate a ``config.set``, persist it; return the new configuration and what changed.

        Raises ``CommandError("invalid_args")`` naming the first bad keys; nothing is changed then.
        """
        unknown = sorted(set(args) - set(REMOTE_KEYS))
        if unknown:
            raise CommandError(
                "invalid_args",
                f"cannot be set remotely: {', '.join(unknown)} (settable: vitals, heartbeat_s)",
            )
        if not args:
            raise CommandError("invalid_args", "nothing to set (settable: vitals, heartbeat_s)")
        if "vitals" in args and not isinstance(args["vitals"], dict):
            raise CommandError("invalid_args", "vitals: must be an object")
        before = _remote_part(current)
        try:
            updated = _with(current, _merge(before, args))
        except ValidationError as exc:
            raise CommandError("invalid_args", _problems(exc)) from None
        old, new = _flatten(before, ""), _flatten(_remote_part(updated), "")
        changes = [
            {"key": key, "old": old.get(key), "new": value}
            for key, value in new.items()
            if old.get(key) != value
        ]
        if changes:  # the validated values (130.0, not "130"), only those that changed
            changed = {change["key"]: change["new"] for change in changes}
            self.overlay = _merge(self.overlay, _unflatten(changed))
            write_atomic(self.path, json.dumps(self.overlay, indent=1, sort_keys=True))
        return updated, changes
