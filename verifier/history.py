"""The last evaluations, as numbers for the status page's charts (bounded, in memory).

Each evaluation becomes one sample: per chart, one value per series, read from the evidence of
the report as the evaluator produced it (the findings' data, never their text):
- `lag`: entries or messages behind per sink and group (summed over its lanes), and events
  pending in the outbox per sink;
- `latency`: the p99 end-to-end latency per sink and group, in seconds;
- `lost`: events lost per sink and group (flow.lost), and events *late* (not reached yet): the
  flow.lost evidence's `late` count when the evaluator reports one, else the entries behind.
The history keeps the newest `size` samples; readers get an immutable tuple, so the HTTP thread
never sees a sample half written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from flowproof.verifier.model import (
    FLOW_LOST,
    LAG_KAFKA,
    LAG_OUTBOX,
    LAG_REDIS,
    LATENCY_E2E,
    CheckResult,
    Finding,
    Report,
)

# Chart name -> (title, unit).
CHARTS: dict[str, tuple[str, str]] = {
    "lag": ("Lag", "entries behind / events pending"),
    "latency": ("Latency p99", "seconds"),
    "lost": ("Lost and late", "events"),
}

Series = dict[str, float]


@dataclass(frozen=True, slots=True)
class Sample:
    """One evaluation, reduced to what the charts draw."""

    at: dt.datetime
    passed: bool
    charts: dict[str, Series] = field(default_factory=dict)


def _findings(report: Report, *names: str) -> Iterable[Finding]:
    for check in report.checks:
        if check.name in names:
            yield from check.findings


def _group_label(finding: Finding) -> str | None:
    sink, group = finding.data.get("sink"), finding.data.get("group")
    return f"{sink} group {group}" if sink and group else None


def _behind(report: Report) -> Series:
    """Entries behind per sink and group, summed over the group's lanes."""
    behind: Series = {}
    for finding in _findings(report, LAG_REDIS, LAG_KAFKA):
        label = _group_label(finding)
        if label is not None and "source" in finding.data:
            behind[label] = behind.get(label, 0) + float(finding.data.get("behind") or 0)
    return behind


def _numbers(check: CheckResult, key: str, suffix: str = "") -> Series:
    values: Series = {}
    for finding in check.findings:
        label = _group_label(finding)
        value = finding.data.get(key)
        if label is not None and isinstance(value, int | float):
            values[label + suffix] = float(value)
    return values


def sample(report: Report) -> Sample:
    """The chart values of one report."""
    behind = _behind(report)
    lag = dict(behind)
    for finding in _findings(report, LAG_OUTBOX):
        if "pending" in finding.data:
            lag[f"{finding.data['sink']} outbox"] = float(finding.data["pending"])
    lost_check = report.check(FLOW_LOST)
    lost = _numbers(lost_check, "lost", " lost")
    late = _numbers(lost_check, "late", " late") or {
        f"{label} late": value for label, value in behind.items()
    }
    return Sample(
        at=report.evaluated_at,
        passed=report.passed,
        charts={
            "lag": lag,
            "latency": _numbers(report.check(LATENCY_E2E), "p99"),
            "lost": {**lost, **late},
        },
    )


class History:
    """The newest `size` samples, oldest first."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a history keeps at least one sample")
        self.size = size
        self._samples: tuple[Sample, ...] = ()

    def record(self, report: Report) -> None:
        # A new tuple each time: one assignment, so a concurrent reader sees old or new, whole.
        kept = self._samples[max(0, len(self._samples) - self.size + 1) :]
        self._samples = (*kept, sample(report))

    @property
    def samples(self) -> tuple[Sample, ...]:
        return self._samples
