"""Command line: parse args → load config → logging → asyncio.run(app.run(cfg)) → exit code.

A command registers in ``_parser`` with ``common.add_command`` (which gives it ``--config``), its
actions with ``common.add_action`` (which accepts ``--config`` after the action word too), and its
entry point in ``COMMANDS``: called with the loaded configuration and the parsed arguments, it
returns the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import gettext
import json
import os
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from gateway.app import config as config_module
from gateway.app import preflight
from gateway.cli import common, installer
from gateway.cli import provision as provision_cli
from gateway.cli.common import add_action, add_actions, add_command
from gateway.core.errors import ConfigError, StateFileError, StoreVersionError
from gateway.core.events import uplink_json_schema
from gateway.core.i18n import DOMAIN, LOCALE_DIR, N_, _

if TYPE_CHECKING:
    from gateway.app.config import GatewayConfig
    from gateway.app.daemon import EventSource

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_CONFIG = common.DEFAULT_CONFIG
EXIT_CONFIG = 78  # EX_CONFIG: the unit's RestartPreventExitStatus, so systemd does not loop on it
DEBUG_VARIABLE = "CAREBED_DEBUG"  # set: an unexpected error in a command shows its traceback

# argparse's own words (usage, errors, section titles), looked up in carebed's catalog once
# ``_use_catalog_for_argparse`` has made it the process's text domain.
ARGPARSE_MESSAGES = (
    N_("usage: "),
    N_("options"),
    N_("positional arguments"),
    N_("show this help message and exit"),
    N_("show program's version number and exit"),
    N_("%(prog)s: error: %(message)s\n"),
    N_("the following arguments are required: %s"),
    N_("unrecognized arguments: %s"),
    N_("argument %(argument_name)s: %(message)s"),
    N_("invalid choice: %(value)r (choose from %(choices)s)"),
    N_("invalid %(type)s value: %(value)r"),
    N_("expected one argument"),
    N_("ambiguous option: %(option)s could match %(matches)s"),
)

Handler = Callable[["GatewayConfig", argparse.Namespace], int]
# Commands that installed packages add (``carebed hil`` from the hil package): each entry point of
# this group names a module with ``register(subparsers)`` and ``main(args) -> int``. The gateway
# never imports them by name, and loads one only when it is the command asked for (``carebed
# run`` loads none); a broken one is reported, not fatal to the other commands.
PLUGIN_GROUP = "carebed.commands"


class Plugin(Protocol):
    def register(self, commands: Any) -> None: ...
    def main(self, args: argparse.Namespace) -> int: ...


def _requested(argv: list[str]) -> str | None:
    """The command word of ``argv`` (its first argument that is not an option)."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _builtins() -> set[str]:
    """carebed's own command words; an add-on never takes one of them."""
    return {"run", "schema", "provision", *installer.COMMANDS, *COMMANDS}


def _plugin(argv: list[str]) -> tuple[list[str], Plugin | None]:
    """The add-on commands' names, and the one asked for, loaded."""
    wanted = _requested(argv)
    if wanted in _builtins():
        return [], None  # the daemon and the installer's commands never scan the entry points
    entries = {entry.name: entry for entry in metadata.entry_points(group=PLUGIN_GROUP)}
    if wanted not in entries:
        return sorted(entries), None
    try:
        plugin: Plugin = entries[wanted].load()
    except Exception as exc:  # noqa: BLE001 - one broken add-on must not break carebed
        print(
            _("carebed: warning: command {name} cannot load: {error}").format(
                name=wanted, error=exc
            ),
            file=sys.stderr,
        )
        return sorted(set(entries) - {wanted}), None
    return sorted(set(entries) - {wanted}), plugin


def _use_catalog_for_argparse() -> None:
    """argparse translates through the process's text domain: make it carebed's."""
    gettext.bindtextdomain(DOMAIN, str(LOCALE_DIR))
    gettext.textdomain(DOMAIN)


def version() -> str:
    try:
        return metadata.version("carebed")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _parser(
    add_ons: list[str] | None = None, plugin: Plugin | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carebed", description=_("Home-care bed gateway daemon"))
    parser.add_argument("--version", action="version", version=f"carebed {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar=_("COMMAND"))
    add_command(commands, "run", _("run the gateway daemon"))
    check = add_command(commands, "check-config", _("validate a configuration file"))
    check.add_argument(
        "path",
        type=Path,
        nargs="?",
        default=None,
        metavar=_("FILE"),
        help=_("the file to check (the same as --config)"),
    )
    button = add_command(
        commands,
        "button",
        _("pair, list and unpair emergency buttons (through the running daemon)"),
    )
    actions = add_actions(button)
    pair = add_action(actions, "pair", _("open pairing on the receiver and show what pairs"))
    pair.add_argument("--seconds", type=int, default=60, help=_("how long pairing stays open"))
    add_action(actions, "list", _("the paired buttons and their state"))
    add_action(
        actions,
        "confirm",
        _("after a damaged pairing list: the paired buttons are all of the home's"),
    )
    unpair = add_action(actions, "unpair", _("forget a button"))
    unpair.add_argument("id", help=_("btn-00A1B2C3, or just 00A1B2C3"))
    camera = add_command(commands, "camera", _("check the voice-call camera"))
    camera_actions = add_actions(camera)
    camera_test = add_action(
        camera_actions,
        "test",
        _("reachability, credentials and privacy mode; --call places a test call"),
    )
    camera_test.add_argument("--call", action="store_true", help=_("also place a test call"))
    watch = add_command(
        commands, "watch", _("scan for, pair, list and unpair health watches (Bluetooth LE)")
    )
    watch_actions = add_actions(watch)
    watch_scan = add_action(
        watch_actions,
        "scan",
        _("list nearby BLE devices with RSSI and whether they offer the watch services"),
    )
    watch_scan.add_argument("--seconds", type=int, default=10, help=_("how long to listen"))
    watch_pair = add_action(
        watch_actions,
        "pair",
        _("check a watch (connect, battery, services) and add it to the watch list"),
    )
    watch_pair.add_argument("address", help=_("the watch's BLE address, e.g. C0:FF:EE:00:00:01"))
    add_action(watch_actions, "list", _("the paired watches and their state"))
    watch_unpair = add_action(watch_actions, "unpair", _("forget a watch"))
    watch_unpair.add_argument("address", help=_("the watch's BLE address"))
    provision_cli.add_parser(commands)
    installer.register(commands)
    schema = commands.add_parser(
        "schema",
        help=_("print the JSON Schemas (config and uplink)"),
    )
    schema.add_argument("which", nargs="?", choices=["all", "config", "uplink"], default="all")
    for name in add_ons or []:
        commands.add_parser(name, help=_("see carebed {name} --help").format(name=name))
    if plugin is not None:
        plugin.register(commands)
    return parser


def _config_failure(error: ConfigError) -> int:
    print(_("carebed: configuration error in {path}:").format(path=error.path), file=sys.stderr)
    for problem in error.problems:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_CONFIG


def _camera(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.cli import camera  # noqa: PLC0415 - only this command needs it

    return camera.main(cfg, args)


def _watch(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.cli import watch  # noqa: PLC0415 - only this command needs it

    return watch.main(cfg, args)


def _button(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    from gateway.cli import button  # noqa: PLC0415 - only this command needs it

    return button.main(cfg, args)


def _check_config(cfg: GatewayConfig, args: argparse.Namespace) -> int:
    path: Path = args.config
    try:
        warnings = preflight.preflight(cfg, path, create=False)
    except ConfigError as error:
        return _config_failure(error)
    for warning in warnings:
        print(_("carebed: warning: {warning}").format(warning=warning), file=sys.stderr)
    print(
        _("{path}: OK (gateway {gateway}, broker {host}:{port})").format(
            path=path, gateway=cfg.gateway_id, host=cfg.mqtt.host, port=cfg.mqtt.effective_port
        )
    )
    return EXIT_OK


# Commands that act on a loaded configuration, by name (``run`` and ``schema`` are main's own).
COMMANDS: dict[str, Handler] = {
    "check-config": _check_config,
    "button": _button,
    "camera": _camera,
    "watch": _watch,
}


def main(argv: list[str] | None = None, *, sources: Mapping[str, EventSource] | None = None) -> int:
    """``sources``: event sources ``run`` starts beyond the configured devices (the rig's)."""
    _use_catalog_for_argparse()
    add_ons, plugin = _plugin(sys.argv[1:] if argv is None else argv)
    args = _parser(add_ons, plugin).parse_args(argv)
    if plugin is not None and args.command not in _builtins():
        return plugin.main(args)
    if args.command == "schema":
        schemas = {"config": config_module.json_schema(), "uplink": uplink_json_schema()}
        chosen = schemas if args.which == "all" else schemas[args.which]
        print(json.dumps(chosen, indent=2))
        return EXIT_OK
    if args.command == "provision":
        return provision_cli.main(args)
    if args.command in installer.COMMANDS:
        return installer.main(args)
    if args.command == "check-config" and args.path is not None:
        args.config = args.path
    try:
        cfg = config_module.load(args.config)
    except ConfigError as error:
        return _config_failure(error)
    if args.command == "run":
        return _run(cfg, args.config, sources)
    try:
        return COMMANDS[args.command](cfg, args)
    except KeyboardInterrupt:
        print(_("carebed: interrupted"), file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # the installer's commands: a sentence, never a traceback
        if os.environ.get(DEBUG_VARIABLE):
            raise
        print(
            _(
                "carebed: {command} failed: {error} (fix: run it again with {variable}=1 for "
                "the details, and report them)"
            ).format(command=args.command, error=type(exc).__name__, variable=DEBUG_VARIABLE),
            file=sys.stderr,
        )
        return EXIT_FAILURE


def _run(cfg: GatewayConfig, path: Path, sources: Mapping[str, EventSource] | None) -> int:
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
