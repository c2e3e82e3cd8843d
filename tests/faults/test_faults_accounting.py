"""The fault table's accounting counts what it claims to: on receipts made to hold exactly one
lost, known duplicates and known reorderings, its numbers are those, and the verifier's equal
them (`disagreements` is empty). Without this, a table of zeros would prove nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from flowproof.core.config import Settings
from flowproof.verifier.commands import check_once
from tests.faults.accounting import account, disagreements, first_missing

GROUP = "g-accounting"

# Every sink's cursors pass the rows committed so far, as the relay's would once it published
# them (these tests record no delivery for them).
CURSORS_PASSED = (
    "UPDATE flowproof_outbox_cursors "
    "SET snap = pg_current_snapshot(), next_snap = NULL, next_seq = 0, last_seq = NULL"
)


async def _receipt(
    conn: asyncpg.Connection,
    event_id: object,
    sink: str,
    position: str,
    *,
    valid: bool = True,
    source: str = "orders",
) -> None:
    await conn.execute(
        """INSERT INTO flowproof_receipts (event_id, sink, consumer_group, consumer, source,
               position, created_at, received_at, valid, reason)
           VALUES ($1, $2, $3, 'c', $7, $4, now(), now(), $5, $6)""",
        event_id,
        sink,
        GROUP,
        position,
        valid,
        None if valid else "corrupt_avro",
        source,
    )


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url, server_settings={"enable_nestloop": "off"})
    yield connection
    await connection.close()


async def test_accounting_counts_lost_duplicated_and_reordered_events(
    conn: asyncpg.Connection, settings: Settings
) -> None:
    # Two aggregates, three events each (seq order a1 a2 a3, b1 b2 b3), all published.
    await conn.execute(
        """INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload)
           SELECT 'orders', a, 'orders.OrderPlaced', '{}'
           FROM unnest(ARRAY['a', 'a', 'a', 'b', 'b', 'b']) AS a"""
    )
    await conn.execute(CURSORS_PASSED)
    rows = await conn.fetch("SELECT id, seq FROM flowproof_outbox ORDER BY seq")
    a1, a2, a3, b1, b2, b3 = (r["id"] for r in rows)
    seqs = [r["seq"] for r in rows]
    # The stream and topic of the events: only a receipt from there counts as a delivery.
    assert settings.stream_prefix == settings.topic_prefix
    home = f"{settings.stream_prefix}orders"
    # Where the relay put each event (its delivery records): b3 went to a Redis entry that is
    # not there (the stream is not), the others where their first receipt below says.
    placed = {
        "redis": ["100-0", "100-1", "101-0", "103-0", "102-0", "105-0"],
        "kafka": ["0:7", "0:8", "0:9", "2:3", "2:5", "2:4"],
    }
    for sink, positions in placed.items():
        for seq, position in zip(seqs, positions, strict=True):
            await conn.execute(
                """INSERT INTO flowproof_outbox_deliveries
                       (seq, sink, destination, partition, position)
                   VALUES ($1, $2, $3, $4, $5)""",
                seq,
                sink,
                home,
                int(position.split(":")[0]) if sink == "kafka" else None,
                position,
            )
    # Redis: a1 a2 a3 in order; b2 before b1 (one reordered); b3 lost; a2 redelivered at the
    # same position, a3 published twice (a second position).
    for event, position in ((a1, "100-0"), (a2, "100-1"), (a3, "101-0"), (b2, "102-0")):
        await _receipt(conn, event, "redis", position, source=home)
    await _receipt(conn, b1, "redis", "103-0", source=home)
    await _receipt(conn, a2, "redis", "100-1", source=home)
    await _receipt(conn, a3, "redis", "104-5", source=home)
    # Kafka: a in partition 0 in order; b in partition 2 with b3 before b2 (one reordered); a1
    # only received as invalid (lost: no valid receipt), so a2 and a3 follow nothing there.
    await _receipt(conn, a1, "kafka", "0:7", valid=False, source=home)
    for event, position in ((a2, "0:8"), (a3, "0:9"), (b1, "2:3"), (b3, "2:4"), (b2, "2:5")):
        await _receipt(conn, event, "kafka", position, source=home)

    redis = await account(conn, "redis", GROUP)
    kafka = await account(conn, "kafka", GROUP)
    assert (redis.events, redis.lost, redis.duplicated, redis.published_twice) == (6, 1, 2, 1)
    assert (redis.reordered, redis.split, redis.invalid, redis.unexpected) == (1, 0, 0, 0)
    assert redis.lost_examples == (str(b3),)
    assert (kafka.lost, kafka.duplicated, kafka.reordered, kafka.invalid) == (1, 0, 1, 1)
    assert kafka.lost_examples == (str(a1),)
    both = [("redis", GROUP), ("kafka", GROUP)]
    assert await first_missing(conn, 0, seqs[-1], both) == seqs[0]  # a1: no valid Kafka receipt
    assert await first_missing(conn, seqs[0], seqs[4], both) is None
    assert await first_missing(conn, seqs[0], seqs[5], [("redis", GROUP)]) == seqs[5]  # b3

    report = await check_once(
        settings.model_copy(
            update={
                "consumer_group": GROUP,
                "flow_lost_grace_seconds": 0.0,
                "flow_duplicates_grace_seconds": 0.0,
                "flow_order_grace_seconds": 0.0,
            }
        )
    )
    # The verifier's "lost" is "no receipt at all": Kafka's a1 has an invalid one. Every other
    # number is the accounting's.
    problems = disagreements(report, [redis, kafka])
    assert problems == ["kafka/g-accounting lost: verifier 0, accounting 1"]


async def test_accounting_counts_split_unexpected_and_unpublished_events(
    conn: asyncpg.Connection,
) -> None:
    # Aggregate c: two published events; d: one event the relay never published.
    await conn.execute(
        """INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload)
           VALUES ('orders', 'c', 'orders.OrderPlaced', '{}'),
                  ('orders', 'c', 'orders.OrderPlaced', '{}')"""
    )
    await conn.execute(CURSORS_PASSED)
    await conn.execute(
        """INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload)
           VALUES ('orders', 'd', 'orders.OrderPlaced', '{}')"""
    )
    c1, c2, _ = (r["id"] for r in await conn.fetch("SELECT id FROM flowproof_outbox ORDER BY seq"))
    # c's events landed in two lanes (two streams; two partitions of one topic): one split
    # aggregate in each sink. And one receipt of an event id the outbox never had.
    await _receipt(conn, c1, "redis", "100-0")
    await _receipt(conn, c2, "redis", "100-0", source="orders.other")
    await _receipt(conn, c1, "kafka", "0:1")
    await _receipt(conn, c2, "kafka", "1:1")
    stranger = uuid.uuid4()
    await _receipt(conn, stranger, "redis", "101-0")
    await _receipt(conn, stranger, "kafka", "0:2")

    for sink in ("redis", "kafka"):
        acc = await account(conn, sink, GROUP)
        counted = {
            name: getattr(acc, name)
            for name in ("events", "unpublished", "lost", "lost_published", "split", "unexpected")
        }
        expected = {"events": 3, "unpublished": 1, "lost": 1, "lost_published": 0}
        assert counted == {**expected, "split": 1, "unexpected": 1}, sink
        assert (acc.duplicated, acc.reordered, acc.invalid) == (0, 0, 0), acc
