"""What `flowproof check` and `flowproof smoke` do after an evaluation: print, write, decide.

The report goes to stdout as the table, or as exactly one JSON document with --json; --junit-xml
also writes it as JUnit XML. The exit code follows docs/design.md: 0 every check passed, 1 a check
failed, 2 a component unreachable (the message on stderr names which, and the report is printed
all the same, every check that needed the component failing as not evaluated).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from flowproof.core.config import Settings
from flowproof.core.errors import EXIT_CHECK_FAILED, EXIT_CONFIG, EXIT_OK
from flowproof.verifier.evaluator import Evaluator
from flowproof.verifier.model import Report
from flowproof.verifier.report import render_json, render_table, write_junit
from flowproof.verifier.smoke import run_smoke


async def check_once(settings: Settings) -> Report:
    """One evaluation of every check (`flowproof check`)."""
    async with Evaluator(settings) as evaluator:
        return await evaluator.evaluate()


async def smoke_once(settings: Settings, events: int | None, wait_seconds: float | None) -> Report:
    """Canaries through the pipeline, then every check (`flowproof smoke`)."""
    return await run_smoke(
        settings,
        events=events if events is not None else settings.smoke_events,
        wait_seconds=wait_seconds if wait_seconds is not None else settings.smoke_timeout_seconds,
        progress_out=sys.stderr,
    )


def unreachable_message(report: Report) -> str:
    return "; ".join(f"{c.name} is unreachable: {c.error}" for c in report.unreachable)


def publish(
    report: Report, *, as_json: bool, junit_xml: Path | None, suite: str, out: TextIO
) -> int:
    """Print the report, write the JUnit file if asked; return the exit code."""
    out.write(render_json(report) if as_json else render_table(report))
    out.flush()
    if junit_xml is not None:
        write_junit(report, suite, junit_xml)
    if report.unreachable:
        return EXIT_CONFIG
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED
