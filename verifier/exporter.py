"""Publishing an evaluation as Prometheus metrics (flowproof.core.metrics), once per evaluation.

A series that was set by the previous evaluation and not by this one is removed rather than left
at its old value: a stream deleted, a group gone or a component that could not be read has no
fresh measurement, and a stale number would be evidence of nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Gauge

from flowproof.core import metrics
from flowproof.verifier.conformance import ReceiptStats
from flowproof.verifier.flow import FlowStats
from flowproof.verifier.lanes import SinkSnapshot
from flowproof.verifier.model import Report
from flowproof.verifier.outbox import OutboxStats
from flowproof.verifier.sinks import reader_class
from flowproof.verifier.status import GroupStatus, LaneStatus

Labels = tuple[str, ...]


class Exporter:
    """Sets the verifier's gauges; remembers what it set to remove what vanished."""

    def __init__(self) -> None:
        self._previous: dict[Gauge, set[Labels]] = {}
        self._current: dict[Gauge, set[Labels]] = {}

    def _set(self, gauge: Gauge, labels: Labels, value: float) -> None:
        gauge.labels(*labels).set(value)
        self._current.setdefault(gauge, set()).add(labels)

    def _finish(self) -> None:
        for gauge, labels_seen in self._previous.items():
            for labels in labels_seen - self._current.get(gauge, set()):
                gauge.remove(*labels)
        self._previous, self._current = self._current, {}

    def export(
        self,
        report: Report,
        *,
        flow: Iterable[FlowStats],
        outbox: Iterable[OutboxStats],
        receipts: Iterable[ReceiptStats],
        snapshots: Iterable[SinkSnapshot],
        statuses: dict[tuple[str, str], LaneStatus],
    ) -> None:
        """Publish everything one evaluation measured."""
        for component in report.components:
            self._set(metrics.COMPONENT_UP, (component.name,), 1 if component.up else 0)
        for check in report.checks:
            self._set(metrics.VERIFY_CHECK_PASSED, (check.name,), 1 if check.passed else 0)
        for stats in flow:
            self._flow(stats)
        for pending in outbox:
            self._set(metrics.OUTBOX_PENDING, (pending.sink,), pending.pending)
            self._set(metrics.OUTBOX_OLDEST_PENDING_AGE, (pending.sink,), pending.oldest_age or 0.0)
        for receipt_stats in receipts:
            self._receipts(receipt_stats)
        for snapshot in snapshots:
            self._snapshot(snapshot)
        for (sink, group), status in statuses.items():
            for value in GroupStatus:
                labels = (sink, group, str(value))
                self._set(metrics.CONSUMER_GROUP_STATUS, labels, 1 if status.status == value else 0)
        metrics.VERIFY_EVALUATION_SECONDS.set(report.duration_seconds)
        metrics.VERIFY_LAST_EVALUATION.set(report.evaluated_at.timestamp())
        self._finish()

    def _flow(self, stats: FlowStats) -> None:
        labels = (stats.sink, stats.group)
        if stats.positions_error is None:  # not measured: the series goes rather than say 0
            self._set(metrics.VERIFY_LOST, labels, stats.lost)
        self._set(metrics.VERIFY_DUPLICATES, labels, stats.duplicated)
        self._set(metrics.VERIFY_OUT_OF_ORDER, labels, stats.out_of_order)
        self._set(metrics.VERIFY_UNEXPECTED, labels, stats.unexpected)
        self._set(metrics.VERIFY_LATE, labels, stats.late)
        self._set(metrics.VERIFY_OLDEST_LATE_AGE, labels, stats.oldest_late_age)
        self._set(metrics.VERIFY_MISROUTED, labels, stats.misrouted)
        if stats.latency is not None:
            for quantile, value in zip(("0.5", "0.95", "0.99"), stats.latency, strict=True):
                self._set(metrics.VERIFY_E2E_LATENCY, (*labels, quantile), value)

    def _receipts(self, stats: ReceiptStats) -> None:
        labels = (stats.sink, stats.group)
        if stats.valid_share is not None:
            self._set(metrics.VERIFY_VALID_RATIO, labels, stats.valid_share)
        for reason, count in stats.invalid.items():
            self._set(metrics.VERIFY_INVALID, (*labels, reason), count)

    def _snapshot(self, snapshot: SinkSnapshot) -> None:
        reader_class(snapshot.sink).export(snapshot, self._set)
        for dlq in snapshot.dead_letters:
            self._set(metrics.DLQ_DEPTH, (dlq.sink, dlq.name), dlq.depth)
            self._set(metrics.DLQ_WINDOW, (dlq.sink, dlq.name), dlq.in_window)
