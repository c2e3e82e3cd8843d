"""The Confluent wire format: byte 0x00, a 4-byte big-endian schema id, then Avro binary.

The one implementation of the framing; the relay encodes with it and the consumers decode with
it. Decoding resolves the writer schema (found by id) to the reader's schema. The ids are the
embedded ones or a schema registry's (`schemas.ids.SchemaIds`); both look ids up the same way.
"""

from __future__ import annotations

import io
import struct
from typing import Any, Protocol

import fastavro

from flowproof.schemas.errors import (
    BAD_MAGIC,
    CORRUPT_AVRO,
    UNKNOWN_SCHEMA,
    FrameError,
    UnknownEventType,
)
from flowproof.schemas.registry import SchemaVersion

MAGIC = 0
HEADER = struct.Struct(">bI")
HEADER_SIZE = HEADER.size  # 5


class SchemaLookup(Protocol):
    """Writer schemas by id and reader schemas by type (SchemaRegistry, SchemaIds)."""

    def by_id(self, schema_id: int) -> SchemaVersion | None: ...

    def latest(self, event_type: str) -> SchemaVersion: ...


def encode(schema: SchemaVersion, datum: dict[str, Any], schema_id: int | None = None) -> bytes:
    """Frame `datum` (already checked with `schema.validate`) with `schema_id` (default: the
    schema's embedded id)."""
    buffer = io.BytesIO()
    buffer.write(HEADER.pack(MAGIC, schema.schema_id if schema_id is None else schema_id))
    fastavro.schemaless_writer(buffer, schema.parsed, datum)
    return buffer.getvalue()


def is_framed(data: bytes) -> bool:
    """Whether `data` starts with a Confluent header (magic byte and room for the schema id)."""
    return len(data) >= HEADER_SIZE and data[0] == MAGIC


def read_header(data: bytes) -> int:
    """The schema id of a framed message, or FrameError (bad_magic)."""
    if len(data) < HEADER_SIZE:
        raise FrameError(
            BAD_MAGIC, f"message of {len(data)} bytes is shorter than the 5-byte header"
        )
    magic, schema_id = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise FrameError(BAD_MAGIC, f"magic byte is {magic & 0xFF:#04x}, expected 0x00")
    return int(schema_id)


def decode(
    registry: SchemaLookup, data: bytes, reader: SchemaVersion | None = None
) -> tuple[SchemaVersion, dict[str, Any]]:
    """Decode a framed message; return its writer schema and the datum in the reader's shape.

    The reader defaults to the newest version of the writer's event type. Raises FrameError with
    reason bad_magic, unknown_schema or corrupt_avro (truncated, trailing bytes, or not Avro).
    """
    schema_id = read_header(data)
    writer = registry.by_id(schema_id)
    if writer is None:
        raise FrameError(UNKNOWN_SCHEMA, f"schema id {schema_id} is not in the registry")
    if reader is None:
        try:
            reader = registry.latest(writer.event_type)
        except UnknownEventType:  # a registry's schema of a type without local schemas
            raise FrameError(
                UNKNOWN_SCHEMA, f"schema id {schema_id} is {writer.event_type}, which has no schema"
            ) from None
    body = io.BytesIO(data)
    body.seek(HEADER_SIZE)
    try:
        if reader is writer:
            datum = fastavro.schemaless_reader(body, writer.parsed, None)
        else:
            datum = fastavro.schemaless_reader(body, writer.parsed, reader.parsed)
    except Exception as exc:  # fastavro signals corrupt input with many exception types
        raise FrameError(
            CORRUPT_AVRO,
            f"Avro body does not decode with schema {schema_id}: {type(exc).__name__}: {exc}",
        ) from None
    trailing = len(data) - body.tell()
    if trailing:
        raise FrameError(CORRUPT_AVRO, f"{trailing} bytes left after the Avro record")
    if not isinstance(datum, dict):
        raise FrameError(CORRUPT_AVRO, "Avro body is not a record")
    return writer, datum
