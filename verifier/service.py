"""`flowproof verify`: evaluate on an interval, serve /metrics, /healthz, /readyz and the status
page (`/` and `/status.json`, verifier.page).

/healthz answers 200 while the process runs. /readyz answers 200 only when the last evaluation
finished recently and every component it needed was reachable; before the first evaluation, after
a stall, or with a component down it answers 503 with the reason: a pipeline that is down is not
"ready". Failing checks do not make it unready (they are what the metrics and alerts are for).
SIGTERM or SIGINT stops the loop: an evaluation in progress is abandoned (it writes nothing), the
HTTP server is shut down, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable

from flowproof.core import heap, metrics
from flowproof.core.config import Settings
from flowproof.core.http import MetricsServer, Route
from flowproof.core.logging import get_logger
from flowproof.verifier.evaluator import Evaluator
from flowproof.verifier.model import Report
from flowproof.verifier.page import StatusPage

log = get_logger(__name__)

# Evaluations the status page charts (two hours at the default 15 s interval).
HISTORY_SIZE = 480


class Readiness:
    """What /readyz answers, from the last evaluation and how long ago it finished."""

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self._last: Report | None = None
        self._finished = 0.0

    def record(self, report: Report) -> None:
        self._last = report
        self._finished = time.monotonic()
        self.answer()

    def answer(self) -> tuple[int, str]:
        """(HTTP status, body) for /readyz; also sets flowproof_verify_ready."""
        status, body = self._decide()
        metrics.VERIFY_READY.set(1 if status == 200 else 0)
        return status, body

    def _decide(self) -> tuple[int, str]:
        report = self._last
        if report is None:
            return 503, "not ready: no evaluation has finished yet\n"
        age = time.monotonic() - self._finished
        if age > self.max_age:
            return 503, f"not ready: the last evaluation finished {age:.0f}s ago\n"
        if report.unreachable:
            down = "; ".join(f"{c.name} is unreachable: {c.error}" for c in report.unreachable)
            return 503, f"not ready: {down}\n"
        passed = sum(1 for c in report.checks if c.passed)
        return 200, (
            f"ready: evaluated {age:.0f}s ago, {passed} of {len(report.checks)} checks passed\n"
        )


def _healthz() -> tuple[int, str]:
    return 200, "alive\n"


async def run_verifier(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until `stop` is set or SIGTERM/SIGINT arrives."""
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    interval = settings.verify_interval_seconds
    readiness = Readiness(max_age=2 * interval + 2 * settings.verify_timeout_seconds)
    try:
        async with Evaluator(settings) as evaluator:
            page = StatusPage(
                history_size=HISTORY_SIZE, refresh_seconds=interval, windows=evaluator.windows
            )
            routes: dict[str, Route] = {
                "/": page.html,
                "/status.json": page.json,
                "/healthz": _healthz,
                "/readyz": readiness.answer,
            }
            server = MetricsServer(settings.metrics_host, settings.metrics_port, routes).start()
            heap.settle()  # a long-running process, its start-up done (as relay and consume)
            log.info("verify.started", interval_seconds=interval, port=server.port)
            try:
                await _loop(evaluator, (readiness.record, page.record), stop, interval)
            finally:
                server.stop()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        log.info("verify.stopped")


async def _loop(
    evaluator: Evaluator,
    recorders: tuple[Callable[[Report], None], ...],
    stop: asyncio.Event,
    interval: float,
) -> None:
    stopping = asyncio.create_task(stop.wait(), name="verify-stop")
    try:
        while not stop.is_set():
            evaluation = asyncio.create_task(evaluator.evaluate(), name="verify-evaluation")
            await asyncio.wait({evaluation, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not evaluation.done():
                evaluation.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await evaluation
                log.info("verify.evaluation_abandoned", reason="stop requested")
                return
            for record in recorders:
                record(evaluation.result())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(stopping), timeout=interval)
    finally:
        stopping.cancel()
