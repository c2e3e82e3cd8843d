"""Running a consumer: the connections it needs, opened here and closed here.

`consume` runs a Consumer application on one sink until stopped (or drained); `serve` is what
`flowproof consume` runs: the same, plus /metrics and a graceful stop on SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from flowproof.consumers.app import Consumer
from flowproof.consumers.commit import ConsumerStats
from flowproof.consumers.options import ConsumerOptions
from flowproof.consumers.processing import Processor
from flowproof.consumers.readers import reader
from flowproof.consumers.receipts import ReceiptWriter, keep_session
from flowproof.core import heap
from flowproof.core.config import Settings, Sink
from flowproof.core.connect import create_postgres_pool
from flowproof.core.errors import ConfigError
from flowproof.core.http import MetricsServer
from flowproof.core.logging import get_logger
from flowproof.schemas.ids import SchemaIds
from flowproof.schemas.registry import load_registry

log = get_logger(__name__)


async def consume(
    settings: Settings,
    *,
    sink: Sink,
    group: str | None = None,
    app: Consumer | None = None,
    stop: asyncio.Event | None = None,
    drain: bool = False,
    **overrides: Any,
) -> ConsumerStats:
    """Run `app` (default: receipts only) on `sink` until `stop` is set, or drained.

    `overrides` replace fields of the ConsumerOptions built from `settings` (tests use them for
    short claim times and names). Raises ComponentUnreachable or ConfigError before consuming.
    """
    app = app if app is not None else Consumer(load_registry(settings.schema_dir))
    options = ConsumerOptions.from_settings(settings, sink=sink, group=group, **overrides)
    stop = stop if stop is not None else asyncio.Event()
    ids = SchemaIds.from_settings(settings, app.registry)
    try:
        await ids.check()  # ComponentUnreachable naming the schema registry, before consuming
        return await _consume(settings, sink, app, options, ids, stop=stop, drain=drain)
    finally:
        await ids.aclose()


async def _consume(
    settings: Settings,
    sink: Sink,
    app: Consumer,
    options: ConsumerOptions,
    ids: SchemaIds,
    *,
    stop: asyncio.Event,
    drain: bool,
) -> ConsumerStats:
    pool = await create_postgres_pool(settings, min_size=1, max_size=2, reset=keep_session)
    processor = Processor(app, options, ids)
    try:
        writer = ReceiptWriter(pool)
        problem = await writer.check_table()
        if problem:
            raise ConfigError(f"{problem}: run `flowproof db migrate`")
        log.info(
            "consumer.started",
            sink=sink,
            group=options.group,
            consumer=options.name,
            handlers=app.event_types,
            drain=drain,
        )
        read = reader(sink)
        stats = await read(settings, processor, options, writer, stop=stop, drain=drain)
    finally:
        await pool.close()
    log.info("consumer.stopped", sink=sink, group=options.group, **vars(stats))
    return stats


async def serve(
    settings: Settings, *, sink: Sink, group: str | None, drain: bool
) -> ConsumerStats | None:
    """`flowproof consume`: the consumer with /metrics, stopped gracefully by SIGTERM/SIGINT.

    On a signal the batches in hand are finished (receipts written, acknowledged) within
    FLOWPROOF_CONSUMER_SHUTDOWN_TIMEOUT_SECONDS; after that they are abandoned unacknowledged and
    will be delivered again, and None is returned.
    """
    try:
        server = MetricsServer(settings.metrics_host, settings.metrics_port).start()
    except OSError as exc:
        raise ConfigError(
            f"FLOWPROOF_METRICS_HOST/PORT: cannot serve /metrics on "
            f"{settings.metrics_host}:{settings.metrics_port}: {exc.strerror}"
        ) from None
    heap.settle()  # a long-running process, its start-up done
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    task = asyncio.create_task(
        consume(settings, sink=sink, group=group, stop=stop, drain=drain), name="consumer"
    )
    stopped = asyncio.create_task(stop.wait(), name="consumer-stop-signal")
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            log.info("consumer.stopping", timeout=settings.consumer_shutdown_timeout_seconds)
            done, _ = await asyncio.wait({task}, timeout=settings.consumer_shutdown_timeout_seconds)
            if not done:
                log.warning("consumer.shutdown_timeout", detail="abandoning the batches in hand")
                task.cancel()
                await asyncio.wait({task})
                return None
        return task.result()
    finally:
        stopped.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        server.stop()
