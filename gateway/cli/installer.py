"""The installer's commands: ``doctor``, ``status``, ``test-alarm``, ``support-bundle`` and
``tls request``. Their arguments are declared here; each command's module is imported only
when it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from gateway.cli.common import add_action, add_actions, add_command
from gateway.core.i18n import _

_MODULES = {
    "doctor": "gateway.cli.doctor",
    "status": "gateway.cli.status",
    "test-alarm": "gateway.cli.alarmtest",
    "support-bundle": "gateway.cli.bundle",
    "tls": "gateway.cli.tls",
}
COMMANDS = frozenset(_MODULES)
EXIT_INTERRUPTED = 130


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the installer's commands to ``carebed``'s sub-parsers; each takes ``--config``, and
    ``tls request`` takes it after its action word too."""
    doctor = add_command(
        commands, "doctor", _("is this home ready? one pass/fail sheet, each failure with its fix")
    )
    doctor.add_argument("--json", action="store_true", help=_("the sheet as JSON, for tools"))
    doctor.add_argument(
        "--boot-dir",
        type=Path,
        default=Path("/boot/firmware"),
        help=_("the boot partition, where a first-boot bundle is (default: {default})").format(
            default="/boot/firmware"
        ),
    )
    add_command(
        commands, "status", _("uplink, queue, alarms held and devices, from the running daemon")
    )
    test_alarm = add_command(
        commands, "test-alarm", _("raise a test alarm and wait for the platform's acknowledgement")
    )
    test_alarm.add_argument(
        "--timeout", type=int, default=120, help=_("seconds to wait for the acknowledgement")
    )
    bundle = add_command(
        commands,
        "support-bundle",
        _("a tarball for support: redacted configuration, log, status, versions"),
    )
    bundle.add_argument(
        "--output",
        type=str,
        default=None,
        metavar=_("FILE"),
        help=_("where to write it (default: current directory)"),
    )
    tls = add_command(commands, "tls", _("this gateway's key and certificate request"))
    request = add_action(
        add_actions(tls),
        "request",
        _("make the key (kept on this device) and print a certificate request"),
    )
    request.add_argument("--force", action="store_true", help=_("replace an existing key"))


def main(args: argparse.Namespace) -> int:
    module = importlib.import_module(_MODULES[args.command])
    try:
        status: int = module.main(args)
    except BrokenPipeError:  # the reader went away (| head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback, the shell's status for SIGINT
        print(_("carebed: interrupted"), file=sys.stderr)
        return EXIT_INTERRUPTED
    return status
