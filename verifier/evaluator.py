"""One evaluation of every check: read PostgreSQL, Redis and Kafka at once, judge, export.

The evaluator owns the connections it opens (a PostgreSQL pool and a Redis client kept between
evaluations; Kafka clients opened per evaluation, which doubles as the Kafka probe) and the
sliding windows behind the consumer-group statuses. A component that cannot be reached fails
`components.up` and every check that needs it ("not evaluated"): no check passes without having
looked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

import asyncpg
import redis.asyncio as aioredis

from flowproof.core import metrics
from flowproof.core.config import Settings, Sink
from flowproof.core.connect import create_postgres_pool, ping_redis, redis_client
from flowproof.core.errors import ComponentUnreachable
from flowproof.core.logging import get_logger
from flowproof.core.redact import scrub
from flowproof.schemas.registry_client import RegistryClient
from flowproof.verifier.conformance import (
    ReceiptStats,
    conformance_builder,
    judge_dead_letters,
    judge_receipts,
    receipt_stats,
)
from flowproof.verifier.exporter import Exporter
from flowproof.verifier.flow import FlowStats, flow_builders, flow_stats, judge_flow
from flowproof.verifier.groups import SinkGroup, expected_groups, groups_of, subject
from flowproof.verifier.kafka_lag import KafkaReader, LazyKafkaOffsets, kafka_snapshot
from flowproof.verifier.lag import judge_lag, lag_builder, lane_key, limits, observe
from flowproof.verifier.lanes import SinkSnapshot
from flowproof.verifier.loss import KafkaPositions, PositionReader, RedisPositions
from flowproof.verifier.model import (
    COMPONENTS_UP,
    FLOW_DUPLICATES,
    FLOW_LOST,
    FLOW_ORDER,
    LATENCY_E2E,
    CheckBuilder,
    CheckResult,
    ComponentState,
    Report,
)
from flowproof.verifier.outbox import OutboxStats, judge_outbox, outbox_builder, outbox_stats
from flowproof.verifier.redis_lag import redis_snapshot
from flowproof.verifier.schema_registry import registry_components
from flowproof.verifier.status import LaneStatus, StatusWindows

T = TypeVar("T")
log = get_logger(__name__)

# The flow query hashes and sorts every event of the window once: enough memory keeps that off
# disk, JIT compilation costs more than it saves, and parallel workers would each build the same
# hash of receipts (measured in bench/verify_eval.py).
SESSION_SETTINGS = {"work_mem": "128MB", "jit": "off", "max_parallel_workers_per_gather": "0"}

POSTGRESQL: Final = "postgresql"
REDIS: Final = "redis"
KAFKA: Final = "kafka"


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


def _describe(exc: BaseException) -> str:
    return scrub(str(exc)) or type(exc).__name__


class Evaluator:
    """Evaluates the checks of docs/design.md against the configured pipeline."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.groups = expected_groups(settings)
        self.timeout = settings.verify_timeout_seconds
        self.windows = StatusWindows(
            settings.verify_status_window, settings.verify_status_min_observations
        )
        self._clock = clock
        self._pool: asyncpg.Pool | None = None
        self._redis: aioredis.Redis | None = None
        if REDIS in settings.sinks:
            self._redis = redis_client(settings, socket_timeout=self.timeout)
        self._exporter = Exporter()
        self._schema_registry = RegistryClient.from_settings(settings)

    async def __aenter__(self) -> Evaluator:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close what this evaluator opened."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._schema_registry is not None:
            await self._schema_registry.aclose()

    async def _attempt(self, part: str, read: Awaitable[T]) -> T | ReadFailed:
        try:
            async with asyncio.timeout(self.timeout):
                return await read
        except Exception as exc:  # every failure is reported as a failing check
            detail = _describe(exc) if not isinstance(exc, TimeoutError) else "timed out"
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
                raise ComponentUnreachable(POSTGRESQL, _describe(exc)) from None
            return self._pool, now

    async def read_postgres(self) -> Read[DatabaseReads]:
        try:
            pool, db_now = await self._database_now()
        except ComponentUnreachable as exc:
            return Read(ComponentState(POSTGRESQL, False, exc.detail))
        except TimeoutError:
            return Read(ComponentState(POSTGRESQL, False, f"no answer within {self.timeout:g}s"))
        reads = DatabaseReads()
        settings = self.settings

        kafka = LazyKafkaOffsets(settings, self.timeout)
        readers: dict[Sink, PositionReader] = {KAFKA: KafkaPositions(kafka)}
        if self._redis is not None:
            readers[REDIS] = RedisPositions(self._redis)

        async def flow(pair: SinkGroup) -> None:
            reads.flow[pair] = await self._attempt(
                f"flow {subject(*pair)}",
                flow_stats(pool, settings, *pair, db_now, positions=readers[pair[0]]),
            )

        async def pending(sink: Sink) -> None:
            reads.outbox[sink] = await self._attempt(
                f"outbox {sink}", outbox_stats(pool, settings, sink, db_now)
            )

        async def receipts() -> None:
            reads.receipts = await self._attempt("receipts", receipt_stats(pool, settings, db_now))

        try:
            await asyncio.gather(
                *(flow(pair) for pair in self.groups),
                *(pending(sink) for sink in settings.sinks),
                receipts(),
            )
        finally:
            await kafka.close()
        return Read(ComponentState(POSTGRESQL, True), reads)

    # --- Redis and Kafka ----------------------------------------------------------------------
    async def read_redis(self) -> Read[SinkSnapshot]:
        assert self._redis is not None  # only called when the redis sink is enabled
        try:
            async with asyncio.timeout(self.timeout):
                await ping_redis(self._redis)
        except ComponentUnreachable as exc:
            return Read(ComponentState(REDIS, False, exc.detail))
        except TimeoutError:
            return Read(ComponentState(REDIS, False, f"no answer within {self.timeout:g}s"))
        now = self._clock()
        snapshot = redis_snapshot(
            self._redis,
            prefix=self.settings.stream_prefix,
            expected_groups=groups_of(self.groups, REDIS),
            alive_within=limits(self.settings, REDIS).grace,
            window_start=now - self.settings.verify_window_seconds,
            now=now,
        )
        return Read(ComponentState(REDIS, True), await self._attempt("redis", snapshot))

    async def read_kafka(self) -> Read[SinkSnapshot]:
        reader = KafkaReader(self.settings, self.timeout)
        try:
            async with asyncio.timeout(self.timeout):
                await reader.open()
        except ComponentUnreachable as exc:
            return Read(ComponentState(KAFKA, False, exc.detail))
        except TimeoutError:
            await reader.close()
            return Read(ComponentState(KAFKA, False, f"no answer within {self.timeout:g}s"))
        try:
            now = self._clock()
            snapshot = kafka_snapshot(
                reader,
                prefix=self.settings.topic_prefix,
                expected_groups=groups_of(self.groups, KAFKA),
                window_start=now - self.settings.verify_window_seconds,
                now=now,
            )
            return Read(ComponentState(KAFKA, True), await self._attempt("kafka", snapshot))
        finally:
            await reader.close()

    async def _read_sinks(self) -> list[Read[SinkSnapshot]]:
        reads: list[Awaitable[Read[SinkSnapshot]]] = []
        if REDIS in self.settings.sinks:
            reads.append(self.read_redis())
        if KAFKA in self.settings.sinks:
            reads.append(self.read_kafka())
        return list(await asyncio.gather(*reads))

    def _observe(self, sinks: list[Read[SinkSnapshot]]) -> None:
        for read in sinks:
            if isinstance(read.data, SinkSnapshot):
                observe(self.windows, read.data)

    async def observe(self) -> list[ComponentState]:
        """Read the sinks' positions only, to fill the status windows (smoke does this while it
        waits for its canaries); return the sink components' states."""
        sinks = await self._read_sinks()
        self._observe(sinks)
        return [read.component for read in sinks]

    # --- the evaluation -----------------------------------------------------------------------
    async def evaluate(self) -> Report:
        """Read everything, judge every check, publish the metrics; return the report."""
        started = time.monotonic()
        database, sinks, others = await asyncio.gather(
            self.read_postgres(),
            self._read_sinks(),
            registry_components(self._schema_registry, self.timeout),
        )
        self._observe(sinks)
        self._forget_vanished_lanes(sinks)
        checks, statuses = self._judge(database, sinks, others)
        report = Report(
            checks=tuple(checks),
            components=(database.component, *(read.component for read in sinks), *others),
            evaluated_at=dt.datetime.now(dt.UTC),
            duration_seconds=time.monotonic() - started,
            window_seconds=self.settings.verify_window_seconds,
        )
        reads = database.data if isinstance(database.data, DatabaseReads) else DatabaseReads()
        self._exporter.export(
            report,
            flow=[s for s in reads.flow.values() if isinstance(s, FlowStats)],
            outbox=[s for s in reads.outbox.values() if isinstance(s, OutboxStats)],
            receipts=reads.receipts if isinstance(reads.receipts, list) else [],
            snapshots=[r.data for r in sinks if isinstance(r.data, SinkSnapshot)],
            statuses=statuses,
        )
        log.info(
            "verify.evaluated",
            passed=report.passed,
            failed=[c.name for c in report.checks if not c.passed],
            unreachable=[c.name for c in report.unreachable],
            duration_seconds=round(report.duration_seconds, 3),
        )
        return report

    def _forget_vanished_lanes(self, sinks: list[Read[SinkSnapshot]]) -> None:
        if not all(isinstance(read.data, SinkSnapshot) for read in sinks):
            return  # a sink not read this time keeps its windows
        keep: list[Hashable] = []
        for read in sinks:
            assert isinstance(read.data, SinkSnapshot)
            for group in read.data.groups:
                keep.extend(lane_key(read.data.sink, group.group, lane) for lane in group.lanes)
        self.windows.retain(keep)

    def _judge(
        self,
        database: Read[DatabaseReads],
        sinks: list[Read[SinkSnapshot]],
        others: tuple[ComponentState, ...] = (),
    ) -> tuple[list[CheckResult], dict[tuple[str, str], LaneStatus]]:
        settings = self.settings
        components = CheckBuilder(COMPONENTS_UP, 0, "components down", None)
        for state in (database.component, *(read.component for read in sinks), *others):
            components.add(state.name, state.up, "reachable" if state.up else str(state.error))
        components.value = sum(1 for f in components.findings if not f.ok)

        flows = flow_builders(settings)
        outbox = outbox_builder(settings)
        conformance = conformance_builder(settings)
        self._judge_database(database, flows, outbox, conformance)

        statuses: dict[tuple[str, str], LaneStatus] = {}
        lags: dict[Sink, CheckBuilder] = {}
        for each in (REDIS, KAFKA):
            lags[each] = lag_builder(settings, each)
            if each not in settings.sinks:
                lags[each].add(each, True, "sink not enabled (FLOWPROOF_SINKS)")
        for read in sinks:
            sink: Sink = REDIS if read.component.name == REDIS else KAFKA
            data = read.data
            if not isinstance(data, SinkSnapshot):
                why = data.error if isinstance(data, ReadFailed) else f"{sink} is unreachable"
                lags[sink].not_evaluated(sink, why)
                conformance.not_evaluated(f"{sink} DLQ", why)
                continue
            for group, status in judge_lag(lags[sink], data, self.windows, settings).items():
                statuses[(sink, group)] = status
            judge_dead_letters(conformance, sink, data.dead_letters, settings)

        checks = [
            components.result(),
            flows[FLOW_LOST].result(),
            flows[FLOW_DUPLICATES].result(),
            flows[FLOW_ORDER].result(),
            outbox.result(),
            lags[REDIS].result(),
            lags[KAFKA].result(),
            flows[LATENCY_E2E].result(),
            conformance.result(),
        ]
        return checks, statuses

    def _judge_database(
        self,
        database: Read[DatabaseReads],
        flows: dict[str, CheckBuilder],
        outbox: CheckBuilder,
        conformance: CheckBuilder,
    ) -> None:
        settings = self.settings
        reads = database.data
        if not isinstance(reads, DatabaseReads):
            why = reads.error if isinstance(reads, ReadFailed) else "postgresql is unreachable"
            for builder in (*flows.values(), outbox, conformance):
                builder.not_evaluated(POSTGRESQL, why)
            return
        for pair in self.groups:
            stats = reads.flow[pair]
            if isinstance(stats, ReadFailed):
                for builder in flows.values():
                    builder.not_evaluated(subject(*pair), stats.error)
            else:
                judge_flow(flows, stats, settings)
        for sink in settings.sinks:
            pending = reads.outbox[sink]
            if isinstance(pending, ReadFailed):
                outbox.not_evaluated(f"{sink} outbox", pending.error)
            else:
                judge_outbox(outbox, pending, settings)
        if isinstance(reads.receipts, ReadFailed):
            conformance.not_evaluated("receipts", reads.receipts.error)
        elif not reads.receipts:
            conformance.add("receipts", True, "no receipts in the window")
        for receipts in reads.receipts if isinstance(reads.receipts, list) else []:
            judge_receipts(conformance, receipts, settings)
