"""The relay's row and message types: a claimed outbox row, its encoding, the message a sink
sends, and a row that can never be published (parked).

Rows and messages are named tuples: a relay makes one of each per row and sink, and a frozen
dataclass costs several times more to build.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

Aggregate = tuple[str, str]


class OutboxRow(NamedTuple):
    """One claimed row, as the claim query returns it (payload and headers as JSON text)."""

    seq: int
    id: uuid.UUID
    aggregatetype: str
    aggregateid: str
    type: str
    payload: str
    headers: str | None
    created_at: dt.datetime | None  # None: a created_at Python cannot hold (parked)

    @property
    def aggregate(self) -> Aggregate:
        return (self.aggregatetype, self.aggregateid)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> OutboxRow:
        """The row of a claim query record (its columns are this tuple's fields, in order)."""
        return cls(*record.values())


class Message(NamedTuple):
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


class Encoded(NamedTuple):
    """What every sink sends for a row, whatever its destination."""

    row: OutboxRow
    key: bytes
    value: bytes
    fields: dict[str, bytes]
    size: int  # value, key and header fields, as Message.size


@dataclass(frozen=True, slots=True)
class Parked:
    seq: int
    id: uuid.UUID
    reason: str
    error: str
