"""The relay's side of each sink, registered by the sink's name (`flowproof.core.sinks`).

A publisher sink is a class with the `flowproof.publisher.sink.Sink` protocol, built from the
settings. Adding a sink to the relay is its module and one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from flowproof.core.config import Settings
from flowproof.core.errors import ConfigError
from flowproof.publisher.kafka_sink import KafkaSink
from flowproof.publisher.redis_sink import RedisSink
from flowproof.publisher.sink import Sink

PUBLISHERS: dict[str, Callable[[Settings], Sink]] = {
    RedisSink.name: RedisSink,
    KafkaSink.name: KafkaSink,
}


def make_sink(settings: Settings, name: str) -> Sink:
    """The relay's sink called `name` (one of FLOWPROOF_SINKS)."""
    try:
        factory = PUBLISHERS[name]
    except KeyError:
        raise ConfigError(
            f"FLOWPROOF_SINKS: the relay cannot publish to {name!r} "
            f"(it can to {', '.join(PUBLISHERS)})"
        ) from None
    return factory(settings)
