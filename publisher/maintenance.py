"""The relay's side work: the outbox gauges and the pruning of delivered rows."""

from __future__ import annotations

import asyncpg

from flowproof.core.config import Settings
from flowproof.core.logging import get_logger
from flowproof.core.metrics import (
    OUTBOX_OLDEST_PENDING_AGE,
    OUTBOX_PARKED,
    OUTBOX_PENDING,
    OUTBOX_WAITING_BEHIND_PARKED,
    RELAY_PRUNED,
)
from flowproof.publisher.queries import query
from flowproof.publisher.slots import lock_space

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
    """Delete rows every sink of the outbox published, older than the retention, in small
    batches, and the delivery records of this relay's sinks older than the retention.

    Stops after `max_batches` statements so one call never holds a connection for long; the next
    call goes on. One relay prunes at a time (an advisory lock): another that finds it taken
    prunes nothing this time. Returns the number of outbox rows deleted.
    """
    table, retention = settings.outbox_table, settings.relay_retention_seconds
    batch = settings.relay_prune_batch_size
    key = lock_space(table, "*", "prune")
    if not await conn.fetchval(query("prune_lock", table), key):
        log.debug("relay.prune_skipped", reason="another relay is pruning")
        return 0
    try:
        total = await _in_batches(conn, max_batches, batch, "prune", table, retention, batch)
        records = 0
        for sink in settings.sinks:
            records += await _in_batches(
                conn, max_batches, batch, "prune_deliveries", table, retention, batch, sink
            )
    finally:
        await conn.fetchval(query("prune_unlock", table), key)
    if total:
        RELAY_PRUNED.inc(total)
    if total or records:
        log.info("relay.pruned", rows=total, delivery_records=records, retention_seconds=retention)
    return total


async def _in_batches(
    conn: asyncpg.Connection, max_batches: int, batch: int, name: str, table: str, *args: object
) -> int:
    """Run the named DELETE until it deletes less than a batch (or `max_batches` times)."""
    total = 0
    for _ in range(max_batches):
        deleted = int((await conn.execute(query(name, table), *args)).rsplit(" ", 1)[1])
        total += deleted
        if deleted < batch:
            break
    return total
