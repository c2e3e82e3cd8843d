"""`flowproof smoke`: canary events through the real pipeline, then every check.

The canaries (`flowproof.Canary`, one aggregate per run so their order is checked too) are checked
by the publisher's outbox API exactly as the relay will encode them, then written to the outbox in
one transaction. Their ids are drawn inside the receipt sample, so consumers receipt them whatever
FLOWPROOF_RECEIPT_SAMPLE_RATIO is. Smoke then waits until every canary has a receipt in every
expected sink and group, or the timeout: meanwhile it prints progress on stderr and observes the
consumer groups' positions, so their Burrow-style status rests on several observations. It ends
with `smoke.canaries` (each sink and group: received or not, round-trip latency, or the relay not
publishing, or a canary parked) followed by the checks of a full evaluation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

import asyncpg

from flowproof.core.config import Settings
from flowproof.core.connect import connect_postgres
from flowproof.core.errors import ConfigError
from flowproof.core.logging import get_logger
from flowproof.core.sampling import is_sampled
from flowproof.publisher.outbox import Outbox
from flowproof.schemas.errors import ContractError
from flowproof.verifier.evaluator import Evaluator
from flowproof.verifier.groups import SinkGroup, subject
from flowproof.verifier.model import CheckBuilder, Report
from flowproof.verifier.queries import query

CANARY_TYPE = "flowproof.Canary"
SMOKE_CANARIES = "smoke.canaries"
POLL_SECONDS = 0.25
OBSERVE_SECONDS = 1.0
PROGRESS_EVERY = 5.0  # seconds between two unchanged progress lines when stderr is not a tty

log = get_logger(__name__)


@dataclass(slots=True)
class Progress:
    """What smoke knows about its canaries so far."""

    ids: list[uuid.UUID]
    created: dict[uuid.UUID, dt.datetime] = field(default_factory=dict)
    published: dict[str, set[uuid.UUID]] = field(default_factory=dict)
    parked: dict[str, dict[uuid.UUID, str]] = field(default_factory=dict)
    received: dict[SinkGroup, dict[uuid.UUID, dt.datetime]] = field(default_factory=dict)

    def complete(self, pairs: list[SinkGroup]) -> bool:
        return all(len(self.received.get(pair, {})) == len(self.ids) for pair in pairs)

    def hopeless(self) -> bool:
        """A parked canary never arrives: no reason to wait for it."""
        return any(self.parked.values())

    def line(self, pairs: list[SinkGroup], elapsed: float) -> str:
        total = len(self.ids)
        parts = [
            f"{sink}/{group} {len(self.received.get((sink, group), {}))}/{total}"
            for sink, group in pairs
        ]
        published = " ".join(
            f"{sink} {len(self.published.get(sink, set()))}/{total}"
            for sink in dict.fromkeys(s for s, _ in pairs)
        )
        return f"smoke: {elapsed:5.1f}s published {published}; received {', '.join(parts)}"


def sampled_ids(count: int, ratio: float) -> list[uuid.UUID]:
    """`count` random event ids that the receipt sample includes at `ratio`."""
    ids: list[uuid.UUID] = []
    while len(ids) < count:
        candidate = uuid.uuid4()
        if is_sampled(candidate, ratio):
            ids.append(candidate)
    return ids


async def emit_canaries(
    conn: asyncpg.Connection, settings: Settings, run_id: str, count: int
) -> list[uuid.UUID]:
    """Write `count` canaries of one aggregate to the outbox in one transaction."""
    outbox = Outbox.from_settings(settings)
    ids = sampled_ids(count, settings.receipt_sample_ratio)
    async with conn.transaction():
        for sequence, event_id in enumerate(ids, start=1):
            payload: dict[str, Any] = {
                "run_id": run_id,
                "sequence": sequence,
                "total": count,
                "note": "flowproof smoke",
            }
            try:
                await outbox.emit(
                    conn,
                    type=CANARY_TYPE,
                    aggregate_type=settings.smoke_aggregate_type,
                    aggregate_id=f"smoke-{run_id}",
                    payload=payload,
                    event_id=event_id,
                )
            except ContractError as exc:
                raise ConfigError(f"FLOWPROOF_SMOKE_AGGREGATE_TYPE: {exc}") from None
    log.info("smoke.emitted", run_id=run_id, canaries=count)
    return ids


async def poll(conn: asyncpg.Connection, settings: Settings, progress: Progress) -> None:
    """Refresh what was published, parked and received."""
    rows = await conn.fetch(query("canary_published", settings.outbox_table), progress.ids)
    for row in rows:
        progress.created[row["id"]] = row["created_at"]
        for sink in settings.sinks:
            if row[f"{sink}_published_at"] is not None:
                progress.published.setdefault(sink, set()).add(row["id"])
            if row[f"{sink}_parked_reason"] is not None:
                progress.parked.setdefault(sink, {})[row["id"]] = row[f"{sink}_parked_reason"]
    for row in await conn.fetch(query("canary_received", settings.outbox_table), progress.ids):
        pair = (row["sink"], row["consumer_group"])
        progress.received.setdefault(pair, {})[row["event_id"]] = row["received_at"]


def _round_trips(progress: Progress, pair: SinkGroup) -> list[float]:
    received = progress.received.get(pair, {})
    return sorted(
        (at - progress.created[event_id]).total_seconds()
        for event_id, at in received.items()
        if event_id in progress.created
    )


def judge_canaries(
    progress: Progress, pairs: list[SinkGroup], timeout: float, waited: float
) -> tuple[CheckBuilder, dict[str, Any]]:
    """`smoke.canaries`: every canary in every sink and group, and the round trip of each."""
    total = len(progress.ids)
    builder = CheckBuilder(SMOKE_CANARIES, 0, f"canaries missing after {timeout:g}s", None)
    summary: dict[str, Any] = {}
    missing_worst = 0
    for sink, group in pairs:
        got = len(progress.received.get((sink, group), {}))
        published = len(progress.published.get(sink, set()))
        parked = progress.parked.get(sink, {})
        trips = _round_trips(progress, (sink, group))
        text = f"{got} of {total} received"
        if trips:
            text += f"; round trip p50 {statistics.median(trips):.3f}s, max {trips[-1]:.3f}s"
        if parked:
            reasons = ", ".join(sorted(set(parked.values())))
            text += f"; {len(parked)} parked by the relay ({reasons})"
        elif published < total:
            text += f"; only {published} published to {sink}: is `flowproof relay` running?"
        elif got < total:
            text += f"; all published: group {group} is not consuming {sink}"
        if got < total and not parked:
            text += f" (waited {waited:.1f}s of {timeout:g}s)"
        builder.add(
            subject(sink, group),
            got == total,
            text,
            sink=sink,
            group=group,
            received=got,
            published=published,
            expected=total,
        )
        missing_worst = max(missing_worst, total - got)
        summary.setdefault(sink, {})[group] = {
            "received": got,
            "published": published,
            "round_trip_p50_seconds": statistics.median(trips) if trips else None,
            "round_trip_max_seconds": trips[-1] if trips else None,
        }
    builder.value = missing_worst
    return builder, summary


async def run_smoke(
    settings: Settings, *, events: int, wait_seconds: float, progress_out: TextIO
) -> Report:
    """Emit canaries, wait for them, evaluate; the report's first check is smoke.canaries."""
    async with Evaluator(settings) as evaluator:
        before = await evaluator.evaluate()
        if before.unreachable:
            return before  # nothing can flow; the report says which component is down
        run_id = uuid.uuid4().hex[:12]
        conn = await connect_postgres(settings)
        try:
            progress = Progress(await emit_canaries(conn, settings, run_id, events))
            waited = await _wait(
                conn, evaluator, progress, wait_seconds=wait_seconds, out=progress_out
            )
        finally:
            await conn.close()
        canaries, summary = judge_canaries(progress, evaluator.groups, wait_seconds, waited)
        report = await evaluator.evaluate()
    log.info("smoke.finished", run_id=run_id, waited_seconds=round(waited, 2))
    return Report(
        checks=(canaries.result(), *report.checks),
        components=report.components,
        evaluated_at=report.evaluated_at,
        duration_seconds=report.duration_seconds,
        window_seconds=report.window_seconds,
        extra={
            "smoke": {
                "run_id": run_id,
                "events": events,
                "timeout_seconds": wait_seconds,
                "waited_seconds": round(waited, 3),
                "sinks": summary,
            }
        },
    )


async def _wait(
    conn: asyncpg.Connection,
    evaluator: Evaluator,
    progress: Progress,
    *,
    wait_seconds: float,
    out: TextIO,
) -> float:
    started = time.monotonic()
    last_observed = 0.0
    last_line, last_written = "", -PROGRESS_EVERY
    while True:
        await poll(conn, evaluator.settings, progress)
        elapsed = time.monotonic() - started
        line = progress.line(evaluator.groups, elapsed)
        news = line.split(" published", 1)[-1] != last_line.split(" published", 1)[-1]
        if out.isatty():
            out.write("\r" + line)
        elif news or elapsed - last_written >= PROGRESS_EVERY:
            out.write(line + "\n")
            last_written = elapsed
        out.flush()
        last_line = line
        if progress.complete(evaluator.groups) or progress.hopeless() or elapsed >= wait_seconds:
            break
        if elapsed - last_observed >= OBSERVE_SECONDS:
            await evaluator.observe()
            last_observed = elapsed
        await asyncio.sleep(POLL_SECONDS)
    if out.isatty():
        out.write("\n")
    return time.monotonic() - started
