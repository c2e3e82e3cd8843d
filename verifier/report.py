"""Rendering a report: the table people read, the JSON scripts read, the JUnit XML CI reads."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from flowproof.verifier.model import CheckResult, Report

HEADERS = ("CHECK", "STATUS", "EVIDENCE", "THRESHOLD")


def status_word(check: CheckResult) -> str:
    if check.passed:
        return "PASS"
    return "FAIL" if check.evaluated else "ERROR"


def threshold_text(check: CheckResult) -> str:
    if check.threshold is None:
        return "-"
    bound = "at least" if check.at_least else "at most"
    if check.unit.startswith("share of "):
        text = f"{bound} {check.threshold:.2%} {check.unit.removeprefix('share of ')}"
    else:
        text = f"{bound} {check.threshold:g} {check.unit}"
    if check.grace_seconds:
        text += f", grace {check.grace_seconds:g}s"
    return text


def render_table(report: Report) -> str:
    """A plain-text table: one row per check, one evidence line per sink, group or stream."""
    rows: list[tuple[str, str, str, str]] = []
    for check in report.checks:
        lines = check.detail.splitlines() or [""]
        rows.append((check.name, status_word(check), lines[0], threshold_text(check)))
        rows.extend(("", "", line, "") for line in lines[1:])
    widths = [max(len(row[i]) for row in (HEADERS, *rows)) for i in range(3)]
    out = []
    for row in (HEADERS, *rows):
        cells = [row[i].ljust(widths[i]) for i in range(3)]
        out.append("  ".join([*cells, row[3]]).rstrip())
    verdict = "PASSED" if report.passed else "FAILED"
    failed = [c.name for c in report.checks if not c.passed]
    summary = f"{verdict}: {len(report.checks) - len(failed)} of {len(report.checks)} checks passed"
    if failed:
        summary += f"; failed: {', '.join(failed)}"
    out.append("")
    out.append(f"{summary} (window {report.window_seconds:g}s, {report.duration_seconds:.2f}s)")
    return "\n".join(out) + "\n"


def render_json(report: Report) -> str:
    """Exactly one JSON document."""
    return json.dumps(report.as_json(), default=str, indent=2) + "\n"


def render_junit(report: Report, suite: str) -> str:
    """JUnit XML: one test case per check; a check that could not look is an error."""
    failures = sum(1 for c in report.checks if c.evaluated and not c.passed)
    errors = sum(1 for c in report.checks if not c.evaluated)
    counts = {
        "tests": str(len(report.checks)),
        "failures": str(failures),
        "errors": str(errors),
        "time": f"{report.duration_seconds:.3f}",
    }
    root = ET.Element("testsuites", {"name": "flowproof", **counts})
    testsuite = ET.SubElement(
        root,
        "testsuite",
        {"name": suite, "timestamp": report.evaluated_at.isoformat(), **counts},
    )
    for check in report.checks:
        case = ET.SubElement(testsuite, "testcase", classname=suite, name=check.name, time="0")
        message = f"{check.name}: value {check.value}, threshold {threshold_text(check)}"
        if not check.evaluated:
            ET.SubElement(case, "error", message=message, type="NotEvaluated").text = check.detail
        elif not check.passed:
            ET.SubElement(case, "failure", message=message, type="CheckFailed").text = check.detail
        ET.SubElement(case, "system-out").text = check.detail
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(report: Report, suite: str, path: Path) -> None:
    path.write_text(render_junit(report, suite), encoding="utf-8")
