"""How long one verifier evaluation takes over 1,000,000 outbox rows and their receipts.

Makes a scratch database on the configured PostgreSQL (FLOWPROOF_DATABASE_URL names the server;
set -a; . .devstack/env; set +a), fills it with generate_series: N events of 100,000 aggregates
created over the last 50 minutes and published to both sinks, a receipt per event and sink
(Redis entry ids and Kafka partition:offset positions, as the consumers write them), plus a few
lost, duplicated and reordered events; then times full evaluations (PostgreSQL, Redis and Kafka
all read; the streams and topics are empty under a scratch prefix) and prints the numbers.

    .venv/bin/python -m bench.verify_eval [--events 1000000] [--runs 3] [--sample-ratio 0.1]

(As a module: run as a script, bench/verifier.py would shadow the verifier package.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from flowproof.core.config import Settings
from flowproof.core.identifiers import validate_name_prefix
from flowproof.core.logging import configure_logging
from flowproof.core.migrations import migrate
from flowproof.core.sampling import sql_predicate, threshold
from flowproof.verifier.conformance import receipt_stats
from flowproof.verifier.evaluator import Evaluator
from flowproof.verifier.flow import flow_stats
from flowproof.verifier.loss import Copy, State
from flowproof.verifier.model import FLOW_DUPLICATES, FLOW_LOST, FLOW_ORDER
from flowproof.verifier.outbox import outbox_stats
from flowproof.verifier.reading import SESSION_SETTINGS

FILL_OUTBOX = """
INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload, created_at)
SELECT 'order', 'agg-' || (g % 100000), 'orders.OrderPlaced', '{"n": 1}'::jsonb,
       now() - interval '50 minutes' + g * ($1::float8 / $2) * interval '1 ms'
FROM generate_series(1, $2) AS g
"""
# Where the relay put every event, published 4 ms (Redis) and 6 ms (Kafka) after it was
# created: its delivery records, appended in publication order. Then the relay's cursors pass
# every row (nothing pending).
FILL_DELIVERIES = """
INSERT INTO flowproof_outbox_deliveries (seq, sink, destination, partition, position,
                                         published_at)
SELECT * FROM (
    SELECT o.seq, 'redis', 'flowproof.order', NULL::integer,
           (extract(epoch FROM o.created_at + interval '4 ms') * 1000)::bigint
               || '-' || (o.seq % 7),
           o.created_at + interval '4 ms' AS published_at
    FROM flowproof_outbox o
    UNION ALL
    SELECT o.seq, 'kafka', 'flowproof.order', o.p,
           o.p || ':' || row_number() OVER (PARTITION BY o.p ORDER BY o.seq),
           o.created_at + interval '6 ms'
    FROM (SELECT *, abs(hashtext(aggregateid)) % 6 AS p FROM flowproof_outbox) o
) AS d
ORDER BY published_at
"""
CURSORS_PASSED = """
UPDATE flowproof_outbox_cursors
SET snap = pg_current_snapshot(), next_snap = NULL, next_seq = 0, last_seq = NULL
"""
FILL_REDIS = """
INSERT INTO flowproof_receipts (event_id, sink, consumer_group, consumer, source, position,
                                created_at, received_at, valid)
SELECT o.id, 'redis', 'flowproof', 'bench-1', 'flowproof.order', d.position,
       o.created_at, d.published_at + interval '3 ms', true
FROM flowproof_outbox o JOIN flowproof_outbox_deliveries d ON d.seq = o.seq AND d.sink = 'redis'
WHERE o.seq % 100000 <> 7          -- lost in Redis: the bench's stand-in for the stream says
                                   -- its entry is gone
"""
FILL_KAFKA = """
INSERT INTO flowproof_receipts (event_id, sink, consumer_group, consumer, source, position,
                                created_at, received_at, valid)
SELECT o.id, 'kafka', 'flowproof', 'bench-1', 'flowproof.order', d.position,
       o.created_at, d.published_at + interval '9 ms', true
FROM flowproof_outbox o JOIN flowproof_outbox_deliveries d ON d.seq = o.seq AND d.sink = 'kafka'
"""
DUPLICATE = """
INSERT INTO flowproof_receipts (event_id, sink, consumer_group, consumer, source, position,
                                created_at, received_at, valid, delivery_count)
SELECT event_id, sink, consumer_group, consumer, source, position, created_at,
       received_at + interval '1 s', valid, 2
FROM flowproof_receipts WHERE sink = 'kafka' AND receipt_id % 250000 = 3
"""

# The Redis delivery of one event moves before every earlier event of its aggregate.
REORDER = """
UPDATE flowproof_receipts SET position = '1-0'
WHERE sink = 'redis' AND event_id = (SELECT id FROM flowproof_outbox WHERE seq = $1 / 2)
""".replace("$1", "(SELECT max(seq) FROM flowproof_outbox)")


async def fill(conn: asyncpg.Connection, events: int, ratio: float, prefix: str) -> None:
    """Fill the outbox and receipts; `prefix` is the stream/topic prefix of the evaluation's
    settings (a receipt counts only from its event's destination, `<prefix>order`)."""
    span_ms = 50 * 60 * 1000 - 60_000  # the last minute stays empty: all judged
    started = time.monotonic()
    # The prefix only holds [A-Za-z0-9._-] (validate_name_prefix): safe in a literal.
    source = f"'{validate_name_prefix(prefix)}order'"
    await conn.execute(FILL_OUTBOX, float(span_ms), events)
    await conn.execute(CURSORS_PASSED)
    for sql in (FILL_DELIVERIES, FILL_REDIS, FILL_KAFKA):
        await conn.execute(sql.replace("'flowproof.order'", source))
    await conn.execute(DUPLICATE)
    await conn.execute(REORDER)
    if ratio < 1:  # consumers receipt only the sampled events
        await conn.execute(
            f"DELETE FROM flowproof_receipts WHERE NOT {sql_predicate('event_id', '$1')}",
            threshold(ratio),
        )
    await conn.execute("VACUUM ANALYZE")
    rows = await conn.fetchval("SELECT count(*) FROM flowproof_receipts")
    print(
        f"filled {events:,} outbox rows and {rows:,} receipts in {time.monotonic() - started:.1f}s"
    )


async def breakdown(settings: Settings) -> None:
    """Each query alone, one after the other, on a connection set up as the evaluator's."""
    conn = await asyncpg.connect(
        settings.database_url.get_secret_value(), server_settings=SESSION_SETTINGS
    )
    pool: Any = _OneConnection(conn)
    try:
        now = await conn.fetchval("SELECT clock_timestamp()")
        gone = {"positions": _Gone()}
        parts: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("flow redis", lambda: flow_stats(pool, settings, "redis", "flowproof", now, **gone)),
            ("flow kafka", lambda: flow_stats(pool, settings, "kafka", "flowproof", now, **gone)),
            ("outbox redis", lambda: outbox_stats(pool, settings, "redis", now)),
            ("conformance", lambda: receipt_stats(pool, settings, now)),
        ]
        for name, part in parts:
            started = time.monotonic()
            await part()
            print(f"  {name:<14} {time.monotonic() - started:.2f}s")
    finally:
        await conn.close()


class _Gone:
    """The positions of an event without a receipt, in a sink the bench does not run: gone."""

    async def classify(self, group: str, copies: Sequence[Copy]) -> list[State]:
        return [State.GONE] * len(copies)


class _OneConnection:
    """The pool methods the checks use, on one connection."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.fetchrow = conn.fetchrow
        self.fetch = conn.fetch
        self._conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self._conn


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--sample-ratio",
        type=float,
        default=1.0,
        help="FLOWPROOF_RECEIPT_SAMPLE_RATIO (receipts are still written for every event)",
    )
    args = parser.parse_args()
    configure_logging("warning", "console")
    server = os.environ.get("FLOWPROOF_DATABASE_URL")
    if not server:
        raise SystemExit("set FLOWPROOF_DATABASE_URL (set -a; . .devstack/env; set +a)")
    base, _, _ = server.rpartition("/")
    name = f"fp_bench_{uuid.uuid4().hex[:8]}"
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(f"{base}/{name}")
        try:
            await migrate(conn, "flowproof_outbox")
            await fill(conn, args.events, args.sample_ratio, prefix)
        finally:
            await conn.close()
        settings = Settings(
            database_url=f"{base}/{name}",  # type: ignore[arg-type]
            redis_url=os.environ.get("FLOWPROOF_REDIS_URL", "redis://127.0.0.1:6379/0"),  # type: ignore[arg-type]
            kafka_bootstrap_servers=os.environ.get(
                "FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"
            ),
            stream_prefix=prefix,
            topic_prefix=prefix,
            verify_timeout_seconds=600,
            receipt_sample_ratio=args.sample_ratio,
        )
        await breakdown(settings)
        async with Evaluator(settings) as evaluator:
            times = []
            for run in range(1, args.runs + 1):
                started = time.monotonic()
                report = await evaluator.evaluate()
                times.append(time.monotonic() - started)
                counts = {
                    name: report.check(name).value
                    for name in (FLOW_LOST, FLOW_DUPLICATES, FLOW_ORDER)
                }
                print(f"evaluation {run}: {times[-1]:.2f}s  {counts}")
        median = statistics.median(times)
        print(
            f"one evaluation over {args.events:,} outbox rows (sample ratio {args.sample_ratio}): "
            f"median {median:.2f}s, min {min(times):.2f}s, max {max(times):.2f}s "
            f"({args.runs} runs)"
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
