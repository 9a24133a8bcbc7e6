"""Command line: parse args → load config → logging → asyncio.run(app.run(cfg)) → exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from gateway.app import config as config_module
from gateway.app import preflight
from gateway.cli import installer
from gateway.cli import provision as provision_cli
from gateway.core.errors import ConfigError, StateFileError, StoreVersionError
from gateway.core.events import uplink_json_schema

if TYPE_CHECKING:
    from gateway.app.daemon import EventSource

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG: the unit's RestartPreventExitStatus, so systemd does not loop on it
DEFAULT_CONFIG = Path("/etc/carebed/carebed.toml")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carebed", description="Home-care bed gateway daemon")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the gateway daemon")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="configuration file")
    check = commands.add_parser("check-config", help="validate a configuration file")
    check.add_argument("path", type=Path, nargs="?", default=DEFAULT_CONFIG)
    button = commands.add_parser(
        "button", help="pair, list and unpair emergency buttons (through the running daemon)"
    )
    button.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="configuration file")
    actions = button.add_subparsers(dest="action", required=True)
    pair = actions.add_parser("pair", help="open pairing on the receiver and show what pairs")
    pair.add_argument("--seconds", type=int, default=60, help="how long pairing stays open")
    actions.add_parser("list", help="the paired buttons and their state")
    actions.add_parser(
        "confirm", help="after a damaged pairing list: the paired buttons are all of the home's"
    )
    unpair = actions.add_parser("unpair", help="forget a button")
    unpair.add_argument("id", help="btn-00A1B2C3, or just 00A1B2C3")
    camera = commands.add_parser("camera", help="check the voice-call camera")
    camera.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="configuration file")
    camera_actions = camera.add_subparsers(dest="action", required=True)
    camera_test = camera_actions.add_parser(
        "test", help="reachability, credentials and privacy mode; --call places a test call"
    )
    camera_test.add_argument("--call", action="store_true", help="also place a test call")
    watch = commands.add_parser(
        "watch", help="scan for, pair, list and unpair health watches (Bluetooth LE)"
    )
    watch.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="configuration file")
    watch_actions = watch.add_subparsers(dest="action", required=True)
    watch_scan = watch_actions.add_parser(
        "scan", help="list nearby BLE devices with RSSI and whether they offer the watch services"
    )
    watch_scan.add_argument("--seconds", type=int, default=10, help="how long to listen")
    watch_pair = watch_actions.add_parser(
        "pair", help="check a watch (connect, battery, services) and add it to the watch list"
    )
    watch_pair.add_argument("address", help="the watch's BLE address, e.g. C0:FF:EE:00:00:01")
    watch_actions.add_parser("list", help="the paired watches and their state")
    watch_unpair = watch_actions.add_parser("unpair", help="forget a watch")
    watch_unpair.add_argument("address", help="the watch's BLE address")
    provision_cli.add_parser(commands)
    installer.register(commands, DEFAULT_CONFIG)
    schema = commands.add_parser("schema", help="print the JSON Schemas (config and uplink)")
    schema.add_argument("which", nargs="?", choices=["all", "config", "uplink"], default="all")
    return parser


def _config_failure(error: ConfigError) -> int:
    print(f"carebed: configuration error in {error.path}:", file=sys.stderr)
    for problem in error.problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_CONFIG


def main(argv: list[str] | None = None, *, sources: Mapping[str, EventSource] | None = None) -> int:
    """``sources``: event sources ``run`` starts beyond the configured devices (the rig's)."""
    args = _parser().parse_args(argv)
    if args.command == "schema":
        schemas = {"config": config_module.json_schema(), "uplink": uplink_json_schema()}
        chosen = schemas if args.which == "all" else schemas[args.which]
        print(json.dumps(chosen, indent=2))
        return EXIT_OK
    if args.command == "provision":
        return provision_cli.main(args)
    if args.command in installer.COMMANDS:
        return installer.main(args)
    path = args.config if args.command in ("run", "button", "camera", "watch") else args.path
    try:
        cfg = config_module.load(path)
    except ConfigError as error:
        return _config_failure(error)
    if args.command == "camera":
        from gateway.cli import camera as camera_cli  # noqa: PLC0415 - only this command needs it

        return camera_cli.main(cfg, args)
    if args.command == "watch":
        from gateway.cli import watch as watch_cli  # noqa: PLC0415 - only this command needs it

        return watch_cli.main(cfg, args)
    if args.command == "button":
        from gateway.cli import button as button_cli  # noqa: PLC0415 - only this command needs it

        return button_cli.main(cfg, args)
    if args.command == "check-config":
        try:
            warnings = preflight.preflight(cfg, path, create=False)
        except ConfigError as error:
            return _config_failure(error)
        for warning in warnings:
            print(f"carebed: warning: {warning}", file=sys.stderr)
        print(
            f"{path}: OK (gateway {cfg.gateway_id}, "
            f"broker {cfg.mqtt.host}:{cfg.mqtt.effective_port})"
        )
        return EXIT_OK
    from gateway.app import daemon as app  # noqa: PLC0415 - keeps check-config and schema fast
    from gateway.app import logs  # noqa: PLC0415

    stop_request = app.StopRequest()
    logs.configure(cfg.logging.level, cfg.logging.format)
    try:
        warnings = preflight.preflight(cfg, path, create=True)
    except ConfigError as error:
        return _config_failure(error)
    log = structlog.get_logger("gateway.app.config")
    for warning in warnings:
        log.warning(warning.event, path=str(warning.path), problem=warning.problem, fix=warning.fix)
    try:
        return asyncio.run(app.run(cfg, stop_request, sources))
    except StoreVersionError as exc:
        print(f"carebed: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StateFileError as exc:  # pairing or watch list unreadable, not damaged: systemd retries
        print(f"carebed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
