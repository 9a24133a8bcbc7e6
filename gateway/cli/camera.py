"""``carebed camera test [--call]``: the installer's check of the voice-call camera."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from drivers.camera.calls import error_code
from drivers.camera.errors import CameraError
from drivers.camera.http import HttpCamera
from gateway.app import control
from gateway.app.config import GatewayConfig
from gateway.cli.common import EXIT_FAILED, EXIT_OK, fail, refusal, say, unreachable
from gateway.core.errors import ControlError
from gateway.core.i18n import _


def _show(reply: dict[str, Any]) -> bool:
    """Print one reply; False when it says the camera is not usable."""
    if reply.get("event") == "called":
        say(
            _("test call placed on {device}: see its camera.call events on the platform").format(
                device=reply["device"]
            )
        )
        return True
    if reply.get("trigger") == "relay":
        say(_("dry-contact camera: nothing to ask it; use --call to pulse the relay"))
        return True
    if not reply.get("reachable"):
        say(
            _("camera NOT usable: {error} ({detail})").format(
                error=reply.get("error"), detail=reply.get("detail")
            )
        )
        return False
    shutter = _("CLOSED (calls are refused)") if reply["privacy_mode"] else _("open")
    say(
        _(
            "camera reachable: {model} firmware {firmware}, credentials accepted, "
            "privacy shutter {shutter}"
        ).format(model=reply["model"], firmware=reply["firmware"], shutter=shutter)
    )
    return not reply["privacy_mode"]


async def _through_daemon(cfg: GatewayConfig, call: bool) -> bool:
    replies = await control.ask(
        cfg.control_socket, "camera.test", {"call": call}, reply_timeout_s=control.LONG_REPLY_S
    )
    return all([_show(reply) for reply in replies])


async def _directly(cfg: GatewayConfig) -> bool:
    camera = cfg.camera
    try:
        async with HttpCamera(
            camera.url,
            user=camera.user,
            password=camera.password.get_secret_value(),
            fingerprint_sha256=camera.fingerprint_sha256,
            request_timeout_s=camera.request_timeout_s,
        ) as client:
            status = await client.status()
    except CameraError as exc:
        return _show({"reachable": False, "error": error_code(exc), "detail": str(exc)})
    return _show(
        {
            "reachable": True,
            "model": status.model,
            "firmware": status.firmware,
            "privacy_mode": status.privacy_mode,
        }
    )


def main(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    if not cfg.camera.enabled:
        return fail(
            _(
                "no camera is configured ([camera] enabled = false) (fix: set enabled = true "
                "and the camera's url, user and password in the [camera] section)"
            )
        )
    try:
        ok = asyncio.run(_through_daemon(cfg, args.call))
    except OSError as exc:
        if not control.daemon_absent(exc):
            return fail(unreachable(cfg.control_socket, exc))
        if args.call:
            return fail(
                _(
                    "a test call goes through the daemon (it is audited there): "
                    "start it first (systemctl start carebed)"
                )
            )
        if cfg.camera.trigger == "relay":
            return EXIT_OK if _show({"trigger": "relay"}) else EXIT_FAILED
        say(_("(the daemon is not running: asking the camera directly)"))
        ok = asyncio.run(_directly(cfg))
    except ControlError as exc:
        return fail(refusal(exc))
    return EXIT_OK if ok else EXIT_FAILED
