"""What an evaluation produces: one result per check, with the evidence behind it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

# The stable check names of docs/design.md, in the order they are reported.
COMPONENTS_UP = "components.up"
FLOW_LOST = "flow.lost"
FLOW_DUPLICATES = "flow.duplicates"
FLOW_ORDER = "flow.order"
LAG_OUTBOX = "lag.outbox"
LAG_REDIS = "lag.redis"
LAG_KAFKA = "lag.kafka"
LATENCY_E2E = "latency.e2e"
SCHEMA_CONFORMANCE = "schema.conformance"
CHECK_NAMES = (
    COMPONENTS_UP,
    FLOW_LOST,
    FLOW_DUPLICATES,
    FLOW_ORDER,
    LAG_OUTBOX,
    LAG_REDIS,
    LAG_KAFKA,
    LATENCY_E2E,
    SCHEMA_CONFORMANCE,
)

Number = int | float


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of evidence: what was measured about one subject (a sink and group, a stream)."""

    subject: str
    ok: bool
    text: str
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{'' if self.ok else 'FAIL '}{self.subject}: {self.text}"


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict of one check: passed or not, the worst value measured against its threshold."""

    name: str
    passed: bool
    value: Number | None
    threshold: Number | None
    unit: str
    grace_seconds: float | None
    findings: tuple[Finding, ...]
    evaluated: bool = True
    at_least: bool = False  # the threshold is a minimum (conformance), not a maximum

    @property
    def detail(self) -> str:
        """Failing findings first, one per line; each names the sink, group, stream or topic."""
        ordered = sorted(self.findings, key=lambda f: f.ok)
        return "\n".join(f.line() for f in ordered) or "nothing to judge"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "value": self.value,
            "threshold": self.threshold,
            "detail": self.detail,
            "unit": self.unit,
            "grace_seconds": self.grace_seconds,
            "evaluated": self.evaluated,
            "evidence": [
                {"subject": f.subject, "ok": f.ok, "text": f.text, **f.data} for f in self.findings
            ],
        }


@dataclass(frozen=True, slots=True)
class ComponentState:
    name: str
    up: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    """One evaluation: every check's result, the components seen, and when and how long."""

    checks: tuple[CheckResult, ...]
    components: tuple[ComponentState, ...]
    evaluated_at: dt.datetime
    duration_seconds: float
    window_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def unreachable(self) -> tuple[ComponentState, ...]:
        return tuple(c for c in self.components if not c.up)

    def check(self, name: str) -> CheckResult:
        for result in self.checks:
            if result.name == name:
                return result
        raise KeyError(name)

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [check.as_json() for check in self.checks],
            "components": {c.name: {"up": c.up, "error": c.error} for c in self.components},
            "evaluated_at": self.evaluated_at.isoformat(),
            "duration_seconds": round(self.duration_seconds, 3),
            "window_seconds": self.window_seconds,
            **self.extra,
        }


class CheckBuilder:
    """Collects the findings of one check and decides its verdict."""

    def __init__(
        self, name: str, threshold: Number | None, unit: str, grace_seconds: float | None
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.unit = unit
        self.grace_seconds = grace_seconds
        self.value: Number | None = None
        self.findings: list[Finding] = []
        self.evaluated = True
        self.at_least = False

    def add(self, subject: str, ok: bool, text: str, **data: Any) -> None:
        self.findings.append(Finding(subject, ok, text, data))

    def worst(self, value: Number | None, *, higher_is_worse: bool = True) -> None:
        """Keep the worst value seen so far as the check's value."""
        if value is None:
            return
        if not higher_is_worse:
            self.at_least = True
        if self.value is None:
            self.value = value
        elif higher_is_worse:
            self.value = max(self.value, value)
        else:
            self.value = min(self.value, value)

    def not_evaluated(self, subject: str, why: str) -> None:
        """The check could not look: that is a failure, never a pass."""
        self.evaluated = False
        self.add(subject, False, f"not evaluated: {why}")

    def result(self) -> CheckResult:
        return CheckResult(
            name=self.name,
            passed=all(f.ok for f in self.findings),
            value=self.value,
            threshold=self.threshold,
            unit=self.unit,
            grace_seconds=self.grace_seconds,
            findings=tuple(self.findings),
            evaluated=self.evaluated,
            at_least=self.at_least,
        )
