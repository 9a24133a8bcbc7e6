"""The installer's commands: ``doctor``, ``status``, ``test-alarm``, ``support-bundle`` and
``tls request``. Their arguments are declared here; each command's module is imported only
when it runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

_MODULES = {
    "doctor": "gateway.cli.doctor",
    "status": "gateway.cli.status",
    "test-alarm": "gateway.cli.alarmtest",
    "support-bundle": "gateway.cli.bundle",
    "tls": "gateway.cli.tls",
}
COMMANDS = frozenset(_MODULES)


def register(commands: Any, default_config: Path) -> None:
    """Add the installer's commands to ``carebed``'s sub-parsers."""

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help_text)
        parser.add_argument(
            "--config", type=Path, default=default_config, help="configuration file"
        )
        return parser

    doctor = command("doctor", "is this home ready? one pass/fail sheet, each failure with its fix")
    doctor.add_argument("--json", action="store_true", help="the sheet as JSON, for tools")
    command("status", "uplink, queue, alarms held and devices, from the running daemon")
    test_alarm = command(
        "test-alarm", "raise a test alarm and wait for the platform's acknowledgement"
    )
    test_alarm.add_argument(
        "--timeout", type=int, default=120, help="seconds to wait for the acknowledgement"
    )
    bundle = command(
        "support-bundle", "a tarball for support: redacted configuration, log, status, versions"
    )
    bundle.add_argument(
        "--output", type=Path, default=None, help="where to write it (default: current directory)"
    )
    tls = command("tls", "this gateway's key and certificate request")
    tls_actions = tls.add_subparsers(dest="action", required=True)
    request = tls_actions.add_parser(
        "request", help="make the key (kept on this device) and print a certificate request"
    )
    request.add_argument("--force", action="store_true", help="replace an existing key")
    request.add_argument(
        "--config", type=Path, default=argparse.SUPPRESS, help="configuration file"
    )


def main(args: argparse.Namespace) -> int:
    module = importlib.import_module(_MODULES[args.command])
    try:
        status: int = module.main(args)
    except BrokenPipeError:  # the reader went away (| head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status
