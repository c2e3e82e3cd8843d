"""What the relay's record of a batch costs PostgreSQL (needs `make stack-up`, PostgreSQL local).

    .venv/bin/python -m bench.record [--batches 6,500] [--statements 2000]

Runs the relay's own record statement (publisher/sql/queries.sql, `record`) in a scratch
database, over and over, for batches of each size: the delivery records of a batch, nothing set
aside, no cursor to move (what a sink worker writes after each batch). The time is the CPU of the
PostgreSQL backend that ran them, read from /proc (so the server must run on this machine, as the
devstack's does): the client's encoding and the round trips are not in it. Prints, per batch
size, PostgreSQL's microseconds per statement and per delivery record, the best of three loops.
The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.procs import cpu_seconds
from bench.scratch import OUTBOX, Scratch, Services
from flowproof.core.sqltext import text_array
from flowproof.publisher.queries import query
from flowproof.publisher.slots import SLOTS

LOOPS = 3


def is_local_backend(pid: int) -> bool:
    """Whether PostgreSQL's backend `pid` is a process of this machine."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    return cmdline.exists() and b"postgres" in cmdline.read_bytes()


def record_arguments(batch: int, first_seq: int) -> tuple[object, ...]:
    """The record statement's parameters for `batch` Redis deliveries and nothing else."""
    seqs = list(range(first_seq, first_seq + batch))
    positions = [f"{1_764_000_000_000 + seq}-0" for seq in seqs]
    nothing_aside: tuple[list[object], ...] = ([], [], [], [], [], [], [])
    return (
        seqs,
        text_array(["flowproof.order"] * batch),
        [None] * batch,
        text_array(positions),
        *nothing_aside,
        [],  # no queued row taken
        list(range(SLOTS)),  # the owned slots: none has a round, no cursor moves
        seqs[-1],
        True,
        False,
    )


async def measure(batches: Sequence[int], statements: int) -> dict[int, list[float]]:
    """PostgreSQL's CPU microseconds per statement, per batch size, for each loop."""
    scratch = await Scratch(Services.from_env(), "record").create()
    found: dict[int, list[float]] = {}
    try:
        conn = await scratch.connect()
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            if not is_local_backend(pid):
                sys.exit(f"bench.record: PostgreSQL's backend {pid} is not on this machine")
            record = query("record", OUTBOX, "redis")
            seq = 1
            for batch in batches:
                count = max(200, statements * 6 // batch)
                for _ in range(20):  # prepared, planned and cached before the timing
                    await conn.execute(record, *record_arguments(batch, seq))
                    seq += batch
                found[batch] = []
                for _ in range(LOOPS):
                    arguments = [record_arguments(batch, seq + i * batch) for i in range(count)]
                    seq += count * batch
                    started = cpu_seconds(pid)
                    for args in arguments:
                        await conn.execute(record, *args)
                    found[batch].append((cpu_seconds(pid) - started) / count * 1e6)
        finally:
            await conn.close()
    finally:
        await scratch.close()
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.record", description=__doc__)
    parser.add_argument(
        "--batches",
        default="6,500",
        help="delivery records per batch, comma-separated (6: about what a batch holds at "
        "1,000 events/s; 500: the relay's default batch size)",
    )
    parser.add_argument(
        "--statements",
        type=int,
        default=2000,
        help="statements per loop for a batch of 6 (fewer for larger batches)",
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    for batch, loops in asyncio.run(measure(batches, args.statements)).items():
        best = min(loops)
        each = ", ".join(f"{v:.0f}" for v in loops)
        print(
            f"record of {batch} delivery records: {best:.0f} µs of PostgreSQL per statement, "
            f"{best / batch:.2f} µs per record (loops: {each})"
        )


if __name__ == "__main__":
    main()
