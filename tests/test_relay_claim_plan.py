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
from flowproof.core.sqltext import text_array
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
    explained, seqs = await claim_explained(conn, sink)
    return [e["Plan"] for e in explained], seqs


async def claim_explained(conn: asyncpg.Connection, sink: str) -> tuple[list[Any], list[int]]:
    """What auto_explain says of each statement one claim of every slot runs (its plan, and
    its "JIT" when the server compiled it), and the seqs the claim returns."""
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
    explained = []
    for message in messages:
        _, _, text = message.partition("plan:")
        if text.strip():
            explained.append(json.loads(text))
    return explained, [r["seq"] for r in rows]


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


@pytest.mark.parametrize("sink", SINK_NAMES)
async def test_claim_never_jit_compiles(database_url: str, sink: str) -> None:
    """Migration 0090: the claim's `enable_sort = off` puts a 10^10 penalty on any plan with a
    sort, which the claim of empty rounds still gets (a one-time-false walk under a sort). Such
    an estimate is far above `jit_above_cost`, and the server compiled the statement: about
    200 ms of CPU per claim, and a spike in the relay's latency. The claim runs without JIT
    whatever the session says; the control shows the same session compiles such a plan."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET jit = on")
        control: list[str] = []

        def collect(_conn: object, message: Any) -> None:
            control.append(message.message)

        conn.add_log_listener(collect)
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; "
            "SET auto_explain.log_format = json; SET client_min_messages = log; "
            "SET enable_sort = off"
        )
        await conn.fetch("SELECT g FROM generate_series(1, 10) AS g ORDER BY g DESC")
        await conn.execute(
            "RESET enable_sort; RESET client_min_messages; SET auto_explain.log_min_duration = -1"
        )
        conn.remove_log_listener(collect)
        assert any('"JIT"' in m for m in control), (
            "the control statement was not JIT-compiled: is this PostgreSQL built with LLVM "
            f"(llvmjit.so)? {control}"
        )
        for rows in (0, 5):  # empty rounds, then a round with rows
            if rows:
                await conn.execute(
                    "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
                    "SELECT 'order', 'o-' || g, 'OrderPlaced', '{}' "
                    "FROM generate_series(1, $1::int) AS g",
                    rows,
                )
            explained, seqs = await claim_explained(conn, sink)
            assert len(seqs) == rows
            assert len(explained) > 1, "auto_explain reported none of the claim's statements"
            compiled = [e for e in explained if "JIT" in e]
            assert not compiled, json.dumps(compiled, indent=1)
    finally:
        await conn.close()


async def test_claim_planned_over_an_empty_outbox_still_uses_indexes_after_it_grew(
    database_url: str,
) -> None:
    """Migration 0090: the claim keeps one generic plan per session, and it never scans a table.
    Before, a plan made over a nearly empty outbox read the whole outbox on every claim until an
    ANALYZE replaced it: 0.6 ms a claim at first, 14.6 ms after 170,000 rows."""
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch(
            "SELECT c.oid::regclass::text AS name FROM pg_class AS c "
            "WHERE c.relkind = 'r' AND c.relname LIKE 'flowproof_outbox%'"
        )
        for table in tables:  # no ANALYZE may come and replace the plan
            await conn.execute(f"ALTER TABLE {table['name']} SET (autovacuum_enabled = false)")
        claim, record = (query(name, "flowproof_outbox", "redis") for name in ("claim", "record"))

        async def publish(rows: int) -> None:
            await conn.execute(
                "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
                "SELECT 'order', 'o-' || g, 'OrderPlaced', '{}' "
                "FROM generate_series(1, $1::int) AS g",
                rows,
            )
            while batch := await conn.fetch(claim, ALL_SLOTS, 1000, 0, 0, True):
                seqs = [r["seq"] for r in batch]
                done = len(seqs) < 1000
                await conn.execute(
                    record, seqs, text_array(["flowproof.order"] * len(seqs)), [None] * len(seqs),
                    text_array([f"1-{n}" for n in range(len(seqs))]),
                    [], [], [], [], [], [], [], [], ALL_SLOTS, seqs[-1], done, False,
                )  # fmt: skip
                if done:
                    break

        for _ in range(8):  # the session's plans are made over an almost empty outbox
            await publish(5)
        await publish(20_000)
        await conn.execute(
            "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
            "VALUES ('order', 'o-last', 'OrderPlaced', '{}')"
        )
        plans, seqs = await claim_plans(conn, "redis")
        assert len(seqs) == 1
        scanned = {
            n["Relation Name"]
            for plan in plans
            for n in _nodes(plan)
            if n["Node Type"] == "Seq Scan" and n.get("Relation Name", "").startswith("flowproof")
        }
        assert not scanned, json.dumps(plans, indent=1)
    finally:
        await conn.close()
