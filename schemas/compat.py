"""Schema validity and compatibility between versions, by the Avro spec's resolution rules.

A reader can read data written with a writer schema when the spec's "Schema Resolution" succeeds:
records match by (unqualified) name or alias, every reader field either exists in the writer
(by name or alias) with a readable type or has a default; primitives match or promote
(int -> long -> float -> double, string <-> bytes); enums keep every symbol the writer may
write unless the reader has a default symbol; fixed sizes agree; arrays and maps resolve their
items and values; every branch a writer union may write is readable by the reader.

The modes are Confluent Schema Registry's: BACKWARD (the new version reads data of the previous
one), FORWARD (the previous version reads data of the new one), FULL (both); the `_TRANSITIVE`
variants check against every earlier version instead of only the previous one.
`check_schema_dirs` is what `flowproof schemas check` runs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowproof.core.errors import ConfigError
from flowproof.schemas.errors import SchemaFileError
from flowproof.schemas.payload import collect_named
from flowproof.schemas.registry import BUILTIN_DIR, SchemaRegistry, SchemaVersion, load_schema_file

Schema = Any  # a fastavro-parsed schema: str (primitive or name), list (union) or dict
Named = dict[str, Schema]

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
# Writer type -> reader types that can read it (the spec's promotions, plus itself).
_PROMOTIONS: dict[str, frozenset[str]] = {
    "int": frozenset({"int", "long", "float", "double"}),
    "long": frozenset({"long", "float", "double"}),
    "float": frozenset({"float", "double"}),
    "string": frozenset({"string", "bytes"}),
    "bytes": frozenset({"bytes", "string"}),
}


class Mode(enum.StrEnum):
    """Which versions must be able to read which (Confluent's compatibility levels)."""

    BACKWARD = "BACKWARD"
    BACKWARD_TRANSITIVE = "BACKWARD_TRANSITIVE"
    FORWARD = "FORWARD"
    FORWARD_TRANSITIVE = "FORWARD_TRANSITIVE"
    FULL = "FULL"
    FULL_TRANSITIVE = "FULL_TRANSITIVE"

    @property
    def transitive(self) -> bool:
        return self.value.endswith("_TRANSITIVE")

    @property
    def backward(self) -> bool:
        return not self.value.startswith("FORWARD")

    @property
    def forward(self) -> bool:
        return not self.value.startswith("BACKWARD")


@dataclass(frozen=True, slots=True)
class Incompatibility:
    """One reason a reader cannot read a writer's data; `path` names the field ('' = the root)."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"field {self.path!r} {self.problem}" if self.path else self.problem


@dataclass(frozen=True, slots=True)
class Problem:
    """One line of `flowproof schemas check`'s report: what is wrong and where."""

    subject: str  # a file name, or "<type> v<new> -> v<old>"
    message: str

    def __str__(self) -> str:
        return f"{self.subject}: {self.message}"


@dataclass
class CheckReport:
    """The outcome of checking the schemas of some directories in one mode."""

    mode: Mode
    versions: list[SchemaVersion] = field(default_factory=list)
    pairs_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """What `flowproof schemas check` prints: one line per problem, then a summary."""
        return _report_lines(self)


# --- resolution ---------------------------------------------------------------------------------


@dataclass
class _Side:
    """One schema of a resolution (reader or writer), with its named types and a label."""

    label: str
    named: Named

    def deref(self, schema: Schema) -> Schema:
        """Named references replaced by their definition, `{"type": "long", ...}` by "long"."""
        while True:
            if isinstance(schema, str):
                return self.named.get(schema, schema)
            if isinstance(schema, dict) and not isinstance(schema.get("type"), str):
                schema = schema["type"]  # {"type": {...}} or {"type": [...]}
                continue
            if isinstance(schema, dict) and schema["type"] in PRIMITIVES:
                return schema["type"]  # logical types resolve as their underlying type
            return schema


def _kind(schema: Schema) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, str):
        return schema
    return str(schema["type"])


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def describe(schema: Schema, side: _Side | None = None) -> str:
    """A short human name of a (dereferenced) schema: `long`, `enum orders.Currency`, ..."""
    schema = side.deref(schema) if side else schema
    kind = _kind(schema)
    if kind == "union":
        return "union [" + ", ".join(describe(b, side) for b in schema) + "]"
    if kind in ("record", "error", "enum", "fixed"):
        return f"{kind} {schema['name']}"
    if kind == "array":
        return f"array<{describe(schema['items'], side)}>"
    if kind == "map":
        return f"map<{describe(schema['values'], side)}>"
    return kind


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Resolver:
    """The spec's schema resolution, as a list of reasons it fails (empty when it succeeds)."""

    def __init__(self, reader: _Side, writer: _Side) -> None:
        self.reader = reader
        self.writer = writer
        # Record pairs being compared: a recursive schema resolves if it does on first sight.
        self._in_progress: set[tuple[str, str]] = set()

    def resolve(self, rschema: Schema, wschema: Schema, path: str) -> list[Incompatibility]:
        r = self.reader.deref(rschema)
        w = self.writer.deref(wschema)
        if _kind(w) == "union":
            return self._writer_union(r, w, path)
        if _kind(r) == "union":
            return self._reader_union(r, w, path)
        rk, wk = _kind(r), _kind(w)
        if wk in PRIMITIVES or rk in PRIMITIVES:
            if rk in _PROMOTIONS.get(wk, frozenset({wk})):
                return []
            return [self._cannot(path, r, w)]
        if rk != wk:
            return [self._cannot(path, r, w)]
        check = {
            "record": self._records,
            "error": self._records,
            "enum": self._enums,
            "fixed": self._fixed,
            "array": self._arrays,
            "map": self._maps,
        }[rk]
        return check(r, w, path)

    def _cannot(self, path: str, r: Schema, w: Schema) -> Incompatibility:
        return Incompatibility(
            path,
            f"is {describe(w)} in {self.writer.label} and {describe(r)} in {self.reader.label}, "
            f"which cannot read it",
        )

    def _names_match(self, r: Schema, w: Schema, path: str) -> Incompatibility | None:
        wanted = {_short(r["name"]), *(_short(a) for a in r.get("aliases", ()))}
        if _short(w["name"]) in wanted:
            return None
        return Incompatibility(
            path,
            f"is {r['type']} {r['name']} in {self.reader.label} but {w['type']} {w['name']} "
            f"in {self.writer.label}, and no alias matches",
        )

    def _records(self, r: Schema, w: Schema, path: str) -> list[Incompatibility]:
        mismatch = self._names_match(r, w, path)
        if mismatch:
            return [mismatch]
        key = (r["name"], w["name"])
        if key in self._in_progress:
            return []
        self._in_progress.add(key)
        try:
            writer_fields = {f["name"]: f for f in w["fields"]}
            found: list[Incompatibility] = []
            for rfield in r["fields"]:
                fpath = _join(path, rfield["name"])
                wfield = next(
                    (
                        writer_fields[name]
                        for name in (rfield["name"], *rfield.get("aliases", ()))
                        if name in writer_fields
                    ),
                    None,
                )
                if wfield is not None:
                    found += self.resolve(rfield["type"], wfield["type"], fpath)
                elif "default" not in rfield:
                    found.append(
                        Incompatibility(
                            fpath,
                            f"is not in {self.writer.label} and has no default "
                            f"in {self.reader.label}",
                        )
                    )
            return found
        finally:
            self._in_progress.discard(key)

    def _enums(self, r: Schema, w: Schema, path: str) -> list[Incompatibility]:
        mismatch = self._names_match(r, w, path)
        if mismatch:
            return [mismatch]
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if not missing or "default" in r:
            return []
        return [
            Incompatibility(
                path,
                f"has enum symbol(s) {', '.join(missing)} in {self.writer.label} that "
                f"{self.reader.label} lacks, and {self.reader.label}'s enum {r['name']} "
                "has no default symbol",
            )
        ]

    def _fixed(self, r: Schema, w: Schema, path: str) -> list[Incompatibility]:
        mismatch = self._names_match(r, w, path)
        if mismatch:
            return [mismatch]
        if r["size"] == w["size"]:
            return []
        return [
            Incompatibility(
                path,
                f"is fixed {w['name']} of {w['size']} bytes in {self.writer.label} but "
                f"{r['size']} bytes in {self.reader.label}",
            )
        ]

    def _arrays(self, r: Schema, w: Schema, path: str) -> list[Incompatibility]:
        return self.resolve(r["items"], w["items"], f"{path}[]")

    def _maps(self, r: Schema, w: Schema, path: str) -> list[Incompatibility]:
        return self.resolve(r["values"], w["values"], f"{path}{{}}")

    def _reader_union(self, r: list[Schema], w: Schema, path: str) -> list[Incompatibility]:
        # The spec takes the first reader branch that matches; any clean branch will do.
        attempts = [self.resolve(branch, w, path) for branch in r]
        if any(not problems for problems in attempts):
            return []
        same_kind = [
            problems
            for branch, problems in zip(r, attempts, strict=True)
            if _kind(self.reader.deref(branch)) == _kind(w)
        ]
        if same_kind:  # the branch meant for it exists; say what is wrong inside it
            return same_kind[0]
        return [
            Incompatibility(
                path,
                f"is {describe(w)} in {self.writer.label}, which no branch of "
                f"{self.reader.label}'s {describe(r, self.reader)} can read",
            )
        ]

    def _writer_union(self, r: Schema, w: list[Schema], path: str) -> list[Incompatibility]:
        found: list[Incompatibility] = []
        for branch in w:
            problems = self.resolve(r, branch, path)
            if _kind(r) != "union" and problems and _kind(self.writer.deref(branch)) != _kind(r):
                problems = [
                    Incompatibility(
                        path,
                        f"may be {describe(branch, self.writer)} in {self.writer.label} "
                        f"(a branch of {describe(w, self.writer)}), which "
                        f"{self.reader.label}'s {describe(r)} cannot read",
                    )
                ]
            found += problems
        return found


def incompatibilities(
    reader: SchemaVersion | Schema,
    writer: SchemaVersion | Schema,
    *,
    reader_label: str = "the reader",
    writer_label: str = "the writer",
) -> list[Incompatibility]:
    """Why `reader` cannot read data written with `writer` (empty when it can)."""
    rschema = reader.parsed if isinstance(reader, SchemaVersion) else reader
    wschema = writer.parsed if isinstance(writer, SchemaVersion) else writer
    resolver = _Resolver(
        _Side(reader_label, collect_named(rschema)), _Side(writer_label, collect_named(wschema))
    )
    return resolver.resolve(rschema, wschema, "")


# --- defaults -----------------------------------------------------------------------------------


def default_problems(schema: SchemaVersion | Schema) -> list[Incompatibility]:
    """Fields whose default does not fit the field's type (readers fail on those at runtime).

    The default of a union field must fit the union's first branch, as the spec (and Java
    readers) require.
    """
    parsed = schema.parsed if isinstance(schema, SchemaVersion) else schema
    side = _Side("", collect_named(parsed))
    found: list[Incompatibility] = []
    seen: set[str] = set()

    def walk(node: Schema, path: str) -> None:
        node = side.deref(node)
        kind = _kind(node)
        if kind == "union":
            for branch in node:
                walk(branch, path)
        elif kind in ("record", "error") and node["name"] not in seen:
            seen.add(node["name"])
            for fld in node["fields"]:
                fpath = _join(path, fld["name"])
                if "default" in fld and not _fits(side, fld["type"], fld["default"]):
                    found.append(
                        Incompatibility(
                            fpath,
                            f"has default {fld['default']!r}, which is not a valid "
                            f"{describe(fld['type'], side)}"
                            + (
                                " (a union's default must fit its first branch)"
                                if _kind(side.deref(fld["type"])) == "union"
                                else ""
                            ),
                        )
                    )
                walk(fld["type"], fpath)
        elif kind == "array":
            walk(node["items"], f"{path}[]")
        elif kind == "map":
            walk(node["values"], f"{path}{{}}")

    walk(parsed, "")
    return found


def _fits(side: _Side, schema: Schema, value: Any) -> bool:  # noqa: PLR0911 - one case per type
    schema = side.deref(schema)
    kind = _kind(schema)
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "union":
        return _fits(side, schema[0], value)
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("int", "long"):
        bits = 31 if kind == "int" else 63
        return is_int and -(2**bits) <= value < 2**bits
    if kind in ("float", "double"):
        return is_int or isinstance(value, float)
    if kind in ("string", "bytes"):
        return isinstance(value, str)
    if kind == "enum":
        return value in schema["symbols"]
    if kind == "fixed":
        return isinstance(value, str) and len(value) == schema["size"]
    if kind == "array":
        return isinstance(value, list) and all(_fits(side, schema["items"], v) for v in value)
    if kind == "map":
        return isinstance(value, dict) and all(
            _fits(side, schema["values"], v) for v in value.values()
        )
    if kind in ("record", "error"):
        return isinstance(value, dict) and all(
            _fits(side, f["type"], value[f["name"]]) if f["name"] in value else "default" in f
            for f in schema["fields"]
        )
    return False


# --- versions and directories -------------------------------------------------------------------


def _pairs(
    versions: Sequence[SchemaVersion], mode: Mode
) -> Iterable[tuple[SchemaVersion, SchemaVersion]]:
    """(new, old) pairs the mode compares: each version with its predecessor or all earlier."""
    for i, new in enumerate(versions):
        olds = versions[:i] if mode.transitive else versions[max(i - 1, 0) : i]
        for old in reversed(olds):
            yield new, old


def check_versions(versions: Sequence[SchemaVersion], mode: Mode) -> tuple[int, list[Problem]]:
    """Compare the versions of one event type (in version order); (pairs checked, problems)."""
    pairs = 0
    problems: list[Problem] = []
    for new, old in _pairs(versions, mode):
        pairs += 1
        subject = f"{new.event_type} v{new.version} -> v{old.version}"
        new_label, old_label = f"v{new.version}", f"v{old.version}"
        directions = []
        if mode.backward:
            directions.append((new, old, new_label, old_label))
        if mode.forward:
            directions.append((old, new, old_label, new_label))
        for reader, writer, rlabel, wlabel in directions:
            why = f"{rlabel} cannot read data written with {wlabel}; {mode.value} requires it"
            for found in incompatibilities(
                reader, writer, reader_label=rlabel, writer_label=wlabel
            ):
                problems.append(Problem(subject, f"{found} ({why})"))
    return pairs, problems


def check_schema_dirs(directories: Sequence[Path], mode: Mode = Mode.BACKWARD) -> CheckReport:
    """Validate every .avsc of the built-in directory and `directories`, then their versions.

    Each file is loaded on its own so that every broken file is reported, not only the first.
    A directory that does not exist raises SchemaFileError (a configuration error).
    """
    report = CheckReport(mode=mode)
    paths: list[Path] = []
    for directory in (BUILTIN_DIR, *directories):
        if not directory.is_dir():
            raise SchemaFileError(f"schema directory {str(directory)!r} does not exist")
        paths += sorted(directory.glob("*.avsc"))
    for path in paths:
        try:
            version = load_schema_file(path)
        except SchemaFileError as exc:
            report.problems.append(Problem(path.name, str(exc).removeprefix(f"{path.name}: ")))
            continue
        report.versions.append(version)
        for found in default_problems(version):
            report.problems.append(Problem(path.name, str(found)))
    try:
        SchemaRegistry(report.versions)  # id clashes and version gaps
    except SchemaFileError as exc:
        report.problems.append(Problem("registry", str(exc)))
    by_type: dict[str, list[SchemaVersion]] = {}
    for version in report.versions:
        by_type.setdefault(version.event_type, []).append(version)
    for event_type in sorted(by_type):
        versions = sorted(by_type[event_type], key=lambda v: v.version)
        pairs, problems = check_versions(versions, mode)
        report.pairs_checked += pairs
        report.problems += problems
    return report


def parse_mode(value: str) -> Mode:
    """The mode named `value` (any case), or ConfigError naming the choices."""
    try:
        return Mode(value.upper())
    except ValueError:
        choices = ", ".join(m.value for m in Mode)
        raise ConfigError(f"--mode: {value!r} is not one of {choices}") from None


def _report_lines(report: CheckReport) -> list[str]:
    types = len({v.event_type for v in report.versions})
    summary = (
        f"{len(report.versions)} schemas of {types} event types, "
        f"{report.pairs_checked} version pairs checked ({report.mode.value})"
    )
    if report.ok:
        return [f"{summary}: compatible"]
    return [str(p) for p in report.problems] + [f"{summary}: {len(report.problems)} problem(s)"]
