"""schema.conformance: share of valid receipts per sink and group, invalid ones by reason, and
the dead-letter streams and topics.

Every consumer group that left receipts in the window is judged (an invalid message is a fact
about the sink, whoever read it). A DLQ fails the check when more entries reached it within the
window than allowed; its total depth is evidence.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import asyncpg

from flowproof.core.config import Settings, Sink
from flowproof.verifier.groups import subject
from flowproof.verifier.lanes import DeadLetters
from flowproof.verifier.model import SCHEMA_CONFORMANCE, CheckBuilder
from flowproof.verifier.queries import query


@dataclass(slots=True)
class ReceiptStats:
    sink: str
    group: str
    total: int = 0
    valid: int = 0
    invalid: dict[str, int] = field(default_factory=dict)
    unwritable: int = 0  # dead letters the DLQ refused for good (receipts' dead_letter_error)

    @property
    def valid_share(self) -> float | None:
        return self.valid / self.total if self.total else None


async def receipt_stats(
    pool: asyncpg.Pool, settings: Settings, db_now: dt.datetime
) -> list[ReceiptStats]:
    start = db_now - dt.timedelta(seconds=settings.verify_window_seconds)
    end = db_now - dt.timedelta(seconds=settings.schema_conformance_grace_seconds)
    rows = await pool.fetch(query("conformance", settings.outbox_table), start, end)
    found: dict[tuple[str, str], ReceiptStats] = {}
    for row in rows:
        key = (row["sink"], row["consumer_group"])
        stats = found.setdefault(key, ReceiptStats(*key))
        stats.total += row["receipts"]
        stats.unwritable += row["unwritable"]
        if row["reason"] is None:
            stats.valid += row["receipts"]
        else:
            stats.invalid[row["reason"]] = row["receipts"]
    return [found[key] for key in sorted(found)]


def conformance_builder(settings: Settings) -> CheckBuilder:
    builder = CheckBuilder(
        SCHEMA_CONFORMANCE,
        settings.schema_conformance_threshold,
        "share of valid receipts",
        settings.schema_conformance_grace_seconds,
    )
    builder.at_least = True
    return builder


def judge_receipts(builder: CheckBuilder, stats: ReceiptStats, settings: Settings) -> None:
    share = stats.valid_share
    invalid = ", ".join(f"{n} {reason}" for reason, n in sorted(stats.invalid.items()))
    text = f"{stats.valid} of {stats.total} receipts valid"
    if share is not None:
        text += f" ({share:.2%})"
    if invalid:
        text += f"; invalid: {invalid}"
    builder.add(
        subject(stats.sink, stats.group),
        share is None or share >= settings.schema_conformance_threshold,
        text,
        sink=stats.sink,
        group=stats.group,
        valid=stats.valid,
        total=stats.total,
        invalid=dict(stats.invalid),
    )
    builder.worst(round(share, 6) if share is not None else None, higher_is_worse=False)
    if stats.unwritable:
        builder.add(
            f"{subject(stats.sink, stats.group)} dead letters",
            False,
            f"{stats.unwritable} dead letters could not be written to the dead-letter "
            "stream or topic (the receipts' dead_letter_error says why)",
            sink=stats.sink,
            group=stats.group,
            unwritable=stats.unwritable,
        )


def judge_dead_letters(
    builder: CheckBuilder, sink: Sink, dead_letters: list[DeadLetters], settings: Settings
) -> None:
    if not dead_letters:
        builder.add(f"{sink} DLQ", True, "no dead-letter stream or topic", sink=sink)
    for dlq in dead_letters:
        builder.add(
            f"{sink} DLQ {dlq.name}",
            dlq.in_window <= settings.schema_conformance_dlq_threshold,
            f"{dlq.in_window} dead letters within the window, {dlq.depth} in all",
            sink=sink,
            dlq=dlq.name,
            depth=dlq.depth,
            in_window=dlq.in_window,
        )
