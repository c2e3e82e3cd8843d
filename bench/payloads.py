"""The benchmark's payloads: order events of `flowproof.workload`, generated once per run.

Every benchmark of a run uses these same events: the raw limits send their encoded messages
(exactly what the relay sends for them), the relay publishes them from the outbox, the latency
runs insert them. A large outbox is filled server-side by repeating the generated pool with
fresh aggregate ids (`INSERT ... SELECT` from `unnest`), which keeps each order's event sequence.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import asyncpg

from flowproof.publisher.encoding import Encoder
from flowproof.publisher.rows import Message, OutboxRow
from flowproof.schemas.registry import SchemaRegistry
from flowproof.workload import OrderWorkload

INSERT_ROWS = """
INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[])
"""

# Repeats the pool `$5` times, each time with new aggregate ids (suffix .<repetition>), in
# repetition then pool order: every order keeps its placed -> paid -> shipped sequence.
FILL_REPEATED = """
INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload)
SELECT p.aggregatetype, p.aggregateid || '.' || r, p.type, p.payload
FROM generate_series(1, $5::int) AS r,
     unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) WITH ORDINALITY
         AS p (aggregatetype, aggregateid, type, payload, n)
ORDER BY r, p.n
"""


@dataclass(frozen=True, slots=True)
class Row:
    """One outbox row to insert: the event columns, payload as JSON text."""

    aggregatetype: str
    aggregateid: str
    type: str
    payload: str


@dataclass(frozen=True)
class Pool:
    """A generated sequence of events and what their messages look like."""

    rows: list[Row]

    @classmethod
    def generate(cls, count: int, *, seed: int = 6, prefix: str = "o") -> Pool:
        workload = OrderWorkload(seed=seed, orders=500, prefix=prefix)
        rows = [
            Row(s.aggregate_type, s.aggregate_id, s.type, json.dumps(s.payload))
            for s in workload.take(count)
        ]
        return cls(rows)

    def columns(self, rows: Sequence[Row] | None = None) -> tuple[list[str], ...]:
        rows = self.rows if rows is None else rows
        return (
            [r.aggregatetype for r in rows],
            [r.aggregateid for r in rows],
            [r.type for r in rows],
            [r.payload for r in rows],
        )

    def cycle(self) -> Iterator[Row]:
        """The rows over and over, each round with new aggregate ids (order kept per aggregate)."""
        round_ = 0
        while True:
            round_ += 1
            for row in self.rows:
                yield Row(row.aggregatetype, f"{row.aggregateid}.c{round_}", row.type, row.payload)

    def messages(self, registry: SchemaRegistry, prefix: str, count: int) -> list[Message]:
        """The relay's messages (same encoder) for the first `count` rows, cycled if needed."""
        encoder = Encoder(registry, prefix, 1_000_000)
        now = dt.datetime.now(dt.UTC)
        found: list[Message] = []
        for seq, row in enumerate(self.cycle(), start=1):
            if seq > count:
                break
            found.append(
                encoder.encode(
                    OutboxRow(
                        seq=seq,
                        id=uuid.uuid4(),
                        aggregatetype=row.aggregatetype,
                        aggregateid=row.aggregateid,
                        type=row.type,
                        payload=row.payload,
                        headers=None,
                        created_at=now,
                    )
                )
            )
        return found

    def describe(self, registry: SchemaRegistry) -> dict[str, float]:
        """Sizes of the payloads: JSON in the outbox, Avro (framed) and the whole message."""
        sample = self.messages(registry, "bench.", min(len(self.rows), 5000))
        return {
            "events_generated": len(self.rows),
            "payload_json_bytes_mean": round(
                statistics.fmean(len(r.payload) for r in self.rows[: len(sample)]), 1
            ),
            "avro_framed_bytes_mean": round(statistics.fmean(len(m.value) for m in sample), 1),
            "message_bytes_mean": round(statistics.fmean(m.size for m in sample), 1),
        }


async def fill_outbox(conn: asyncpg.Connection, pool: Pool, total: int) -> float:
    """Insert about `total` rows (whole repetitions of the pool); return the seconds it took."""
    repetitions = max(1, round(total / len(pool.rows)))
    started = time.monotonic()
    await conn.execute(FILL_REPEATED, *pool.columns(), repetitions)
    await conn.execute("VACUUM ANALYZE flowproof_outbox")
    return time.monotonic() - started
