"""Schema ids on the wire: flowproof's embedded ids, or those of a schema registry.

Without FLOWPROOF_SCHEMA_REGISTRY_URL a writer schema's id is its embedded id
(`SchemaVersion.schema_id`, from its canonical form) and an id is looked up in the local
`SchemaRegistry`. With it, the relay registers each schema it publishes under the subject of the
configured Confluent naming strategy and frames with the id the registry gives; consumers look an
id up in the registry and match the schema it names to a local version by its Parsing Canonical
Form (a schema the local files do not have, e.g. a producer's newer version, is used as the
writer schema as it is and resolved to the local reader schema).

The subject is named after the Kafka topic (FLOWPROOF_TOPIC_PREFIX + aggregatetype) for both
sinks, so a Redis entry and a Kafka record of one event carry the same id. Both directions are
cached for the life of the process: an id never changes meaning. Lookups are async and done for a
whole batch before the synchronous encode and decode (`register`, `look_up`), so the hot path only
reads dictionaries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import fastavro
from fastavro.schema import SchemaParseException, to_parsing_canonical_form

from flowproof.core.config import Settings
from flowproof.core.logging import get_logger
from flowproof.core.routing import destination
from flowproof.schemas.registry import SchemaRegistry, SchemaVersion
from flowproof.schemas.registry_client import RegistryClient, SchemaRefused

log = get_logger(__name__)

Strategy = Literal["TopicNameStrategy", "RecordNameStrategy", "TopicRecordNameStrategy"]


def subject_name(strategy: Strategy, topic: str, event_type: str) -> str:
    """The subject of a value schema under Confluent's naming strategies."""
    if strategy == "RecordNameStrategy":
        return event_type
    if strategy == "TopicRecordNameStrategy":
        return f"{topic}-{event_type}"
    return f"{topic}-value"


def schema_text(schema: SchemaVersion) -> str:
    """The schema as flowproof registers it: the .avsc file's JSON, compact."""
    return json.dumps(schema.raw, separators=(",", ":"))


class SchemaIds:
    """Which id frames a writer schema, and which writer schema an id names."""

    def __init__(
        self,
        local: SchemaRegistry,
        client: RegistryClient | None = None,
        *,
        strategy: Strategy = "TopicNameStrategy",
        topic_prefix: str = "flowproof.",
        compatibility: str = "BACKWARD",
    ) -> None:
        self.local = local
        self.client = client
        self.strategy: Strategy = strategy
        self._topic_prefix = topic_prefix
        self._compatibility = compatibility
        self._by_canonical: dict[str, SchemaVersion] = {sv.canonical_form: sv for sv in local}
        self._ids: dict[tuple[str, str], int] = {}  # (subject, canonical form) -> id
        self._refused: dict[tuple[str, str], SchemaRefused] = {}
        self._subjects_set: set[str] = set()
        self._writers: dict[int, SchemaVersion | None] = {}

    @classmethod
    def from_settings(cls, settings: Settings, local: SchemaRegistry) -> SchemaIds:
        """Embedded ids, or the registry's when FLOWPROOF_SCHEMA_REGISTRY_URL is set."""
        return cls(
            local,
            RegistryClient.from_settings(settings),
            strategy=settings.schema_registry_subject_name_strategy,
            topic_prefix=settings.topic_prefix,
            compatibility=settings.schema_registry_compatibility,
        )

    @property
    def remote(self) -> bool:
        return self.client is not None

    async def check(self) -> None:
        """ComponentUnreachable when a registry is configured and does not answer."""
        if self.client is not None:
            await self.client.check()

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def subject(self, aggregatetype: str, event_type: str) -> str:
        """The subject events of `event_type` with `aggregatetype` are registered under."""
        topic = destination(self._topic_prefix, aggregatetype)
        return subject_name(self.strategy, topic, event_type)

    # --- writers (the relay) -------------------------------------------------------------------

    async def register(self, pairs: Iterable[tuple[str, SchemaVersion]]) -> None:
        """Register each (aggregatetype, writer schema) not registered yet by this process.

        A schema the registry refuses is remembered: `writer_id` raises SchemaRefused for it
        (the relay parks those events). ComponentUnreachable when the registry does not answer.
        """
        if self.client is None:
            return
        for aggregatetype, schema in pairs:
            subject = self.subject(aggregatetype, schema.event_type)
            key = (subject, schema.canonical_form)
            if key in self._ids or key in self._refused:
                continue
            if subject not in self._subjects_set:
                await self._ensure_compatibility(subject)
            try:
                schema_id = await self.client.register(subject, schema_text(schema))
            except SchemaRefused as exc:
                if self.strategy == "TopicNameStrategy":
                    # The usual cause: a topic that carries several event types (record names).
                    exc = SchemaRefused(
                        subject,
                        exc.status,
                        f"{exc.detail} (one subject per topic holds one record type under "
                        "compatibility rules: for a topic with several event types set "
                        "FLOWPROOF_SCHEMA_REGISTRY_SUBJECT_NAME_STRATEGY=TopicRecordNameStrategy "
                        "or RecordNameStrategy)",
                    )
                log.warning("schema_registry.refused", subject=subject, error=exc.detail)
                self._refused[key] = exc
                continue
            log.info(
                "schema_registry.registered",
                subject=subject,
                event_type=schema.event_type,
                version=schema.version,
                schema_id=schema_id,
            )
            self._ids[key] = schema_id
            self._writers.setdefault(schema_id, schema)

    async def _ensure_compatibility(self, subject: str) -> None:
        # A registry's default level may be NONE (Apicurio's is): a subject flowproof creates
        # gets the configured level; an existing subject keeps the level its owners chose.
        assert self.client is not None
        if await self.client.compatibility(subject) is None:
            await self.client.set_compatibility(subject, self._compatibility)
            log.info(
                "schema_registry.compatibility_set", subject=subject, level=self._compatibility
            )
        self._subjects_set.add(subject)

    def writer_id(self, aggregatetype: str, schema: SchemaVersion) -> int:
        """The id that frames `schema` for events of `aggregatetype`; see `register`."""
        if self.client is None:
            return schema.schema_id
        key = (self.subject(aggregatetype, schema.event_type), schema.canonical_form)
        found = self._ids.get(key)
        if found is not None:
            return found
        refused = self._refused.get(key)
        if refused is not None:
            raise refused
        raise RuntimeError(f"{key[0]}: schema not registered; call register() before encoding")

    # --- readers (consumers) -------------------------------------------------------------------

    async def look_up(self, schema_ids: Iterable[int]) -> None:
        """Look up the ids not seen yet; ComponentUnreachable when the registry does not answer."""
        if self.client is None:
            return
        for schema_id in set(schema_ids):
            if schema_id in self._writers:
                continue
            text = await self.client.schema_by_id(schema_id)
            self._writers[schema_id] = self._writer_of(schema_id, text)

    def _writer_of(self, schema_id: int, text: str | None) -> SchemaVersion | None:
        if text is None:
            log.warning("schema_registry.unknown_id", schema_id=schema_id)
            return None
        try:
            raw = json.loads(text)
            parsed = fastavro.parse_schema(raw)
            canonical: str = to_parsing_canonical_form(parsed)
        except (ValueError, TypeError, KeyError, SchemaParseException) as exc:
            log.warning("schema_registry.unreadable_schema", schema_id=schema_id, error=str(exc))
            return None
        known = self._by_canonical.get(canonical)
        if known is not None:
            return known
        if not isinstance(parsed, dict) or parsed.get("type") != "record":
            return None
        # A writer schema the local files do not have: read with it, resolved to the reader.
        return SchemaVersion(
            event_type=parsed["name"],
            version=0,
            raw=raw,
            parsed=parsed,
            canonical_form=canonical,
            path=Path(f"<schema registry id {schema_id}>"),
        )

    def by_id(self, schema_id: int) -> SchemaVersion | None:
        """The writer schema `schema_id` names (after `look_up`, with a registry), or None."""
        if self.client is None:
            return self.local.by_id(schema_id)
        return self._writers.get(schema_id)

    def latest(self, event_type: str) -> SchemaVersion:
        """The local reader schema of `event_type`; UnknownEventType when there is none."""
        return self.local.latest(event_type)
