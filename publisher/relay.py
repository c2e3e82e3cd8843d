"""The outbox relay: one worker per enabled sink, a NOTIFY listener, the gauges and the pruning.

`Relay.run()` serves until `stop()` (SIGTERM in `flowproof relay`): the workers finish their
in-flight batch, within FLOWPROOF_RELAY_SHUTDOWN_TIMEOUT_SECONDS, then the tasks that are still
busy are cancelled; a cancelled batch was not marked, so it is published again by the next
relay (duplicates bounded by the batch, nothing lost). `Relay.run_until_idle()` publishes
everything there is and returns: the deterministic mode tests use.

Tasks are named and supervised together: if one dies of an unexpected error, the relay stops
and raises RelayCrashed instead of limping on.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from collections.abc import Awaitable, Callable, Iterator

import asyncpg

from flowproof.core import heap
from flowproof.core.aio import wait_any
from flowproof.core.config import Settings
from flowproof.core.errors import ComponentUnreachable, ConfigError
from flowproof.core.http import MetricsServer
from flowproof.core.logging import get_logger
from flowproof.core.sinks import sink_spec
from flowproof.publisher.db import LOST_CONNECTION, close_quietly, connect_relay, relay_pool
from flowproof.publisher.encode_cache import EncodeCache
from flowproof.publisher.encoding import Encoder
from flowproof.publisher.errors import OutboxMissing, RelayCrashed
from flowproof.publisher.listener import Listener
from flowproof.publisher.maintenance import maintain_partitions, prune, refresh_gauges
from flowproof.publisher.pacing import Pacing
from flowproof.publisher.queries import query, side_tables
from flowproof.publisher.sinks import make_sink
from flowproof.publisher.worker import SinkStats, SinkWorker, StartLine, retry_policy
from flowproof.schemas.ids import SchemaIds
from flowproof.schemas.registry import SchemaRegistry, load_registry

log = get_logger(__name__)

Job = Callable[[asyncpg.Connection], Awaitable[object]]
# How often partitions are made ahead when FLOWPROOF_RELAY_PRUNE_INTERVAL_SECONDS is 0.
PARTITIONS_EVERY = 60.0
# The largest share of the time the relay's side work (gauges, partitions) may run: a job that
# took a second waits at least nine before it runs again, whatever its interval.
SIDE_WORK_SHARE = 0.1


def side_work_wait(interval: float, took: float) -> float:
    """How long side work that took `took` seconds waits before it runs again."""
    return max(interval, took / SIDE_WORK_SHARE - took)


class Relay:
    """Publishes the outbox to every enabled sink."""

    def __init__(self, settings: Settings, *, registry: SchemaRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else load_registry(settings.schema_dir)
        self.ids = SchemaIds.from_settings(settings, self.registry)  # embedded or the registry's
        self._stop = asyncio.Event()
        self._busy = False
        self._aux_pool: asyncpg.Pool | None = None  # gauges and pruning, while running
        self.workers: dict[str, SinkWorker] = {}
        # The workers claim the same rows: each row is encoded once for all of them, with room
        # for one sink to run a few batches ahead of another.
        cache = EncodeCache(settings.sinks, capacity=8 * settings.relay_batch_size)
        pacing = Pacing(cache)
        start_line = StartLine(len(settings.sinks))
        # One member id for every sink: the workers of this relay publish the same slots.
        member_id = random.randrange(1, 2**31)
        for name in settings.sinks:
            prefix = sink_spec(name).prefix(settings)
            self.workers[name] = SinkWorker(
                settings,
                make_sink(settings, name),
                Encoder(
                    self.registry,
                    prefix,
                    settings.relay_max_message_bytes,
                    cache=cache,
                    sink=name,
                    ids=self.ids,
                ),
                wake=asyncio.Event(),
                stop=self._stop,
                start_line=start_line,
                pacing=pacing,
                member_id=member_id,
            )
        self.listener = Listener(
            settings, settings.outbox_table, self.wake, self._stop, retry_policy(settings)
        )

    @property
    def stats(self) -> dict[str, SinkStats]:
        return {name: worker.stats for name, worker in self.workers.items()}

    def owned_slots(self, sink: str) -> frozenset[int]:
        return self.workers[sink].leases.owned

    def wake(self) -> None:
        """Make every idle worker look for rows now (what a NOTIFY does)."""
        for worker in self.workers.values():
            worker.wake()

    def stop(self) -> None:
        """Ask the relay to stop: no new claims; in-flight batches finish (within the timeout)."""
        if not self._stop.is_set():
            log.info("relay.stop_requested")
        self._stop.set()

    async def run(self) -> None:
        """Serve until `stop()`; raise RelayCrashed if a task died of an unexpected error."""
        with self._exclusive():
            try:
                await self._run()
            finally:
                await self.ids.aclose()

    async def _run(self) -> None:
        await self.preflight()
        pool = self._aux_pool = await relay_pool(self.settings)
        settings = self.settings
        tasks = [
            asyncio.create_task(worker.run(), name=f"relay.worker.{name}")
            for name, worker in self.workers.items()
        ]
        tasks.append(asyncio.create_task(self.listener.run(), name="relay.listener"))
        tasks.append(
            asyncio.create_task(
                self._every(pool, settings.relay_metrics_interval_seconds, self._gauges),
                name="relay.gauges",
            )
        )
        tasks.append(
            asyncio.create_task(
                self._every(
                    pool, settings.relay_prune_interval_seconds or PARTITIONS_EVERY, self._prune
                ),
                name="relay.pruner",
            )
        )
        log.info(
            "relay.started",
            sinks=list(settings.sinks),
            table=settings.outbox_table,
            batch_size=settings.relay_batch_size,
            poll_interval_seconds=settings.relay_poll_interval_seconds,
        )
        try:
            await self._supervise(tasks)
        finally:
            await pool.close()
        log.info(
            "relay.stopped",
            published={name: s.published for name, s in self.stats.items()},
            parked={name: s.parked for name, s in self.stats.items()},
        )

    async def run_until_idle(self) -> None:
        """Publish every row there is to every sink, then return (retrying a down sink)."""
        with self._exclusive():
            try:
                await self.preflight()
                async with asyncio.TaskGroup() as group:
                    for name, worker in self.workers.items():
                        group.create_task(worker.run(until_idle=True), name=f"relay.drain.{name}")
            finally:
                await self.ids.aclose()
        await self.refresh_gauges()

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        # The workers' connections carry the slot locks: two loops on them would interleave.
        if self._busy:
            raise RuntimeError("this relay is already running")
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    async def refresh_gauges(self) -> None:
        """Refresh the outbox gauges once."""
        await self._once(self._gauges)

    async def prune_once(self) -> int:
        """Drop the partitions past the retention (and make those ahead) once; return how many
        outbox rows went."""
        return await self._once(prune_rows(self.settings))

    async def preflight(self) -> None:
        """ComponentUnreachable when PostgreSQL (or the schema registry) is down, OutboxMissing
        when not migrated."""
        await self.ids.check()
        table = self.settings.outbox_table
        conn = await connect_relay(self.settings, "preflight")
        try:
            for needed in (table, *side_tables(table)):
                if not await conn.fetchval(query("outbox_exists", needed)):
                    raise OutboxMissing(needed)
            # This relay's sinks are sinks of the outbox from now on (pruning keeps what they owe).
            await conn.execute(query("register_sinks", table), list(self.settings.sinks))
        finally:
            await close_quietly(conn)

    async def _gauges(self, conn: asyncpg.Connection) -> None:
        await refresh_gauges(conn, self.settings)

    async def _prune(self, conn: asyncpg.Connection) -> None:
        drop_old = self.settings.relay_prune_interval_seconds > 0
        await maintain_partitions(conn, self.settings, drop_old=drop_old)

    async def _once(self, job: Callable[[asyncpg.Connection], Awaitable[int | None]]) -> int:
        conn = await connect_relay(self.settings, "maintenance")
        try:
            return await job(conn) or 0
        finally:
            await close_quietly(conn)

    async def _every(self, pool: asyncpg.Pool, interval: float, job: Job) -> None:
        """Run `job` every `interval`, or less often when it is slow: side work (the gauges
        count a sink's whole backlog) takes at most SIDE_WORK_SHARE of the time, so that it
        never competes with publishing for PostgreSQL during a large backlog."""
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            started = loop.time()
            try:
                async with pool.acquire() as conn:
                    await job(conn)
            except (*LOST_CONNECTION, ComponentUnreachable) as exc:
                log.warning("relay.maintenance_failed", job=job.__name__, error=str(exc))
            took = loop.time() - started
            wait = side_work_wait(interval, took)
            if wait > interval:
                log.debug("relay.side_work_slowed", job=job.__name__, took=took, wait=wait)
            await wait_any([self._stop], wait)

    async def _supervise(self, tasks: list[asyncio.Task[None]]) -> None:
        stop_requested = asyncio.create_task(self._stop.wait(), name="relay.stop_requested")
        died: list[asyncio.Task[None]] = []
        try:
            await asyncio.wait([*tasks, stop_requested], return_when=asyncio.FIRST_COMPLETED)
            died = [task for task in tasks if task.done()]
            for task in died:
                error = None if task.cancelled() else task.exception()
                log.error("relay.task_died", task=task.get_name(), error=error, exc_info=error)
            self._stop.set()
            await self._drain(tasks)
        except asyncio.CancelledError:
            self._stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            stop_requested.cancel()
        if died:
            raise RelayCrashed(f"relay task {died[0].get_name()} died; the relay stopped")

    async def _drain(self, tasks: list[asyncio.Task[None]]) -> None:
        timeout = self.settings.relay_shutdown_timeout_seconds
        if timeout > 0:
            await asyncio.wait(tasks, timeout=timeout)
        busy = [task for task in tasks if not task.done()]
        if busy:
            log.warning(
                "relay.shutdown_timeout",
                abandoned=sorted(task.get_name() for task in busy),
                seconds=timeout,
            )
            for task in busy:
                task.cancel()
            if self._aux_pool is not None:
                # A cancelled gauge or prune job may hold a connection that will never answer
                # (left half-open by the network): giving it back to the pool waits for the
                # server to confirm the cancel, up to the command timeout. Drop the pool's
                # connections so that nothing holds the stop up.
                self._aux_pool.terminate()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error("relay.task_failed", task=task.get_name(), error=result, exc_info=result)


def prune_rows(settings: Settings) -> Callable[[asyncpg.Connection], Awaitable[int]]:
    async def job(conn: asyncpg.Connection) -> int:
        return await prune(conn, settings)

    return job


async def serve(settings: Settings) -> None:
    """`flowproof relay`: run the relay with /metrics until SIGTERM or SIGINT."""
    relay = Relay(settings)
    await relay.preflight()  # exit 2 before binding a port when PostgreSQL or the table is missing
    try:
        server = MetricsServer(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        raise ConfigError(
            f"FLOWPROOF_METRICS_PORT={settings.metrics_port}: cannot listen on "
            f"{settings.metrics_host}:{settings.metrics_port}: {exc.strerror}"
        ) from None
    server.start()
    heap.settle()  # a long-running process, its start-up done
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, relay.stop)
    try:
        await relay.run()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        server.stop()
