"""One evaluation of every check: read the pipeline once, judge each registered check, export.

The evaluator keeps what lives between evaluations: the `PipelineReader` (connections) and the
sliding windows behind the consumer-group statuses. The checks are data
(`flowproof.verifier.checks`): what they read is read once, at once; a component that cannot be
reached fails `components.up` and every check that needs it ("not evaluated"): no check passes
without having looked.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Hashable, Iterable

from flowproof.core.config import Settings
from flowproof.core.logging import get_logger
from flowproof.verifier.checks import Check, Judging, registered
from flowproof.verifier.conformance import ReceiptStats
from flowproof.verifier.exporter import Exporter
from flowproof.verifier.flow import FlowStats
from flowproof.verifier.groups import expected_groups
from flowproof.verifier.lag import lane_key, observe
from flowproof.verifier.lanes import SinkSnapshot
from flowproof.verifier.model import ComponentState, Report
from flowproof.verifier.outbox import OutboxStats
from flowproof.verifier.reading import DatabaseReads, PipelineReader, Read, Readings, Source
from flowproof.verifier.status import StatusWindows

log = get_logger(__name__)


class Evaluator:
    """Evaluates the registered checks (docs/design.md) against the configured pipeline."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.groups = expected_groups(settings)
        self.windows = StatusWindows(
            settings.verify_status_window, settings.verify_status_min_observations
        )
        self.checks: list[Check] = registered()
        self.reads: frozenset[Source] = frozenset().union(*(c.reads for c in self.checks))
        self._reader = PipelineReader(settings, self.groups, clock=clock)
        self._exporter = Exporter()

    async def __aenter__(self) -> Evaluator:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close what this evaluator opened."""
        await self._reader.close()

    async def observe(self) -> list[ComponentState]:
        """Read the sinks' positions only, to fill the status windows (smoke does this while it
        waits for its canaries); return the sink components' states."""
        sinks = await self._reader.read_sinks()
        self._observe(sinks.values())
        return [read.component for read in sinks.values()]

    async def evaluate(self) -> Report:
        """Read everything, judge every check, publish the metrics; return the report."""
        started = time.monotonic()
        readings = await self._reader.read(self.reads)
        self._observe(readings.sinks.values())
        self._forget_vanished_lanes(readings)
        judging = Judging(self.settings, self.groups, self.windows)
        report = Report(
            checks=tuple(check.judge(readings, judging) for check in self.checks),
            components=readings.components,
            evaluated_at=dt.datetime.now(dt.UTC),
            duration_seconds=time.monotonic() - started,
            window_seconds=self.settings.verify_window_seconds,
        )
        reads = readings.database.data
        reads = reads if isinstance(reads, DatabaseReads) else DatabaseReads()
        self._exporter.export(
            report,
            flow=[s for s in reads.flow.values() if isinstance(s, FlowStats)],
            outbox=[s for s in reads.outbox.values() if isinstance(s, OutboxStats)],
            receipts=reads.receipts if isinstance(reads.receipts, list) else list[ReceiptStats](),
            snapshots=readings.snapshots,
            statuses=judging.statuses,
        )
        log.info(
            "verify.evaluated",
            passed=report.passed,
            failed=[c.name for c in report.checks if not c.passed],
            unreachable=[c.name for c in report.unreachable],
            duration_seconds=round(report.duration_seconds, 3),
        )
        return report

    def _observe(self, reads: Iterable[Read[SinkSnapshot]]) -> None:
        for read in reads:
            if isinstance(read.data, SinkSnapshot):
                observe(self.windows, read.data)

    def _forget_vanished_lanes(self, readings: Readings) -> None:
        snapshots = readings.snapshots
        if len(snapshots) != len(readings.sinks):
            return  # a sink not read this time keeps its windows
        keep: list[Hashable] = []
        for snapshot in snapshots:
            for group in snapshot.groups:
                keep.extend(lane_key(snapshot.sink, group.group, lane) for lane in group.lanes)
        self.windows.retain(keep)
