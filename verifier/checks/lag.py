"""lag.<sink>: one check per registered sink, judging its consumer groups' lanes
(`flowproof.verifier.lag`); a sink that is registered but not enabled passes, saying so."""

from __future__ import annotations

from flowproof.core.sinks import SinkSpec
from flowproof.verifier.checks.check import Check, Judging
from flowproof.verifier.lag import judge_lag, lag_builder
from flowproof.verifier.lanes import SinkSnapshot
from flowproof.verifier.model import CheckResult
from flowproof.verifier.reading import ReadFailed, Readings, Source


def lag_check(spec: SinkSpec) -> Check:
    sink = spec.name

    def judge(readings: Readings, judging: Judging) -> CheckResult:
        builder = lag_builder(judging.settings, sink)
        read = readings.sinks.get(sink)
        if read is None:
            builder.add(sink, True, "sink not enabled (FLOWPROOF_SINKS)")
            return builder.result()
        data = read.data
        if not isinstance(data, SinkSnapshot):
            why = data.error if isinstance(data, ReadFailed) else f"{sink} is unreachable"
            builder.not_evaluated(sink, why)
            return builder.result()
        for group, status in judge_lag(builder, data, judging.windows, judging.settings).items():
            judging.statuses[(sink, group)] = status
        return builder.result()

    return Check(spec.lag_check, frozenset({Source.SINKS}), judge)
