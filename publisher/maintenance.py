"""The relay's side work: the outbox gauges and the pruning of delivered rows."""

from __future__ import annotations

import asyncpg

from flowproof.config import Settings
from flowproof.logging import get_logger
from flowproof.metrics import (
    OUTBOX_OLDEST_PENDING_AGE,
    OUTBOX_PARKED,
    OUTBOX_PENDING,
    OUTBOX_WAITING_BEHIND_PARKED,
    RELAY_PRUNED,
)
from publisher.queries import published_everywhere, query

log = get_logger(__name__)


async def refresh_gauges(conn: asyncpg.Connection, settings: Settings) -> None:
    """Set the outbox gauges of every enabled sink from the table (a few index scans)."""
    table = settings.outbox_table
    for sink in settings.sinks:
        stats = await conn.fetchrow(query("sink_stats", table, sink))
        waiting = 0
        if stats["parked"]:
            waiting = await conn.fetchval(query("waiting_behind_parked", table, sink))
        OUTBOX_PENDING.labels(sink).set(stats["pending"])
        OUTBOX_OLDEST_PENDING_AGE.labels(sink).set(max(stats["oldest_age"] or 0.0, 0.0))
        OUTBOX_PARKED.labels(sink).set(stats["parked"])
        OUTBOX_WAITING_BEHIND_PARKED.labels(sink).set(waiting)


async def prune(conn: asyncpg.Connection, settings: Settings, max_batches: int = 100) -> int:
    """Delete rows every enabled sink acknowledged, older than the retention, in small batches.

    Stops after `max_batches` statements so one call never holds a connection for long; the next
    call goes on. Returns the number of rows deleted.
    """
    sql = query(
        "prune",
        settings.outbox_table,
        published_everywhere=published_everywhere(settings.sinks),
    )
    total = 0
    for _ in range(max_batches):
        status = await conn.execute(
            sql, settings.relay_retention_seconds, settings.relay_prune_batch_size
        )
        deleted = int(status.rsplit(" ", 1)[1])
        total += deleted
        if deleted < settings.relay_prune_batch_size:
            break
    if total:
        RELAY_PRUNED.inc(total)
        log.info("relay.pruned", rows=total, retention_seconds=settings.relay_retention_seconds)
    return total
