"""``carebed watch scan|pair|list|unpair``: the installer's view of the health watches.

Through the running daemon when there is one (it holds the watches' links and tells the platform
``device.paired``); otherwise the command uses Bluetooth itself and edits the watch list (and
says so).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from typing import Any

from drivers.watch.errors import LINK_ERRORS, WatchCheckError, WatchListError
from drivers.watch.fleet import (
    MAX_SCAN_S,
    check_watch,
    missing_services,
    scan_nearby,
)
from drivers.watch.store import WatchStore
from gateway.app import control
from gateway.app.config import GatewayConfig, ble_address
from gateway.cli.common import EXIT_OK, fail, run_client, say
from gateway.core.i18n import _, local_time_ago

# What BlueZ says when the adapter is scanning or connecting for another program (the daemon),
# and when it is switched off.
_BUSY = ("org.bluez.Error.InProgress", "org.bluez.Error.Busy", "in progress")
_OFF = ("org.bluez.Error.NotReady", "Resource Not Ready", "org.bluez.Error.NotPowered")


def _show_scan(reply: dict[str, Any]) -> None:
    event = reply.get("event")
    if event == "progress":
        say(
            "  "
            + _("scanning… {seconds} s, {count} device(s) heard").format(
                seconds=reply["elapsed_s"], count=reply["found"]
            )
        )
    elif event == "device":
        offers = [name for name in ("heart_rate", "care") if reply.get(name)]
        looks = (
            "WATCH"
            if len(offers) == 2
            else (_("partial:") + " " + ", ".join(offers) if offers else "-")
        )
        paired = "  " + _("(paired)") if reply.get("paired") else ""
        name = reply.get("name") or "?"
        say(f"  {reply['address']}  {reply['rssi']:>4} dBm  {name:<16} {looks}{paired}")


def _show_pair(reply: dict[str, Any]) -> None:
    event = reply.get("event")
    if event == "checking":
        say(_("Connecting to {address} …").format(address=reply["address"]))
    elif event == "paired":
        battery = _("unknown") if reply.get("battery") is None else f"{reply['battery']} %"
        say(
            "  "
            + _("battery {battery}; services: {services}").format(
                battery=battery, services=", ".join(reply["services"]) or _("none")
            )
        )
        if reply.get("missing"):
            say(
                "  "
                + _("NOTE: the watch does not offer {services}").format(
                    services=", ".join(reply["missing"])
                )
            )
        if "care" in reply.get("missing", []):
            say(
                "  "
                + _("WARNING: without the care service its SOS key and fall detection cannot work")
            )
        state = _("{device} paired.") if reply.get("new") else _("{device} was already paired.")
        say(state.format(device=reply["device"]))


def _show_list(reply: dict[str, Any]) -> None:
    watches = reply["watches"]
    if not watches:
        say(_("no watch is paired (carebed watch pair ADDRESS)"))
    for watch in watches:
        flags = []
        if "connected" in watch:
            flags.append(_("connected") if watch["connected"] else _("NOT CONNECTED"))
        if watch.get("online") is False:
            flags.append(_("OFFLINE"))
        if watch.get("worn") is False:
            flags.append(_("not worn"))
        if watch.get("battery") is not None:
            flags.append(_("battery {percent} %").format(percent=watch["battery"]))
        if watch.get("silent_s") is not None:
            flags.append(
                _("last heard {time}").format(time=local_time_ago(float(watch["silent_s"])))
            )
        say(f"  {watch['address']}  {', '.join(flags)}".rstrip())


def main(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    if args.action in ("pair", "unpair"):
        try:
            args.address = ble_address(args.address)
        except ValueError as exc:
            return fail(str(exc))
    if args.action == "scan" and not 1 <= args.seconds <= MAX_SCAN_S:
        return fail(_("--seconds must be from 1 to {limit}").format(limit=MAX_SCAN_S))
    socket = cfg.control_socket

    def talk() -> None:
        if args.action == "scan":
            started: list[bool] = []

            def on_reply(reply: dict[str, Any]) -> None:
                if not started:
                    started.append(True)
                    say(
                        _(
                            "Scanning for {seconds} s: keep the watch awake and near the gateway."
                        ).format(seconds=args.seconds)
                    )
                _show_scan(reply)

            asyncio.run(
                control.ask(
                    socket,
                    "watch.scan",
                    {"seconds": args.seconds},
                    on_reply,
                    reply_timeout_s=args.seconds + control.CLIENT_TIMEOUT_S,
                )
            )
        elif args.action == "pair":
            asyncio.run(
                control.ask(
                    socket,
                    "watch.pair",
                    {"address": args.address},
                    _show_pair,
                    reply_timeout_s=control.LONG_REPLY_S,
                )
            )
        elif args.action == "list":
            (reply,) = asyncio.run(control.ask(socket, "watch.list", {}))
            _show_list(reply)
        else:
            (reply,) = asyncio.run(control.ask(socket, "watch.unpair", {"address": args.address}))
            say(
                (
                    _("{address} unpaired") if reply["unpaired"] else _("{address} was not paired")
                ).format(address=reply["address"])
            )

    return run_client(socket, talk, lambda: _without_daemon(cfg, args))


async def _collect(replies: AsyncIterator[dict[str, Any]]) -> None:
    async for reply in replies:
        _show_scan(reply)


def _bluetooth_problem(exc: BaseException) -> str:
    text = str(exc)
    if any(word in text for word in _OFF):
        return _(
            "the Bluetooth adapter is switched off (fix: bluetoothctl power on; if it stays off, "
            "rfkill list shows whether it is blocked: rfkill unblock bluetooth)"
        )
    if any(word in text for word in _BUSY):
        return _(
            "the Bluetooth adapter is busy ({reason}): the carebed daemon, or another program, "
            "holds it (fix: if the daemon runs, make sure this command reaches it: run it with "
            "sudo or as a member of the carebed group; or stop it first: "
            "systemctl stop carebed)"
        ).format(reason=text or type(exc).__name__)
    return _(
        "Bluetooth is not usable here ({reason}): is BlueZ running "
        "(systemctl status bluetooth) and the adapter present (bluetoothctl list)?"
    ).format(reason=text or type(exc).__name__)


def _without_daemon(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    """The daemon is not running: use Bluetooth and the watch list directly."""
    note = _("(the daemon is not running: {path})").format(path=cfg.watches_path)
    try:
        store = WatchStore(cfg.watches_path, repair=False)
        if args.action == "scan":
            say(_("Scanning for {seconds} s without the daemon …").format(seconds=args.seconds))
            paired = {*cfg.watch.addresses, *store.addresses()}
            asyncio.run(_collect(scan_nearby(cfg.watch.adapter, args.seconds, paired)))
        elif args.action == "pair":
            say(_("Connecting to {address} …").format(address=args.address))
            report = asyncio.run(check_watch(args.address, cfg.watch))
            configured = report["address"] in cfg.watch.addresses
            added = not configured and store.add(report["address"])
            store.save()
            _show_pair(
                {
                    "event": "paired",
                    **report,
                    "device": f"watch-{report['address'].replace(':', '')}",
                    "missing": missing_services(report["services"]),
                    "new": added,
                }
            )
            say(
                "  "
                + _("{note}: the platform hears device.paired only when the daemon pairs").format(
                    note=note
                )
            )
        elif args.action == "list":
            say(_("paired watches {note}:").format(note=note))
            listed = sorted({*cfg.watch.addresses, *store.addresses()})
            _show_list({"watches": [{"address": a} for a in listed]})
        else:
            if args.address in cfg.watch.addresses:
                return fail(
                    _(
                        "{address} is in the configuration file ([watch] addresses): "
                        "remove it there"
                    ).format(address=args.address)
                )
            removed = store.remove(args.address)
            store.save()
            say(
                (
                    _("{address} removed {note}")
                    if removed
                    else _("{address} was not paired {note}")
                ).format(address=args.address, note=note)
            )
    except (WatchCheckError, WatchListError) as exc:
        return fail(str(exc))
    except LINK_ERRORS as exc:  # no adapter, BlueZ, permission, the adapter held by another
        return fail(_bluetooth_problem(exc))
    return EXIT_OK
