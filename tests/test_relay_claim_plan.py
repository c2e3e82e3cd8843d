"""The relay's claim walks the outbox in seq order and stops at the batch, even in a backlog.

A round of a cursor (the `<outbox>_claim` function, migrations 0060 and 0080) may span a large
backlog: a table filled before the relay first ran, or an outage. Sorting the round on every
claim would cost the whole round per batch; the claim must walk the primary key from where the
round stands and stop after a batch: in each time partition (migration 0070), merged in seq order.
This checks the plan PostgreSQL really chooses inside the function, on a real server: auto_explain
logs the plan of each statement the function runs, and the log comes back to this session as a
message. Two backlogs: a round published up to 40,000 of 200,000 rows, and a round that has only
begun over 100,000 rows, planned with `random_page_cost` 10 (a setting some servers have). Before
migration 0080 the second chose to read and sort the whole round on every claim (0.9 s a claim):
the plan hung on estimates, and a backlog drained in quadratic time.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from flowproof.core.sinks import SINK_NAMES
from flowproof.publisher.queries import query

# Rows, how far the round has published, the server's random_page_cost.
BACKLOGS = [(200_000, 40_000, 4.0), (100_000, 0, 10.0)]
ALL_SLOTS = list(range(64))


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a plan tree."""
    found = [plan]
    for child in plan.get("Plans", []):
        found.extend(_nodes(child))
    return found


async def claim_plans(conn: asyncpg.Connection, sink: str) -> tuple[list[Any], list[int]]:
    """The plans of the statements one claim of every slot runs, and the seqs it claims."""
    messages: list[str] = []
    conn.add_log_listener(lambda _conn, message: messages.append(message.message))
    await conn.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
        "SET auto_explain.log_nested_statements = on; SET auto_explain.log_format = json; "
        "SET client_min_messages = log"
    )
    try:
        rows = await conn.fetch(
            query("claim", "flowproof_outbox", sink), ALL_SLOTS, 500, 0, 0, True
        )
    finally:
        await conn.execute("RESET client_min_messages; SET auto_explain.log_min_duration = -1")
    plans = []
    for message in messages:
        _, _, text = message.partition("plan:")
        if text.strip():
            plans.append(json.loads(text)["Plan"])
    return plans, [r["seq"] for r in rows]


@pytest.mark.parametrize(("rows", "published", "random_page_cost"), BACKLOGS)
@pytest.mark.parametrize("sink", SINK_NAMES)
async def test_claim_walks_the_primary_key_over_a_backlog(
    database_url: str, sink: str, rows: int, published: int, random_page_cost: float
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
            "SELECT 'order', 'o-' || (g % 5000), 'OrderPlaced', "
            "jsonb_build_object('order_id', g, 'note', repeat('x', 100)) "
            "FROM generate_series(1, $1::int) AS g",
            rows,
        )
        await conn.execute("VACUUM ANALYZE")
        # One round over the whole backlog (the first claim begins it), published up to
        # `published`.
        first = await conn.fetch(query("claim", "flowproof_outbox", sink), ALL_SLOTS, 1, 0, 0, True)
        assert [r["seq"] for r in first] == [1]
        await conn.execute(
            f"UPDATE flowproof_outbox_cursors SET next_seq = {published} "
            "WHERE sink = $1 AND next_snap IS NOT NULL",
            sink,
        )
        partitions = {
            r["part"]
            for r in await conn.fetch(
                "SELECT part::text FROM flowproof_partitions('flowproof_outbox')"
            )
        }
        assert len(partitions) >= 4, partitions  # today's, two days ahead, the default
        await conn.execute(f"SET random_page_cost = {random_page_cost}")
        plans, seqs = await claim_plans(conn, sink)
        assert seqs == list(range(published + 1, published + 501))
        # The statement that returned the rows: the one that walks the outbox under a Limit.
        claims = [
            p
            for p in plans
            if p["Node Type"] == "Limit"
            and any(n.get("Relation Name", "") in partitions for n in _nodes(p))
        ]
        assert len(claims) == 2, json.dumps(plans, indent=1)  # the queue's, then the rounds'
        plan = claims[-1]
        # Each time partition (migration 0070) walked by its primary key, merged in seq order.
        walks = {
            n["Relation Name"]: (n["Node Type"], n.get("Index Name"))
            for n in _nodes(plan)
            if n.get("Relation Name") in partitions
        }
        assert walks == {p: ("Index Scan", f"{p}_pkey") for p in partitions}, json.dumps(plan)
        assert [n for n in _nodes(plan) if n["Node Type"] == "Merge Append"], json.dumps(plan)
        assert not [n for n in _nodes(plan) if n["Node Type"] == "Sort"], json.dumps(plan)
    finally:
        await conn.close()
