"""Helpers of the hostile-input tests: the hypothesis profile, and strategies for payloads that fit
an Avro schema, mutations of them, random JSON, hostile text and framed messages.

Every hypothesis run of these tests is bounded (`bounded(n)`) and derandomized, so the suite's
time is known and a failure is reproduced by running the test again; the example database is off
(nothing is written to `.hypothesis/`).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from flowproof.schemas import framing
from flowproof.schemas.envelope import Envelope
from flowproof.schemas.payload import collect_named
from flowproof.schemas.registry import SchemaRegistry, SchemaVersion, load_registry

T = TypeVar("T")

PROFILE = "flowproof-hostile"
settings.register_profile(
    PROFILE,
    deadline=None,
    database=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
HOSTILE = settings.get_profile(PROFILE)


def bounded(max_examples: int) -> settings:
    """The hostile profile with at most `max_examples` examples."""
    return settings(HOSTILE, max_examples=max_examples)


def sample(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """`count` examples of `strategy` (deterministic), for tests that send them through the real
    services once instead of once per example."""
    found: list[T] = []

    @settings(HOSTILE, max_examples=count, phases=[Phase.generate])
    @given(strategy)
    def collect(value: T) -> None:
        found.append(value)

    collect()
    return found


REGISTRY: SchemaRegistry = load_registry(None)
EVENT_TYPES = REGISTRY.types()
ALL_VERSIONS: list[SchemaVersion] = [v for t in EVENT_TYPES for v in REGISTRY.versions(t)]

# Microseconds since the epoch of the first and last instants a Python datetime holds.
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MIN_MICROS = int((dt.datetime(1, 1, 1, tzinfo=dt.UTC) - _EPOCH) / dt.timedelta(microseconds=1))
MAX_MICROS = int(
    (dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC) - _EPOCH)
    / dt.timedelta(microseconds=1)
)

# --- text -----------------------------------------------------------------------------------------

# Text PostgreSQL can store (no NUL) and UTF-8 can encode (no lone surrogates).
storable_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
# Anything a Python str may hold, biased towards what breaks things.
_NASTY_CHARS = st.sampled_from(
    [
        "\x00",
        "\x01",
        "\x1b",
        "\x7f",
        "\n",
        "\r",
        "\t",
        "\u2028",
        "\ufeff",
        "\ud800",
        "\udcff",
        "\U0001f600",
        "'",
        '"',
        "\\",
        ";",
        "%",
        "*",
        "{",
        "}",
    ]
)
nasty_text = st.lists(st.one_of(st.characters(), _NASTY_CHARS), max_size=12).map("".join)

# Names an attacker or a typo might give a configurable identifier.
HOSTILE_NAMES = [
    "",
    " ",
    "flowproof_outbox; DROP TABLE flowproof_receipts; --",
    "x'; DELETE FROM flowproof_outbox; --",
    'x"; DROP TABLE t; --',
    "a b",
    "tab\tname",
    "line\nbreak",
    "flowproof_outbox\n",
    "\nflowproof_outbox",
    "flowproof_\u043eutbox",  # a Cyrillic o
    "ﬂowproof",  # the fl ligature
    "\uff26\uff2c\uff2f\uff37",  # fullwidth FLOW
    "flow\u200bproof",  # zero-width space
    "x" * 300,
    "orders*",
    "orders?",
    "[orders]",
    "pre\\fix",
    "$(touch /tmp/x)",
    "`id`",
    "{{outbox}}",
    "%s",
    "Ä",
    "\u0130",  # I with a dot: lower() gives two code points
]

# --- JSON -----------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    storable_text,
)
random_json: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(storable_text, inner, max_size=3)
    ),
    max_leaves=10,
)

_TIMESTAMPS = ("timestamp-millis", "timestamp-micros")


def _timestamp_value(logical: str) -> st.SearchStrategy[Any]:
    scale = 1000 if logical == "timestamp-millis" else 1
    instants = st.datetimes(
        min_value=dt.datetime(1, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.just(dt.UTC),
    )
    return st.one_of(
        st.integers(MIN_MICROS // scale + 1, MAX_MICROS // scale - 1),
        instants.map(lambda d: d.isoformat()),
    )


def fitting(  # noqa: PLR0911 - one case per Avro type
    schema: Any, named: dict[str, Any] | None = None
) -> st.SearchStrategy[Any]:
    """JSON values that fit the Avro `schema` (as flowproof's payload rules read JSON)."""
    named = collect_named(schema) if named is None else named
    if isinstance(schema, str) and schema in named:
        return st.deferred(lambda: fitting(named[schema], named))
    if isinstance(schema, list):
        return st.one_of([fitting(branch, named) for branch in schema])
    if isinstance(schema, dict):
        kind = schema["type"]
        if schema.get("logicalType") in _TIMESTAMPS and kind == "long":
            return _timestamp_value(schema["logicalType"])
        if kind in ("record", "error"):
            required = {
                f["name"]: fitting(f["type"], named) for f in schema["fields"] if "default" not in f
            }
            optional = {
                f["name"]: fitting(f["type"], named) for f in schema["fields"] if "default" in f
            }
            return st.fixed_dictionaries(required, optional=optional)
        if kind == "enum":
            return st.sampled_from(schema["symbols"])
        if kind == "array":
            return st.lists(fitting(schema["items"], named), max_size=4)
        if kind == "map":
            return st.dictionaries(storable_text, fitting(schema["values"], named), max_size=3)
        if kind == "fixed":
            latin1 = st.characters(min_codepoint=1, max_codepoint=255)
            return st.text(latin1, min_size=schema["size"], max_size=schema["size"])
        return fitting(kind, named)
    return _PRIMITIVES[schema]


_PRIMITIVES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "float": st.floats(allow_nan=False, allow_infinity=False, width=32),
    "double": st.floats(allow_nan=False, allow_infinity=False),
    "string": storable_text,
    "bytes": st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=8),
}


def fitting_payload(version: SchemaVersion) -> st.SearchStrategy[dict[str, Any]]:
    return fitting(version.parsed)


Path = tuple[str | int, ...]


def json_paths(value: Any, path: Path = ()) -> Iterator[Path]:
    """Every path into a JSON value (the root is `()`)."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from json_paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from json_paths(item, (*path, index))


def _replace(value: Any, path: Path, new: Callable[[Any], Any]) -> Any:
    if not path:
        return new(value)
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    copy = list(value)
    copy[head] = _replace(copy[head], rest, new)  # type: ignore[index]
    return copy


_DELETE = object()


def _without(value: Any, path: Path) -> Any:
    parent, last = path[:-1], path[-1]

    def drop(container: Any) -> Any:
        if isinstance(container, dict):
            return {k: v for k, v in container.items() if k != last}
        return [v for i, v in enumerate(container) if i != last]

    return _replace(value, parent, drop)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    """A value of `base` with one thing changed: a value replaced by random JSON or hostile text,
    a key removed or added, or the whole value replaced."""
    value = draw(base)
    paths = list(json_paths(value))
    path = draw(st.sampled_from(paths))
    how = draw(st.sampled_from(["replace", "nasty", "delete", "add", "root"]))
    if how == "replace":
        junk = draw(random_json)
        return _replace(value, path, lambda _old: junk)
    if how == "nasty":
        text = draw(nasty_text)
        return _replace(value, path, lambda _old: text)
    if how == "delete" and path:
        return _without(value, path)
    if how == "add":
        key, junk = draw(storable_text), draw(random_json)
        return _replace(
            value, path, lambda old: {**old, key: junk} if isinstance(old, dict) else old
        )
    return draw(random_json)


def schema_field_names(schema: Any) -> set[str]:
    """Every field name declared anywhere in `schema`."""
    names: set[str] = set()
    for named in collect_named(schema).values():
        names |= {f["name"] for f in named.get("fields", ())}
    return names


def join_path(path: Path) -> str:
    """A JSON path as schemas.payload names fields: `lines[0].sku`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = f"{text}.{part}" if text else part
    return text


def candidate_fields(schema: Any, payload: Any) -> set[str]:
    """The field names a PayloadInvalid about `payload` may give: a path into the payload, or a
    schema field under one of its objects (a required field that is missing)."""
    declared = schema_field_names(schema)
    found = set()
    for path in json_paths(payload):
        found.add(join_path(path))
        if isinstance(_get(payload, path), dict):
            found |= {join_path((*path, name)) for name in declared}
    return found - {""}


def _get(value: Any, path: Path) -> Any:
    for part in path:
        value = value[part]
    return value


def same_under_schema(  # noqa: PLR0911, PLR0912 - one case per Avro type
    schema: Any, decoded: Any, original: Any, named: dict[str, Any]
) -> bool:
    """Whether `decoded` (fastavro's datum) is the JSON `original` read with `schema`: defaults
    filled in, timestamps as instants."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        return any(
            _fits_branch(b, original, named) and same_under_schema(b, decoded, original, named)
            for b in schema
        )
    if isinstance(schema, dict):
        kind = schema["type"]
        logical = schema.get("logicalType")
        if logical in _TIMESTAMPS and kind == "long":
            scale = 1000 if logical == "timestamp-millis" else 1
            if isinstance(original, int):
                expected = _EPOCH + dt.timedelta(microseconds=original * scale)
            else:
                expected = dt.datetime.fromisoformat(original)
            return bool(decoded == expected)
        if kind in ("record", "error"):
            return (
                isinstance(decoded, dict)
                and all(
                    same_under_schema(f["type"], decoded[f["name"]], original[f["name"]], named)
                    if f["name"] in original
                    else decoded[f["name"]] == f["default"]
                    for f in schema["fields"]
                )
                and set(decoded) == {f["name"] for f in schema["fields"]}
            )
        if kind == "array":
            return len(decoded) == len(original) and all(
                same_under_schema(schema["items"], d, o, named)
                for d, o in zip(decoded, original, strict=True)
            )
        if kind == "map":
            return set(decoded) == set(original) and all(
                same_under_schema(schema["values"], decoded[k], original[k], named)
                for k in original
            )
        if kind in ("enum",):
            return bool(decoded == original)
        if kind == "fixed":
            return bool(decoded == original.encode("latin-1"))
        return same_under_schema(kind, decoded, original, named)
    if schema == "bytes":
        return bool(decoded == original.encode("latin-1"))
    if schema in ("float", "double"):
        return bool(decoded == float(original)) if schema == "double" else True
    return type(decoded) is type(original) and bool(decoded == original)


def _fits_branch(branch: Any, value: Any, named: dict[str, Any]) -> bool:
    if isinstance(branch, str) and branch in named:
        branch = named[branch]
    kind = branch["type"] if isinstance(branch, dict) else branch
    checks: dict[str, Callable[[Any], bool]] = {
        "null": lambda v: v is None,
        "boolean": lambda v: isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
        "long": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "record": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
    }
    check = checks.get(kind) if isinstance(kind, str) else None
    return check(value) if check else True


# --- messages -------------------------------------------------------------------------------------


def envelope_for(version: SchemaVersion, aggregatetype: str = "orders") -> Envelope:
    return Envelope(
        id=uuid.uuid4(),
        type=version.event_type,
        aggregatetype=aggregatetype,
        aggregateid="agg-h",
        created_at=dt.datetime.now(dt.UTC),
    )


@st.composite
def framed(draw: st.DrawFn) -> tuple[SchemaVersion, bytes]:
    """A valid framed message of some schema version, with its writer schema."""
    version = draw(st.sampled_from(ALL_VERSIONS))
    payload = draw(fitting_payload(version))
    return version, framing.encode(version, version.validate(payload))


@st.composite
def mutated_bytes(  # noqa: PLR0911 - one case per mutation
    draw: st.DrawFn, base: st.SearchStrategy[bytes]
) -> bytes:
    """`base` bytes with a byte flipped, inserted or removed, cut short, extended, or with
    another magic byte or schema id."""
    data = draw(base)
    how = draw(st.sampled_from(["flip", "insert", "remove", "cut", "extend", "magic", "id"]))
    at = draw(st.integers(0, max(len(data) - 1, 0)))
    if how == "flip" and data:
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if how == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    if how == "remove" and data:
        return data[:at] + data[at + 1 :]
    if how == "cut":
        return data[:at]
    if how == "extend":
        return data + draw(st.binary(min_size=1, max_size=8))
    if how == "magic" and data:
        return bytes([draw(st.integers(1, 255))]) + data[1:]
    if how == "id" and len(data) >= framing.HEADER_SIZE:
        return data[:1] + draw(st.binary(min_size=4, max_size=4)) + data[5:]
    return data


def framed_value() -> st.SearchStrategy[bytes]:
    return framed().map(lambda pair: pair[1])


hostile_values = st.one_of(
    st.binary(max_size=64),
    st.binary(max_size=8).map(lambda b: b"\x00" + b),
    mutated_bytes(framed_value()),
    mutated_bytes(mutated_bytes(framed_value())),
)

# Values of envelope fields: valid ones, text with controls, invalid UTF-8.
_BAD_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"a\x80b", b"\xc0\xaf"]
hostile_field_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(_BAD_UTF8),
    nasty_text.map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.sampled_from(
        [
            b"",
            b"0001-01-01T00:00:00+14:00",
            b"9999-12-31T23:59:59-14:00",
            b"0001-01-01T00:00:00Z",
            b"9999-12-31T23:59:59.999999Z",
            b"2024-02-30T00:00:00Z",
            b"2024-01-01T00:00:00",
            b"NaN",
            b"00000000-0000-0000-0000-000000000000",
            b"orders\x00",
            b"orders.dlq",
            b"orders\n",
        ]
    ),
)
ENVELOPE_FIELDS = ("id", "type", "aggregatetype", "aggregateid", "created_at", "traceparent")


@st.composite
def hostile_envelope(draw: st.DrawFn, base: dict[str, bytes]) -> dict[str, bytes]:
    """The envelope fields `base` with some replaced, removed, or added (binary names too)."""
    fields = dict(base)
    for name in draw(st.lists(st.sampled_from(ENVELOPE_FIELDS), min_size=1, max_size=3)):
        if draw(st.booleans()):
            fields[name] = draw(hostile_field_values)
        else:
            fields.pop(name, None)
    return fields


def as_json(value: Any) -> str | None:
    """`value` as JSON text, or None when it cannot be (what Outbox.check then reports)."""
    try:
        return json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return None
