"""What the dashboard and alert rules may query: the series flowproof really exports.

The helpers here read a PromQL expression and name the series and labels it selects, so that
tests/test_deploy_prometheus.py and tests/test_deploy_grafana.py can hold every expression to the
metrics defined in flowproof/metrics.py (a renamed metric or label would otherwise leave a panel
silently empty and an alert silently quiet). The tests in this file prove the helpers catch that.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

import flowproof.core.metrics

ROOT = Path(__file__).resolve().parent.parent

# The verifier's Burrow-style group status (issue 5): 1 for the current status, 0 for the others.
# The dashboard and rules assume it; test_status_metric_is_defined_by_the_verifier fails until
# flowproof/metrics.py defines it, so they cannot drift from what the verifier exports.
STATUS_METRIC = "flowproof_consumer_group_status"
STATUS_LABELS = frozenset({"sink", "group", "status"})
STATUS_VALUES = ("OK", "UNKNOWN", "WARN", "REWIND", "STALL", "STOP")  # verifier/status.py

# docs/design.md's minimum set ("Metrics"): the dashboard shows each of them.
DESIGN_METRICS = (
    "flowproof_component_up",
    "flowproof_outbox_pending_events",
    "flowproof_outbox_oldest_pending_age_seconds",
    "flowproof_relay_published_total",
    "flowproof_relay_publish_failures_total",
    "flowproof_relay_parked_total",
    "flowproof_consumer_received_total",
    "flowproof_consumer_invalid_total",
    "flowproof_e2e_latency_seconds_bucket",
    "flowproof_redis_group_lag_entries",
    "flowproof_redis_group_pending_entries",
    "flowproof_kafka_consumer_lag_messages",
    "flowproof_verify_lost_events",
    "flowproof_verify_duplicate_events",
    "flowproof_verify_out_of_order_events",
    "flowproof_verify_check_passed",
)

# Series every Prometheus has for each target, and the labels it attaches to every series.
BUILTIN_SERIES = {"up": frozenset()}
TARGET_LABELS = frozenset({"job", "instance"})

PROMQL_FUNCTIONS = frozenset(
    {
        "abs",
        "absent",
        "absent_over_time",
        "avg",
        "avg_over_time",
        "bottomk",
        "ceil",
        "changes",
        "clamp",
        "clamp_max",
        "clamp_min",
        "count",
        "count_over_time",
        "count_values",
        "day_of_month",
        "day_of_week",
        "days_in_month",
        "delta",
        "deriv",
        "exp",
        "floor",
        "group",
        "histogram_quantile",
        "holt_winters",
        "hour",
        "idelta",
        "increase",
        "irate",
        "label_join",
        "label_replace",
        "last_over_time",
        "ln",
        "log10",
        "log2",
        "max",
        "max_over_time",
        "min",
        "min_over_time",
        "minute",
        "month",
        "predict_linear",
        "present_over_time",
        "quantile",
        "quantile_over_time",
        "rate",
        "resets",
        "round",
        "scalar",
        "sgn",
        "sort",
        "sort_desc",
        "sqrt",
        "stddev",
        "stddev_over_time",
        "stdvar",
        "stdvar_over_time",
        "sum",
        "sum_over_time",
        "time",
        "timestamp",
        "topk",
        "vector",
        "year",
    }
)
PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "bool",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "inf",
        "nan",
    }
)
PROMTOOL_HINT = (
    "promtool is missing: install Debian's `prometheus` package "
    "(`sudo apt-get install prometheus`; `make stack-up` installs it when run as root)"
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_RANGE = re.compile(r"\[[^\[\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![a-zA-Z_:0-9])[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def defined_series() -> dict[str, frozenset[str]]:
    """Each series name flowproof exports (with its suffixes), mapped to its label names."""
    series: dict[str, frozenset[str]] = {}
    for metric in vars(flowproof.core.metrics).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        family = metric.describe()[0]
        labels = frozenset(metric._labelnames)
        suffixes = {
            "counter": ("_total", "_created"),
            "gauge": ("",),
            "histogram": ("_bucket", "_count", "_sum", "_created"),
            "summary": ("", "_count", "_sum", "_created"),
        }[family.type]
        for suffix in suffixes:
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def queryable_series() -> dict[str, frozenset[str]]:
    """What an expression may select: flowproof's series, the status metric, built-ins."""
    return {**defined_series(), STATUS_METRIC: STATUS_LABELS, **BUILTIN_SERIES}


@dataclass(frozen=True)
class Selection:
    """The series names, matcher labels and grouping labels one expression uses."""

    series: frozenset[str]
    matchers: tuple[tuple[str, str], ...]  # (series name or "", label name)
    grouping: frozenset[str]
    functions: frozenset[str]


def parse_selection(expr: str) -> Selection:
    """Name what a PromQL expression selects (good enough for the expressions flowproof ships)."""
    # Empty the strings first: a label value may hold anything, braces and commas included.
    text = _STRING.sub('""', expr)
    matchers: list[tuple[str, str]] = []
    for name, body in _SELECTOR.findall(text):
        for label, _op in _MATCHER.findall(body):
            matchers.append((name, label))
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    grouping: set[str] = set()
    for _kw, labels in _GROUPING.findall(text):
        grouping.update(label.strip() for label in labels.split(",") if label.strip())
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", _RANGE.sub(" ", text))
    text = _NUMBER.sub(" ", text)
    series: set[str] = set()
    functions: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("("):
            functions.add(word)
        elif word.lower() not in PROMQL_KEYWORDS:
            series.add(word)
    return Selection(frozenset(series), tuple(matchers), frozenset(grouping), frozenset(functions))


def selection_problems(expr: str) -> list[str]:
    """Everything in `expr` that flowproof does not export; empty when the expression is sound."""
    known = queryable_series()
    selection = parse_selection(expr)
    problems = [f"unknown function {name}()" for name in selection.functions - PROMQL_FUNCTIONS]
    if not selection.series:
        problems.append("selects no series")
    problems += [f"unknown series {name}" for name in sorted(selection.series - set(known))]
    labels_of_all: set[str] = set(TARGET_LABELS)
    for name in selection.series & set(known):
        labels_of_all |= known[name]
    for name, label in selection.matchers:
        allowed = (known.get(name, frozenset()) | TARGET_LABELS) if name else labels_of_all
        if label != "__name__" and label not in allowed:
            problems.append(f"{name or 'selector'} has no label {label!r}")
    problems += [
        f"groups by {label!r}, which none of its series has"
        for label in sorted(selection.grouping - labels_of_all)
    ]
    # Every flowproof process imports flowproof.core.metrics, so an unlabelled metric is exported by
    # all of them (at 0 where unused): only a job matcher picks the process that sets it.
    defined = defined_series()
    problems += [
        f"{name} has no labels and every flowproof process exports it: select it with job="
        for name in sorted(selection.series)
        if name in defined and not defined[name] and (name, "job") not in selection.matchers
    ]
    return problems


def promtool() -> str:
    """The promtool binary, or a test failure saying how to install it (never a skip)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(PROMTOOL_HINT)
    return path


# --- the helpers themselves -----------------------------------------------------------------------


def test_defined_series_follow_the_metric_types() -> None:
    series = defined_series()
    assert series["flowproof_relay_published_total"] == {"sink"}
    assert "flowproof_relay_published" not in series
    assert series["flowproof_e2e_latency_seconds_bucket"] == {"sink", "group", "le"}
    assert series["flowproof_e2e_latency_seconds_count"] == {"sink", "group"}
    assert "flowproof_e2e_latency_seconds" not in series
    assert series["flowproof_verify_check_passed"] == {"check"}


def test_parse_selection_names_series_labels_and_grouping() -> None:
    selection = parse_selection(
        "histogram_quantile(0.99, sum by (sink, group, le) (rate("
        'flowproof_e2e_latency_seconds_bucket{sink=~"$sink", group="a,b{}"}[5m])))'
        " > 5 and on (sink) flowproof_outbox_pending_events offset 1h"
    )
    assert selection.series == {
        "flowproof_e2e_latency_seconds_bucket",
        "flowproof_outbox_pending_events",
    }
    assert selection.matchers == (
        ("flowproof_e2e_latency_seconds_bucket", "sink"),
        ("flowproof_e2e_latency_seconds_bucket", "group"),
    )
    assert selection.grouping == {"sink", "group", "le"}
    assert selection.functions == {"histogram_quantile", "sum", "rate"}


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(flowproof_relay_published[5m])", "unknown series flowproof_relay_published"),
        ("flowproof_e2e_latency_seconds", "unknown series flowproof_e2e_latency_seconds"),
        ('flowproof_redis_group_lag_entries{sink="redis"}', "has no label 'sink'"),
        ("sum by (sink) (flowproof_kafka_consumer_lag_messages)", "groups by 'sink'"),
        ("rate_it(flowproof_relay_published_total[5m])", "unknown function rate_it()"),
        ("vector(1)", "selects no series"),
        ("flowproof_verify_ready == 0", "every flowproof process exports it"),
    ],
)
def test_selection_problems_catch_drift(expr: str, problem: str) -> None:
    problems = selection_problems(expr)
    assert any(problem in p for p in problems), problems


def test_selection_problems_accept_sound_expressions() -> None:
    for expr in (
        'up{job="flowproof-verifier"} == 0 or absent(up{job="flowproof-verifier"})',
        "sum by (topic, group) (flowproof_kafka_consumer_lag_messages) > 1000",
        'flowproof_consumer_group_status{status=~"STALL|STOP"} == 1',
        'flowproof_verify_ready{job="flowproof-verifier"} == 0',
        "1 - sum by (sink, group) (rate(flowproof_consumer_invalid_total[10m]))"
        " / sum by (sink, group) (rate(flowproof_consumer_received_total[10m])) < 0.999",
    ):
        assert selection_problems(expr) == [], expr


def test_design_metrics_are_defined() -> None:
    missing = set(DESIGN_METRICS) - set(defined_series())
    assert not missing, f"flowproof/metrics.py lacks docs/design.md metrics {sorted(missing)}"


def test_status_metric_is_defined_by_the_verifier() -> None:
    """The dashboard and alert rules assume this metric; the verifier must export exactly it."""
    series = defined_series()
    assert STATUS_METRIC in series, (
        f"{STATUS_METRIC} (gauge, labels sink, group, status; 1 for the current status of "
        f"{', '.join(STATUS_VALUES)}, 0 for the others) is not defined in flowproof/metrics.py: "
        "the verifier (issue 5) must define it there, or deploy/ must follow its real name"
    )
    assert series[STATUS_METRIC] == STATUS_LABELS
    families = [
        m.describe()[0]
        for m in vars(flowproof.core.metrics).values()
        if isinstance(m, MetricWrapperBase) and m.describe()[0].name == STATUS_METRIC
    ]
    assert [f.type for f in families] == ["gauge"]
