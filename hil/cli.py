"""``carebed hil``: the hardware-in-the-loop suite for technicians.

Registered with carebed through the ``carebed.commands`` entry point group (the gateway never
imports hil): ``register`` adds the command to carebed's parser, ``main`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import gettext
import sys
from pathlib import Path
from typing import Any

from gateway.core.i18n import DOMAIN, LOCALE_DIR, _
from hil import rigfile
from hil.desk import DeskError
from hil.guide import stdin_guide
from hil.report import write
from hil.runner import RunnerError, run
from hil.scenarios import ALL, SCENARIOS, WEEKLY

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 78


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rig", type=Path, required=True, metavar=_("RIG.toml"), help=_("the rig description")
    )
    parser.add_argument("--junit", type=Path, metavar=_("FILE"), help=_("write a JUnit XML report"))
    parser.add_argument(
        "--report", type=Path, metavar=_("FILE"), help=_("write the printable HTML report")
    )
    parser.add_argument(
        "--note", action="append", default=[], metavar=_("TEXT"), help=_("a note for the report")
    )


def register(commands: Any) -> None:
    """Add ``hil`` to carebed's sub-commands (``commands``: argparse's sub-parsers action)."""
    _actions(commands.add_parser("hil", help=_("hardware-in-the-loop tests for technicians")))


def _actions(hil: argparse.ArgumentParser) -> None:
    actions = hil.add_subparsers(dest="hil_action", required=True, metavar=_("ACTION"))
    run_parser = actions.add_parser("run", help=_("run the scenarios on a rig"))
    _common(run_parser)
    run_parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar=_("NAME"),
        help=_("run only this scenario (repeat, or separate with commas): {names}").format(
            names=", ".join(ALL)
        ),
    )
    weekly = actions.add_parser(
        "weekly", help=_("the weekly button test: every button once, each result recorded")
    )
    _common(weekly)
    actions.add_parser("list", help=_("list the scenarios"))


def main(args: argparse.Namespace) -> int:
    if args.hil_action == "list":
        for scenario in (*SCENARIOS, WEEKLY):
            print(f"{scenario.name:20} {_(scenario.title)}")
        return EXIT_OK
    if args.hil_action == "weekly":
        chosen = [WEEKLY]
    else:
        names = [n.strip() for value in args.only for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n not in ALL]
        if unknown:
            print(
                _("carebed hil: no scenario {names} (known: {known})").format(
                    names=", ".join(unknown), known=", ".join(ALL)
                ),
                file=sys.stderr,
            )
            return EXIT_USAGE
        chosen = [ALL[n] for n in names] if names else list(SCENARIOS)
    try:
        rig = rigfile.load(args.rig)
    except rigfile.RigError as error:
        print(
            _("carebed hil: the rig description {path} is wrong:").format(path=error.path),
            file=sys.stderr,
        )
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        record = asyncio.run(run(rig, args.rig, chosen, stdin_guide(), notes=args.note))
    except (RunnerError, DeskError) as error:
        print(f"carebed hil: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print(_("carebed hil: interrupted"), file=sys.stderr)
        return EXIT_FAILED
    write(record, args.junit, args.report)
    counts = {
        status: sum(s.status == status for s in record.scenarios)
        for status in ("passed", "failed", "skipped")
    }
    print(_("carebed hil: {passed} passed, {failed} failed, {skipped} skipped").format(**counts))
    return EXIT_OK if record.passed else EXIT_FAILED


def standalone(argv: list[str] | None = None) -> int:
    """``python -m hil``: the same command without carebed's other commands (a source tree)."""
    gettext.bindtextdomain(DOMAIN, str(LOCALE_DIR))  # argparse's own words, as carebed does
    gettext.textdomain(DOMAIN)
    parser = argparse.ArgumentParser(prog="python -m hil")
    _actions(parser)
    return main(parser.parse_args(argv))
