"""Checking a JSON payload against an Avro record schema, naming the field that does not fit.

JSON has no timestamps, bytes or tagged unions, so the payload of an outbox row is JSON and this
module turns it into the Python values fastavro writes: RFC 3339 strings into datetimes for
`timestamp-*` logical types, plain values for unions (the branch is found by type). Fields the
schema does not declare are refused rather than silently dropped on encoding.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
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
_NAMED_KINDS = ("record", "error", "enum", "fixed")
_OUT_OF_RANGE = "is outside the years 1 to 9999 (UTC) that readers can hold: {!r}"


def unstorable(text: str) -> str | None:
    """Why PostgreSQL cannot store `text` (as text or in jsonb), or None when it can."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000), which PostgreSQL cannot store"
    return f"contains a lone surrogate ({found.group()!a}), which is not UTF-8"


class _Mismatch(Exception):
    """A value that does not fit; `parts` is its path, innermost first, filled on the way out."""

    def __init__(self, problem: str, parts: list[str | int] | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.parts: list[str | int] = [] if parts is None else parts

    @property
    def path(self) -> str:
        path = ""
        for name in reversed(self.parts):
            if isinstance(name, int):
                path = f"{path}[{name}]"
            else:
                path = f"{path}.{name}" if path else name
        return path


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


Convert = Callable[[Any], Any]


class PayloadChecker:
    """The check of one record schema, compiled once: a tree of small functions, one per schema
    node, that checks a JSON payload and converts it for fastavro in one walk.

    Nothing of the schema is looked up per event (names, field lists, branches, ranges are bound
    when the tree is built), and a field's path is only spelled out when it does not fit.
    """

    def __init__(self, event_type: str, schema: Schema) -> None:
        self.event_type = event_type
        self._convert = _Compiler(collect_named(schema)).compile(schema)

    def __call__(self, payload: Any) -> dict[str, Any]:
        """Return `payload` converted for fastavro, or raise PayloadInvalid naming the field."""
        if not isinstance(payload, dict):
            raise PayloadInvalid(
                self.event_type, "<payload>", f"must be a JSON object, not {_kind(payload)}"
            )
        try:
            converted: dict[str, Any] = self._convert(payload)
        except _Mismatch as exc:
            raise PayloadInvalid(self.event_type, exc.path or "<payload>", exc.problem) from None
        return converted


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


class _Compiler:
    """Builds the converter of a schema; named types are compiled once, by name, and may refer
    to themselves (a record holding a list of its own kind)."""

    def __init__(self, named: dict[str, Schema]) -> None:
        self._named = named
        self._compiled: dict[str, Convert] = {}

    def compile(self, schema: Schema) -> Convert:
        if isinstance(schema, str) and schema in self._named:
            return self._named_type(schema)
        if isinstance(schema, list):
            return self._union(schema)
        if isinstance(schema, dict):
            return self._complex(schema)
        return _primitive(schema)

    def _complex(self, schema: dict[str, Any]) -> Convert:
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical in _TIMESTAMPS and kind == "long":
            return _timestamp(_MICROS.get(logical, 1))
        if kind in _NAMED_KINDS:
            return self._named_type(schema["name"])
        if kind == "array":
            return _array(self.compile(schema["items"]))
        if kind == "map":
            return _map(self.compile(schema["values"]))
        return self.compile(kind)  # {"type": "string"} and the like

    def _named_type(self, name: str) -> Convert:
        found = self._compiled.get(name)
        if found is not None:
            return found
        cell: list[Convert] = []

        def forward(value: Any) -> Any:  # what refers to the type while it is being compiled
            return cell[0](value)

        self._compiled[name] = forward
        schema = self._named[name]
        kind = schema["type"]
        if kind == "enum":
            compiled = _enum(schema["symbols"])
        elif kind == "fixed":
            compiled = _fixed(schema["size"])
        else:
            compiled = self._record(schema)
        cell.append(compiled)
        self._compiled[name] = compiled
        return compiled

    def _record(self, schema: Schema) -> Convert:
        name = schema["name"]
        fields = [
            (fld["name"], self.compile(fld["type"]), "default" not in fld)
            for fld in schema["fields"]
        ]
        declared = frozenset(fld["name"] for fld in schema["fields"])

        def record(value: Any) -> Any:
            if not isinstance(value, dict):
                raise _Mismatch(f"must be an object, not {_kind(value)}")
            if not declared.issuperset(value):
                key = next(k for k in value if k not in declared)
                raise _Mismatch(f"is not a field of {name}", [key])
            out = {}
            for field_name, convert, required in fields:
                if field_name in value:
                    try:
                        out[field_name] = convert(value[field_name])
                    except _Mismatch as exc:
                        exc.parts.append(field_name)
                        raise
                elif required:
                    raise _Mismatch("is required and missing", [field_name])
            return out

        return record

    def _union(self, branches: list[Schema]) -> Convert:
        compiled = [self.compile(branch) for branch in branches]
        # The null branch takes None and nothing else, and no other branch takes None.
        nullable = "null" in branches
        tried = [c for b, c in zip(branches, compiled, strict=True) if b != "null"]

        def union(value: Any) -> Any:
            if value is None and nullable:
                return None
            for convert in tried:
                try:
                    return convert(value)
                except _Mismatch as exc:
                    if exc.parts:  # the branch fit the shape; a nested field is what is wrong
                        raise
            problems = []
            for convert in compiled:  # every branch's problem, in the schema's order
                try:
                    convert(value)
                except _Mismatch as exc:
                    problems.append(exc.problem)
            raise _Mismatch(f"fits none of the union's types ({'; '.join(problems)})")

        return union


def _enum(symbols: list[str]) -> Convert:
    known = frozenset(symbols)

    def enum(value: Any) -> Any:
        if not isinstance(value, str) or value not in known:
            raise _Mismatch(f"is {value!r}, not one of {symbols}")
        return value

    return enum


def _array(items: Convert) -> Convert:
    def array(value: Any) -> Any:
        if not isinstance(value, list):
            raise _Mismatch(f"must be an array, not {_kind(value)}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(items(item))
            except _Mismatch as exc:
                exc.parts.append(i)
                raise
        return out

    return array


def _map(values: Convert) -> Convert:
    def map_(value: Any) -> Any:
        if not isinstance(value, dict):
            raise _Mismatch(f"must be an object, not {_kind(value)}")
        for key in value:
            problem = unstorable(key) if isinstance(key, str) else None
            if problem:
                raise _Mismatch(f"has a key that {problem}", [key])
        out = {}
        for key, item in value.items():
            try:
                out[key] = values(item)
            except _Mismatch as exc:
                exc.parts.append(key)
                raise
        return out

    return map_


def _fixed(size: int) -> Convert:
    def fixed(value: Any) -> Any:
        data = _bytes(value)
        if len(data) != size:
            raise _Mismatch(f"must be {size} bytes, not {len(data)}")
        return data

    return fixed


def _null(value: Any) -> Any:
    if value is not None:
        raise _Mismatch(f"must be null, not {_kind(value)}")
    return None


def _boolean(value: Any) -> Any:
    if not isinstance(value, bool):
        raise _Mismatch(f"must be a boolean, not {_kind(value)}")
    return value


def _integer(kind: str) -> Convert:
    low, high = _INT32 if kind == "int" else _INT64

    def integer(value: Any) -> Any:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Mismatch(f"must be an integer ({kind}), not {_kind(value)}")
        if not low <= value <= high:
            raise _Mismatch(f"is out of range for {kind}")
        return value

    return integer


def _real(kind: str) -> Convert:
    def real(value: Any) -> Any:
        if type(value) is float:
            return value
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Mismatch(f"must be a number ({kind}), not {_kind(value)}")
        return float(value)

    return real


def _string(value: Any) -> Any:
    if not isinstance(value, str):
        raise _Mismatch(f"must be a string, not {_kind(value)}")
    if value.isascii() and "\x00" not in value:
        return value
    problem = unstorable(value)
    if problem:
        raise _Mismatch(problem)
    return value


def _unknown(kind: Any) -> Convert:
    def unknown(value: Any) -> Any:
        raise _Mismatch(f"has a schema type flowproof cannot check: {kind!r}")

    return unknown


def _primitive(kind: Any) -> Convert:
    if kind in ("int", "long"):
        return _integer(kind)
    if kind in ("float", "double"):
        return _real(kind)
    simple: dict[Any, Convert] = {
        "null": _null,
        "boolean": _boolean,
        "string": _string,
        "bytes": _bytes,
    }
    return simple.get(kind) or _unknown(kind)


def _bytes(value: Any) -> bytes:
    # JSON carries bytes as a string of code points 0-255, as Avro's JSON encoding does.
    if not isinstance(value, str):
        raise _Mismatch(f"must be a string of bytes, not {_kind(value)}")
    if "\x00" in value:
        raise _Mismatch(unstorable(value) or "")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise _Mismatch("has characters outside 0-255 for bytes") from None


def _timestamp(micros: int) -> Convert:
    def timestamp(value: Any) -> dt.datetime | int:
        # Readers turn the number back into a datetime: one outside years 1-9999 (UTC) would be
        # written here and then fail every consumer, so it is refused here.
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                _EPOCH + dt.timedelta(microseconds=value * micros)
            except OverflowError:
                raise _Mismatch(_OUT_OF_RANGE.format(value)) from None
            return value  # already in the schema's unit since the epoch
        if isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value)
            except ValueError:
                raise _Mismatch(f"is not an RFC 3339 timestamp: {value!r}") from None
            if parsed.tzinfo is None:
                raise _Mismatch("must carry a time zone (e.g. Z)")
            try:
                parsed.astimezone(dt.UTC)
            except OverflowError:
                raise _Mismatch(_OUT_OF_RANGE.format(value)) from None
            return parsed
        raise _Mismatch(f"must be an RFC 3339 timestamp or an integer, not {_kind(value)}")

    return timestamp
