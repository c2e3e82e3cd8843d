"""Receipt sampling agrees between Python and SQL."""

from __future__ import annotations

import uuid

import asyncpg

from flowproof.core.sampling import is_sampled, sql_predicate, threshold


async def test_python_and_sql_choose_the_same_events(database_url: str) -> None:
    ids = [uuid.uuid4() for _ in range(2000)]
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            f"SELECT id FROM unnest($1::uuid[]) AS t(id) WHERE {sql_predicate('id', '$2')}",
            ids,
            threshold(0.25),
        )
    finally:
        await conn.close()
    in_sql = {row["id"] for row in rows}
    in_python = {i for i in ids if is_sampled(i, 0.25)}
    assert in_sql == in_python
    assert 350 < len(in_python) < 650  # about a quarter of 2000


def test_ratio_one_samples_everything() -> None:
    assert all(is_sampled(uuid.uuid4(), 1.0) for _ in range(100))
    assert threshold(1.0) == 2**32
