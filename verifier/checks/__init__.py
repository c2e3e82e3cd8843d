"""The verifier's checks, as data, in the order reports list them.

Each check is a `Check` (`check.py`): its name, the readings it needs (`Source`) and its judge.
The evaluator reads the union of what the checks need once, then judges each. Adding a check is
one module here and one entry in `registered`; a sink's lag check comes with its registration
(`flowproof.core.sinks`).
"""

from __future__ import annotations

from flowproof.core.sinks import SINKS
from flowproof.verifier.checks import components, conformance, flow, lag, outbox
from flowproof.verifier.checks.check import Check, Judging

__all__ = ["Check", "Judging", "registered"]


def registered() -> list[Check]:
    """Every check, in report order."""
    return [
        components.COMPONENTS,
        flow.LOST,
        flow.DUPLICATES,
        flow.ORDER,
        outbox.OUTBOX,
        *(lag.lag_check(spec) for spec in SINKS.values()),
        flow.LATENCY,
        conformance.CONFORMANCE,
    ]
