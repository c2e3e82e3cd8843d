"""`flowproof schemas check --registry`: the local schemas against a schema registry.

For every subject of the configured naming strategy that holds flowproof's event types (with
TopicNameStrategy: `<topic prefix>...-value`; RecordNameStrategy: the event type names;
TopicRecordNameStrategy: `<topic prefix>...-<event type>`), each registered version is compared
with the local files, and the newest local version of each event type there is checked with the
registry's own compatibility rules (its compatibility endpoint, under the subject's level): a
version the registry would refuse is a problem, as is a registered schema that the local reader
schema cannot read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fastavro
from fastavro.schema import SchemaParseException, to_parsing_canonical_form

from flowproof.schemas.compat import Incompatibility, Mode, Problem, incompatibilities
from flowproof.schemas.ids import Strategy, schema_text
from flowproof.schemas.registry import SchemaVersion
from flowproof.schemas.registry_client import RegistryClient


@dataclass
class RegistryReport:
    """What the registry check found: a line per subject and version, and the problems."""

    url: str
    lines: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    subjects: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        verdict = "compatible" if self.ok else f"{len(self.problems)} problem(s)"
        return f"schema registry {self.url}: {self.subjects} subject(s) checked: {verdict}"


@dataclass(frozen=True, slots=True)
class _Registered:
    version: int
    schema_id: int
    event_type: str | None  # the record's full name; None when not an Avro record
    canonical_form: str
    parsed: Any


def _latest_by_type(versions: Sequence[SchemaVersion]) -> dict[str, SchemaVersion]:
    latest: dict[str, SchemaVersion] = {}
    for version in versions:
        known = latest.get(version.event_type)
        if known is None or version.version > known.version:
            latest[version.event_type] = version
    return latest


def relevant(subject: str, strategy: Strategy, topic_prefix: str, types: set[str]) -> bool:
    """Whether `subject` is one the relay would register flowproof's event types under."""
    if strategy == "RecordNameStrategy":
        return subject in types
    if not subject.startswith(topic_prefix):
        return False
    if strategy == "TopicNameStrategy":
        return subject.endswith("-value")
    return any(subject.endswith(f"-{event_type}") for event_type in types)


def _parse(entry: dict[str, Any]) -> _Registered:
    try:
        parsed: Any = fastavro.parse_schema(json.loads(entry["schema"]))
        canonical = str(to_parsing_canonical_form(parsed))
    except (ValueError, TypeError, KeyError, SchemaParseException):
        return _Registered(int(entry["version"]), int(entry["id"]), None, "", None)
    record = isinstance(parsed, dict) and parsed.get("type") == "record"
    name = str(parsed["name"]) if record else None
    return _Registered(int(entry["version"]), int(entry["id"]), name, canonical, parsed)


async def check_registry(
    client: RegistryClient,
    versions: Sequence[SchemaVersion],
    *,
    strategy: Strategy,
    topic_prefix: str,
) -> RegistryReport:
    """Compare the local schema `versions` with every relevant subject of the registry."""
    report = RegistryReport(client.url)
    latest = _latest_by_type(versions)
    local_by_canonical = {v.canonical_form: v for v in versions}
    subjects = [
        s for s in await client.subjects() if relevant(s, strategy, topic_prefix, set(latest))
    ]
    report.subjects = len(subjects)
    for subject in sorted(subjects):
        registered = [_parse(entry) for entry in await client.versions(subject)]
        level = await client.compatibility(subject) or "the registry's default"
        seen_types: set[str] = set()
        for entry in registered:
            local = local_by_canonical.get(entry.canonical_form)
            where = f"version {entry.version} (id {entry.schema_id})"
            if local is not None:
                report.lines.append(f"{subject}: {where} is {local.event_type} v{local.version}")
                seen_types.add(local.event_type)
                continue
            if entry.event_type is None or entry.event_type not in latest:
                report.lines.append(f"{subject}: {where} is no local event type's schema")
                continue
            seen_types.add(entry.event_type)
            reader = latest[entry.event_type]
            found = incompatibilities(
                reader,
                entry.parsed,
                reader_label=f"local v{reader.version}",
                writer_label=f"registered {where}",
            )
            if found:
                for problem in found:
                    report.problems.append(Problem(subject, f"{problem}"))
            else:
                report.lines.append(
                    f"{subject}: {where} is a {entry.event_type} schema the local files do "
                    f"not have; local v{reader.version} reads it"
                )
        for event_type in sorted(seen_types):
            await _check_new_version(
                client, report, subject, latest[event_type], registered=registered, level=level
            )
    return report


async def _check_new_version(
    client: RegistryClient,
    report: RegistryReport,
    subject: str,
    local: SchemaVersion,
    *,
    registered: list[_Registered],
    level: str,
) -> None:
    """The newest local version of a type: registered already, or would the registry take it?"""
    if any(entry.canonical_form == local.canonical_form for entry in registered):
        return
    label = f"{local.event_type} v{local.version}"
    if await client.is_compatible(subject, schema_text(local)):
        report.lines.append(
            f"{subject}: {label} is not registered yet; the registry accepts it ({level})"
        )
        return
    newest = registered[-1]
    details = "; ".join(str(p) for p in _why(local, newest, level)) if newest.parsed else ""
    report.problems.append(
        Problem(
            subject,
            f"{label} is incompatible with the registered versions under the subject's "
            f"compatibility level {level}: the registry refuses it, and the relay would park "
            f"its events (schema_refused)" + (f"; {details}" if details else ""),
        )
    )


def _why(local: SchemaVersion, newest: _Registered, level: str) -> list[Incompatibility]:
    """flowproof's own reading of why: the directions the subject's level asks for."""
    mode = Mode(level) if level in Mode.__members__ else Mode.FULL
    theirs = f"registered version {newest.version}"
    ours = f"{local.event_type} v{local.version}"
    found: list[Incompatibility] = []
    if mode.backward:
        found += incompatibilities(local, newest.parsed, reader_label=ours, writer_label=theirs)
    if mode.forward:
        found += incompatibilities(newest.parsed, local, reader_label=theirs, writer_label=ours)
    return found
