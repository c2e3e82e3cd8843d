"""Parked rows: listing them, and clearing the park mark so the relay tries them again."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from flowproof.core.sinks import SINK_NAMES
from flowproof.publisher.queries import query


@dataclass(frozen=True, slots=True)
class ParkedRow:
    seq: int
    id: uuid.UUID
    type: str
    aggregatetype: str
    aggregateid: str
    sink: str
    reason: str
    error: str | None
    since: dt.datetime


async def list_parked(
    conn: asyncpg.Connection, table: str, sinks: Iterable[str] = SINK_NAMES, limit: int = 1000
) -> list[ParkedRow]:
    """Parked rows of `sinks`, oldest first (at most `limit` per sink)."""
    rows: list[ParkedRow] = []
    for sink in sinks:
        for record in await conn.fetch(query("parked_rows", table, sink), limit):
            rows.append(ParkedRow(sink=sink, **dict(record)))
    rows.sort(key=lambda r: (r.seq, r.sink))
    return rows


async def retry_parked(
    conn: asyncpg.Connection,
    table: str,
    sinks: Iterable[str] = SINK_NAMES,
    event_id: uuid.UUID | None = None,
) -> dict[str, int]:
    """Clear the park mark of one event (or all, when `event_id` is None) in `sinks`.

    The relays are woken (NOTIFY) and publish the rows again, or park them again with a fresh
    reason if they still cannot go. Returns the rows cleared per sink.
    """
    cleared: dict[str, int] = {}
    async with conn.transaction():
        for sink in sinks:
            rows = await conn.fetch(query("unpark", table, sink), event_id)
            cleared[sink] = len(rows)
        if any(cleared.values()):
            await conn.execute(query("wake_relays", table))
    return cleared


def format_table(rows: Sequence[ParkedRow], error_width: int = 80) -> str:
    """A plain-text table of parked rows for the terminal."""
    header = ("seq", "id", "type", "aggregate", "sink", "reason", "since", "error")
    lines = [
        (
            str(r.seq),
            str(r.id),
            r.type,
            f"{r.aggregatetype}/{r.aggregateid}",
            r.sink,
            r.reason,
            r.since.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            _shorten(r.error or "", error_width),
        )
        for r in rows
    ]
    widths = [max(len(col[i]) for col in [header, *lines]) for i in range(len(header))]
    out = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *lines]
    ]
    return "\n".join(out)


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
