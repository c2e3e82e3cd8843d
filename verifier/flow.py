"""flow.lost, flow.duplicates, flow.order and latency.e2e, from the outbox and the receipts.

Per sink and expected consumer group, over the events created within the window (Jepsen's
vocabulary): *lost* — published more than the grace period ago, sampled, and no receipt;
*duplicated* — more than one receipt (split into published twice, at two positions, and
redelivered, at one); *unexpected* — a valid receipt for an event the outbox never had
(judged only after the relay's retention horizon, as pruned rows are gone);
*recovered* — first received later than the grace period after publishing, so counted lost by
an evaluation in between (computed from the times, without remembering earlier evaluations).
*Out of order*: an event whose first delivery position precedes the first delivery position of
an earlier (by outbox seq) event of the same aggregate in the same stream or partition.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from flowproof.config import Settings, Sink
from flowproof.sampling import threshold
from verifier.groups import subject
from verifier.model import FLOW_DUPLICATES, FLOW_LOST, FLOW_ORDER, LATENCY_E2E, CheckBuilder
from verifier.queries import query

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
    recovered: int
    duplicated: int
    published_twice: int
    duplicated_examples: tuple[uuid.UUID, ...]
    out_of_order: int
    out_of_order_examples: tuple[uuid.UUID, ...]
    latency_samples: int
    latency: tuple[float, float, float] | None  # p50, p95, p99 in seconds
    unexpected: int
    unexpected_examples: tuple[uuid.UUID, ...]


def _ids(values: Sequence[uuid.UUID] | None) -> tuple[uuid.UUID, ...]:
    return tuple(values or ())


def sampled_below(ratio: float) -> uuid.UUID | None:
    """The uuid that the ids sampled at `ratio` sort below, or None when every id is sampled.

    flowproof.sampling samples an id when its first 32 bits, unsigned, are below
    `threshold(ratio)`; PostgreSQL orders uuids bytewise, so that is exactly `id < t * 2**96`:
    one comparison per outbox row instead of a conversion through text.
    """
    limit = threshold(ratio)
    return None if limit >= 2**32 else uuid.UUID(int=limit << 96)


async def flow_stats(
    pool: asyncpg.Pool, settings: Settings, sink: Sink, group: str, db_now: dt.datetime
) -> FlowStats:
    """Run the flow query (verifier/sql/flow.sql) for one sink and group."""
    window_start = db_now - dt.timedelta(seconds=settings.verify_window_seconds)
    receipts_from = window_start - CLOCK_SKEW_MARGIN
    lost_grace = dt.timedelta(seconds=settings.flow_lost_grace_seconds)

    def before(seconds: float) -> dt.datetime:
        return db_now - dt.timedelta(seconds=seconds)

    horizon = window_start
    if settings.relay_prune_interval_seconds > 0:
        horizon = max(horizon, db_now - dt.timedelta(seconds=settings.relay_retention_seconds))
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute(_FLOW_PLANNER)
        row = await conn.fetchrow(
            query("flow", settings.outbox_table, sink),
            window_start,
            receipts_from,
            group,
            sampled_below(settings.receipt_sample_ratio),
            db_now - lost_grace,
            lost_grace,
            before(settings.flow_duplicates_grace_seconds),
            before(settings.flow_order_grace_seconds),
            before(settings.latency_e2e_grace_seconds),
            horizon,
        )
    assert row is not None  # an aggregate always returns one row
    latency = row["latency"]
    return FlowStats(
        sink=sink,
        group=group,
        judged=row["judged"],
        lost=row["lost"],
        lost_examples=_ids(row["lost_examples"]),
        recovered=row["recovered"],
        duplicated=row["duplicated"],
        published_twice=row["published_twice"],
        duplicated_examples=_ids(row["duplicated_examples"]),
        out_of_order=row["out_of_order"],
        out_of_order_examples=_ids(row["out_of_order_examples"]),
        latency_samples=row["latency_samples"],
        latency=(latency[0], latency[1], latency[2]) if latency else None,
        unexpected=row["unexpected"],
        unexpected_examples=_ids(row["unexpected_examples"]),
    )


def _eg(ids: Sequence[uuid.UUID]) -> str:
    return f" (e.g. {', '.join(str(i) for i in ids)})" if ids else ""


def judge_lost(builder: CheckBuilder, stats: FlowStats, settings: Settings) -> None:
    sampled = (
        f", sampled {settings.receipt_sample_ratio:.0%}"
        if settings.receipt_sample_ratio < 1
        else ""
    )
    ok = stats.lost <= settings.flow_lost_threshold
    unexpected_ok = stats.unexpected <= settings.flow_unexpected_threshold
    text = (
        f"{stats.lost} lost of {stats.judged} published more than "
        f"{settings.flow_lost_grace_seconds:g}s ago{sampled}{_eg(stats.lost_examples)}; "
        f"{stats.recovered} recovered; {stats.unexpected} unexpected"
        f"{_eg(stats.unexpected_examples)}"
    )
    builder.add(
        subject(stats.sink, stats.group),
        ok and unexpected_ok,
        text,
        sink=stats.sink,
        group=stats.group,
        lost=stats.lost,
        judged=stats.judged,
        recovered=stats.recovered,
        unexpected=stats.unexpected,
    )
    builder.worst(stats.lost)


def judge_duplicates(builder: CheckBuilder, stats: FlowStats, settings: Settings) -> None:
    redelivered = stats.duplicated - stats.published_twice
    builder.add(
        subject(stats.sink, stats.group),
        stats.duplicated <= settings.flow_duplicates_threshold,
        f"{stats.duplicated} received more than once ({stats.published_twice} published twice, "
        f"{redelivered} redelivered){_eg(stats.duplicated_examples)}",
        sink=stats.sink,
        group=stats.group,
        duplicated=stats.duplicated,
        published_twice=stats.published_twice,
    )
    builder.worst(stats.duplicated)


def judge_order(builder: CheckBuilder, stats: FlowStats, settings: Settings) -> None:
    builder.add(
        subject(stats.sink, stats.group),
        stats.out_of_order <= settings.flow_order_threshold,
        f"{stats.out_of_order} first received before an earlier event of their aggregate"
        f"{_eg(stats.out_of_order_examples)}",
        sink=stats.sink,
        group=stats.group,
        out_of_order=stats.out_of_order,
    )
    builder.worst(stats.out_of_order)


def judge_latency(builder: CheckBuilder, stats: FlowStats, settings: Settings) -> None:
    name = subject(stats.sink, stats.group)
    if stats.latency is None:
        builder.add(name, True, "no receipts in the window to measure", sink=stats.sink)
        return
    p50, p95, p99 = stats.latency
    builder.add(
        name,
        p99 <= settings.latency_e2e_threshold_seconds,
        f"p50 {p50:.3f}s, p95 {p95:.3f}s, p99 {p99:.3f}s over {stats.latency_samples} events",
        sink=stats.sink,
        group=stats.group,
        p50=p50,
        p95=p95,
        p99=p99,
        samples=stats.latency_samples,
    )
    builder.worst(round(p99, 6))


def flow_builders(settings: Settings) -> dict[str, CheckBuilder]:
    return {
        FLOW_LOST: CheckBuilder(
            FLOW_LOST, settings.flow_lost_threshold, "events", settings.flow_lost_grace_seconds
        ),
        FLOW_DUPLICATES: CheckBuilder(
            FLOW_DUPLICATES,
            settings.flow_duplicates_threshold,
            "events",
            settings.flow_duplicates_grace_seconds,
        ),
        FLOW_ORDER: CheckBuilder(
            FLOW_ORDER, settings.flow_order_threshold, "events", settings.flow_order_grace_seconds
        ),
        LATENCY_E2E: CheckBuilder(
            LATENCY_E2E,
            settings.latency_e2e_threshold_seconds,
            "seconds (p99)",
            settings.latency_e2e_grace_seconds,
        ),
    }


def judge_flow(builders: dict[str, CheckBuilder], stats: FlowStats, settings: Settings) -> None:
    """Add one sink and group's flow evidence to the four checks it feeds."""
    judge_lost(builders[FLOW_LOST], stats, settings)
    judge_duplicates(builders[FLOW_DUPLICATES], stats, settings)
    judge_order(builders[FLOW_ORDER], stats, settings)
    judge_latency(builders[LATENCY_E2E], stats, settings)
