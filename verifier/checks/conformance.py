"""schema.conformance: the share of valid receipts per sink and group, the dead letters of every
sink, and dead letters that could not be written (`flowproof.verifier.conformance`)."""

from __future__ import annotations

from flowproof.verifier.checks.check import Check, Judging
from flowproof.verifier.conformance import conformance_builder, judge_dead_letters, judge_receipts
from flowproof.verifier.lanes import SinkSnapshot
from flowproof.verifier.model import SCHEMA_CONFORMANCE, CheckResult
from flowproof.verifier.reading import POSTGRESQL, DatabaseReads, ReadFailed, Readings, Source


def judge(readings: Readings, judging: Judging) -> CheckResult:
    settings = judging.settings
    builder = conformance_builder(settings)
    reads = readings.database.data
    if not isinstance(reads, DatabaseReads):
        why = reads.error if isinstance(reads, ReadFailed) else f"{POSTGRESQL} is unreachable"
        builder.not_evaluated(POSTGRESQL, why)
    elif isinstance(reads.receipts, ReadFailed):
        builder.not_evaluated("receipts", reads.receipts.error)
    elif not reads.receipts:
        builder.add("receipts", True, "no receipts in the window")
    else:
        for receipts in reads.receipts:
            judge_receipts(builder, receipts, settings)
    for sink, read in readings.sinks.items():
        data = read.data
        if isinstance(data, SinkSnapshot):
            judge_dead_letters(builder, sink, data.dead_letters, settings)
        else:
            why = data.error if isinstance(data, ReadFailed) else f"{sink} is unreachable"
            builder.not_evaluated(f"{sink} DLQ", why)
    return builder.result()


CONFORMANCE = Check(SCHEMA_CONFORMANCE, frozenset({Source.RECEIPTS, Source.SINKS}), judge)
