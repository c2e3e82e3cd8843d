"""What the relay's claim costs PostgreSQL per row, over a backlog (needs `make stack-up`).

    .venv/bin/python -m bench.claim [--rows 200000] [--claims 300] [--batch 500]

Fills a scratch database with the benchmark's order events, begins one round of every slot for
one sink, then times `--claims` claims of `--batch` rows, each past the one before (what a sink
worker does while a batch is in flight), inside one server-side loop so that only PostgreSQL's
work is timed: no round trip, no decoding in Python. Prints the microseconds per claimed row, the
best of three loops. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from bench.payloads import Pool, fill_outbox
from bench.scratch import OUTBOX, Scratch, Services
from flowproof.core.sqltext import render
from flowproof.publisher.slots import SLOTS

# Claims `claims` batches of `batch` rows of the round, each past the last, and returns the
# server's seconds and the rows claimed. `flowproof_outbox_claim` is what the relay's claim calls.
LOOP = """
CREATE FUNCTION pg_temp.claim_loop(slots smallint[], claims integer, batch integer,
                                   OUT seconds float8, OUT claimed bigint)
LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz := clock_timestamp();
    past bigint := 0;
    got bigint;
BEGIN
    claimed := 0;
    FOR i IN 1..claims LOOP
        SELECT count(*), max(c.seq) INTO got, past
        FROM {{outbox}}_claim('redis', slots, batch, 0, past, false) AS c;
        EXIT WHEN got = 0;
        claimed := claimed + got;
    END LOOP;
    seconds := extract(epoch FROM clock_timestamp() - started);
END
$$;
"""


async def measure(rows: int, claims: int, batch: int) -> list[float]:
    """Microseconds of PostgreSQL per claimed row, for three loops over the same round."""
    scratch = await Scratch(Services.from_env(), "claim").create()
    try:
        conn = await scratch.connect()
        try:
            await fill_outbox(conn, Pool.generate(min(rows, 30_000)), rows)
            await conn.execute(render(LOOP, OUTBOX))
            slots = list(range(SLOTS))
            # Begins the round of every slot.
            await conn.fetch(f"SELECT * FROM {OUTBOX}_claim('redis', $1, 1, 0, 0, true)", slots)
            found = []
            for _ in range(3):
                seconds, claimed = await conn.fetchrow(
                    "SELECT * FROM pg_temp.claim_loop($1, $2, $3)", slots, claims, batch
                )
                found.append(seconds / claimed * 1e6)
            return found
        finally:
            await conn.close()
    finally:
        await scratch.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.claim", description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000, help="rows in the backlog")
    parser.add_argument("--claims", type=int, default=300, help="claims per loop")
    parser.add_argument("--batch", type=int, default=500, help="rows per claim")
    args = parser.parse_args(argv)
    loops = asyncio.run(measure(args.rows, args.claims, args.batch))
    print(
        f"claim over a backlog of {args.rows:,} rows, {args.claims} claims of {args.batch}: "
        f"{min(loops):.2f} µs of PostgreSQL per row (loops: "
        + ", ".join(f"{v:.2f}" for v in loops)
        + ")"
    )


if __name__ == "__main__":
    main()
