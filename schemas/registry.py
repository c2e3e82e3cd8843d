"""The schema registry: every `.avsc` of the event types, validated, with stable ids.

Files are named `<namespace>.<Name>.v<N>.avsc` and hold one Avro record whose full name is the
event type. A schema id is the first 31 bits of the SHA-256 of the schema's Parsing Canonical
Form (the Avro spec's fingerprinting basis): the same writer schema always gets the same id on
every machine, and an id names exactly one writer schema. The newest version of a type is its
writer schema (the relay encodes with it) and its reader schema (consumers resolve to it).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException, to_parsing_canonical_form

from flowproof.schemas.errors import SchemaFileError, UnknownEventType
from flowproof.schemas.payload import PayloadChecker

BUILTIN_DIR = Path(__file__).resolve().parent / "avro"
CANARY_TYPE = "flowproof.Canary"
_FILE_NAME = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)\.v(?P<version>[1-9]\d*)\.avsc$")

AvroSchema = dict[str, Any]


def schema_id_of(canonical_form: str) -> int:
    """The stable id of a writer schema, from its Parsing Canonical Form."""
    digest = hashlib.sha256(canonical_form.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


@dataclass(frozen=True, eq=False)
class SchemaVersion:
    """One version of one event type's schema."""

    event_type: str
    version: int
    raw: AvroSchema = field(repr=False)
    parsed: AvroSchema = field(repr=False)
    canonical_form: str = field(repr=False)
    path: Path

    @cached_property
    def schema_id(self) -> int:
        return schema_id_of(self.canonical_form)

    def validate(self, payload: Any) -> dict[str, Any]:
        """Check a JSON payload against this schema; return it in Avro's Python form.

        Raises PayloadInvalid naming the first field that does not fit (including fields the
        schema does not have: they would be silently dropped on encoding).
        """
        return self._checker(payload)

    @cached_property
    def _checker(self) -> PayloadChecker:
        return PayloadChecker(self.event_type, self.parsed)


class SchemaRegistry:
    """Every schema version by event type and by schema id."""

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        self._by_type: dict[str, list[SchemaVersion]] = {}
        self._by_id: dict[int, SchemaVersion] = {}
        for sv in versions:
            clash = self._by_id.get(sv.schema_id)
            if clash is not None:
                raise SchemaFileError(
                    f"{sv.path.name} and {clash.path.name} have the same writer schema "
                    f"(id {sv.schema_id}); a new version must change the schema"
                )
            self._by_id[sv.schema_id] = sv
            self._by_type.setdefault(sv.event_type, []).append(sv)
        for event_type, found in self._by_type.items():
            found.sort(key=lambda sv: sv.version)
            numbers = [sv.version for sv in found]
            if numbers != list(range(1, len(numbers) + 1)):
                raise SchemaFileError(f"{event_type}: versions {numbers} are not 1..n")

    @classmethod
    def load(cls, *directories: Path) -> SchemaRegistry:
        """Load and validate the built-in schemas and those of `directories`."""
        paths: list[Path] = []
        for directory in (BUILTIN_DIR, *directories):
            if not directory.is_dir():
                raise SchemaFileError(f"schema directory {str(directory)!r} does not exist")
            paths += sorted(directory.glob("*.avsc"))
        return cls(load_schema_file(path) for path in paths)

    def types(self) -> list[str]:
        return sorted(self._by_type)

    def versions(self, event_type: str) -> list[SchemaVersion]:
        try:
            return list(self._by_type[event_type])
        except KeyError:
            raise UnknownEventType(event_type) from None

    def latest(self, event_type: str) -> SchemaVersion:
        """The writer schema the relay encodes `event_type` with, and consumers read it as."""
        return self.versions(event_type)[-1]

    def by_id(self, schema_id: int) -> SchemaVersion | None:
        return self._by_id.get(schema_id)

    def __iter__(self) -> Any:
        return iter(self._by_id.values())


def load_registry(schema_dir: Path | None) -> SchemaRegistry:
    """The registry of the built-in schemas plus those in `schema_dir` (FLOWPROOF_SCHEMA_DIR)."""
    return SchemaRegistry.load(*([schema_dir] if schema_dir is not None else []))


def load_schema_file(path: Path) -> SchemaVersion:
    """Parse and check one .avsc file, or raise SchemaFileError naming the file."""
    match = _FILE_NAME.match(path.name)
    if match is None:
        raise SchemaFileError(f"{path.name}: file name must be <namespace>.<Name>.v<N>.avsc")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SchemaFileError(f"{path.name}: not readable JSON: {exc}") from None
    try:
        parsed = fastavro.parse_schema(raw)
    except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise SchemaFileError(f"{path.name}: not a valid Avro schema: {exc}") from None
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise SchemaFileError(f"{path.name}: an event schema must be an Avro record")
    if parsed["name"] != match["type"]:
        raise SchemaFileError(
            f"{path.name}: the record's full name is {parsed['name']!r}, "
            f"but the file name says {match['type']!r}"
        )
    return SchemaVersion(
        event_type=parsed["name"],
        version=int(match["version"]),
        raw=raw,
        parsed=parsed,
        canonical_form=to_parsing_canonical_form(parsed),
        path=path,
    )
