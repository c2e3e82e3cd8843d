"""The consumers' side of each sink, registered by the sink's name (`flowproof.core.sinks`).

A reader opens the sink's connections, runs the sink's consumer loop on a `Processor` and a
`BatchCommitter` until stopped (or drained), closes what it opened and returns the stats. Adding
a sink to the consumers is its module and one line here.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from flowproof.consumers.commit import ConsumerStats
from flowproof.consumers.kafka import consume_kafka
from flowproof.consumers.options import ConsumerOptions
from flowproof.consumers.processing import Processor
from flowproof.consumers.receipts import ReceiptWriter
from flowproof.consumers.redis import consume_redis
from flowproof.core.config import Settings
from flowproof.core.errors import ConfigError


class Reader(Protocol):
    async def __call__(
        self,
        settings: Settings,
        processor: Processor,
        options: ConsumerOptions,
        writer: ReceiptWriter,
        *,
        stop: asyncio.Event,
        drain: bool,
    ) -> ConsumerStats: ...


READERS: dict[str, Reader] = {
    "redis": consume_redis,
    "kafka": consume_kafka,
}


def reader(sink: str) -> Reader:
    """How consumers read `sink`, or ConfigError naming the sinks they can read."""
    try:
        return READERS[sink]
    except KeyError:
        raise ConfigError(
            f"--sink: consumers cannot read {sink!r} (they can {', '.join(READERS)})"
        ) from None
