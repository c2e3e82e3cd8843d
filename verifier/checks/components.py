"""components.up: every component the pipeline needs answered."""

from __future__ import annotations

from flowproof.verifier.checks.check import Check, Judging
from flowproof.verifier.model import COMPONENTS_UP, CheckBuilder, CheckResult
from flowproof.verifier.reading import Readings


def judge_components(readings: Readings, _judging: Judging) -> CheckResult:
    builder = CheckBuilder(COMPONENTS_UP, 0, "components down", None)
    for state in readings.components:
        builder.add(state.name, state.up, "reachable" if state.up else str(state.error))
    builder.value = sum(1 for finding in builder.findings if not finding.ok)
    return builder.result()


COMPONENTS = Check(COMPONENTS_UP, frozenset(), judge_components)
