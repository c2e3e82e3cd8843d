"""lag.outbox: what waits in the outbox per sink, and what the relay parked.

Pending means neither published to the sink nor parked. The check fails when more than the
threshold of events have waited longer than the grace period, or when more events are parked
than allowed: a parked event never reaches the sink, and it holds back its aggregate.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from flowproof.core.config import Settings, Sink
from flowproof.verifier.model import LAG_OUTBOX, CheckBuilder
from flowproof.verifier.queries import query


@dataclass(frozen=True, slots=True)
class OutboxStats:
    sink: Sink
    pending: int
    overdue: int  # pending longer than the grace period
    oldest_age: float | None  # seconds, of the oldest pending event
    parked: dict[str, int]  # reason -> events


async def outbox_stats(
    pool: asyncpg.Pool, settings: Settings, sink: Sink, db_now: dt.datetime
) -> OutboxStats:
    grace = dt.timedelta(seconds=settings.lag_outbox_grace_seconds)
    row = await pool.fetchrow(query("outbox_pending", settings.outbox_table, sink), db_now - grace)
    assert row is not None  # an aggregate always returns one row
    parked = await pool.fetch(query("outbox_parked", settings.outbox_table, sink))
    oldest = row["oldest"]
    return OutboxStats(
        sink=sink,
        pending=row["pending"],
        overdue=row["overdue"],
        oldest_age=max(0.0, (db_now - oldest).total_seconds()) if oldest else None,
        parked={r["reason"]: r["events"] for r in parked},
    )


def outbox_builder(settings: Settings) -> CheckBuilder:
    return CheckBuilder(
        LAG_OUTBOX, settings.lag_outbox_threshold, "events", settings.lag_outbox_grace_seconds
    )


def judge_outbox(builder: CheckBuilder, stats: OutboxStats, settings: Settings) -> None:
    oldest = f"{stats.oldest_age:.1f}s" if stats.oldest_age is not None else "none"
    parked_total = sum(stats.parked.values())
    parked = ", ".join(f"{n} {reason}" for reason, n in stats.parked.items()) or "none"
    builder.add(
        f"{stats.sink} outbox",
        stats.overdue <= settings.lag_outbox_threshold,
        f"{stats.pending} pending, {stats.overdue} waiting longer than "
        f"{settings.lag_outbox_grace_seconds:g}s, oldest {oldest}",
        sink=stats.sink,
        pending=stats.pending,
        overdue=stats.overdue,
        oldest_age_seconds=stats.oldest_age,
    )
    builder.add(
        f"{stats.sink} outbox",
        parked_total <= settings.lag_outbox_parked_threshold,
        f"{parked_total} parked ({parked}); allowed {settings.lag_outbox_parked_threshold}",
        sink=stats.sink,
        parked=stats.parked,
    )
    builder.worst(stats.overdue)
