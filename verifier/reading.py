"""Reading the pipeline once per evaluation: PostgreSQL, every enabled sink, the schema registry.

The `PipelineReader` owns the connections the verifier keeps (a PostgreSQL pool, one
`SinkReader` per sink) and reads, at once, only what the registered checks declare they need
(`Source`). A component that cannot be reached is recorded as down and its reads as missing; a
read that fails after its component answered is recorded as `ReadFailed`: the checks that need it
fail "not evaluated", never pass without having looked.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import enum
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import asyncpg

from flowproof.core import metrics
from flowproof.core.config import Settings, Sink
from flowproof.core.connect import create_postgres_pool
from flowproof.core.errors import ComponentUnreachable
from flowproof.core.logging import get_logger
from flowproof.core.redact import scrub
from flowproof.schemas.registry_client import RegistryClient
from flowproof.verifier.conformance import ReceiptStats, receipt_stats
from flowproof.verifier.flow import FlowStats, flow_stats
from flowproof.verifier.groups import SinkGroup, groups_of, subject
from flowproof.verifier.lag import limits
from flowproof.verifier.lanes import SinkSnapshot
from flowproof.verifier.model import ComponentState
from flowproof.verifier.outbox import OutboxStats, outbox_stats
from flowproof.verifier.schema_registry import registry_components
from flowproof.verifier.sink_reader import SinkReader
from flowproof.verifier.sinks import open_readers

T = TypeVar("T")
log = get_logger(__name__)

POSTGRESQL = "postgresql"

# The flow query hashes and sorts every event of the window once: enough memory keeps that off
# disk, JIT compilation costs more than it saves, and parallel workers would each build the same
# hash of receipts (measured in bench/verify_eval.py).
SESSION_SETTINGS = {"work_mem": "128MB", "jit": "off", "max_parallel_workers_per_gather": "0"}


class Source(enum.Enum):
    """What a check may read; each is read at most once per evaluation."""

    FLOW = "flow"  # per sink and group: events, receipts, positions (PostgreSQL and the sink)
    OUTBOX = "outbox"  # per sink: pending and parked events (PostgreSQL)
    RECEIPTS = "receipts"  # per sink and group: valid and invalid receipts (PostgreSQL)
    SINKS = "sinks"  # per sink: the consumer groups' lanes and the dead letters


@dataclass(frozen=True, slots=True)
class ReadFailed:
    """A read that failed after its component answered; the checks it feeds fail with it."""

    error: str


@dataclass(slots=True)
class Read(Generic[T]):
    component: ComponentState
    data: T | ReadFailed | None = None  # None when the component was not reached


@dataclass(slots=True)
class DatabaseReads:
    flow: dict[SinkGroup, FlowStats | ReadFailed] = field(default_factory=dict)
    outbox: dict[Sink, OutboxStats | ReadFailed] = field(default_factory=dict)
    receipts: list[ReceiptStats] | ReadFailed = field(default_factory=list)


@dataclass(slots=True)
class Readings:
    """Everything one evaluation read."""

    database: Read[DatabaseReads]
    sinks: dict[Sink, Read[SinkSnapshot]]
    others: tuple[ComponentState, ...] = ()  # components read for no check but components.up

    @property
    def components(self) -> tuple[ComponentState, ...]:
        return (
            self.database.component,
            *(read.component for read in self.sinks.values()),
            *self.others,
        )

    @property
    def snapshots(self) -> list[SinkSnapshot]:
        return [r.data for r in self.sinks.values() if isinstance(r.data, SinkSnapshot)]


def describe(exc: BaseException) -> str:
    return scrub(str(exc)) or type(exc).__name__


class PipelineReader:
    """Reads PostgreSQL, the sinks and the schema registry; owns the connections it keeps."""

    def __init__(
        self,
        settings: Settings,
        groups: list[SinkGroup],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.groups = groups
        self.timeout = settings.verify_timeout_seconds
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self.sinks: dict[Sink, SinkReader] = open_readers(settings, self.timeout)
        self._schema_registry = RegistryClient.from_settings(settings)

    async def close(self) -> None:
        """Close what this reader opened: every part, even when closing one of them fails or is
        cancelled (an evaluation cancelled while closing its PostgreSQL pool left its Redis
        connection open); an error is raised once every part was closed."""
        async with contextlib.AsyncExitStack() as stack:
            # Callbacks run last-pushed first: the pool, then the sinks, then the registry.
            if self._schema_registry is not None:
                stack.push_async_callback(self._schema_registry.aclose)
            for sink in self.sinks.values():
                stack.push_async_callback(sink.close)
            if self._pool is not None:
                pool, self._pool = self._pool, None
                stack.push_async_callback(pool.close)

    async def read(self, sources: Collection[Source]) -> Readings:
        """Read `sources` (and every component's reachability) at once."""
        try:
            database, sinks, others = await asyncio.gather(
                self._read_postgres(sources),
                self._read_sinks(Source.SINKS in sources),
                registry_components(self._schema_registry, self.timeout),
            )
        finally:
            for sink in self.sinks.values():
                await sink.release()
        return Readings(database, sinks, others)

    async def _attempt(self, part: str, read: Awaitable[T]) -> T | ReadFailed:
        try:
            async with asyncio.timeout(self.timeout):
                return await read
        except Exception as exc:  # every failure is reported as a failing check
            detail = describe(exc) if not isinstance(exc, TimeoutError) else "timed out"
            log.warning("verify.read_failed", part=part, error=detail)
            metrics.VERIFY_READ_ERRORS.labels(part).inc()
            return ReadFailed(detail)

    # --- PostgreSQL ---------------------------------------------------------------------------
    async def _database_now(self) -> tuple[asyncpg.Pool, dt.datetime]:
        async with asyncio.timeout(self.timeout):
            if self._pool is None:
                self._pool = await create_postgres_pool(
                    self.settings, min_size=1, max_size=4, server_settings=SESSION_SETTINGS
                )
            try:
                now: dt.datetime = await self._pool.fetchval("SELECT clock_timestamp()")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise ComponentUnreachable(POSTGRESQL, describe(exc)) from None
            return self._pool, now

    async def _read_postgres(self, sources: Collection[Source]) -> Read[DatabaseReads]:
        try:
            pool, db_now = await self._database_now()
        except ComponentUnreachable as exc:
            return Read(ComponentState(POSTGRESQL, False, exc.detail))
        except TimeoutError:
            return Read(ComponentState(POSTGRESQL, False, f"no answer within {self.timeout:g}s"))
        reads = DatabaseReads()
        settings = self.settings
        positions = {name: sink.positions() for name, sink in self.sinks.items()}

        async def flow(pair: SinkGroup) -> None:
            reads.flow[pair] = await self._attempt(
                f"flow {subject(*pair)}",
                flow_stats(pool, settings, *pair, db_now, positions=positions[pair[0]]),
            )

        async def pending(sink: Sink) -> None:
            reads.outbox[sink] = await self._attempt(
                f"outbox {sink}", outbox_stats(pool, settings, sink, db_now)
            )

        async def receipts() -> None:
            reads.receipts = await self._attempt("receipts", receipt_stats(pool, settings, db_now))

        await asyncio.gather(
            *(flow(pair) for pair in self.groups if Source.FLOW in sources),
            *(pending(sink) for sink in settings.sinks if Source.OUTBOX in sources),
            *([receipts()] if Source.RECEIPTS in sources else []),
        )
        return Read(ComponentState(POSTGRESQL, True), reads)

    # --- the sinks ----------------------------------------------------------------------------
    async def read_sinks(self) -> dict[Sink, Read[SinkSnapshot]]:
        """Probe every sink and snapshot its groups and dead letters, and nothing else."""
        try:
            return await self._read_sinks(True)
        finally:
            for sink in self.sinks.values():
                await sink.release()

    async def _read_sinks(self, snapshot: bool) -> dict[Sink, Read[SinkSnapshot]]:
        names = list(self.sinks)
        reads = await asyncio.gather(*(self._read_sink(name, snapshot) for name in names))
        return dict(zip(names, reads, strict=True))

    async def _read_sink(self, name: Sink, snapshot: bool) -> Read[SinkSnapshot]:
        sink = self.sinks[name]
        component = sink.spec.component
        try:
            async with asyncio.timeout(self.timeout):
                await sink.connect()
        except ComponentUnreachable as exc:
            return Read(ComponentState(component, False, exc.detail))
        except TimeoutError:
            return Read(ComponentState(component, False, f"no answer within {self.timeout:g}s"))
        if not snapshot:
            return Read(ComponentState(component, True))
        now = self._clock()
        read = sink.snapshot(
            groups_of(self.groups, name),
            alive_within=limits(self.settings, name).grace,
            window_start=now - self.settings.verify_window_seconds,
            now=now,
        )
        return Read(ComponentState(component, True), await self._attempt(name, read))
