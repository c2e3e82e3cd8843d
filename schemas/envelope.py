"""The envelope: an event's metadata, carried in Kafka headers and Redis stream fields.

Fields (docs/design.md, "Wire format"): `id`, `type`, `aggregatetype`, `aggregateid`, `created_at`
(RFC 3339 UTC with microseconds) and `traceparent` when present. The Redis entry also carries the
framed Avro bytes in its `payload` field.
"""

from __future__ import annotations

import datetime as dt
import functools
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from flowproof.schemas.errors import ENVELOPE, FrameError

PAYLOAD_FIELD = "payload"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
_EVENT_TYPE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
_EVENT_TYPE_RE = re.compile(_EVENT_TYPE)
_TYPE_MAX = 512
_AGGREGATETYPE_MAX = 255
_AGGREGATEID_MAX = 1024


def format_timestamp(value: dt.datetime) -> str:
    """RFC 3339 in UTC with microseconds and a Z, the wire form of `created_at`."""
    # Not strftime: its %Y gives "1-01-01" for years below 1000, which RFC 3339 parsers refuse.
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    return value.isoformat(timespec="microseconds").removesuffix("+00:00") + "Z"


def _must_be_utc_aware(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("created_at must carry a time zone")
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00: pydantic would let it escape raw
        raise ValueError("created_at is before year 1 or after 9999 in UTC") from None


def _check_traceparent(value: str | None) -> str | None:
    if value is not None and not _TRACEPARENT.fullmatch(value):
        raise ValueError("traceparent is not a W3C trace context (00-<32 hex>-<16 hex>-<2 hex>)")
    return value


class Envelope(BaseModel):
    """Validated event metadata; `from_wire` turns header problems into FrameError(envelope)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: uuid.UUID
    type: str = Field(pattern=_EVENT_TYPE, max_length=_TYPE_MAX)
    aggregatetype: str = Field(min_length=1, max_length=_AGGREGATETYPE_MAX)
    aggregateid: str = Field(min_length=1, max_length=_AGGREGATEID_MAX)
    created_at: Annotated[dt.datetime, AfterValidator(_must_be_utc_aware)]
    traceparent: Annotated[str | None, AfterValidator(_check_traceparent)] = None

    def wire_fields(self) -> dict[str, bytes]:
        """The fields as bytes, for Kafka headers and Redis stream fields."""
        fields = {
            "id": str(self.id).encode(),
            "type": self.type.encode(),
            "aggregatetype": self.aggregatetype.encode(),
            "aggregateid": self.aggregateid.encode(),
            "created_at": format_timestamp(self.created_at).encode(),
        }
        if self.traceparent is not None:
            fields["traceparent"] = self.traceparent.encode()
        return fields

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        return list(self.wire_fields().items())

    @classmethod
    def from_wire(cls, fields: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> Envelope:
        """Parse Kafka headers or Redis fields; raise FrameError(envelope) naming the field."""
        items = fields.items() if isinstance(fields, Mapping) else fields
        names = _field_names(cls)
        values: dict[str, Any] = {}
        for key, raw in items:
            name = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
            if name not in names or name in values:
                # Other headers are not the envelope's (their values may be binary); the first
                # header of a name wins, as Kafka clients read them.
                continue
            try:
                values[name] = raw.decode("utf-8") if raw is not None else None
            except UnicodeDecodeError:
                raise FrameError(ENVELOPE, f"envelope field {name!r} is not UTF-8") from None
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = ".".join(str(p) for p in first["loc"]) or "<envelope>"
            message = str(first["msg"]).removeprefix("Value error, ")
            raise FrameError(ENVELOPE, f"envelope field {name!r}: {message}") from None


def plain_wire_fields(values: Mapping[str, Any]) -> dict[str, bytes] | None:
    """`Envelope(**values).wire_fields()` for values that plainly pass the model, without
    building it; None when any value needs the model's judgement (it then says what is wrong).

    The relay builds an envelope per row and a row's values are nearly always of this plain kind:
    the type and aggregate type, few and repeated, are checked once each (`_plain_names`), the
    rest with a few comparisons. Never more permissive than the model, nor different in what it
    returns (tests/test_schemas_core.py compares the two on generated values).
    """
    event_id, event_type = values["id"], values["type"]
    aggregatetype, aggregateid = values["aggregatetype"], values["aggregateid"]
    created_at, traceparent = values["created_at"], values.get("traceparent")
    if not (
        type(event_id) is uuid.UUID
        and type(event_type) is str
        and type(aggregatetype) is str
        and _plain_names(event_type, aggregatetype)
        and type(aggregateid) is str
        and 0 < len(aggregateid) <= _AGGREGATEID_MAX
        and type(created_at) is dt.datetime
        and created_at.tzinfo is dt.UTC
    ):
        return None
    try:
        fields = {
            "id": str(event_id).encode(),
            "type": event_type.encode(),
            "aggregatetype": aggregatetype.encode(),
            "aggregateid": aggregateid.encode(),
            "created_at": format_timestamp(created_at).encode(),
        }
    except UnicodeEncodeError:  # a lone surrogate, which the model refuses
        return None
    if traceparent is not None:
        if type(traceparent) is not str or not _TRACEPARENT.fullmatch(traceparent):
            return None
        fields["traceparent"] = traceparent.encode()
    return fields


@functools.lru_cache(maxsize=4096)
def _plain_names(event_type: str, aggregatetype: str) -> bool:
    """Whether the model takes this type and aggregate type (checked once per pair)."""
    return (
        len(event_type) <= _TYPE_MAX
        and _EVENT_TYPE_RE.fullmatch(event_type) is not None
        and 0 < len(aggregatetype) <= _AGGREGATETYPE_MAX
    )


@functools.cache
def _field_names(model: type[BaseModel]) -> frozenset[str]:
    """The field names of `model`, read once: pydantic's `model_fields` is a descriptor that
    costs about 0.25 µs a read, six reads per message a consumer receives."""
    return frozenset(model.model_fields)
