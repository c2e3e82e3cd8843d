"""Turning outbox rows into messages: the envelope, the Confluent-framed Avro value, the
destination, and the size check; or the reason a row can never be published.

Each row is encoded with the newest schema of its type (the writer schema of the registry). The
sink modules only send what this module produced.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from publisher.errors import EnvelopeInvalid, Oversized
from schemas import framing
from schemas.envelope import Envelope
from schemas.errors import ContractError, PayloadInvalid
from schemas.registry import SchemaRegistry, SchemaVersion
from schemas.routing import destination

Aggregate = tuple[str, str]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One claimed row, as the claim query returns it (payload and headers as JSON text)."""

    seq: int
    id: uuid.UUID
    aggregatetype: str
    aggregateid: str
    type: str
    payload: str
    headers: str | None
    created_at: dt.datetime

    @property
    def aggregate(self) -> Aggregate:
        return (self.aggregatetype, self.aggregateid)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> OutboxRow:
        return cls(
            seq=record["seq"],
            id=record["id"],
            aggregatetype=record["aggregatetype"],
            aggregateid=record["aggregateid"],
            type=record["type"],
            payload=record["payload"],
            headers=record["headers"],
            created_at=record["created_at"],
        )


@dataclass(frozen=True, slots=True)
class Message:
    """What a sink sends for one row: value, key and envelope fields, and where to."""

    seq: int
    aggregate: Aggregate
    destination: str
    key: bytes
    value: bytes
    fields: dict[str, bytes]

    @property
    def size(self) -> int:
        """Bytes on the wire that count against a sink's limit: value, key and header fields."""
        return (
            len(self.value) + len(self.key) + sum(len(k) + len(v) for k, v in self.fields.items())
        )


@dataclass(frozen=True, slots=True)
class Parked:
    seq: int
    id: uuid.UUID
    reason: str
    error: str


@dataclass(slots=True)
class Plan:
    """A claimed batch sorted out: what to send, what to park, how many rows must wait."""

    messages: list[Message] = field(default_factory=list)
    parked: list[Parked] = field(default_factory=list)
    held: int = 0


def _frame(schema: SchemaVersion, datum: dict[str, Any]) -> bytes:
    try:
        return framing.encode(schema, datum)
    except (ValueError, TypeError, OverflowError) as exc:
        # Checked payloads encode; this is a value Avro cannot hold (e.g. a timestamp overflow).
        raise PayloadInvalid(schema.event_type, "<payload>", f"does not encode: {exc}") from None


def envelope_of(
    *,
    event_id: uuid.UUID,
    event_type: str,
    aggregatetype: str,
    aggregateid: str,
    created_at: dt.datetime,
    headers: Mapping[str, Any] | None,
) -> Envelope:
    """The validated envelope of an event, or EnvelopeInvalid naming the field."""
    traceparent = (headers or {}).get("traceparent")
    if traceparent is not None and not isinstance(traceparent, str):
        raise EnvelopeInvalid("traceparent", "must be a string")
    try:
        return Envelope(
            id=event_id,
            type=event_type,
            aggregatetype=aggregatetype,
            aggregateid=aggregateid,
            created_at=created_at,
            traceparent=traceparent,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "<envelope>"
        raise EnvelopeInvalid(name, str(first["msg"]).removeprefix("Value error, ")) from None


class Encoder:
    """Encodes rows for one sink (its prefix names the destination) under a size limit."""

    def __init__(self, registry: SchemaRegistry, prefix: str, max_message_bytes: int) -> None:
        self._registry = registry
        self._prefix = prefix
        self._max = max_message_bytes

    def encode(self, row: OutboxRow) -> Message:
        """The message of `row`, or a ContractError whose `reason` is the park reason."""
        schema = self._registry.latest(row.type)
        datum = schema.validate(json.loads(row.payload))
        headers = json.loads(row.headers) if row.headers is not None else None
        envelope = envelope_of(
            event_id=row.id,
            event_type=row.type,
            aggregatetype=row.aggregatetype,
            aggregateid=row.aggregateid,
            created_at=row.created_at,
            headers=headers,
        )
        message = Message(
            seq=row.seq,
            aggregate=row.aggregate,
            destination=destination(self._prefix, row.aggregatetype),
            key=row.aggregateid.encode(),
            value=_frame(schema, datum),
            fields=envelope.wire_fields(),
        )
        if message.size > self._max:
            raise Oversized(message.size, self._max)
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
