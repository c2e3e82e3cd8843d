"""flow.lost, flow.duplicates, flow.order and latency.e2e, from the outbox, the receipts and
the positions the relay recorded.

Per sink and expected consumer group, over the events created or published within the window
(Jepsen's vocabulary): *lost* — the group provably cannot get it any more (verifier.loss: it went
past the event's position without a receipt, or the entry is no longer in the sink); *late* — no
receipt yet and the group has not reached it (reported by latency.e2e with its age, and by the lag
checks); *duplicated* — more than one receipt from the event's destination (split into published
twice, at two positions, and redelivered, at one); *misrouted* — a copy received from another
stream or topic; *unexpected* — a valid receipt for an event the outbox never had (judged only
after the relay's retention horizon, as pruned rows are gone).
*Out of order*: an event whose first delivery position precedes the first delivery position of
an earlier (by outbox seq) event of the same aggregate in the same stream or partition, or, where
the aggregate's Kafka partition changed (partitions added), whose first receipt precedes the
previous event's.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from flowproof.core import metrics
from flowproof.core.config import Settings, Sink
from flowproof.core.logging import get_logger
from flowproof.core.redact import scrub
from flowproof.core.sampling import threshold
from flowproof.core.sinks import sink_spec
from flowproof.verifier.groups import subject
from flowproof.verifier.loss import LOST_STATES, Copy, PositionReader, State, Verdict, judge_copies
from flowproof.verifier.model import (
    FLOW_DUPLICATES,
    FLOW_LOST,
    FLOW_ORDER,
    LATENCY_E2E,
    CheckBuilder,
)
from flowproof.verifier.queries import query

log = get_logger(__name__)

# Receipts are read from this long before the window start: the consumer's clock may run behind
# the database's, which stamped created_at.
CLOCK_SKEW_MARGIN = dt.timedelta(minutes=5)

# The flow query sorts the joined rows once, for the grouping of each event's receipts and for the
# order window; left to itself the planner hashes the Kafka query's receipts first and sorts
# afterwards, about a fifth more CPU at a million events (bench/verify_eval.py).
_FLOW_PLANNER = "SET LOCAL enable_hashagg = off"


@dataclass(frozen=True, slots=True)
class FlowStats:
    sink: Sink
    group: str
    judged: int  # published more than the lost grace ago, sampled, within the window
    lost: int
    lost_examples: tuple[uuid.UUID, ...]
    lost_evidence: str  # per lane: how many passed or gone, positions, examples
    positions_error: str | None  # the sink's positions could not be read: loss not judged
    late: int  # no receipt yet, not reached (or pending) in the group
    oldest_late_age: float  # seconds since the oldest late event was published
    unchecked: int  # late events whose entry was not looked up (over verifier.loss.LOOKUP_CAP)
    unpositioned: int  # published with no recorded position (before migration 0040): not judged
    duplicated: int
    published_twice: int
    duplicated_examples: tuple[uuid.UUID, ...]
    misrouted: int
    misrouted_examples: tuple[uuid.UUID, ...]
    out_of_order: int
    out_of_order_examples: tuple[uuid.UUID, ...]
    moved: int  # events whose Kafka partition differs from their aggregate's previous event's
    moved_examples: tuple[uuid.UUID, ...]
    latency_samples: int
    latency: tuple[float, float, float] | None  # p50, p95, p99 in seconds
    unexpected: int
    unexpected_examples: tuple[uuid.UUID, ...]


def _ids(values: Sequence[uuid.UUID] | None) -> tuple[uuid.UUID, ...]:
    return tuple(values or ())


def sampled_below(ratio: float) -> uuid.UUID | None:
    """The uuid that the ids sampled at `ratio` sort below, or None when every id is sampled.

    flowproof.core.sampling samples an id when its first 32 bits, unsigned, are below
    `threshold(ratio)`; PostgreSQL orders uuids bytewise, so that is exactly `id < t * 2**96`:
    one comparison per outbox row instead of a conversion through text.
    """
    limit = threshold(ratio)
    return None if limit >= 2**32 else uuid.UUID(int=limit << 96)


async def flow_stats(
    pool: asyncpg.Pool,
    settings: Settings,
    sink: Sink,
    group: str,
    db_now: dt.datetime,
    *,
    positions: PositionReader,
) -> FlowStats:
    """Run the flow query (verifier/sql/flow.sql) for one sink and group, then decide the loss of
    the events without a receipt by their positions in the sink (verifier.loss)."""
    window_start = db_now - dt.timedelta(seconds=settings.verify_window_seconds)
    receipts_from = window_start - dt.timedelta(minutes=1) - CLOCK_SKEW_MARGIN
    prefix = sink_spec(sink).prefix(settings)

    def before(seconds: float) -> dt.datetime:
        return db_now - dt.timedelta(seconds=seconds)

    horizon = window_start
    if settings.relay_prune_interval_seconds > 0:
        horizon = max(horizon, db_now - dt.timedelta(seconds=settings.relay_retention_seconds))
    table = settings.outbox_table
    async with pool.acquire() as conn:
        async with conn.transaction(readonly=True):
            await conn.execute(_FLOW_PLANNER)
            row = await conn.fetchrow(
                query("flow", table, sink),
                window_start,
                receipts_from,
                group,
                sampled_below(settings.receipt_sample_ratio),
                before(settings.flow_lost_grace_seconds),
                prefix,
                before(settings.flow_duplicates_grace_seconds),
                before(settings.flow_order_grace_seconds),
                before(settings.latency_e2e_grace_seconds),
                horizon,
            )
        assert row is not None  # an aggregate always returns one row
        unreceived: list[uuid.UUID] = list(row["unreceived"])
        copies = [
            Copy(r["id"], r["destination"], r["partition"], r["position"], r["age"])
            for r in await conn.fetch(query("flow_copies", table, sink), unreceived)
        ]
        states, positions_error = await _classify(positions, group, copies, settings)
        verdict = judge_copies(copies, states)
        if verdict.lost:
            verdict = await _received_meanwhile(conn, (table, sink, group), copies, states)
    latency = row["latency"]
    return FlowStats(
        sink=sink,
        group=group,
        judged=row["judged"],
        lost=len(verdict.lost),
        lost_examples=tuple(verdict.lost[:3]),
        lost_evidence=verdict.evidence(),
        positions_error=positions_error,
        late=verdict.late,
        oldest_late_age=verdict.oldest_late_age,
        unchecked=verdict.unchecked,
        unpositioned=len(unreceived) - len({c.event_id for c in copies}),
        duplicated=row["duplicated"],
        published_twice=row["published_twice"],
        duplicated_examples=_ids(row["duplicated_examples"]),
        misrouted=row["misrouted"],
        misrouted_examples=_ids(row["misrouted_examples"]),
        out_of_order=row["out_of_order"],
        out_of_order_examples=_ids(row["out_of_order_examples"]),
        moved=row["moved"],
        moved_examples=_ids(row["moved_examples"]),
        latency_samples=row["latency_samples"],
        latency=(latency[0], latency[1], latency[2]) if latency else None,
        unexpected=row["unexpected"],
        unexpected_examples=_ids(row["unexpected_examples"]),
    )


async def _classify(
    positions: PositionReader, group: str, copies: Sequence[Copy], settings: Settings
) -> tuple[list[State], str | None]:
    """The copies' states in the sink, or (all unchecked, why) when the sink cannot be read: the
    checks that need only PostgreSQL are still judged, flow.lost is "not evaluated"."""
    if not copies:
        return [], None
    try:
        async with asyncio.timeout(settings.verify_timeout_seconds / 2):
            return await positions.classify(group, copies), None
    except Exception as exc:  # any failure of the sink's client: reported, never a pass
        why = scrub(str(exc)) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            why = "no answer in time"
        log.warning("verify.positions_failed", group=group, error=why)
        metrics.VERIFY_READ_ERRORS.labels("positions").inc()
        return [State.UNCHECKED] * len(copies), why


async def _received_meanwhile(
    conn: asyncpg.Connection,
    where: tuple[str, Sink, str],
    copies: Sequence[Copy],
    states: Sequence[State],
) -> Verdict:
    """Judge again without the events whose receipt was written while the sink was read."""
    table, sink, group = where
    suspects = [c for c, s in zip(copies, states, strict=True) if s in LOST_STATES]
    rows = await conn.fetch(
        query("flow_received", table, sink),
        [c.event_id for c in suspects],
        [c.destination for c in suspects],
        group,
    )
    received = {r["id"] for r in rows}
    kept = [(c, s) for c, s in zip(copies, states, strict=True) if c.event_id not in received]
    return judge_copies([c for c, _ in kept], [s for _, s in kept])


def _eg(ids: Sequence[uuid.UUID]) -> str:
    return f" (e.g. {', '.join(str(i) for i in ids)})" if ids else ""


def judge_lost(builder: CheckBuilder, stats: FlowStats, settings: Settings) -> None:
    sampled = (
        f", sampled {settings.receipt_sample_ratio:.0%}"
        if settings.receipt_sample_ratio < 1
        else ""
    )
    text = f"{stats.lost} lost of {stats.judged} judged{sampled}"
    if stats.lost:
        text += f": {stats.lost_evidence}"
    text += f"; {stats.late} late (not reached by the group yet, see latency.e2e and lag)"
    if stats.unpositioned:
        text += (
            f"; {stats.unpositioned} published before positions were recorded (migration 0040),"
            " not judged"
        )
    if stats.positions_error is not None:
        builder.evaluated = False  # could not look: a failure, never a pass
        builder.add(
            subject(stats.sink, stats.group),
            False,
            f"not evaluated: {stats.late} events without a receipt, and their positions in "
            f"{stats.sink} could not be read: {stats.positions_error}",
            sink=stats.sink,
            group=stats.group,
            late=stats.late,
        )
        return
    builder.add(
        subject(stats.sink, stats.group),
        stats.lost <= settings.flow_lost_threshold,
        text,
        sink=stats.sink,
        group=stats.group,
        lost=stats.lost,
        judged=stats.judged,
        late=stats.late,
        unpositioned=stats.unpositioned,
        examples=[str(i) for i in stats.lost_examples],
    )
    builder.worst(stats.lost)


def judge_duplicates(builder: CheckBuilder, stats: FlowStats, settings: Settings) -> None:
    redelivered = stats.duplicated - stats.published_twice
    threshold = settings.flow_duplicates_threshold
    text = (
        f"{stats.duplicated} received more than once ({stats.published_twice} published twice, "
        f"{redelivered} redelivered){_eg(stats.duplicated_examples)}; "
        f"{stats.misrouted} received from another stream or topic than their own"
        f"{_eg(stats.misrouted_examples)}; {stats.unexpected} unexpected (never in the outbox)"
        f"{_eg(stats.unexpected_examples)}"
    )
    builder.add(
        subject(stats.sink, stats.group),
        stats.duplicated <= threshold
        and stats.misrouted <= threshold
        and stats.unexpected <= settings.flow_unexpected_threshold,
        text,
        sink=stats.sink,
        group=stats.group,
        duplicated=stats.duplicated,
        published_twice=stats.published_twice,
        misrouted=stats.misrouted,
        unexpected=stats.unexpected,
    )
    builder.worst(max(stats.duplicated, stats.misrouted, stats.unexpected))


def judge_order(builder: CheckBuilder, stats: FlowStats, settings: Settings) -> None:
    text = (
        f"{stats.out_of_order} first received before an earlier event of their aggregate"
        f"{_eg(stats.out_of_order_examples)}"
    )
    if stats.moved:
        text += (
            f"; {stats.moved} in another partition than their aggregate's previous event (the "
            f"topic's partition count changed), ordered by time of receipt"
            f"{_eg(stats.moved_examples)}"
        )
    builder.add(
        subject(stats.sink, stats.group),
        stats.out_of_order <= settings.flow_order_threshold,
        text,
        sink=stats.sink,
        group=stats.group,
        out_of_order=stats.out_of_order,
        moved=stats.moved,
    )
    builder.worst(stats.out_of_order)


def judge_latency(builder: CheckBuilder, stats: FlowStats, settings: Settings) -> None:
    name = subject(stats.sink, stats.group)
    limit = settings.latency_e2e_threshold_seconds
    late = ""
    if stats.late:
        late = (
            f"; {stats.late} late (not received yet), the oldest published "
            f"{stats.oldest_late_age:.1f}s ago"
        )
        if stats.unchecked:
            late += f" ({stats.unchecked} not looked up in the sink this time)"
    late_ok = stats.oldest_late_age <= limit
    if stats.latency is None:
        builder.add(
            name,
            late_ok,
            f"no receipts in the window to measure{late}",
            sink=stats.sink,
            group=stats.group,
            late=stats.late,
            oldest_late_age=round(stats.oldest_late_age, 3),
        )
        builder.worst(round(stats.oldest_late_age, 6) if stats.late else None)
        return
    p50, p95, p99 = stats.latency
    builder.add(
        name,
        p99 <= limit and late_ok,
        f"p50 {p50:.3f}s, p95 {p95:.3f}s, p99 {p99:.3f}s over {stats.latency_samples} events{late}",
        sink=stats.sink,
        group=stats.group,
        p50=p50,
        p95=p95,
        p99=p99,
        samples=stats.latency_samples,
        late=stats.late,
        oldest_late_age=round(stats.oldest_late_age, 3),
    )
    builder.worst(round(max(p99, stats.oldest_late_age), 6))


def flow_builder(settings: Settings, name: str) -> CheckBuilder:
    """The empty result of the flow check `name`, with its threshold and grace."""
    limits = {
        FLOW_LOST: (settings.flow_lost_threshold, "events", settings.flow_lost_grace_seconds),
        FLOW_DUPLICATES: (
            settings.flow_duplicates_threshold,
            "events",
            settings.flow_duplicates_grace_seconds,
        ),
        FLOW_ORDER: (settings.flow_order_threshold, "events", settings.flow_order_grace_seconds),
        LATENCY_E2E: (
            settings.latency_e2e_threshold_seconds,
            "seconds (p99)",
            settings.latency_e2e_grace_seconds,
        ),
    }
    threshold, unit, grace = limits[name]
    return CheckBuilder(name, threshold, unit, grace)
