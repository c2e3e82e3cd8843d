"""Writing events to the outbox, inside the application's own transaction.

    async with conn.transaction():
        await conn.execute("UPDATE orders SET ...")
        event_id = await outbox.emit(
            conn, type="orders.OrderPlaced", aggregate_type="order", aggregate_id="o-1",
            payload={...}, headers={"traceparent": "00-..."},
        )

`emit` checks the event exactly as the relay will (schema of the newest version, envelope,
destination names, size) and raises before it writes anything, so a bad event never poisons the
caller's transaction: UnknownEventType, PayloadInvalid (naming the field), EnvelopeInvalid,
InvalidDestination or Oversized, all `schemas.errors.ContractError`s. It never commits or rolls
back; without a transaction the row is committed by itself (autocommit).

Ordering: `emit` takes a transaction-level advisory lock on the aggregate before inserting, so
concurrent transactions writing events of one aggregate get their `seq` in commit order, which is
the order the relay publishes in. Applications inserting rows with plain SQL must serialise the
writes of one aggregate themselves (they usually do: they lock or version the aggregate's row).
One lock per distinct aggregate per transaction: a transaction emitting events for many thousands
of aggregates needs `max_locks_per_transaction` headroom.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import asyncpg

from flowproof.core.config import Settings
from flowproof.core.routing import destination
from flowproof.core.sinks import sink_spec
from flowproof.publisher.encoding import encode_row
from flowproof.publisher.errors import EnvelopeInvalid, OutboxMissing, Oversized
from flowproof.publisher.queries import query
from flowproof.publisher.rows import OutboxRow
from flowproof.schemas.errors import PayloadInvalid
from flowproof.schemas.ids import SchemaIds
from flowproof.schemas.payload import unstorable
from flowproof.schemas.registry import SchemaRegistry, load_registry

DEFAULT_TABLE = "flowproof_outbox"
DEFAULT_PREFIX = "flowproof."
DEFAULT_MAX_MESSAGE_BYTES = 1_000_000


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _unstorable_json(value: Any) -> str | None:
    """Why jsonb cannot hold `value` (a string with NUL or a lone surrogate), or None."""
    stack = [value]  # not recursive: the value may be as deep as json.dumps allows
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = unstorable(item)
            if problem:
                return f"has a string that {problem}"
        elif isinstance(item, Mapping):
            stack += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            stack += item
    return None


class Outbox:
    """Writes checked events into one outbox table."""

    def __init__(
        self,
        registry: SchemaRegistry,
        *,
        table: str = DEFAULT_TABLE,
        prefixes: Sequence[str] = (DEFAULT_PREFIX,),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.registry = registry
        self.table = table
        self._sql = query("emit", table)
        self._ids = SchemaIds(registry)
        self._prefixes = tuple(dict.fromkeys(prefixes))
        self._max = max_message_bytes

    @classmethod
    def from_settings(cls, settings: Settings, registry: SchemaRegistry | None = None) -> Outbox:
        """The outbox the relay of `settings` publishes (same table, prefixes and size limit)."""
        return cls(
            registry if registry is not None else load_registry(settings.schema_dir),
            table=settings.outbox_table,
            prefixes=[sink_spec(sink).prefix(settings) for sink in settings.sinks],
            max_message_bytes=settings.relay_max_message_bytes,
        )

    def check(
        self,
        *,
        type: str,  # the outbox column (Debezium's name), as `--type`
        aggregate_type: str,
        aggregate_id: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, Any] | None = None,
        event_id: uuid.UUID | None = None,
    ) -> OutboxRow:
        """The row `emit` would write, checked as the relay will encode it; raises if it can't."""
        if headers is not None and not isinstance(headers, Mapping):
            raise EnvelopeInvalid("headers", "must be a JSON object")
        try:
            payload_text = json.dumps(payload, allow_nan=False, default=_refuse)
        except (TypeError, ValueError, RecursionError) as exc:
            raise PayloadInvalid(type, "<payload>", f"is not JSON: {exc}") from None
        try:
            headers_text = (
                None if headers is None else json.dumps(headers, allow_nan=False, default=_refuse)
            )
        except (TypeError, ValueError, RecursionError) as exc:
            raise EnvelopeInvalid("headers", f"is not JSON: {exc}") from None
        # PostgreSQL would refuse these with a driver error (the payload is checked by its schema).
        problem = unstorable(aggregate_id) if isinstance(aggregate_id, str) else None
        if problem:
            raise EnvelopeInvalid("aggregateid", problem)
        problem = _unstorable_json(headers)
        if problem:
            raise EnvelopeInvalid("headers", problem)
        row = OutboxRow(
            seq=0,
            id=event_id or uuid.uuid4(),
            aggregatetype=aggregate_type,
            aggregateid=aggregate_id,
            type=type,
            payload=payload_text,
            headers=headers_text,
            created_at=dt.datetime.now(dt.UTC),
        )
        encoded = encode_row(self.registry, self._ids, row)  # in the relay's order of checks
        for prefix in self._prefixes:
            destination(prefix, aggregate_type)
        if encoded.size > self._max:
            raise Oversized(encoded.size, self._max)
        return row

    async def emit(
        self,
        conn: asyncpg.Connection,
        *,
        type: str,
        aggregate_type: str,
        aggregate_id: str,
        payload: Mapping[str, Any],
        headers: Mapping[str, Any] | None = None,
        event_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        """Check the event, then insert it on `conn` (in its transaction); return its id (a new
        UUID unless `event_id` is given)."""
        row = self.check(
            type=type,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            payload=payload,
            headers=headers,
            event_id=event_id,
        )
        try:
            await conn.execute(
                self._sql,
                row.id,
                row.aggregatetype,
                row.aggregateid,
                row.type,
                row.payload,
                row.headers,
            )
        except asyncpg.UndefinedTableError:
            raise OutboxMissing(self.table) from None
        return row.id


@cache
def default_outbox() -> Outbox:
    """The outbox with flowproof's defaults and built-in schemas (loaded once)."""
    return Outbox(load_registry(None))


async def emit(
    conn: asyncpg.Connection,
    *,
    type: str,
    aggregate_type: str,
    aggregate_id: str,
    payload: Mapping[str, Any],
    headers: Mapping[str, Any] | None = None,
    outbox: Outbox | None = None,
) -> uuid.UUID:
    """Write one checked event to the outbox inside the caller's transaction; return its id.

    Uses `outbox` if given (e.g. `Outbox.from_settings(settings)` for your own schemas, table or
    prefixes), else flowproof's defaults with the built-in schemas.
    """
    return await (outbox or default_outbox()).emit(
        conn,
        type=type,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        payload=payload,
        headers=headers,
    )
