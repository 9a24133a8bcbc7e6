"""``carebed watch scan|pair|list|unpair``: the installer's view of the health watches.

Through the running daemon when there is one (it holds the watches' links and tells the platform
``device.paired``); otherwise the command uses Bluetooth itself and edits the watch list (and
says so).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from typing import Any

from drivers.watch.errors import LINK_ERRORS, WatchCheckError
from drivers.watch.fleet import (
    MAX_SCAN_S,
    check_watch,
    missing_services,
    scan_nearby,
)
from drivers.watch.store import WatchStore
from gateway.app import control
from gateway.app.config import GatewayConfig, ble_address

EXIT_OK, EXIT_FAILED = 0, 1


def _say(text: str) -> None:
    print(text, flush=True)


def _show_scan(reply: dict[str, Any]) -> None:
    event = reply.get("event")
    if event == "progress":
        _say(f"  scanning… {reply['elapsed_s']} s, {reply['found']} device(s) heard")
    elif event == "device":
        offers = [name for name in ("heart_rate", "care") if reply.get(name)]
        looks = (
            "WATCH" if len(offers) == 2 else ("partial: " + ", ".join(offers) if offers else "-")
        )
        paired = "  (paired)" if reply.get("paired") else ""
        name = reply.get("name") or "?"
        _say(f"  {reply['address']}  {reply['rssi']:>4} dBm  {name:<16} {looks}{paired}")


def _show_pair(reply: dict[str, Any]) -> None:
    event = reply.get("event")
    if event == "checking":
        _say(f"Connecting to {reply['address']} …")
    elif event == "paired":
        battery = "unknown" if reply.get("battery") is None else f"{reply['battery']} %"
        _say(f"  battery {battery}; services: {', '.join(reply['services']) or 'none'}")
        if reply.get("missing"):
            _say(f"  NOTE: the watch does not offer {', '.join(reply['missing'])}")
        if "care" in reply.get("missing", []):
            _say("  WARNING: without the care service its SOS key and fall detection cannot work")
        state = "paired" if reply.get("new") else "was already paired"
        _say(f"{reply['device']} {state}.")


def _show_list(reply: dict[str, Any]) -> None:
    watches = reply["watches"]
    if not watches:
        _say("no watch is paired (carebed watch pair ADDRESS)")
    for watch in watches:
        flags = []
        if "connected" in watch:
            flags.append("connected" if watch["connected"] else "NOT CONNECTED")
        if watch.get("online") is False:
            flags.append("OFFLINE")
        if watch.get("worn") is False:
            flags.append("not worn")
        if watch.get("battery") is not None:
            flags.append(f"battery {watch['battery']} %")
        _say(f"  {watch['address']}  {', '.join(flags)}".rstrip())


def main(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    if args.action in ("pair", "unpair"):
        try:
            args.address = ble_address(args.address)
        except ValueError as exc:
            print(f"carebed: {exc}", file=sys.stderr)
            return EXIT_FAILED
    if args.action == "scan" and not 1 <= args.seconds <= MAX_SCAN_S:
        print(f"carebed: --seconds must be from 1 to {MAX_SCAN_S}", file=sys.stderr)
        return EXIT_FAILED
    socket = cfg.control_socket

    def talk() -> None:
        if args.action == "scan":
            _say(f"Scanning for {args.seconds} s: keep the watch awake and near the gateway.")
            asyncio.run(control.ask(socket, "watch.scan", {"seconds": args.seconds}, _show_scan))
        elif args.action == "pair":
            asyncio.run(control.ask(socket, "watch.pair", {"address": args.address}, _show_pair))
        elif args.action == "list":
            (reply,) = asyncio.run(control.ask(socket, "watch.list", {}))
            _show_list(reply)
        else:
            (reply,) = asyncio.run(control.ask(socket, "watch.unpair", {"address": args.address}))
            _say(f"{reply['address']} {'unpaired' if reply['unpaired'] else 'was not paired'}")

    return control.run_client(socket, talk, lambda: _without_daemon(cfg, args))


async def _collect(replies: AsyncIterator[dict[str, Any]]) -> None:
    async for reply in replies:
        _show_scan(reply)


def _without_daemon(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    """The daemon is not running: use Bluetooth and the watch list directly."""
    note = f"(the daemon is not running: {cfg.watches_path})"
    store = WatchStore(cfg.watches_path, repair=False)
    try:
        if args.action == "scan":
            _say(f"Scanning for {args.seconds} s without the daemon …")
            paired = {*cfg.watch.addresses, *store.addresses()}
            asyncio.run(_collect(scan_nearby(cfg.watch.adapter, args.seconds, paired)))
        elif args.action == "pair":
            _say(f"Connecting to {args.address} …")
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
            _say(f"  {note}: the platform hears device.paired only when the daemon pairs")
        elif args.action == "list":
            _say(f"paired watches {note}:")
            listed = sorted({*cfg.watch.addresses, *store.addresses()})
            _show_list({"watches": [{"address": a} for a in listed]})
        else:
            if args.address in cfg.watch.addresses:
                print(
                    f"carebed: {args.address} is in the configuration file "
                    "([watch] addresses): remove it there",
                    file=sys.stderr,
                )
                return EXIT_FAILED
            removed = store.remove(args.address)
            store.save()
            _say(f"{args.address} {'removed' if removed else 'was not paired'} {note}")
    except WatchCheckError as exc:
        print(f"carebed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except LINK_ERRORS as exc:  # no adapter, BlueZ, permission
        print(
            f"carebed: Bluetooth is not usable here ({exc}): is BlueZ running "
            "(systemctl status bluetooth) and the adapter present (bluetoothctl list)?",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
