"""The fault table: one row per scenario run, printed at the end of pytest and written to
`tests/faults/results/latest.md`."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Result:
    """One scenario's outcome. lost/duplicates/reordered are summed over every sink and group;
    `per_lane` has them per sink and group."""

    scenario: str
    events: int = 0
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    recover_seconds: float | None = None  # the slowest fault's; None: no fault, or never
    drain_seconds: float | None = None  # workload end to the last receipt
    faults: int = 0
    passed: bool = False
    verifier_agrees: bool = False
    per_lane: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def explain(self) -> str:
        """The problems, then the run's timeline: what an assertion message should show."""
        return "\n".join([*self.problems, "timeline:", *self.timeline])

    def row(self) -> str:
        recover = "-" if self.recover_seconds is None else f"{self.recover_seconds:.1f} s"
        verdict = "PASS" if self.passed else "FAIL"
        agrees = "yes" if self.verifier_agrees else "NO"
        return (
            f"| {self.scenario} | {self.events} | {self.lost} | {self.duplicates} | "
            f"{self.reordered} | {recover} | {self.faults} | {agrees} | {verdict} | "
            f"{'; '.join(self.per_lane)} | {self.seconds:.0f} s |"
        )


RESULTS: list[Result] = []

HEADER = (
    "| scenario | events | lost | duplicates | reordered | time to recover | faults | "
    "verifier agrees | verdict | per sink/group: lost/dup/reordered | wall |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


def render(results: list[Result]) -> str:
    lines = [HEADER, *(r.row() for r in results)]
    problems = [f"- {r.scenario}: {p}" for r in results for p in r.problems]
    if problems:
        lines += ["", "Problems:", *problems]
    return "\n".join(lines)


def write_latest(results: list[Result]) -> Path:
    """Write the table (with when and where it ran) to results/latest.md; its path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / "latest.md"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    path.write_text(
        f"# flowproof fault scenarios\n\n{stamp}, {os.cpu_count()} CPUs. time to recover: from "
        "the end of a fault (a kill, a restart done, a connection healed) until every event "
        "written before it has a valid receipt in every sink and group; the slowest fault of "
        "the scenario.\n\n" + render(results) + "\n",
        encoding="utf-8",
    )
    return path
