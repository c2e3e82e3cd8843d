"""Receipts: one row per delivery a consumer saw, written in batches with COPY.

The verifier computes lost, duplicated and reordered events from these rows (docs/design.md,
"Receipts"). A batch's receipts are written before its messages are acknowledged, so a receipt
can be duplicated by a crash (the message comes again) but never missing for an acked message.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from operator import attrgetter

import asyncpg

from flowproof.consumers.errors import ReceiptWriteFailed
from flowproof.core.redact import scrub

RECEIPTS_TABLE = "flowproof_receipts"
TEXT_LIMIT = 2000  # error texts and untrusted strings of broken messages are cut to this


def clean_text(value: str | None, limit: int = TEXT_LIMIT) -> str | None:
    """Text PostgreSQL accepts (no NUL), at most `limit` characters."""
    if value is None:
        return None
    cleaned = value.replace("\x00", "\ufffd")
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x (one per message)
class Receipt:
    """One row of flowproof_receipts; field order is the COPY column order."""

    event_id: uuid.UUID | None
    sink: str
    consumer_group: str
    consumer: str
    source: str
    position: str
    event_type: str | None
    aggregatetype: str | None
    aggregateid: str | None
    schema_id: int | None
    created_at: dt.datetime | None
    received_at: dt.datetime
    valid: bool
    reason: str | None
    error: str | None
    delivery_count: int
    dead_letter_reason: str | None
    dead_letter_error: str | None = None  # the dead letter itself could not be written: why


COLUMNS = tuple(f.name for f in fields(Receipt))
# The COPY row of a receipt. Not dataclasses.astuple: it deep-copies every value (UUIDs,
# datetimes), which cost more than everything else a consumer does per message.
as_row = attrgetter(*COLUMNS)


# A receipt write taking longer than this failed (and is retried on another connection): a
# connection the network left half-open would otherwise hold the consumer forever, silently.
WRITE_TIMEOUT = 30.0
# How long to wait for a pool connection; asyncpg bounds the release by it too, and a release
# after a COPY that timed out waits for the server to confirm the cancel, which a dead
# connection never does: past it the connection is terminated instead of given back.
CONNECTION_TIMEOUT = 5.0
_WRITE_FAILED = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # What asyncpg raises when the server ends the session in the middle of the COPY (a
    # PostgreSQL restart): "cannot switch to state ...", then "release() called on a free
    # connection holder" as the pool has already taken the closed connection back.
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


async def keep_session(conn: asyncpg.Connection) -> None:
    """The reset of the receipts pool's connections when given back: none.

    They only run COPY and the table check, which leave no session state (settings, listeners,
    advisory locks, cursors) behind, and asyncpg still rolls back an open transaction first (and
    terminates a closed connection). asyncpg's default reset is one more round trip per batch,
    beside the COPY's two: four statements (`pg_advisory_unlock_all()`, `CLOSE ALL`,
    `UNLISTEN *`, `RESET ALL`) for every COPY.
    """


class ReceiptWriter:
    """Writes receipts with one COPY per batch on a pool it is given (and does not close)."""

    def __init__(
        self, pool: asyncpg.Pool, table: str = RECEIPTS_TABLE, timeout: float = WRITE_TIMEOUT
    ) -> None:
        self._pool = pool
        self._table = table
        self._timeout = timeout

    async def write(self, receipts: Sequence[Receipt]) -> None:
        """Write `receipts` durably (COPY commits on its own), or raise ReceiptWriteFailed."""
        if not receipts:
            return
        try:
            async with self._pool.acquire(timeout=CONNECTION_TIMEOUT) as conn:
                await conn.copy_records_to_table(
                    self._table,
                    records=[as_row(r) for r in receipts],
                    columns=COLUMNS,
                    timeout=self._timeout,
                )
        except _WRITE_FAILED as exc:
            raise ReceiptWriteFailed(
                f"writing {len(receipts)} receipts failed: {scrub(str(exc)) or type(exc).__name__}"
            ) from exc

    async def check_table(self) -> str | None:
        """None when the table has every column written here, else what is wrong."""
        rows = await self._pool.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1",
            self._table,
        )
        missing = set(COLUMNS) - {row["column_name"] for row in rows}
        if not rows:
            return f"table {self._table} does not exist"
        if missing:
            return f"table {self._table} lacks {', '.join(sorted(missing))}"
        return None
