"""The relay's claim reads pending rows through the sink's pending index, even in a backlog.

With most of the table pending the statistics rate the primary key and the pending index as
equally selective; when the planner took the key, every claim walked each row already published
(migration 0030). This checks the plan PostgreSQL really chooses, on a real server.
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


def _index_scans(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """(alias, index) of every index scan in a plan tree."""
    found = []
    if "Index Name" in plan:
        found.append((plan.get("Alias", ""), plan["Index Name"]))
    for child in plan.get("Plans", []):
        found.extend(_index_scans(child))
    return found


@pytest.mark.parametrize("sink", SINK_NAMES)
async def test_claim_uses_the_pending_index_over_a_backlog(database_url: str, sink: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
            "SELECT 'order', 'o-' || (g % 5000), 'OrderPlaced', "
            "jsonb_build_object('order_id', g, 'note', repeat('x', 100)) "
            "FROM generate_series(1, $1::int) AS g",
            ROWS,
        )
        await conn.execute("ANALYZE flowproof_outbox")  # statistics: every row pending
        await conn.execute(
            f"UPDATE flowproof_outbox SET {sink}_published_at = now() WHERE seq <= $1", PUBLISHED
        )
        raw = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + query("claim", "flowproof_outbox", sink), ALL_SLOTS, 500
        )
        plan = json.loads(raw)[0]["Plan"]
        claimed = [index for alias, index in _index_scans(plan) if alias == "o"]
        assert claimed == [f"flowproof_outbox_{sink}_pending"], json.dumps(plan, indent=1)
        rows = await conn.fetch(query("claim", "flowproof_outbox", sink), ALL_SLOTS, 500)
        assert [r["seq"] for r in rows] == list(range(PUBLISHED + 1, PUBLISHED + 501))
    finally:
        await conn.close()
