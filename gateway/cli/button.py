"""``carebed button …``: the installer's view of the buttons (pair, list, confirm, unpair)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from drivers.button.codec import device_id
from drivers.button.errors import PairingError
from drivers.button.pairing import PairingStore
from drivers.button.serial import parse_device
from gateway.app import control
from gateway.app.config import GatewayConfig

EXIT_OK, EXIT_FAILED = 0, 1


def _say(text: str) -> None:
    print(text, flush=True)


def _normalise(raw: str) -> str:
    return raw if raw.startswith("btn-") else f"btn-{raw.upper():0>8}"


def _show_pairing(reply: dict[str, Any]) -> None:
    event = reply.get("event")
    if event == "open":
        _say(f"Pairing is open for {reply['seconds']} s: press each button of this home now.")
    elif event == "paired":
        _say(f"  paired {reply['device']}")
    elif event == "closed":
        paired = reply.get("paired", [])
        _say(
            f"Pairing closed: {len(paired)} button(s) paired."
            if paired
            else "Pairing closed: no button paired. Press the button while pairing is open."
        )


def _show_list(status: dict[str, Any]) -> None:
    receiver = status["receiver"]
    state = "connected" if receiver["connected"] else "NOT CONNECTED"
    _say(f"receiver {receiver['device']} on {receiver['port'] or '-'}: {state}")
    _show_damage(status.get("pairing", {}).get("damage"))
    if not status["buttons"]:
        _say("no button is paired (carebed button pair)")
    for b in status["buttons"]:
        flags = [] if b["online"] else ["OFFLINE"]
        if b.get("battery_low"):
            flags.append("battery low")
        _say(f"  {b['device']}  last heard {b['silent_s']:.0f} s ago  {' '.join(flags)}".rstrip())


def _show_damage(damage: str | None) -> None:
    if damage:
        _say(f"PAIRING LIST DAMAGED ({damage}): a press of any button raises an alarm;")
        _say("  pair every button of the home, then: carebed button confirm")


def _show_confirm(confirmed: bool, buttons: list[str]) -> None:
    if not confirmed:
        _say("the pairing list was not damaged: nothing to confirm")
        return
    _say(f"pairing list confirmed: {len(buttons)} button(s); presses of others are ignored again")
    for device in buttons:
        _say(f"  {device}")


def main(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    socket = cfg.control_socket
    if args.action == "pair" and not 1 <= args.seconds <= 255:
        _say("carebed: --seconds must be from 1 to 255")
        return EXIT_FAILED

    def talk() -> None:
        if args.action == "pair":
            asyncio.run(
                control.ask(socket, "button.pair", {"duration_s": args.seconds}, _show_pairing)
            )
        elif args.action == "list":
            (status,) = asyncio.run(control.ask(socket, "button.list", {}))
            _show_list(status)
        elif args.action == "confirm":
            (reply,) = asyncio.run(control.ask(socket, "button.confirm", {}))
            _show_confirm(reply["confirmed"], reply["buttons"])
        else:
            device = _normalise(args.id)
            (reply,) = asyncio.run(control.ask(socket, "button.unpair", {"device": device}))
            _say(f"{device} unpaired" if reply["unpaired"] else f"{device} was not paired")

    return control.run_client(socket, talk, lambda: _without_daemon(cfg, args))


def _without_daemon(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    """The daemon is not running: read or change the pairing file itself where that is safe."""
    store = PairingStore(cfg.pairing_path, repair=False)
    note = f"(the daemon is not running: from {cfg.pairing_path})"
    if args.action == "list":
        _show_damage(store.damage)
        _say(f"paired buttons {note}:")
        for bid in store.buttons():
            _say(f"  {device_id(bid)}")
        return EXIT_OK
    if args.action == "confirm":
        try:
            confirmed = store.confirm()
        except PairingError as exc:
            print(f"carebed: {exc}", file=sys.stderr)
            return EXIT_FAILED
        _show_confirm(confirmed, [device_id(bid) for bid in store.buttons()])
        return EXIT_OK
    if args.action == "unpair":
        device = _normalise(args.id)
        try:
            removed = store.remove(parse_device(device))
        except ValueError as exc:
            print(f"carebed: {exc}", file=sys.stderr)
            return EXIT_FAILED
        _say(
            f"{device} {'removed' if removed else 'was not paired'} {note};"
            " the platform hears of it as device.unpaired only when the daemon does this"
        )
        return EXIT_OK
    print(
        "carebed: the daemon is not running, and pairing needs the receiver it holds: "
        "start it first (systemctl start carebed)",
        file=sys.stderr,
    )
    return EXIT_FAILED
