"""The relay's claim walks the outbox in seq order and stops at the batch, even in a backlog.

A round of a cursor (publisher/sql/queries.sql) may span a large backlog: a table filled before
the relay first ran, or an outage. Sorting the round on every claim would cost the whole round
per batch; the claim must walk the primary key from where the round stands and stop after a
batch. This checks the plan PostgreSQL really chooses, on a real server.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from flowproof.core.sinks import SINK_NAMES
from flowproof.publisher.queries import query

ROWS = 200_000
PUBLISHED = 40_000
ALL_SLOTS = list(range(64))


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a plan tree."""
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(_nodes(child))
    return found


@pytest.mark.parametrize("sink", SINK_NAMES)
async def test_claim_walks_the_primary_key_over_a_backlog(database_url: str, sink: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
            "SELECT 'order', 'o-' || (g % 5000), 'OrderPlaced', "
            "jsonb_build_object('order_id', g, 'note', repeat('x', 100)) "
            "FROM generate_series(1, $1::int) AS g",
            ROWS,
        )
        await conn.execute("ANALYZE flowproof_outbox")
        # One round over the whole backlog, published up to PUBLISHED.
        await conn.execute(query("begin_round", "flowproof_outbox", sink), ALL_SLOTS)
        await conn.execute(query("advance", "flowproof_outbox", sink), ALL_SLOTS, PUBLISHED, False)
        raw = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + query("claim", "flowproof_outbox", sink), ALL_SLOTS, 500, 0
        )
        plan = json.loads(raw)[0]["Plan"]
        walks = [
            (n["Node Type"], n.get("Index Name")) for n in _nodes(plan) if n.get("Alias") == "o"
        ]
        assert walks == [("Index Scan", "flowproof_outbox_pkey")], json.dumps(plan, indent=1)
        assert not [n for n in _nodes(plan) if n["Node Type"] == "Sort"], json.dumps(plan)
        rows = await conn.fetch(query("claim", "flowproof_outbox", sink), ALL_SLOTS, 500, 0)
        assert [r["seq"] for r in rows] == list(range(PUBLISHED + 1, PUBLISHED + 501))
    finally:
        await conn.close()
