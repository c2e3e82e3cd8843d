"""lag.outbox: events waiting in the outbox, and parked ones, per sink."""

from __future__ import annotations

from flowproof.verifier.checks.check import Check, Judging
from flowproof.verifier.model import LAG_OUTBOX, CheckResult
from flowproof.verifier.outbox import judge_outbox, outbox_builder
from flowproof.verifier.reading import POSTGRESQL, DatabaseReads, ReadFailed, Readings, Source


def judge(readings: Readings, judging: Judging) -> CheckResult:
    builder = outbox_builder(judging.settings)
    reads = readings.database.data
    if not isinstance(reads, DatabaseReads):
        why = reads.error if isinstance(reads, ReadFailed) else f"{POSTGRESQL} is unreachable"
        builder.not_evaluated(POSTGRESQL, why)
        return builder.result()
    for sink in judging.settings.sinks:
        pending = reads.outbox[sink]
        if isinstance(pending, ReadFailed):
            builder.not_evaluated(f"{sink} outbox", pending.error)
        else:
            judge_outbox(builder, pending, judging.settings)
    return builder.result()


OUTBOX = Check(LAG_OUTBOX, frozenset({Source.OUTBOX}), judge)
