"""The sinks flowproof publishes to, as data: one descriptor per sink, registered by name.

A descriptor says what every layer needs to know about a sink without importing its code: its
name (in `FLOWPROOF_SINKS`, `--sink`, metric labels and the `sink` column), its settings, how an
event is addressed there, what a position is, and what lag is measured over. The code of a sink
lives beside it, one module per side, each registered under the same name:

- `publisher/sinks.py`: how the relay publishes to it (`flowproof.publisher.sink.Sink`);
- `consumers/readers.py`: how a consumer reads it;
- `verifier/sinks.py`: how the verifier reads its positions and lag.

Adding a sink is its descriptor here, its settings in `flowproof.core.config`, and one module plus
one registration on each side (docs/design.md, "Adding a sink"). Nothing else names a sink.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flowproof.core.routing import destination


@dataclass(frozen=True, slots=True)
class SinkSpec:
    """What flowproof knows about one sink, independent of its client library."""

    name: str  # lower case; FLOWPROOF_SINKS, --sink, the `sink` label and column
    title: str  # for people: "Redis Streams"
    component: str  # the component name of reachability checks and errors
    destination_kind: str  # what a destination is called: "stream", "topic"
    lane_kind: str  # the unit lag and order are judged over: "stream", "partition"
    position_kind: str  # what a position in a lane is: "entry id", "offset"
    lag_unit: str  # what lag counts: "entries", "messages"
    prefix_setting: str  # the Settings field with the destination prefix
    settings: tuple[str, ...]  # the Settings fields of this sink (besides the prefix)
    lag_threshold_setting: str  # the Settings field: how far behind a group may be
    lag_grace_setting: str  # the Settings field: for how long
    keyed: bool  # each message carries the aggregateid as its key, which consumers check
    never_consumed: str  # how a lag check says a group has not started

    def prefix(self, settings: Any) -> str:
        """The destination prefix of this sink in `settings` (a flowproof Settings)."""
        value: str = getattr(settings, self.prefix_setting)
        return value

    def destination(self, settings: Any, aggregatetype: str) -> str:
        """Where events of `aggregatetype` go in this sink (InvalidDestination if nowhere)."""
        return destination(self.prefix(settings), aggregatetype)

    @property
    def lag_check(self) -> str:
        """The name of this sink's lag check."""
        return f"lag.{self.name}"


REDIS = SinkSpec(
    name="redis",
    title="Redis Streams",
    component="redis",
    destination_kind="stream",
    lane_kind="stream",
    position_kind="entry id",
    lag_unit="entries",
    prefix_setting="stream_prefix",
    settings=("redis_url", "redis_ssl_cafile", "relay_redis_maxlen"),
    lag_threshold_setting="lag_redis_threshold",
    lag_grace_setting="lag_redis_grace_seconds",
    keyed=False,
    never_consumed="does not exist",
)

KAFKA = SinkSpec(
    name="kafka",
    title="Apache Kafka",
    component="kafka",
    destination_kind="topic",
    lane_kind="partition",
    position_kind="offset",
    lag_unit="messages",
    prefix_setting="topic_prefix",
    settings=(
        "kafka_bootstrap_servers",
        "kafka_security_protocol",
        "kafka_sasl_mechanism",
        "kafka_sasl_username",
        "kafka_sasl_password",
        "kafka_ssl_cafile",
        "relay_kafka_linger_ms",
    ),
    lag_threshold_setting="lag_kafka_threshold",
    lag_grace_setting="lag_kafka_grace_seconds",
    keyed=True,
    never_consumed="has never committed",
)

# The registry: every sink flowproof knows, in the order reports list them.
SINKS: dict[str, SinkSpec] = {spec.name: spec for spec in (REDIS, KAFKA)}
SINK_NAMES: tuple[str, ...] = tuple(SINKS)


def sink_spec(name: str) -> SinkSpec:
    """The descriptor of the sink `name`, or ValueError naming the known ones."""
    try:
        return SINKS[name]
    except KeyError:
        raise ValueError(f"unknown sink {name!r} (expected {', '.join(SINK_NAMES)})") from None
