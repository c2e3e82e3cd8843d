"""`flowproof schemas check`: validity of every .avsc and compatibility between versions.

The first test is the CI guard: a breaking change to a shipped schema in schemas/avro fails it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import fastavro
import pytest
from typer.testing import CliRunner

from flowproof.cli import app
from flowproof.schemas.compat import Mode, check_schema_dirs, default_problems, incompatibilities
from flowproof.schemas.registry import load_schema_file

ALL_MODES = list(Mode)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_shipped_schemas_are_valid_and_compatible(mode: Mode) -> None:
    report = check_schema_dirs([], mode)
    assert report.problems == []
    assert {v.event_type for v in report.versions} >= {"orders.OrderPlaced", "flowproof.Canary"}
    assert report.pairs_checked >= 1  # orders.OrderPlaced v2 -> v1
    result = CliRunner().invoke(app, ["schemas", "check", "--mode", mode.value])
    assert result.exit_code == 0, result.output
    assert "compatible" in result.output


def record(name: str, fields: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "shop", "fields": fields, **extra}


def write_versions(folder: Path, name: str, *versions: dict[str, Any]) -> None:
    for number, schema in enumerate(versions, start=1):
        (folder / f"shop.{name}.v{number}.avsc").write_text(json.dumps(schema))


def f(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def enum(*symbols: str, **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": "Colour", "symbols": list(symbols), **extra}


def line(*fields: dict[str, Any], name: str = "Line") -> dict[str, Any]:
    return {"type": "array", "items": {"type": "record", "name": name, "fields": list(fields)}}


BASE = [f("id", "string")]
B, F = "backward", "forward"  # which direction breaks: B = new cannot read old, F = the reverse

# (case id, v1 fields, v2 fields, directions that break, field path named in the report)
CASES: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]], set[str], str]] = [
    ("add-required", BASE, [*BASE, f("size", "int")], {B}, "size"),
    ("add-optional", BASE, [*BASE, f("size", "int", default=0)], set(), ""),
    ("remove-required", [*BASE, f("note", "string")], BASE, {F}, "note"),
    ("remove-defaulted", [*BASE, f("note", "string", default="")], BASE, set(), ""),
    ("long-to-int", [*BASE, f("n", "long")], [*BASE, f("n", "int")], {B}, "n"),
    ("int-to-long", [*BASE, f("n", "int")], [*BASE, f("n", "long")], {F}, "n"),
    ("int-to-double", [*BASE, f("n", "int")], [*BASE, f("n", "double")], {F}, "n"),
    ("string-to-bytes", [*BASE, f("s", "string")], [*BASE, f("s", "bytes")], set(), ""),
    ("string-to-int", [*BASE, f("s", "string")], [*BASE, f("s", "int")], {B, F}, "s"),
    (
        "enum-symbol-removed",
        [*BASE, f("c", enum("RED", "GREEN", "BLUE"))],
        [*BASE, f("c", enum("RED", "GREEN"))],
        {B},
        "c",
    ),
    (
        "enum-symbol-added",
        [*BASE, f("c", enum("RED", "GREEN"))],
        [*BASE, f("c", enum("RED", "GREEN", "BLUE"))],
        {F},
        "c",
    ),
    (
        "enum-symbol-added-with-default",
        [*BASE, f("c", enum("RED", "GREEN", default="RED"))],
        [*BASE, f("c", enum("RED", "GREEN", "BLUE", default="RED"))],
        set(),
        "",
    ),
    (
        "nested-required-in-array",
        [*BASE, f("lines", line(f("sku", "string")))],
        [*BASE, f("lines", line(f("sku", "string"), f("weight", "int")))],
        {B},
        "lines[].weight",
    ),
    (
        "map-values-narrowed",
        [*BASE, f("tags", {"type": "map", "values": "long"})],
        [*BASE, f("tags", {"type": "map", "values": "int"})],
        {B},
        "tags{}",
    ),
    (
        "optional-made-required",
        [*BASE, f("coupon", ["null", "string"], default=None)],
        [*BASE, f("coupon", "string", default="")],
        {B},
        "coupon",
    ),
    (
        "union-branch-added",
        [*BASE, f("v", ["null", "string"], default=None)],
        [*BASE, f("v", ["null", "string", "long"], default=None)],
        {F},
        "v",
    ),
    (
        "fixed-resized",
        [*BASE, f("h", {"type": "fixed", "name": "Hash", "size": 16})],
        [*BASE, f("h", {"type": "fixed", "name": "Hash", "size": 32})],
        {B, F},
        "h",
    ),
    (
        "nested-record-renamed",
        [*BASE, f("lines", line(f("sku", "string")))],
        [*BASE, f("lines", line(f("sku", "string"), name="Article"))],
        {B, F},
        "lines[]",
    ),
    (
        "field-renamed-with-alias",
        [*BASE, f("qty", "int")],
        [*BASE, f("quantity", "int", aliases=["qty"])],
        {F},
        "qty",
    ),
]


def breaks(mode: Mode, directions: set[str]) -> bool:
    return (mode.backward and B in directions) or (mode.forward and F in directions)


Case = tuple[str, list[dict[str, Any]], list[dict[str, Any]], set[str], str]


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_change_breaks_exactly_in_the_modes_it_should(
    tmp_path: Path, mode: Mode, case: Case
) -> None:
    _, v1, v2, directions, path = case
    write_versions(tmp_path, "Item", record("Item", v1), record("Item", v2))
    report = check_schema_dirs([tmp_path], mode)
    if not breaks(mode, directions):
        assert report.problems == []
        return
    messages = [str(p) for p in report.problems]
    assert messages, f"{mode} should refuse this change"
    assert all(m.startswith("shop.Item v2 -> v1: ") for m in messages)
    assert any(f"field {path!r}" in m for m in messages), messages


@pytest.mark.parametrize(
    ("v1", "v2", "directions"), [c[1:4] for c in CASES], ids=[c[0] for c in CASES]
)
def test_compatible_directions_really_decode_with_fastavro(
    tmp_path: Path, v1: list[dict[str, Any]], v2: list[dict[str, Any]], directions: set[str]
) -> None:
    # The checker must agree with the runtime: what it lets through, fastavro can resolve.
    write_versions(tmp_path, "Item", record("Item", v1), record("Item", v2))
    old = load_schema_file(tmp_path / "shop.Item.v1.avsc")
    new = load_schema_file(tmp_path / "shop.Item.v2.avsc")
    pairs = {B: (new, old), F: (old, new)}  # direction -> (reader, writer)
    for direction, (reader, writer) in pairs.items():
        if direction in directions:
            assert incompatibilities(reader, writer)
            continue
        assert incompatibilities(reader, writer) == []
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, writer.parsed, sample(writer.parsed))
        buffer.seek(0)
        fastavro.schemaless_reader(buffer, writer.parsed, reader.parsed)


def sample(schema: Any, named: dict[str, Any] | None = None) -> Any:
    """A datum for `schema`: every union's last branch (not the null of an optional)."""
    named = {} if named is None else named
    if isinstance(schema, str):
        return named[schema] if schema in named else _primitive_sample(schema)
    if isinstance(schema, list):
        return sample(schema[-1], named)
    kind = schema["type"]
    if kind == "record":
        value = {fld["name"]: sample(fld["type"], named) for fld in schema["fields"]}
        named[schema["name"]] = value
        return value
    samplers = {
        "enum": lambda: schema["symbols"][0],
        "fixed": lambda: b"x" * schema["size"],
        "array": lambda: [sample(schema["items"], named)],
        "map": lambda: {"k": sample(schema["values"], named)},
    }
    return samplers[kind]() if kind in samplers else sample(kind, named)


def _primitive_sample(kind: str) -> Any:
    return {"null": None, "boolean": True, "int": 7, "long": 7, "float": 1.5, "double": 1.5,
            "bytes": b"ab", "string": "ab"}[kind]  # fmt: skip


def test_transitive_modes_compare_with_every_earlier_version(tmp_path: Path) -> None:
    write_versions(
        tmp_path,
        "Item",
        record("Item", BASE),
        record("Item", [*BASE, f("size", "int", default=0)]),
        # Reads v2 data, but not v1's. (A new version must change the writer schema: defaults
        # alone do not, hence the extra field.)
        record("Item", [*BASE, f("size", "int"), f("note", "string", default="")]),
    )
    assert check_schema_dirs([tmp_path], Mode.BACKWARD).ok
    report = check_schema_dirs([tmp_path], Mode.BACKWARD_TRANSITIVE)
    assert [p.subject for p in report.problems] == ["shop.Item v3 -> v1"]
    assert "field 'size'" in report.problems[0].message
    assert report.pairs_checked == 3 + 1  # v2-v1, v3-v2, v3-v1, and orders.OrderPlaced v2-v1


def test_forward_transitive(tmp_path: Path) -> None:
    write_versions(
        tmp_path,
        "Item",
        record("Item", [*BASE, f("size", "int")]),
        record("Item", [*BASE, f("size", "int", default=0), f("note", "string", default="")]),
        record("Item", [*BASE, f("note", "string", default="")]),  # v2 reads it, v1 cannot
    )
    assert check_schema_dirs([tmp_path], Mode.FORWARD).ok
    assert check_schema_dirs([tmp_path], Mode.FULL).ok
    for mode in (Mode.FORWARD_TRANSITIVE, Mode.FULL_TRANSITIVE):
        report = check_schema_dirs([tmp_path], mode)
        assert [str(p).split(":")[0] for p in report.problems] == ["shop.Item v3 -> v1"]
        assert "field 'size' is not in v3 and has no default in v1" in str(report.problems[0])


def test_breaking_change_to_a_shipped_type_fails_the_cli(tmp_path: Path) -> None:
    v2 = json.loads((Path("schemas/avro/orders.OrderPlaced.v2.avsc")).read_text())
    v2["fields"].append({"name": "gift_wrap", "type": "boolean"})
    (tmp_path / "orders.OrderPlaced.v3.avsc").write_text(json.dumps(v2))
    result = CliRunner().invoke(app, ["schemas", "check", "--dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert (
        "orders.OrderPlaced v3 -> v2: field 'gift_wrap' is not in v2 and has no default in v3"
    ) in result.output
    forward = CliRunner().invoke(
        app, ["schemas", "check", "--dir", str(tmp_path), "--mode", "forward"]
    )
    assert forward.exit_code == 0, forward.output  # v2 ignores the new field


def test_every_broken_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "shop.Bad.v1.avsc").write_text("{not json")
    (tmp_path / "shop.Worse.v1.avsc").write_text(json.dumps(record("Worse", [f("x", "strin")])))
    (tmp_path / "badname.avsc").write_text(json.dumps(record("X", BASE)))
    (tmp_path / "shop.Gap.v2.avsc").write_text(json.dumps(record("Gap", BASE)))
    write_versions(tmp_path, "Fine", record("Fine", BASE))
    report = check_schema_dirs([tmp_path], Mode.BACKWARD)
    subjects = {p.subject for p in report.problems}
    assert {"shop.Bad.v1.avsc", "shop.Worse.v1.avsc", "badname.avsc"} <= subjects
    assert any("shop.Gap" in p.message and "not 1..n" in p.message for p in report.problems)
    result = CliRunner().invoke(app, ["schemas", "check", "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "shop.Worse.v1.avsc: not a valid Avro schema" in result.output


def test_defaults_must_fit_their_type(tmp_path: Path) -> None:
    write_versions(
        tmp_path,
        "Item",
        record(
            "Item",
            [
                *BASE,
                f("opt", ["null", "string"], default="x"),
                f("c", enum("RED"), default="BLUE"),
                f("h", {"type": "fixed", "name": "Hash", "size": 2}, default="abc"),
                f("r", {"type": "record", "name": "R", "fields": [f("a", "int")]}, default={}),
                f("ok", ["string", "null"], default="x"),
                f(
                    "ok2",
                    {"type": "record", "name": "S", "fields": [f("a", "int", default=1)]},
                    default={},
                ),
            ],
        ),
    )
    version = load_schema_file(tmp_path / "shop.Item.v1.avsc")
    assert [p.path for p in default_problems(version)] == ["opt", "c", "h", "r"]
    report = check_schema_dirs([tmp_path], Mode.BACKWARD)
    assert any("first branch" in p.message for p in report.problems)


def test_configuration_errors_exit_2(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["schemas", "check", "--dir", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert "does not exist" in missing.output
    bad_mode = CliRunner().invoke(app, ["schemas", "check", "--mode", "SIDEWAYS"])
    assert bad_mode.exit_code == 2
    assert "FULL_TRANSITIVE" in bad_mode.output


def test_recursive_schemas_terminate() -> None:
    node = {
        "type": "record",
        "name": "shop.Node",
        "fields": [
            {"name": "value", "type": "long"},
            {"name": "next", "type": ["null", "shop.Node"], "default": None},
        ],
    }
    parsed = fastavro.parse_schema(node)
    assert incompatibilities(parsed, parsed) == []
