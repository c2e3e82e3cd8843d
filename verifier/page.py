"""The verifier's status page: `/status.json` (the data) and `/` (the same data as HTML).

The document is the last report as `flowproof check --json` prints it (each check also with its
status word and threshold text), each consumer group's lanes with their Burrow-style status
(verifier.status), and the recent history (verifier.history). The HTML is rendered on the server
from that document: inline CSS and inline SVG charts, no script and no external asset, a meta
refresh to follow the evaluations. Every text from the evidence is escaped: stream, topic and
group names are chosen by whoever can write to the brokers. A Content-Security-Policy forbids
scripts all the same.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from flowproof.core.http import Reply
from flowproof.verifier.history import CHARTS, History, Sample
from flowproof.verifier.model import LAG_KAFKA, LAG_REDIS, Finding, Report
from flowproof.verifier.report import status_word, threshold_text
from flowproof.verifier.status import GroupStatus, StatusWindows

Document = dict[str, Any]

PALETTE = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d")
CHART_WIDTH, CHART_HEIGHT, CHART_LEFT, CHART_BOTTOM, CHART_TOP = 370, 130, 50, 16, 8


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


# --- the document -----------------------------------------------------------------------------
def _lane_finding(finding: Finding) -> bool:
    return "source" in finding.data


def consumer_groups(report: Report, windows: StatusWindows | None) -> list[Document]:
    """Each expected group of the lag checks with its status and its lanes' statuses."""
    groups: dict[tuple[str, str], Document] = {}
    lanes: list[Finding] = []
    for check in report.checks:
        if check.name not in (LAG_REDIS, LAG_KAFKA):
            continue
        for finding in check.findings:
            if _lane_finding(finding):
                lanes.append(finding)
            elif "status" in finding.data:
                key = (str(finding.data["sink"]), str(finding.data["group"]))
                groups[key] = {
                    "sink": key[0],
                    "group": key[1],
                    "status": finding.data["status"],
                    "ok": finding.ok,
                    "detail": finding.text,
                    "lanes": [],
                }
    for finding in lanes:
        group = groups.get((str(finding.data["sink"]), str(finding.data["group"])))
        if group is not None:
            group["lanes"].append(_lane(finding, group, report, windows))
    return list(groups.values())


def _lane(
    finding: Finding, group: Document, report: Report, windows: StatusWindows | None
) -> Document:
    data = finding.data
    status, why = GroupStatus.UNKNOWN, "no status window"
    if windows is not None:
        # Liveness only tells STALL from STOP, and the group's status (its worst lane's) says it.
        lane = windows.status(
            (group["sink"], group["group"], data["source"], data.get("partition")),
            alive=group["status"] != GroupStatus.STOP,
            now=report.evaluated_at.timestamp(),
        )
        status, why = lane.status, lane.why
    partition = data.get("partition")
    return {
        "lane": data["source"] if partition is None else f"{data['source']} [{partition}]",
        "source": data["source"],
        "partition": partition,
        "status": str(status),
        "why": why,
        "ok": finding.ok,
        "behind": data.get("behind"),
        "time_lag_seconds": data.get("time_lag_seconds"),
        "pending": data.get("pending"),
        "detail": finding.text,
    }


def _history(samples: Sequence[Sample], size: int) -> Document:
    charts: Document = {}
    for name, (title, unit) in CHARTS.items():
        labels = sorted({label for s in samples for label in s.charts.get(name, {})})
        series = {label: [s.charts.get(name, {}).get(label) for s in samples] for label in labels}
        charts[name] = {"title": title, "unit": unit, "series": series}
    return {
        "size": size,
        "evaluated_at": [s.at.isoformat() for s in samples],
        "passed": [s.passed for s in samples],
        "charts": charts,
    }


def status_document(
    report: Report | None,
    groups: list[Document],
    samples: Sequence[Sample],
    *,
    history_size: int,
    refresh_seconds: float,
) -> Document:
    """What /status.json serves and / renders."""
    doc: Document = {"verdict": "PENDING", "passed": None, "checks": [], "groups": []}
    if report is not None:
        doc.update(report.as_json())
        doc["verdict"] = "PASSED" if report.passed else "FAILED"
        doc["checks"] = [
            {
                **check.as_json(),
                "status": status_word(check),
                "threshold_text": threshold_text(check),
            }
            for check in report.checks
        ]
        doc["groups"] = groups
    doc["refresh_seconds"] = refresh_seconds
    doc["history"] = _history(samples, history_size)
    return doc


# --- the HTML ---------------------------------------------------------------------------------
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{padding:14px 24px;color:#fff;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header.PASSED{background:#047857}header.FAILED{background:#b91c1c}header.PENDING{background:#4b5563}
header h1{margin:0;font-size:22px}header .verdict{font-size:22px;font-weight:700}
main{padding:8px 24px 24px}h2{font-size:16px;margin:18px 0 6px}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
ul.ev{margin:0;padding-left:16px}ul.ev li.bad{color:#b91c1c;font-weight:600}
.s{display:inline-block;min-width:54px;text-align:center;border-radius:4px;padding:0 6px;
font-weight:700;color:#fff}
.PASS,.OK{background:#059669}.FAIL,.ERROR,.STALL,.STOP{background:#dc2626}
.WARN,.REWIND{background:#d97706}.UNKNOWN{background:#6b7280}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{background:#fff;border:1px solid #e5e7eb;
padding:6px 10px}.chart h3{margin:0 0 2px;font-size:14px}.unit{color:#6b7280;font-size:12px}
.legend{margin:4px 0 0;padding:0;list-style:none;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
.muted{color:#6b7280}svg.verdicts{display:block;margin:0 0 10px}
"""


def render_html(doc: Document) -> str:
    """The status page for a document of `status_document`."""
    refresh = max(1, math.ceil(float(doc["refresh_seconds"])))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{refresh}">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>flowproof status: {_esc(doc['verdict'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        _header(doc, refresh),
        "<main>",
        _checks(doc["checks"]),
        _groups(doc["groups"]),
        _charts(doc["history"]),
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _header(doc: Document, refresh: int) -> str:
    verdict = str(doc["verdict"])
    if doc.get("evaluated_at"):
        at = dt.datetime.fromisoformat(doc["evaluated_at"]).strftime("%Y-%m-%d %H:%M:%S UTC")
        about = (
            f"evaluated {at}, window {doc['window_seconds']:g}s, "
            f"took {doc['duration_seconds']:.2f}s"
        )
        passed = sum(1 for c in doc["checks"] if c["passed"])
        about += f"; {passed} of {len(doc['checks'])} checks passed"
    else:
        about = "no evaluation has finished yet"
    components = ", ".join(
        f"{name} {'up' if state['up'] else 'DOWN'}"
        for name, state in doc.get("components", {}).items()
    )
    return (
        f'<header class="{_esc(verdict)}"><h1>flowproof</h1>'
        f'<span class="verdict" id="verdict">{_esc(verdict)}</span>'
        f"<span>{_esc(about)}</span><span>{_esc(components)}</span>"
        f"<span>refreshes every {refresh}s</span></header>"
    )


def _badge(status: str) -> str:
    return f'<span class="s {_esc(status)}">{_esc(status)}</span>'


def _checks(checks: list[Document]) -> str:
    rows = []
    for check in checks:
        evidence = sorted(check["evidence"], key=lambda item: bool(item["ok"]))
        items = "".join(
            f'<li class="{"ok" if item["ok"] else "bad"}">'
            f"{_esc(item['subject'])}: {_esc(item['text'])}</li>"
            for item in evidence
        )
        rows.append(
            f'<tr id="check-{_esc(check["name"])}"><td>{_esc(check["name"])}</td>'
            f"<td>{_badge(check['status'])}</td>"
            f'<td><ul class="ev">{items or "<li>nothing to judge</li>"}</ul></td>'
            f"<td>{_esc(check['threshold_text'])}</td></tr>"
        )
    body = "".join(rows) or '<tr><td colspan="4" class="muted">waiting for an evaluation</td></tr>'
    return (
        "<h2>Checks</h2><table><thead><tr><th>check</th><th>status</th><th>evidence</th>"
        f"<th>threshold</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _number(value: object, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def _groups(groups: list[Document]) -> str:
    if not groups:
        return '<h2>Consumer groups</h2><p class="muted">no consumer group measured yet</p>'
    rows = []
    for group in groups:
        rows.append(
            f'<tr class="group"><th colspan="2">{_esc(group["sink"])} group '
            f"{_esc(group['group'])}</th><th>{_badge(group['status'])}</th>"
            f'<th colspan="3">{_esc(group["detail"])}</th></tr>'
        )
        rows.extend(
            f"<tr><td></td><td>{_esc(lane['lane'])}</td><td>{_badge(lane['status'])}</td>"
            f'<td class="num">{_esc(_number(lane["behind"]))} behind</td>'
            f'<td class="num">{_esc(_number(lane["time_lag_seconds"], "s"))}</td>'
            f"<td>{_esc(lane['why'])}</td></tr>"
            for lane in group["lanes"]
        )
    return (
        "<h2>Consumer groups</h2><table><thead><tr><th>group</th><th>lane</th><th>status</th>"
        "<th>behind</th><th>time lag</th><th>why</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _charts(history: Document) -> str:
    count = len(history["evaluated_at"])
    charts = "".join(_chart(chart, count) for chart in history["charts"].values())
    return (
        f'<h2>Last {count} evaluations <span class="unit">(up to {history["size"]} kept)'
        f"</span></h2>{_verdicts(history['passed'], history['evaluated_at'])}"
        f'<div class="charts">{charts}</div>'
    )


def _verdicts(passed: Sequence[bool], times: Sequence[str]) -> str:
    """One cell per evaluation, oldest first: green passed, red failed."""
    if not passed:
        return ""
    width = 3 * CHART_WIDTH + 32
    cell = min(12.0, width / len(passed))
    cells = "".join(
        f'<rect x="{i * cell:.1f}" y="0" width="{max(cell - 1, 0.5):.1f}" height="14" '
        f'fill="{"#059669" if ok else "#dc2626"}"><title>{_esc(at)}: '
        f"{'passed' if ok else 'failed'}</title></rect>"
        for i, (ok, at) in enumerate(zip(passed, times, strict=True))
    )
    return (
        f'<svg class="verdicts" width="{width}" height="14" role="img" '
        f'aria-label="verdict of each evaluation">{cells}</svg>'
    )


def _segments(values: Sequence[float | None]) -> Iterable[list[tuple[int, float]]]:
    """Runs of consecutive measured values (a gap where a series was not measured)."""
    run: list[tuple[int, float]] = []
    for index, value in enumerate(values):
        if value is None:
            if run:
                yield run
            run = []
        else:
            run.append((index, value))
    if run:
        yield run


def _chart(chart: Document, count: int) -> str:
    series: dict[str, list[float | None]] = chart["series"]
    top = max((v for values in series.values() for v in values if v is not None), default=0.0)
    top = top if top > 0 else 1.0
    plot_w = CHART_WIDTH - CHART_LEFT - 4
    plot_h = CHART_HEIGHT - CHART_BOTTOM - CHART_TOP

    def point(index: int, value: float) -> str:
        x = CHART_LEFT + (plot_w * index / (count - 1) if count > 1 else plot_w)
        y = CHART_TOP + plot_h * (1 - value / top)
        return f"{x:.1f},{y:.1f}"

    shapes = []
    for color, values in zip(_colors(), series.values(), strict=False):
        for run in _segments(values):
            points = " ".join(point(i, v) for i, v in run)
            if len(run) == 1:
                x, y = points.split(",")
                shapes.append(f'<circle cx="{x}" cy="{y}" r="2.5" fill="{color}"/>')
            else:
                shapes.append(
                    f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>'
                )
    base = CHART_TOP + plot_h
    svg = (
        f'<svg width="{CHART_WIDTH}" height="{CHART_HEIGHT}" viewBox="0 0 {CHART_WIDTH} '
        f'{CHART_HEIGHT}" role="img" aria-label="{_esc(chart["title"])}">'
        f'<line x1="{CHART_LEFT}" y1="{base}" x2="{CHART_WIDTH - 4}" y2="{base}" stroke="#9ca3af"/>'
        f'<line x1="{CHART_LEFT}" y1="{CHART_TOP}" x2="{CHART_LEFT}" y2="{base}" stroke="#9ca3af"/>'
        f'<text x="{CHART_LEFT - 4}" y="{CHART_TOP + 10}" font-size="11" text-anchor="end">'
        f"{_esc(_short(top))}</text>"
        f'<text x="{CHART_LEFT - 4}" y="{base}" font-size="11" text-anchor="end">0</text>'
        f'<text x="{CHART_LEFT}" y="{CHART_HEIGHT - 2}" font-size="11">oldest</text>'
        f'<text x="{CHART_WIDTH - 4}" y="{CHART_HEIGHT - 2}" font-size="11" text-anchor="end">'
        f"latest</text>{''.join(shapes)}</svg>"
    )
    legend = "".join(
        f'<li><i style="background:{color}"></i>{_esc(label)}: {_esc(_last(values))}</li>'
        for color, (label, values) in zip(_colors(), series.items(), strict=False)
    )
    return (
        f'<div class="chart"><h3>{_esc(chart["title"])} <span class="unit">'
        f"{_esc(chart['unit'])}</span></h3>{svg}"
        f'<ul class="legend">{legend or "<li class=muted>nothing measured yet</li>"}</ul></div>'
    )


def _short(value: float) -> str:
    """An axis label that fits the chart's margin: 0.0572, 42, 2580, 25.8k, 1.2M."""
    if value >= 1e6:
        return f"{value / 1e6:.3g}M"
    if value >= 1e4:
        return f"{value / 1e3:.3g}k"
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _colors() -> Iterable[str]:
    while True:
        yield from PALETTE


def _last(values: Sequence[float | None]) -> str:
    for value in reversed(values):
        if value is not None:
            return f"{value:.0f}" if value >= 100 else f"{value:.4g}"
    return "-"


# --- the routes -------------------------------------------------------------------------------
class StatusPage:
    """The last report and the history behind `/` and `/status.json`."""

    def __init__(
        self, *, history_size: int, refresh_seconds: float, windows: StatusWindows | None = None
    ) -> None:
        self.history = History(history_size)
        self.refresh_seconds = refresh_seconds
        self.windows = windows
        self._last: tuple[Report | None, list[Document]] = (None, [])

    def record(self, report: Report) -> None:
        """Called by the evaluation loop; the lanes' statuses are read from the windows here,
        in the loop's thread, as the HTTP thread must not iterate windows being appended to."""
        self.history.record(report)
        self._last = (report, consumer_groups(report, self.windows))

    def document(self) -> Document:
        report, groups = self._last
        return status_document(
            report,
            groups,
            self.history.samples,
            history_size=self.history.size,
            refresh_seconds=self.refresh_seconds,
        )

    def html(self) -> Reply:
        return Reply(200, render_html(self.document()), "text/html; charset=utf-8")

    def json(self) -> Reply:
        body = json.dumps(self.document(), default=str, indent=1) + "\n"
        return Reply(200, body, "application/json")
