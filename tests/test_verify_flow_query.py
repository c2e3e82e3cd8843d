"""The flow query's cheaper forms compute exactly what the plain ones did, in real PostgreSQL:
the sampling choice as one uuid comparison, and latencies in float8 without numeric."""

from __future__ import annotations

import uuid

import asyncpg

from flowproof.core.sampling import is_sampled, sql_predicate, threshold
from flowproof.verifier.flow import sampled_below

RATIOS = (1e-10, 0.1, 0.25, 0.5, 0.999, 1 - 2**-34, 1.0)


def _edge_ids() -> list[uuid.UUID]:
    """Ids on both sides of each ratio's threshold, and the extremes."""
    ids = [uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]
    for ratio in RATIOS:
        limit = min(threshold(ratio), 2**32 - 1)
        for first in (limit - 1, limit, limit + 1):
            if 0 <= first < 2**32:
                ids += [uuid.UUID(int=first << 96), uuid.UUID(int=(first << 96) | (2**96 - 1))]
    return ids


async def test_the_uuid_bound_samples_the_same_events_as_python_and_sql(
    database_url: str,
) -> None:
    ids = [uuid.uuid4() for _ in range(5000)] + _edge_ids()
    conn = await asyncpg.connect(database_url)
    try:
        for ratio in RATIOS:
            rows = await conn.fetch(
                "SELECT id, ($2::uuid IS NULL OR id < $2::uuid) AS by_bound, "
                f"($3 >= 4294967296 OR {sql_predicate('id', '$3')}) AS by_text "
                "FROM unnest($1::uuid[]) AS t(id)",
                ids,
                sampled_below(ratio),
                threshold(ratio),
            )
            by_bound = {row["id"] for row in rows if row["by_bound"]}
            assert by_bound == {row["id"] for row in rows if row["by_text"]}, ratio
            assert by_bound == {i for i in ids if is_sampled(i, ratio)}, ratio
    finally:
        await conn.close()
    assert sampled_below(1.0) is None
    assert sampled_below(0.5) == uuid.UUID("80000000-0000-0000-0000-000000000000")


async def test_date_part_equals_extract_for_latencies_under_a_day(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            """
            WITH pairs AS (
                SELECT t, t + (random() * 2 - 1) * interval '86399.999999 s' AS later
                FROM (SELECT now() - random() * interval '400 days' AS t
                      FROM generate_series(1, 200000)) s
            )
            SELECT count(*) AS pairs,
                   count(*) FILTER (WHERE later - t < interval '1 day'
                                    AND later - t > interval '-1 day') AS under_a_day,
                   count(*) FILTER (WHERE date_part('epoch', later - t)
                                    IS DISTINCT FROM extract(epoch FROM later - t)::float8)
                       AS different
            FROM pairs
            """
        )
    finally:
        await conn.close()
    assert row is not None
    assert row["pairs"] == row["under_a_day"] == 200000
    assert row["different"] == 0
