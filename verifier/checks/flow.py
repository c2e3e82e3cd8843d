"""flow.lost, flow.duplicates, flow.order and latency.e2e: judged per sink and group from the
flow reading (`flowproof.verifier.flow`)."""

from __future__ import annotations

from collections.abc import Callable

from flowproof.core.config import Settings
from flowproof.verifier.checks.check import Check, Judging
from flowproof.verifier.flow import (
    FlowStats,
    flow_builder,
    judge_duplicates,
    judge_latency,
    judge_lost,
    judge_order,
)
from flowproof.verifier.groups import subject
from flowproof.verifier.model import (
    FLOW_DUPLICATES,
    FLOW_LOST,
    FLOW_ORDER,
    LATENCY_E2E,
    CheckBuilder,
    CheckResult,
)
from flowproof.verifier.reading import POSTGRESQL, DatabaseReads, ReadFailed, Readings, Source

Judge = Callable[[CheckBuilder, FlowStats, Settings], None]


def _flow_check(name: str, judge: Judge) -> Check:
    def judge_each(readings: Readings, judging: Judging) -> CheckResult:
        builder = flow_builder(judging.settings, name)
        reads = readings.database.data
        if not isinstance(reads, DatabaseReads):
            why = reads.error if isinstance(reads, ReadFailed) else f"{POSTGRESQL} is unreachable"
            builder.not_evaluated(POSTGRESQL, why)
            return builder.result()
        for pair in judging.groups:
            stats = reads.flow[pair]
            if isinstance(stats, ReadFailed):
                builder.not_evaluated(subject(*pair), stats.error)
            else:
                judge(builder, stats, judging.settings)
        return builder.result()

    return Check(name, frozenset({Source.FLOW}), judge_each)


LOST = _flow_check(FLOW_LOST, judge_lost)
DUPLICATES = _flow_check(FLOW_DUPLICATES, judge_duplicates)
ORDER = _flow_check(FLOW_ORDER, judge_order)
LATENCY = _flow_check(LATENCY_E2E, judge_latency)
