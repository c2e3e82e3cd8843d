"""Checking a JSON payload against an Avro record schema, naming the field that does not fit.

JSON has no timestamps, bytes or tagged unions, so the payload of an outbox row is JSON and this
module turns it into the Python values fastavro writes: RFC 3339 strings into datetimes for
`timestamp-*` logical types, plain values for unions (the branch is found by type). Fields the
schema does not declare are refused rather than silently dropped on encoding.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from flowproof.schemas.errors import PayloadInvalid

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_TIMESTAMPS = (
    "timestamp-millis",
    "timestamp-micros",
    "local-timestamp-millis",
    "local-timestamp-micros",
)

Schema = Any  # a fastavro-parsed schema: str, list (union) or dict

# A payload is stored as jsonb, which holds no NUL (\u0000) and, being UTF-8, no lone surrogate.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROS = {"timestamp-millis": 1000, "local-timestamp-millis": 1000}


def unstorable(text: str) -> str | None:
    """Why PostgreSQL cannot store `text` (as text or in jsonb), or None when it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
    return f"contains a lone surrogate ({found.group()!a}), which is not UTF-8"


class _Mismatch(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path = path
        self.problem = problem


def collect_named(schema: Schema, named: dict[str, Schema] | None = None) -> dict[str, Schema]:
    """Every named type (record, enum, fixed) defined in `schema`, by full name."""
    named = {} if named is None else named
    if isinstance(schema, list):
        for branch in schema:
            collect_named(branch, named)
    elif isinstance(schema, dict):
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            named[schema["name"]] = schema
        if kind in ("record", "error"):
            for fld in schema["fields"]:
                collect_named(fld["type"], named)
        elif kind == "array":
            collect_named(schema["items"], named)
        elif kind == "map":
            collect_named(schema["values"], named)
        elif isinstance(kind, dict | list):
            collect_named(kind, named)
    return named


def check_payload(event_type: str, schema: Schema, payload: Any) -> dict[str, Any]:
    """Return `payload` converted for fastavro, or raise PayloadInvalid naming the field."""
    if not isinstance(payload, dict):
        raise PayloadInvalid(
            event_type, "<payload>", f"must be a JSON object, not {_kind(payload)}"
        )
    try:
        converted: dict[str, Any] = _convert(schema, payload, "", collect_named(schema))
    except _Mismatch as exc:
        raise PayloadInvalid(event_type, exc.path or "<payload>", exc.problem) from None
    return converted


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _join(path: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{path}[{name}]"
    return f"{path}.{name}" if path else name


def _convert(schema: Schema, value: Any, path: str, named: dict[str, Schema]) -> Any:
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        return _convert_union(schema, value, path, named)
    if isinstance(schema, dict):
        kind = schema["type"]
        if schema.get("logicalType") in _TIMESTAMPS and kind == "long":
            return _timestamp(value, path, _MICROS.get(schema["logicalType"], 1))
        handler = _COMPLEX.get(kind) if isinstance(kind, str) else None
        if handler is None:  # {"type": "string"} and the like
            return _convert(kind, value, path, named)
        return handler(schema, value, path, named)
    return _primitive(schema, value, path)


def _convert_enum(schema: Schema, value: Any, path: str, _named: dict[str, Schema]) -> Any:
    if value not in schema["symbols"]:
        raise _Mismatch(path, f"is {value!r}, not one of {schema['symbols']}")
    return value


def _convert_array(schema: Schema, value: Any, path: str, named: dict[str, Schema]) -> Any:
    if not isinstance(value, list):
        raise _Mismatch(path, f"must be an array, not {_kind(value)}")
    return [_convert(schema["items"], v, _join(path, i), named) for i, v in enumerate(value)]


def _convert_map(schema: Schema, value: Any, path: str, named: dict[str, Schema]) -> Any:
    if not isinstance(value, dict):
        raise _Mismatch(path, f"must be an object, not {_kind(value)}")
    for key in value:
        problem = unstorable(key) if isinstance(key, str) else None
        if problem:
            raise _Mismatch(_join(path, key), f"has a key that {problem}")
    return {k: _convert(schema["values"], v, _join(path, k), named) for k, v in value.items()}


def _convert_fixed(schema: Schema, value: Any, path: str, _named: dict[str, Schema]) -> Any:
    data = _bytes(value, path)
    if len(data) != schema["size"]:
        raise _Mismatch(path, f"must be {schema['size']} bytes, not {len(data)}")
    return data


def _convert_record(schema: Schema, value: Any, path: str, named: dict[str, Schema]) -> Any:
    if not isinstance(value, dict):
        raise _Mismatch(path, f"must be an object, not {_kind(value)}")
    declared = {fld["name"] for fld in schema["fields"]}
    for key in value:
        if key not in declared:
            raise _Mismatch(_join(path, key), f"is not a field of {schema['name']}")
    out = {}
    for fld in schema["fields"]:
        name = fld["name"]
        if name in value:
            out[name] = _convert(fld["type"], value[name], _join(path, name), named)
        elif "default" not in fld:
            raise _Mismatch(_join(path, name), "is required and missing")
    return out


_COMPLEX = {
    "record": _convert_record,
    "error": _convert_record,
    "enum": _convert_enum,
    "array": _convert_array,
    "map": _convert_map,
    "fixed": _convert_fixed,
}


def _convert_union(branches: list[Schema], value: Any, path: str, named: dict[str, Schema]) -> Any:
    problems = []
    for branch in branches:
        try:
            return _convert(branch, value, path, named)
        except _Mismatch as exc:
            if exc.path != path:  # the branch fit the shape; a nested field is what is wrong
                raise
            problems.append(exc.problem)
    raise _Mismatch(path, f"fits none of the union's types ({'; '.join(problems)})")


def _primitive(kind: str, value: Any, path: str) -> Any:
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "null":
        if value is not None:
            raise _Mismatch(path, f"must be null, not {_kind(value)}")
        return None
    if kind == "boolean":
        if not isinstance(value, bool):
            raise _Mismatch(path, f"must be a boolean, not {_kind(value)}")
        return value
    if kind in ("int", "long"):
        low, high = _INT32 if kind == "int" else _INT64
        if not is_int:
            raise _Mismatch(path, f"must be an integer ({kind}), not {_kind(value)}")
        if not low <= value <= high:
            raise _Mismatch(path, f"is out of range for {kind}")
        return value
    if kind in ("float", "double"):
        if not (is_int or isinstance(value, float)):
            raise _Mismatch(path, f"must be a number ({kind}), not {_kind(value)}")
        return float(value)
    if kind == "string":
        return _string(value, path)
    if kind == "bytes":
        return _bytes(value, path)
    raise _Mismatch(path, f"has a schema type flowproof cannot check: {kind!r}")


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _Mismatch(path, f"must be a string, not {_kind(value)}")
    problem = unstorable(value)
    if problem:
        raise _Mismatch(path, problem)
    return value


def _bytes(value: Any, path: str) -> bytes:
    # JSON carries bytes as a string of code points 0-255, as Avro's JSON encoding does.
    if not isinstance(value, str):
        raise _Mismatch(path, f"must be a string of bytes, not {_kind(value)}")
    if "\x00" in value:
        raise _Mismatch(path, unstorable(value) or "")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise _Mismatch(path, "has characters outside 0-255 for bytes") from None


def _timestamp(value: Any, path: str, micros: int) -> dt.datetime | int:
    # Readers turn the number back into a datetime: one outside years 1-9999 (UTC) would be
    # written here and then fail every consumer, so it is refused here.
    out_of_range = f"is outside the years 1 to 9999 (UTC) that readers can hold: {value!r}"
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            _EPOCH + dt.timedelta(microseconds=value * micros)
        except OverflowError:
            raise _Mismatch(path, out_of_range) from None
        return value  # already in the schema's unit since the epoch
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise _Mismatch(path, f"is not an RFC 3339 timestamp: {value!r}") from None
        if parsed.tzinfo is None:
            raise _Mismatch(path, "must carry a time zone (e.g. Z)")
        try:
            parsed.astimezone(dt.UTC)
        except OverflowError:
            raise _Mismatch(path, out_of_range) from None
        return parsed
    raise _Mismatch(path, f"must be an RFC 3339 timestamp or an integer, not {_kind(value)}")
