"""The relay's side work: the outbox gauges, and the time partitions made ahead and dropped."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class PartitionState:
    """One partition, and what the next drop would do with it: live (within the retention),
    due (it would go), kept (`reason`: why not), or default (rows without a partition)."""

    table: str
    partition: str
    start: dt.datetime | None
    end: dt.datetime | None
    rows: int | None  # counted for the default partition; PostgreSQL's estimate for the others
    state: str
    reason: str | None


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
                for row in await _step(conn, settings, which, step):
                    dropped += _report(which, row)
    finally:
        await conn.fetchval(query("prune_unlock", table), key)
    if dropped:
        RELAY_PRUNED.inc(dropped)
    return dropped


async def partitions_plan(conn: asyncpg.Connection, settings: Settings) -> list[PartitionState]:
    """Every partition of the outbox, its delivery records and the receipts, and what the next
    drop would do with it (`flowproof db partitions`); changes nothing."""
    found: list[PartitionState] = []
    for which in PARTITIONED:
        rows = await _step(conn, settings, which, "plan")
        found.extend(
            PartitionState(
                which, r["part"], r["lo"], r["hi"], r["row_count"], r["action"], r["reason"]
            )
            for r in rows
        )
    return found


async def _step(
    conn: asyncpg.Connection, settings: Settings, which: str, step: str
) -> list[asyncpg.Record]:
    """One step (make, drop or plan) of one table's partitions, its own transaction."""
    rows: list[asyncpg.Record] = await conn.fetch(
        query("maintain_partitions", settings.outbox_table),
        which,
        step,
        settings.relay_retention_seconds,
        settings.relay_partition_seconds,
        PARTITIONS_AHEAD,
    )
    return rows


def format_partitions(states: list[PartitionState]) -> str:
    """`flowproof db partitions`' table: one line per partition, times in UTC."""

    def when(moment: dt.datetime | None) -> str:
        if moment is None:
            return ""
        if moment.year in (1, 9999):  # MINVALUE, MAXVALUE (asyncpg: -infinity, infinity)
            return "-"
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")

    rows = [("table", "partition", "from (UTC)", "to (UTC)", "rows", "state")]
    for s in states:
        rows.append(
            (
                s.table,
                s.partition,
                when(s.start),
                when(s.end),
                "?" if s.rows is None else ("" if s.state == "default" else "~") + f"{s.rows:,}",
                s.state + (f": {s.reason}" if s.reason else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


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
