"""What one consumer instance needs to know, taken from the settings once."""

from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass, replace
from typing import Any

from flowproof.core.config import Settings, Sink
from flowproof.core.errors import ConfigError
from flowproof.core.identifiers import validate_group_name
from flowproof.core.sinks import SinkSpec, sink_spec

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._\-]")


def default_consumer_name() -> str:
    """`<host>-<pid>-<random>`: unique per process, so a restart is a new group member."""
    host = _NAME_UNSAFE.sub("-", socket.gethostname())[:100] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """One consumer's configuration (FLOWPROOF_CONSUMER_* and the shared names)."""

    sink: Sink
    group: str
    name: str
    prefix: str  # stream or topic prefix
    aggregatetypes: tuple[str, ...]  # empty: discover every stream/topic under the prefix
    batch_size: int
    block_ms: int
    fetch_max_wait_ms: int
    discovery_interval: float
    claim_idle_ms: int
    max_deliveries: int
    handler_attempts: int
    max_message_bytes: int
    sample_ratio: float
    shutdown_timeout: float

    @classmethod
    def from_settings(
        cls, settings: Settings, *, sink: Sink, group: str | None = None, **overrides: Any
    ) -> ConsumerOptions:
        """The options of a consumer of `sink` in `group` (default FLOWPROOF_CONSUMER_GROUP);
        ConfigError for a group name Redis and Kafka should not get."""
        try:
            group_name = validate_group_name(group or settings.consumer_group)
        except ValueError as exc:
            raise ConfigError(f"group: {exc}") from None
        options = cls(
            sink=sink,
            group=group_name,
            name=settings.consumer_name or default_consumer_name(),
            prefix=sink_spec(sink).prefix(settings),
            aggregatetypes=settings.consumer_aggregatetypes,
            batch_size=settings.consumer_batch_size,
            block_ms=settings.consumer_block_ms,
            fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms,
            discovery_interval=settings.consumer_discovery_interval_seconds,
            claim_idle_ms=settings.consumer_claim_idle_ms,
            max_deliveries=settings.consumer_max_deliveries,
            handler_attempts=settings.consumer_handler_attempts,
            max_message_bytes=settings.consumer_max_message_bytes,
            sample_ratio=settings.receipt_sample_ratio,
            shutdown_timeout=settings.consumer_shutdown_timeout_seconds,
        )
        return replace(options, **overrides) if overrides else options

    @property
    def spec(self) -> SinkSpec:
        """The descriptor of the sink this consumer reads."""
        return sink_spec(self.sink)

    @property
    def labels(self) -> dict[str, str]:
        """The metric labels of this consumer: sink and group (bounded values)."""
        return {"sink": self.sink, "group": self.group}
