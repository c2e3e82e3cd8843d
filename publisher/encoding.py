"""Turning outbox rows into messages: the envelope, the Confluent-framed Avro value, the
destination, and the size check; or the reason a row can never be published.

Each row is encoded with the newest schema of its type (the writer schema of the registry),
framed with its id from `schemas.ids.SchemaIds` (embedded, or a schema registry's:
`register_schemas` registers the batch's schemas before `plan`). The sink modules only send what
this module produced.

`encode_row` is the encoding itself, the same for every sink (the application's `Outbox.check`
uses it too); an `Encoder` adds what depends on the sink: the destination, the size limit, and the
`EncodeCache` through which the relay's sink workers, which claim the same rows, encode each row
once for all of them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import ValidationError

from flowproof.core.errors import ComponentUnreachable
from flowproof.core.logging import get_logger
from flowproof.core.routing import destination
from flowproof.publisher.encode_cache import EncodeCache
from flowproof.publisher.errors import EnvelopeInvalid, Oversized
from flowproof.publisher.rows import Aggregate, Encoded, Message, OutboxRow, Parked
from flowproof.schemas import framing
from flowproof.schemas.envelope import Envelope, plain_wire_fields
from flowproof.schemas.errors import ContractError, PayloadInvalid
from flowproof.schemas.ids import SchemaIds
from flowproof.schemas.registry import SchemaRegistry, SchemaVersion

log = get_logger(__name__)


@dataclass(slots=True)
class Plan:
    """A claimed batch sorted out: what to send, what to park, how many rows must wait."""

    messages: list[Message] = field(default_factory=list)
    parked: list[Parked] = field(default_factory=list)
    held: int = 0


def _frame(schema: SchemaVersion, datum: dict[str, Any], schema_id: int) -> bytes:
    try:
        return framing.encode(schema, datum, schema_id)
    except (ValueError, TypeError, OverflowError) as exc:
        # Checked payloads encode; this is a value Avro cannot hold (e.g. a timestamp overflow).
        raise PayloadInvalid(schema.event_type, "<payload>", f"does not encode: {exc}") from None


def _json(text: str, event_type: str | None) -> Any:
    """Parse jsonb text, or raise PayloadInvalid (EnvelopeInvalid for headers, `event_type` None).

    PostgreSQL keeps JSON Python cannot read back: numbers of over 4300 digits (`1e5000` is
    printed in full) and nesting deeper than the recursion limit.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        problem = f"cannot be read: {type(exc).__name__}: {str(exc)[:200]}"
        if event_type is None:
            raise EnvelopeInvalid("headers", problem) from None
        raise PayloadInvalid(event_type, "<payload>", problem) from None


def envelope_fields(
    *,
    event_id: uuid.UUID,
    event_type: str,
    aggregatetype: str,
    aggregateid: str,
    created_at: dt.datetime | None,
    headers: Mapping[str, Any] | None,
) -> dict[str, bytes]:
    """The wire fields of the event's validated envelope, or EnvelopeInvalid naming the field.
    Plain values skip building the model (`plain_wire_fields`); the model judges the rest."""
    traceparent = (headers or {}).get("traceparent")
    values: dict[str, Any] = {
        "id": event_id,
        "type": event_type,
        "aggregatetype": aggregatetype,
        "aggregateid": aggregateid,
        "created_at": created_at,
        "traceparent": traceparent,
    }
    fields = plain_wire_fields(values)
    if fields is not None:
        return fields
    if traceparent is not None and not isinstance(traceparent, str):
        raise EnvelopeInvalid("traceparent", "must be a string")
    if created_at is None:
        raise EnvelopeInvalid("created_at", "is infinity, BC or after 9999: no reader can hold it")
    try:
        envelope = Envelope.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "<envelope>"
        raise EnvelopeInvalid(name, str(first["msg"]).removeprefix("Value error, ")) from None
    return envelope.wire_fields()


def encode_row(registry: SchemaRegistry, ids: SchemaIds, row: OutboxRow) -> Encoded:
    """Everything every sink sends for `row`, or a ContractError whose `reason` is the park
    reason: the payload checked by its newest schema, the envelope, the framed Avro value."""
    schema = registry.latest(row.type)
    datum = schema.validate(_json(row.payload, schema.event_type))
    headers = _json(row.headers, None) if row.headers is not None else None
    fields = envelope_fields(
        event_id=row.id,
        event_type=row.type,
        aggregatetype=row.aggregatetype,
        aggregateid=row.aggregateid,
        created_at=row.created_at,
        headers=headers,
    )
    key = row.aggregateid.encode()
    value = _frame(schema, datum, ids.writer_id(row.aggregatetype, schema))
    size = len(value) + len(key) + sum(len(k) + len(v) for k, v in fields.items())
    return Encoded(row, key, value, fields, size)


class Encoder:
    """Encodes rows for one sink (its prefix names the destination) under a size limit.

    With `cache`, the encodings (all but the destination) are shared with the encoders of the
    other sinks of the same relay; `sink` names this encoder's.
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        prefix: str,
        max_message_bytes: int,
        *,
        cache: EncodeCache | None = None,
        sink: str = "",
        ids: SchemaIds | None = None,
    ) -> None:
        self._registry = registry
        self._ids = ids if ids is not None else SchemaIds(registry)
        self._prefix = prefix
        self._max = max_message_bytes
        self._cache = cache
        self._sink = sink
        # Few aggregate types, each named once per row: remember their (valid) destinations.
        self._destination = lru_cache(maxsize=1024)(self._name)

    async def register_schemas(self, rows: Sequence[OutboxRow]) -> bool:
        """Before `plan`: register the rows' writer schemas with the schema registry, if one is
        configured. False when it did not answer (nothing to send now: try the batch later)."""
        if not self._ids.remote:
            return True
        pairs: dict[tuple[str, str], SchemaVersion] = {}
        for row in rows:
            try:
                self._destination(row.aggregatetype)
                pairs[(row.aggregatetype, row.type)] = self._registry.latest(row.type)
            except ContractError:
                continue  # plan() parks it
        try:
            await self._ids.register(
                (aggregatetype, schema) for (aggregatetype, _), schema in pairs.items()
            )
        except ComponentUnreachable as exc:
            log.warning("relay.schema_registry_unreachable", sink=self._sink, error=exc.detail)
            return False
        return True

    def _name(self, aggregatetype: str) -> str:
        return destination(self._prefix, aggregatetype)

    def encode(self, row: OutboxRow) -> Message:
        """The message of `row`, or a ContractError whose `reason` is the park reason."""
        cache = self._cache
        encoded = cache.get(self._sink, row) if cache is not None else None
        if encoded is None:
            encoded = encode_row(self._registry, self._ids, row)
            if cache is not None:
                cache.put(self._sink, encoded)
        message = Message(
            row.seq,
            (row.aggregatetype, row.aggregateid),
            self._destination(row.aggregatetype),
            encoded.key,
            encoded.value,
            encoded.fields,
        )
        if encoded.size > self._max:
            raise Oversized(encoded.size, self._max)
        return message

    def plan(self, rows: Iterable[OutboxRow]) -> Plan:
        """Sort a batch (in seq order) into messages and parked rows.

        After a row is parked, the later rows of its aggregate in the batch are held back (not
        sent, not marked): the next claim leaves them out while the parked row is there.
        """
        plan = Plan()
        blocked: set[Aggregate] = set()
        for row in rows:
            if row.aggregate in blocked:
                plan.held += 1
                continue
            try:
                plan.messages.append(self.encode(row))
            except ContractError as exc:
                plan.parked.append(Parked(row.seq, row.id, exc.reason, str(exc)))
                blocked.add(row.aggregate)
        return plan
