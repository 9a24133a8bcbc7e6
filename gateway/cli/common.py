"""What every installer command shares: its ``--config`` option (before or after the action
word), talking to the daemon, and saying why that failed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.app import config as config_module
from gateway.app import control
from gateway.app.config import GatewayConfig
from gateway.core.errors import ConfigError, ControlError
from gateway.core.i18n import _

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 78
DEFAULT_CONFIG = Path("/etc/carebed/carebed.toml")


def _config_option(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        metavar=_("FILE"),
        help=_("configuration file (default: {path})").format(path=DEFAULT_CONFIG),
    )


def add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    """A command that reads the configuration: ``carebed NAME [--config FILE] …``."""
    parser = commands.add_parser(name, help=help_text, description=help_text)
    _config_option(parser, default=DEFAULT_CONFIG)
    return parser


def add_actions(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    return parser.add_subparsers(dest="action", required=True, metavar=_("ACTION"))


def add_action(
    actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    """An action of a command; ``--config`` is accepted after its name too."""
    parser = actions.add_parser(name, help=help_text, description=help_text)
    _config_option(parser, default=argparse.SUPPRESS)  # keeps the one given before the action
    return parser


def load_config(path: Path) -> GatewayConfig | None:
    """The configuration, or None after its problems were printed on one line (exit
    ``EXIT_CONFIG``)."""
    try:
        return config_module.load(path)
    except ConfigError as error:
        print(
            _("carebed: configuration error in {path}: {problems}").format(
                path=error.path, problems="; ".join(error.problems)
            ),
            file=sys.stderr,
        )
        return None


def say(text: str) -> None:
    print(text, flush=True)


def fail(text: str) -> int:
    """One line on stderr, prefixed with the program's name; the exit status of a failure."""
    print(f"carebed: {text}", file=sys.stderr, flush=True)
    return EXIT_FAILED


def unreachable(path: Path, exc: OSError) -> str:
    """What to tell the installer when the control socket is there but cannot be used."""
    if isinstance(exc, PermissionError):
        return _(
            "not allowed to use the daemon's control socket {path} (fix: run the command as "
            "root, e.g. with sudo, or add your user to the carebed group: "
            "sudo usermod -aG carebed $USER, then log in again)"
        ).format(path=path)
    return _(
        "cannot reach the daemon at {path} ({reason}) (fix: check it with "
        "systemctl status carebed; restart it with systemctl restart carebed)"
    ).format(path=path, reason=exc.strerror or exc)


_INTERNAL = "internal error:"
_BLUETOOTH_BUSY = ("org.bluez.Error.InProgress", "Operation already in progress")


def refusal(exc: ControlError) -> str:
    """The daemon's refusal as the installer reads it: its sentence, or, for an error it did
    not expect, what to do instead of a Python exception."""
    text = str(exc)
    if any(sign in text for sign in _BLUETOOTH_BUSY):
        return _(
            "the Bluetooth adapter is busy: the daemon is scanning for or connecting to a watch "
            "right now (fix: wait a few seconds and run the command again)"
        )
    if text.startswith(_INTERNAL):
        return _(
            "the daemon could not do this because of an unexpected error (fix: see its journal, "
            "journalctl -u carebed -n 50, and try again; report it if it stays)"
        )
    return text


def run_client(socket: Path, talk: Callable[[], None], without_daemon: Callable[[], int]) -> int:
    """A command's exchange with the daemon, ``talk``: 0 when it went through; the daemon's
    refusal or an unusable socket is one sentence on stderr and 1; no daemon at all, the
    command's ``without_daemon()``."""
    try:
        talk()
    except OSError as exc:
        if control.daemon_absent(exc):
            return without_daemon()
        return fail(unreachable(socket, exc))
    except ControlError as exc:
        return fail(refusal(exc))
    return EXIT_OK
