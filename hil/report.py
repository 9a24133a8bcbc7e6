"""The reports of a run: JUnit XML for CI and test benches, and one printable HTML page for the
technician's file (pass/fail, latencies, versions, the rig and the notes)."""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path
from xml.etree import ElementTree as ET

from gateway.core.i18n import _
from hil.runner import RunRecord

SUITE = "carebed-hil"


def junit(record: RunRecord) -> str:
    cases = record.scenarios
    suite = ET.Element(
        "testsuite",
        name=SUITE,
        tests=str(len(cases)),
        failures=str(sum(c.status == "failed" for c in cases)),
        skipped=str(sum(c.status == "skipped" for c in cases)),
        errors="0",
        time=f"{sum(c.duration_s for c in cases):.3f}",
        timestamp=record.started.isoformat(timespec="seconds"),
        hostname=record.gateway_id,
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in _facts(record):
        ET.SubElement(properties, "property", name=name, value=value)
    for case in cases:
        element = ET.SubElement(
            suite,
            "testcase",
            classname=f"hil.{record.rig_name}",
            name=case.name,
            time=f"{case.duration_s:.3f}",
        )
        if case.status == "failed":
            ET.SubElement(element, "failure", message=case.message).text = case.message
        elif case.status == "skipped":
            ET.SubElement(element, "skipped", message=case.message)
        lines = [
            f"{s.status:7} {s.id}: {s.title}"
            + ("" if s.took_s is None else f" ({s.took_s * 1000:.0f} ms)")
            + (f" [{s.observed}]" if s.observed else "")
            for s in case.steps
        ]
        lines += [f"latency {name} = {ms:.1f} ms" for name, ms in case.latencies_ms.items()]
        ET.SubElement(element, "system-out").text = "\n".join(lines)
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode")


def _facts(record: RunRecord) -> list[tuple[str, str]]:
    unknown = _("unknown")
    return [
        ("rig", f"{record.rig_name} ({record.rig_path})"),
        ("gateway", record.gateway_id),
        ("gateway_version", record.gateway_version or unknown),
        ("receiver_firmware", record.receiver_firmware or unknown),
        ("simulated", ", ".join(record.simulated) or "-"),
        ("technician", record.technician or "-"),
    ]


def _when(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


STYLE = """
body { font: 11pt sans-serif; margin: 1.5cm; color: #000; }
h1 { font-size: 16pt; margin: 0 0 .3em; }
table { border-collapse: collapse; width: 100%; margin: .6em 0; }
th, td { border: 1px solid #888; padding: 2px 6px; text-align: left; vertical-align: top; }
th { background: #eee; }
.passed { color: #060; font-weight: bold; }
.failed { color: #b00; font-weight: bold; }
.skipped { color: #666; font-weight: bold; }
.small { font-size: 9pt; }
@page { size: A4; margin: 1cm; }
@media print { body { margin: 0; } }
"""


def html_report(record: RunRecord) -> str:
    e = html.escape
    verdict = {"passed": _("PASSED"), "failed": _("FAILED"), "skipped": _("SKIPPED")}
    labels = {
        "rig": _("Rig"),
        "gateway": _("Gateway"),
        "gateway_version": _("Gateway version"),
        "receiver_firmware": _("Receiver firmware"),
        "simulated": _("Simulated parts"),
        "technician": _("Technician"),
    }
    overall = "passed" if record.passed else "failed"
    rows = []
    for case in record.scenarios:
        steps = "<br>".join(
            e(f"{s.id}: {s.title}")
            + ("" if s.took_s is None else f" ({s.took_s * 1000:.0f} ms)")
            + (f" — {e(s.observed)}" if s.observed and s.status != "passed" else "")
            for s in case.steps
        )
        latencies = "<br>".join(f"{e(k)}: {v:.0f} ms" for k, v in case.latencies_ms.items())
        rows.append(
            f'<tr><td>{e(case.name)}<div class="small">{e(case.title)}</div></td>'
            f'<td class="{case.status}">{verdict[case.status]}'
            f'<div class="small">{e(case.message)}</div></td>'
            f'<td class="small">{latencies}</td><td class="small">{steps}</td></tr>'
        )
    facts = "".join(
        f"<tr><th>{e(labels[name])}</th><td>{e(value)}</td></tr>" for name, value in _facts(record)
    )
    notes = "".join(f"<li>{e(note)}</li>" for note in record.notes) or "<li>-</li>"
    title = e(_("carebed test report"))
    times = _("Started {start}, finished {end}").format(
        start=_when(record.started), end=_when(record.finished)
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title} {e(record.gateway_id)}</title>
<style>{STYLE}</style></head><body>
<h1>{e(_("carebed test report"))}: <span class="{overall}">{verdict[overall]}</span></h1>
<p>{e(times)}</p>
<table>{facts}</table>
<table><tr><th>{e(_("Scenario"))}</th><th>{e(_("Result"))}</th><th>{e(_("Latencies"))}</th><th>{e(_("Steps"))}</th></tr>
{"".join(rows)}
</table>
<h2>{e(_("Technician's notes"))}</h2><ul>{notes}</ul>
<p class="small">{e(_("Signature"))}: ____________________</p>
</body></html>
"""


def write(record: RunRecord, junit_path: Path | None, report_path: Path | None) -> None:
    if junit_path is not None:
        junit_path.write_text(junit(record), encoding="utf-8")
    if report_path is not None:
        report_path.write_text(html_report(record), encoding="utf-8")
