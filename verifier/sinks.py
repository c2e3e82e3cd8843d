"""The verifier's side of each sink, registered by the sink's name (`flowproof.core.sinks`).

Adding a sink to the verifier is its `SinkReader` subclass (`flowproof.verifier.sink_reader`) and
one line here; its lag check (`lag.<sink>`) and its place in every other check follow.
"""

from __future__ import annotations

from flowproof.core.config import Settings
from flowproof.core.errors import ConfigError
from flowproof.verifier.kafka_lag import KafkaSinkReader
from flowproof.verifier.redis_lag import RedisSinkReader
from flowproof.verifier.sink_reader import SinkReader

READERS: dict[str, type[SinkReader]] = {
    RedisSinkReader.spec.name: RedisSinkReader,
    KafkaSinkReader.spec.name: KafkaSinkReader,
}


def reader_class(sink: str) -> type[SinkReader]:
    """The verifier's reader class of `sink`, or ConfigError naming the sinks it can read."""
    try:
        return READERS[sink]
    except KeyError:
        raise ConfigError(
            f"FLOWPROOF_SINKS: the verifier cannot read {sink!r} (it can {', '.join(READERS)})"
        ) from None


def open_readers(settings: Settings, timeout: float) -> dict[str, SinkReader]:
    """One reader per enabled sink, in the order of FLOWPROOF_SINKS."""
    return {sink: reader_class(sink)(settings, timeout) for sink in settings.sinks}
