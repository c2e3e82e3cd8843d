"""The work behind `flowproof emit`, `flowproof relay` and `flowproof parked` (flowproof/cli.py
keeps the commands thin)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from flowproof.core.config import Settings
from flowproof.core.connect import connect_postgres
from flowproof.core.errors import ConfigError
from flowproof.core.sinks import SINK_NAMES
from flowproof.publisher.errors import EnvelopeInvalid, OutboxMissing
from flowproof.publisher.maintenance import PartitionState, partitions_plan
from flowproof.publisher.outbox import Outbox
from flowproof.publisher.parked import ParkedRow, list_parked, retry_parked
from flowproof.publisher.queries import deliveries_table, query
from flowproof.publisher.relay import serve
from flowproof.schemas.errors import PayloadInvalid

__all__ = ["emit_event", "outbox_partitions", "parked_list", "parked_retry", "serve"]


def _json_object(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None


async def emit_event(
    settings: Settings,
    *,
    event_type: str,
    aggregate_type: str,
    aggregate_id: str,
    payload: str,
    headers: str | None,
) -> uuid.UUID:
    """Check and write one event given as JSON text; ContractError names what is wrong."""
    try:
        payload_value = _json_object(payload, "--payload")
    except ValueError as exc:
        raise PayloadInvalid(event_type, "<payload>", str(exc)) from None
    try:
        headers_value = None if headers is None else _json_object(headers, "--headers")
    except ValueError as exc:
        raise EnvelopeInvalid("headers", str(exc)) from None
    outbox = Outbox.from_settings(settings)
    conn = await connect_postgres(settings)
    try:
        return await outbox.emit(
            conn,
            type=event_type,
            aggregate_type=aggregate_type,
            aggregate_id=aggregate_id,
            payload=payload_value,
            headers=headers_value,
        )
    finally:
        await conn.close()


def _sinks(sink: str | None) -> tuple[str, ...]:
    return SINK_NAMES if sink is None else (sink,)


async def parked_list(settings: Settings, sink: str | None, limit: int) -> list[ParkedRow]:
    conn = await connect_postgres(settings)
    try:
        if not await conn.fetchval(query("outbox_exists", settings.outbox_table)):
            raise OutboxMissing(settings.outbox_table)
        return await list_parked(conn, settings.outbox_table, _sinks(sink), limit)
    finally:
        await conn.close()


async def parked_retry(
    settings: Settings, sink: str | None, event_id: uuid.UUID | None
) -> dict[str, int]:
    conn = await connect_postgres(settings)
    try:
        if not await conn.fetchval(query("outbox_exists", settings.outbox_table)):
            raise OutboxMissing(settings.outbox_table)
        return await retry_parked(conn, settings.outbox_table, _sinks(sink), event_id)
    finally:
        await conn.close()


async def outbox_sinks(settings: Settings, remove: str | None) -> list[str]:
    """The sinks of the outbox (`flowproof db sinks`), after removing `remove` if given; a sink
    that is not registered cannot be removed (ConfigError naming it)."""
    table = settings.outbox_table
    conn = await connect_postgres(settings)
    try:
        if not await conn.fetchval(query("outbox_exists", deliveries_table(table))):
            raise OutboxMissing(deliveries_table(table))
        if remove is not None and await conn.fetchval(query("forget_sink", table), remove) is None:
            raise ConfigError(f"{remove!r} is not a sink of {table}")
        return [row["sink"] for row in await conn.fetch(query("outbox_sinks", table))]
    finally:
        await conn.close()


async def outbox_partitions(settings: Settings) -> list[PartitionState]:
    """The time partitions and what the relay's next drop would do with each (`flowproof db
    partitions`); needs EXECUTE of `<outbox>_partitions_maintain` (the owner, or the relay)."""
    table = settings.outbox_table
    conn = await connect_postgres(settings)
    try:
        if not await conn.fetchval(query("outbox_exists", deliveries_table(table))):
            raise OutboxMissing(deliveries_table(table))
        return await partitions_plan(conn, settings)
    finally:
        await conn.close()
