"""The relay's side work: the outbox gauges, and the time partitions made ahead and dropped."""

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


# The partitioned tables, by the name the maintenance function knows them by (migration 0070).
PARTITIONED = ("outbox", "deliveries", "receipts")
# Spans made ahead of now, beyond the current one: inserts never wait for a partition.
PARTITIONS_AHEAD = 2


async def prune(conn: asyncpg.Connection, settings: Settings) -> int:
    """Drop the partitions past the retention (the outbox's once every sink of the outbox has
    published all of their rows), and make the partitions ahead. Returns the number of outbox
    rows that went."""
    return await maintain_partitions(conn, settings, drop_old=True)


async def maintain_partitions(
    conn: asyncpg.Connection, settings: Settings, *, drop_old: bool
) -> int:
    """Make the partitions of the outbox, its delivery records and the receipts for the spans
    from now to `PARTITIONS_AHEAD` ahead (and for rows that fell in a DEFAULT partition); when
    `drop_old`, drop those wholly older than the retention, the outbox's only once every sink
    of the outbox (`<outbox>_sinks`, whichever relay registered it) passed and published all of
    their rows. A partition kept for a row still owed or set aside goes on a later call.

    One relay at a time (an advisory lock): another that finds it taken does nothing this time.
    Each step of each table is one call of `<outbox>_partitions_maintain`, its own transaction,
    which waits at most 500 ms for a table's lock and says "busy" rather than hold inserts back.
    Returns the number of outbox rows dropped.
    """
    table = settings.outbox_table
    key = lock_space(table, "*", "prune")
    if not await conn.fetchval(query("prune_lock", table), key):
        log.debug("relay.prune_skipped", reason="another relay is pruning")
        return 0
    dropped = 0
    try:
        for which in PARTITIONED:
            for step in ("make", "drop") if drop_old else ("make",):
                rows = await conn.fetch(
                    query("maintain_partitions", table),
                    which,
                    step,
                    settings.relay_retention_seconds,
                    settings.relay_partition_seconds,
                    PARTITIONS_AHEAD,
                )
                for row in rows:
                    dropped += _report(which, row)
    finally:
        await conn.fetchval(query("prune_unlock", table), key)
    if dropped:
        RELAY_PRUNED.inc(dropped)
    return dropped


def _report(which: str, row: asyncpg.Record) -> int:
    """Log what the maintenance did to one partition; the outbox rows it dropped."""
    action, partition, rows, reason = row["action"], row["part"], row["row_count"], row["reason"]
    if action == "created":
        log.info("relay.partition_created", table=which, partition=partition, reason=reason)
    elif action == "dropped":
        log.info("relay.partition_dropped", table=which, partition=partition, rows=rows)
        return int(rows) if which == "outbox" else 0
    elif action == "kept":
        log.debug("relay.partition_kept", table=which, partition=partition, reason=reason)
    else:
        log.warning("relay.partition_busy", table=which, partition=partition, reason=reason)
    return 0
