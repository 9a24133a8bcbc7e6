"""``carebed camera test [--call]``: the installer's check of the voice-call camera."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from drivers.camera.calls import error_code
from drivers.camera.errors import CameraError
from drivers.camera.http import HttpCamera
from gateway.app import control
from gateway.app.config import GatewayConfig
from gateway.core.errors import ControlError

EXIT_OK, EXIT_FAILED = 0, 1


def _show(reply: dict[str, Any]) -> bool:
    """Print one reply; False when it says the camera is not usable."""
    if reply.get("event") == "called":
        print(f"test call placed on {reply['device']}: see its camera.call events on the platform")
        return True
    if reply.get("trigger") == "relay":
        print("dry-contact camera: nothing to ask it; use --call to pulse the relay")
        return True
    if not reply.get("reachable"):
        print(f"camera NOT usable: {reply.get('error')} ({reply.get('detail')})")
        return False
    shutter = "CLOSED (calls are refused)" if reply["privacy_mode"] else "open"
    print(
        f"camera reachable: {reply['model']} firmware {reply['firmware']}, credentials accepted, "
        f"privacy shutter {shutter}"
    )
    return not reply["privacy_mode"]


async def _through_daemon(cfg: GatewayConfig, call: bool) -> bool:
    replies = await control.ask(cfg.control_socket, "camera.test", {"call": call})
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
        print("carebed: no camera is configured ([camera] enabled = false)", file=sys.stderr)
        return EXIT_FAILED
    try:
        ok = asyncio.run(_through_daemon(cfg, args.call))
    except OSError as exc:
        if not control.daemon_absent(exc):
            print(f"carebed: {control.unreachable(cfg.control_socket, exc)}", file=sys.stderr)
            return EXIT_FAILED
        if args.call:
            print(
                "carebed: a test call goes through the daemon (it is audited there): "
                "start it first (systemctl start carebed)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if cfg.camera.trigger == "relay":
            return EXIT_OK if _show({"trigger": "relay"}) else EXIT_FAILED
        print("(the daemon is not running: asking the camera directly)")
        ok = asyncio.run(_directly(cfg))
    except ControlError as exc:
        print(f"carebed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if ok else EXIT_FAILED
