"""``carebed status``: what the platform's ``status`` command returns, for a person."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.app import control
from gateway.cli.checks import local_time
from gateway.cli.common import EXIT_CONFIG, load_config
from gateway.core.errors import ControlError
from gateway.core.i18n import _

EXIT_OK, EXIT_FAILED = 0, 1
# The daemon answers ``status`` at once; silence this long means it is hung.
STATUS_TIMEOUT_S = 10.0


def not_running(socket: object, command: str) -> str:
    return _(
        "carebed: the daemon is not running (nothing answers on {socket}): start it with "
        "systemctl start carebed, then run carebed {command} again"
    ).format(socket=socket, command=command)


def _heard(now: datetime, silent_s: float | None, heard: bool = True) -> str:
    if silent_s is None:
        return _("never heard")
    if not heard:
        return _("never heard since the start")
    return _("last heard {when}").format(when=local_time(now - timedelta(seconds=silent_s)))


def _yes(flag: bool) -> str:
    return _("yes") if flag else _("NO")


def render(status: dict[str, Any], now: datetime) -> list[str]:
    """The lines a person reads; ``now`` is when the daemon answered."""
    uplink = status.get("uplink", {})
    lines = [
        _("carebed {version}, running for {hours} h {minutes} min; {now}").format(
            version=status.get("version"),
            hours=int(status.get("uptime_s", 0)) // 3600,
            minutes=int(status.get("uptime_s", 0)) % 3600 // 60,
            now=local_time(now),
        ),
        _("Uplink: connected {connected}; refused messages {refused}").format(
            connected=_yes(bool(uplink.get("connected"))),
            refused=uplink.get("rejected_messages", 0),
        ),
    ]
    queued = status.get("queued") or {}
    total = sum(queued.values())
    detail = ", ".join(f"{klass} {count}" for klass, count in sorted(queued.items()) if count)
    oldest = status.get("oldest_queued_ts")
    queue = _("Queue: {total} event(s) waiting").format(total=total)
    if detail:
        queue += f" ({detail})"
    if oldest:
        queue += "; " + _("oldest from {when}").format(
            when=local_time(datetime.fromisoformat(oldest.replace("Z", "+00:00")))
        )
    lines.append(queue)
    lines.append(
        _("Alarms held (not yet acknowledged by the platform): {count}").format(
            count=status.get("alarms_held", 0)
        )
    )
    lines.append(
        _("Clock synchronised: {synced}; free disk {mib} MiB; last seq {seq}").format(
            synced=_yes(bool(status.get("clock_synced"))),
            mib=int(status.get("disk_free_bytes", 0)) // (1024 * 1024),
            seq=status.get("last_seq", "?"),
        )
    )
    lines.extend(_devices(status.get("devices") or [], now))
    for fault in status.get("faults") or []:
        lines.append(
            _("FAULT {code}: {message}").format(
                code=fault.get("code"), message=fault.get("message")
            )
        )
    return lines


def _devices(devices: list[dict[str, Any]], now: datetime) -> list[str]:
    lines = [_("Devices:")]
    shown = 0
    for device in devices:
        if "receiver" in device:
            receiver = device["receiver"]
            state = _("connected") if receiver.get("connected") else _("NOT CONNECTED")
            mains = receiver.get("mains")
            power = "" if mains is None else "; " + (_("on mains") if mains else _("ON BATTERY"))
            lines.append(
                "  "
                + _("{device}: {state} ({port}){power}").format(
                    device=receiver["device"],
                    state=state,
                    port=receiver.get("port") or "-",
                    power=power,
                )
            )
            shown += 1
            for button in device.get("buttons", []):
                low = button.get("battery_low")
                battery = (
                    _("battery unknown")
                    if low is None
                    else (_("battery LOW") if low else _("battery ok"))
                )
                online = _("online") if button.get("online") else _("OFFLINE")
                lines.append(
                    "  "
                    + _("{device}: {online}, {battery}, {heard}").format(
                        device=button["device"],
                        online=online,
                        battery=battery,
                        heard=_heard(now, button.get("silent_s"), button.get("heard", True)),
                    )
                )
                shown += 1
        for watch in device.get("watches", []):
            state = _("connected") if watch.get("connected") else _("NOT CONNECTED")
            battery = (
                _("battery unknown")
                if watch.get("battery") is None
                else _("battery {level} %").format(level=watch["battery"])
            )
            worn = ""
            if watch.get("worn") is False:
                worn = ", " + _("not worn")
            name = watch.get("device") or watch.get("address")
            heard = _heard(now, watch.get("silent_s")) if watch.get("connected") else _("not heard")
            lines.append(
                "  "
                + _("{device}: {state}, {battery}{worn}, {heard}").format(
                    device=name, state=state, battery=battery, worn=worn, heard=heard
                )
            )
            shown += 1
    if not shown:
        lines.append("  " + _("none configured"))
    return lines


async def ask_status(socket: Any) -> dict[str, Any]:
    replies = await control.ask(socket, "status", {}, reply_timeout_s=STATUS_TIMEOUT_S)
    if not replies:
        raise ControlError(
            _(
                "the daemon closed the connection without an answer: see journalctl -u carebed "
                "-n 100, then systemctl restart carebed"
            )
        )
    return replies[0]


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if cfg is None:
        return EXIT_CONFIG
    socket = cfg.control_socket
    try:
        status = asyncio.run(ask_status(socket))
    except OSError as exc:
        if control.daemon_absent(exc):
            print(not_running(socket, "status"), file=sys.stderr)
        else:
            print(f"carebed: {control.unreachable(socket, exc)}", file=sys.stderr)
        return EXIT_FAILED
    except ControlError as exc:
        print(f"carebed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in render(status, datetime.now(UTC)):
        print(line)
    return EXIT_OK
