"""The reliability record: each fault or bad-input test says what it tried and what was lost.

A test calls ``record(...)`` after its assertions (so a failed test records nothing). When
``CAREBED_RELIABILITY_LOG`` names a file, each record is appended to it as one JSON line;
otherwise ``record`` does nothing. ``make soak`` sets the variable and then renders the lines
into docs/RELIABILITY.md with ``python -m tests.support.reliability LOG OUT``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

LOG_ENV = "CAREBED_RELIABILITY_LOG"
SOAK = os.environ.get("CAREBED_SOAK") == "1"


def scaled(quick: int, soak: int) -> int:
    """A count for this run: the full one under ``make soak``, a reduced one in ``make test``."""
    return soak if SOAK else quick


@dataclass(frozen=True, slots=True)
class Record:
    area: str  # what was attacked: "disk", "network", "serial", "ble", "downlink", "config", ...
    fault: str  # the fault or input class, in a few words
    count: int  # how many times / inputs
    lost: int  # good events (alarms, presses, acknowledgements) lost: the goal is 0
    outcome: str  # what the gateway did, in a few words
    test: str  # the test that produced the record


def record(area: str, fault: str, *, count: int, lost: int, outcome: str) -> None:
    """Append one record to the reliability log, if one is being written."""
    target = os.environ.get(LOG_ENV)
    if not target:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]  # "... (call)"
    entry = Record(area, fault, count, lost, outcome, test)
    with Path(target).open("a") as handle:
        handle.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")


def render(records: Sequence[Record], *, command: str, when: str) -> str:
    """docs/RELIABILITY.md from the records of one run."""
    lines = [
        "# Reliability: faults and bad input tried, and what was lost",
        "",
        f"Written by `{command}` on {when}; rerun it to refresh this page. Each row is one test",
        "of the suite at its full (soak) count. *Lost* counts the good events (alarms, presses,",
        "acknowledgements, events carebed had stored) that carebed lost; the goal is zero",
        "everywhere. What a broker lost after it had confirmed a message (PUBACK) is no loss of",
        "carebed's and is told in the row's outcome.",
        "",
    ]
    by_area: dict[str, list[Record]] = {}
    for entry in records:
        by_area.setdefault(entry.area, []).append(entry)
    total_lost = sum(entry.lost for entry in records)
    lines.append(f"**{len(records)} fault classes tried, {total_lost} good events lost.**")
    lines.append("")
    for area in sorted(by_area):
        lines += [f"## {area}", "", "| fault or input | count | lost | what carebed did | test |"]
        lines.append("|---|---:|---:|---|---|")
        for entry in by_area[area]:
            lines.append(
                f"| {entry.fault} | {entry.count:,} | {entry.lost} | {entry.outcome} "
                f"| `{entry.test}` |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m tests.support.reliability LOG OUT", file=sys.stderr)
        return 2
    log_path, out = Path(argv[0]), Path(argv[1])
    records = [Record(**json.loads(line)) for line in log_path.read_text().splitlines() if line]
    when = time.strftime("%Y-%m-%d", time.gmtime())
    out.write_text(render(records, command="make soak", when=when) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
