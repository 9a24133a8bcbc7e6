"""``carebed doctor [--json]``: one pass/fail sheet; exit status 0 only when the home is ready."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import unicodedata
from datetime import datetime

from gateway.cli.checks import Check, Report, diagnose, local_time
from gateway.core.i18n import _

EXIT_READY, EXIT_NOT_READY = 0, 1
WIDTH = 28


def _label(check: Check) -> str:
    return {"pass": _("PASS"), "fail": _("FAIL"), "skip": _("skip")}[check.status]


def _pad(text: str, columns: int) -> str:
    """``text`` padded to ``columns`` terminal columns (a Chinese character takes two)."""
    used = sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)
    return text + " " * max(columns - used, 0)


def show(check: Check) -> None:
    print(f"  {_pad(_label(check), 5)} {_pad(check.title, WIDTH)} {check.detail}", flush=True)
    if check.fix is not None:
        print("        " + _("fix: {fix}").format(fix=check.fix), flush=True)


def summary(report: Report) -> str:
    failures = sum(check.status == "fail" for check in report.checks)
    if report.ready:
        return _("READY: this home is ready.")
    return _(
        "NOT READY: {count} check(s) failed; do what each fix says, then run carebed doctor again."
    ).format(count=failures)


def main(args: argparse.Namespace) -> int:
    if args.json:
        report = asyncio.run(diagnose(args.config, boot_dir=args.boot_dir))
        print(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
        return EXIT_READY if report.ready else EXIT_NOT_READY
    print(
        _("carebed doctor: {config}, {now}").format(
            config=args.config, now=local_time(datetime.now().astimezone())
        ),
        flush=True,
    )
    try:
        report = asyncio.run(diagnose(args.config, on_check=show, boot_dir=args.boot_dir))
    except KeyboardInterrupt:
        return EXIT_NOT_READY
    print(summary(report))
    sys.stdout.flush()
    return EXIT_READY if report.ready else EXIT_NOT_READY
