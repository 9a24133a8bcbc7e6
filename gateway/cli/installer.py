"""The installer's commands: ``doctor``, ``status``, ``test-alarm``, ``support-bundle`` and
``tls request``. Their arguments are declared here; each command's module is imported only
when it runs."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

_MODULES = {
    "doctor": "gateway.cli.doctor",
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


def main(args: argparse.Namespace) -> int:
    module = importlib.import_module(_MODULES[args.command])
    status: int = module.main(args)
    return status
