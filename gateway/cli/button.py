"""``carebed button …``: the installer's view of the buttons (pair, list, confirm, unpair)."""

from __future__ import annotations

import argparse
import asyncio
import re
from typing import Any

from drivers.button.codec import device_id
from drivers.button.errors import PairingError
from drivers.button.pairing import PairingStore
from drivers.button.serial import parse_device
from gateway.app import control
from gateway.app.config import GatewayConfig
from gateway.cli.common import EXIT_OK, fail, run_client, say
from gateway.core.i18n import _, local_time_ago, ngettext

_BUTTON_ID = re.compile(r"(?i)(btn-)?([0-9a-f]{1,8})")


def _normalise(raw: str) -> str | None:
    """``btn-00A1B2C3`` from what the installer typed (``00a1b2c3``, ``A1B2C3``…), or None."""
    match = _BUTTON_ID.fullmatch(raw.strip())
    return None if match is None else f"btn-{match[2].upper():0>8}"


def _show_pairing(reply: dict[str, Any]) -> None:
    event = reply.get("event")
    if event == "open":
        say(
            _("Pairing is open for {seconds} s: press each button of this home now.").format(
                seconds=reply["seconds"]
            )
        )
    elif event == "paired":
        say("  " + _("paired {device}").format(device=reply["device"]))
    elif event == "closed":
        paired = reply.get("paired", [])
        say(
            ngettext(
                "Pairing closed: {count} button(s) paired.",
                "Pairing closed: {count} button(s) paired.",
                len(paired),
            ).format(count=len(paired))
            if paired
            else _("Pairing closed: no button paired. Press the button while pairing is open.")
        )


def _show_list(status: dict[str, Any]) -> None:
    receiver = status["receiver"]
    state = _("connected") if receiver["connected"] else _("NOT CONNECTED")
    say(
        _("receiver {device} on {port}: {state}").format(
            device=receiver["device"], port=receiver["port"] or "-", state=state
        )
    )
    _show_damage(status.get("pairing", {}).get("damage"))
    if not status["buttons"]:
        say(_("no button is paired (carebed button pair)"))
    for b in status["buttons"]:
        flags = [] if b["online"] else [_("OFFLINE")]
        if b.get("battery_low"):
            flags.append(_("battery low"))
        heard = _("last heard {time} ({seconds} s ago)").format(
            time=local_time_ago(b["silent_s"]), seconds=f"{b['silent_s']:.0f}"
        )
        say(f"  {b['device']}  {heard}  {' '.join(flags)}".rstrip())


def _show_damage(damage: str | None) -> None:
    if damage:
        say(
            _("PAIRING LIST DAMAGED ({damage}): a press of any button raises an alarm;").format(
                damage=damage
            )
        )
        say("  " + _("pair every button of the home, then: carebed button confirm"))


def _show_confirm(confirmed: bool, buttons: list[str]) -> None:
    if not confirmed:
        say(_("the pairing list was not damaged: nothing to confirm"))
        return
    say(
        _("pairing list confirmed: {count} button(s); presses of others are ignored again").format(
            count=len(buttons)
        )
    )
    for device in buttons:
        say(f"  {device}")


def main(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    socket = cfg.control_socket
    if args.action == "pair" and not 1 <= args.seconds <= 255:
        return fail(_("--seconds must be from 1 to 255"))
    device = _normalise(args.id) if args.action == "unpair" else None
    if args.action == "unpair" and device is None:
        return fail(
            _(
                "{text} is not a button id (fix: give the 8 hex digits printed on the button, "
                "e.g. btn-00A1B2C3 or 00A1B2C3; carebed button list shows the paired ones)"
            ).format(text=repr(args.id))
        )

    def talk() -> None:
        if args.action == "pair":
            asyncio.run(
                control.ask(
                    socket,
                    "button.pair",
                    {"duration_s": args.seconds},
                    _show_pairing,
                    reply_timeout_s=args.seconds + control.CLIENT_TIMEOUT_S,
                )
            )
        elif args.action == "list":
            (status,) = asyncio.run(control.ask(socket, "button.list", {}))
            _show_list(status)
        elif args.action == "confirm":
            (reply,) = asyncio.run(control.ask(socket, "button.confirm", {}))
            _show_confirm(reply["confirmed"], reply["buttons"])
        else:
            (reply,) = asyncio.run(control.ask(socket, "button.unpair", {"device": device}))
            say(
                (
                    _("{device} unpaired") if reply["unpaired"] else _("{device} was not paired")
                ).format(device=device)
            )

    return run_client(socket, talk, lambda: _without_daemon(cfg, args, device))


def _without_daemon(cfg: GatewayConfig, args: argparse.Namespace, device: str | None) -> int:
    """The daemon is not running: read or change the pairing file itself where that is safe."""
    try:
        store = PairingStore(cfg.pairing_path, repair=False)
    except (PairingError, OSError) as exc:
        return fail(str(exc))
    note = _("(the daemon is not running: from {path})").format(path=cfg.pairing_path)
    if args.action == "list":
        _show_damage(store.damage)
        say(_("paired buttons {note}:").format(note=note))
        for bid in store.buttons():
            say(f"  {device_id(bid)}")
        return EXIT_OK
    if args.action == "confirm":
        try:
            confirmed = store.confirm()
        except PairingError as exc:
            return fail(str(exc))
        _show_confirm(confirmed, [device_id(bid) for bid in store.buttons()])
        return EXIT_OK
    if args.action == "unpair" and device is not None:
        try:
            removed = store.remove(parse_device(device))
        except (ValueError, PairingError, OSError) as exc:
            return fail(str(exc))
        say(
            (
                _(
                    "{device} removed {note}; the platform hears of it as device.unpaired only "
                    "when the daemon does this"
                )
                if removed
                else _(
                    "{device} was not paired {note}; the platform hears of it as device.unpaired "
                    "only when the daemon does this"
                )
            ).format(device=device, note=note)
        )
        return EXIT_OK
    return fail(
        _(
            "the daemon is not running, and pairing needs the receiver it holds: "
            "start it first (systemctl start carebed)"
        )
    )
