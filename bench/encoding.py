"""What encoding a row costs the relay, stage by stage, in one process (no services needed).

    .venv/bin/python -m bench.encoding [--rows 20000] [--repeat 5]

Encodes the benchmark's order events (`bench.payloads.Pool`, the relay's exact rows) the way a
sink worker does, and prints the CPU time per row of each stage: parsing the payload's JSON,
checking and converting it against its schema, building the envelope, writing the framed Avro,
and the whole `encode_row` (the sum, plus the glue). The best of `--repeat` runs is printed, as
microseconds per row; compare runs of the same machine only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bench.payloads import Pool
from flowproof.publisher.encoding import encode_row, envelope_fields
from flowproof.publisher.rows import OutboxRow
from flowproof.schemas import framing
from flowproof.schemas.ids import SchemaIds
from flowproof.schemas.registry import SchemaRegistry


def _rows(count: int) -> list[OutboxRow]:
    now = dt.datetime.now(dt.UTC)
    pool = Pool.generate(count)
    return [
        OutboxRow(seq, uuid.uuid4(), r.aggregatetype, r.aggregateid, r.type, r.payload, None, now)
        for seq, r in enumerate(pool.rows, start=1)
    ]


def _best(stage: Callable[[], object], rows: int, repeat: int) -> float:
    """The fastest of `repeat` runs of `stage`, in microseconds of CPU per row."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        stage()
        best = min(best, time.process_time() - started)
    return best / rows * 1e6


def measure(count: int, repeat: int) -> list[tuple[str, float]]:
    registry = SchemaRegistry.load()
    ids = SchemaIds(registry)
    rows = _rows(count)
    schemas = [registry.latest(r.type) for r in rows]
    payloads: list[Any] = [json.loads(r.payload) for r in rows]
    data = [s.validate(p) for s, p in zip(schemas, payloads, strict=True)]
    schema_ids = [ids.writer_id(r.aggregatetype, s) for r, s in zip(rows, schemas, strict=True)]

    def parse() -> None:
        for r in rows:
            json.loads(r.payload)

    def check() -> None:
        for s, p in zip(schemas, payloads, strict=True):
            s.validate(p)

    def envelope() -> None:
        for r in rows:
            envelope_fields(
                event_id=r.id,
                event_type=r.type,
                aggregatetype=r.aggregatetype,
                aggregateid=r.aggregateid,
                created_at=r.created_at,
                headers=None,
            )

    def write() -> None:
        for s, d, i in zip(schemas, data, schema_ids, strict=True):
            framing.encode(s, d, i)

    def whole() -> None:
        for r in rows:
            encode_row(registry, ids, r)

    stages: list[tuple[str, Callable[[], object]]] = [
        ("parse the payload's JSON", parse),
        ("check it against its schema", check),
        ("envelope and its wire fields", envelope),
        ("write the framed Avro", write),
        ("encode_row, all of it", whole),
    ]
    return [(name, _best(stage, len(rows), repeat)) for name, stage in stages]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.encoding", description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000, help="rows encoded per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per stage; the best counts")
    args = parser.parse_args(argv)
    print(f"{args.rows:,} order events, best of {args.repeat} runs, CPU µs per row")
    for name, micros in measure(args.rows, args.repeat):
        print(f"  {name:<32} {micros:7.2f}")


if __name__ == "__main__":
    main()
