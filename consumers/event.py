"""The event a handler receives: envelope, schema versions and the payload in the reader's shape."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from flowproof.consumers.delivery import Delivery
from flowproof.schemas import framing
from flowproof.schemas.envelope import Envelope
from flowproof.schemas.registry import SchemaVersion

P = TypeVar("P")

Payload = dict[str, Any]  # the Avro datum resolved to the reader schema, as fastavro gives it


@dataclass(frozen=True, slots=True)
class Event(Generic[P]):
    """One decoded, validated event.

    `payload` is the datum resolved from the writer schema (`writer`, named by the message's
    schema id) to the handler's reader schema (`reader`, the newest version unless the handler
    pinned one), converted to the handler's model when it registered one.
    """

    envelope: Envelope
    payload: P
    writer: SchemaVersion
    reader: SchemaVersion
    delivery: Delivery

    @property
    def id(self) -> uuid.UUID:
        return self.envelope.id

    @property
    def type(self) -> str:
        return self.envelope.type

    @property
    def aggregatetype(self) -> str:
        return self.envelope.aggregatetype

    @property
    def aggregateid(self) -> str:
        return self.envelope.aggregateid

    @property
    def created_at(self) -> dt.datetime:
        return self.envelope.created_at

    @property
    def schema_id(self) -> int:
        """The writer schema's id, as the message carried it (embedded or a registry's)."""
        return framing.read_header(self.delivery.value or b"")

    @property
    def version(self) -> int:
        """The version of the schema the event was written with."""
        return self.writer.version

    @property
    def delivery_count(self) -> int:
        return self.delivery.delivery_count
