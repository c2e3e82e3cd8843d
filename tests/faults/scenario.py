"""Running one fault scenario: the pipeline as real processes, a workload, faults, the verdict.

A scenario is a coroutine `faults(run)` that injects faults while `Run` drives everything else:

1. start `flowproof relay` and `flowproof consume --sink redis|kafka` processes (a fresh database,
   streams and topics of its own, one consumer group per sink);
2. emit the workload (`driver.WorkloadDriver`) while `faults(run)` runs; each fault is wrapped in
   `async with run.fault("what")`, which times the recovery: from the end of the block until
   every event written before it has a valid receipt in every sink and group;
3. wait until every event has a receipt everywhere (bounded), stop every process with SIGTERM
   (each must exit 0), and prove through /proc that none is left;
4. account in SQL (`accounting`), ask the verifier (`verifier.commands.check_once`), and record a
   row of the fault table whatever happened; then assert: nothing lost, nothing reordered,
   duplicates within the scenario's at-least-once bound, the verifier's verdict passed and its
   numbers equal to the accounting's.

All along the run the verifier also evaluates every few seconds (`Run.evaluations`): while a
fault makes events late, it must never call them lost (`flow.lost` with a loss, when nothing was
lost, is a problem of the run).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka.errors import KafkaError
from pydantic import SecretStr
from redis.exceptions import RedisClusterException, RedisError

from flowproof.core.config import Settings
from flowproof.publisher.outbox import Outbox
from flowproof.verifier.commands import check_once
from flowproof.verifier.model import FLOW_LOST, CheckResult, Report
from tests.faults.accounting import (
    Account,
    Dropped,
    account,
    disagreements,
    first_missing,
    redis_dropped,
    redis_group_behind,
)
from tests.faults.driver import WorkloadDriver
from tests.faults.kafka_progress import group_caught_up
from tests.faults.processes import FlowproofProcess, ProcessSet, stray_processes
from tests.faults.results import RESULTS, Result

POLL = 0.25
# What a scenario is: the coroutine that injects its faults into a Run.
Faults = Callable[["Run"], Coroutine[Any, Any, None]]
_DB_LOST = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InternalClientError,
)

# Tuned so faults are noticed and recovered from in seconds, not the production minutes.
PROCESS_ENV = {
    "FLOWPROOF_METRICS_PORT": "0",
    "FLOWPROOF_LOG_FORMAT": "json",
    "FLOWPROOF_CONSUMER_AGGREGATETYPES": "order",
    "FLOWPROOF_CONSUMER_CLAIM_IDLE_MS": "5000",
    "FLOWPROOF_CONSUMER_DISCOVERY_INTERVAL_SECONDS": "1",
    "FLOWPROOF_RELAY_POLL_INTERVAL_SECONDS": "1",
    "FLOWPROOF_RELAY_REBALANCE_INTERVAL_SECONDS": "1",
    "FLOWPROOF_RELAY_RETRY_BASE_SECONDS": "0.1",
    "FLOWPROOF_RELAY_RETRY_CAP_SECONDS": "2",
    "FLOWPROOF_RELAY_SINK_TIMEOUT_SECONDS": "10",
    "FLOWPROOF_RELAY_PRUNE_INTERVAL_SECONDS": "0",  # the accounting needs every row
}


@dataclass(frozen=True)
class Endpoints:
    """Where the services are: for flowproof's processes (maybe through a proxy), and directly
    for the workload, the accounting and the verifier."""

    database_url: str
    redis_url: str
    kafka_bootstrap: str
    process_database_url: str | None = None
    process_redis_url: str | None = None
    process_kafka_bootstrap: str | None = None

    def for_processes(self) -> dict[str, str]:
        return {
            "FLOWPROOF_DATABASE_URL": self.process_database_url or self.database_url,
            "FLOWPROOF_REDIS_URL": self.process_redis_url or self.redis_url,
            "FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS": self.process_kafka_bootstrap
            or self.kafka_bootstrap,
        }


@dataclass
class Plan:
    """The shape of a scenario: the workload, the processes, and what at-least-once allows."""

    name: str
    events: int = 20_000
    rate: float = 1200.0
    relays: int = 1
    redis_consumers: int = 1
    kafka_consumers: int = 1
    # Events received more than once allowed per sink and group (each fault's documented
    # bound), one number for both sinks or one per sink.
    max_duplicates: int | dict[str, int] = 0
    drain_timeout: float = 120.0
    recover_timeout: float = 90.0
    seed: int = 7
    env: dict[str, str] = field(default_factory=dict)
    relay_env: dict[str, str] = field(default_factory=dict)  # the relays' only, beside `env`
    # Sinks whose fault may lose events the sink acknowledged (a Redis failover with
    # MIN_REPLICAS=0, an unclean Kafka leader election): there a loss is the finding, not a
    # failure, as long as every lost event was published (the sink lost it, not the relay) and
    # the verifier's flow.lost reports exactly the accounting's count. The run is done with such a
    # sink when every event is published to it and its group has read everything there (lost
    # events never get a receipt).
    lossy: tuple[str, ...] = ()

    def allowed_duplicates(self, sink: str) -> int:
        if isinstance(self.max_duplicates, int):
            return self.max_duplicates
        return self.max_duplicates.get(sink, 0)


@dataclass
class FaultRecord:
    label: str
    started: float
    healed: float | None = None
    recovered: float | None = None

    @property
    def recover_seconds(self) -> float | None:
        if self.healed is None or self.recovered is None:
            return None
        return self.recovered - self.healed


class Run:
    """One scenario run: its processes, workload, faults and recovery clocks."""

    def __init__(
        self,
        plan: Plan,
        endpoints: Endpoints,
        workdir: Path,
        *,
        prefix: str,
        base_env: dict[str, str],
    ) -> None:
        self.plan = plan
        self.endpoints = endpoints
        self.workdir = workdir
        self.prefix = prefix
        self.group = f"g{uuid.uuid4().hex[:10]}"
        self.run_id = uuid.uuid4().hex
        self.rng = random.Random(plan.seed)
        self.lanes = [("redis", self.group), ("kafka", self.group)]
        env = {
            **base_env,
            **PROCESS_ENV,
            **endpoints.for_processes(),
            "FLOWPROOF_STREAM_PREFIX": prefix,
            "FLOWPROOF_TOPIC_PREFIX": prefix,
            "FLOWPROOF_CONSUMER_GROUP": self.group,
            **plan.env,
        }
        self.processes = ProcessSet(self.run_id, env, workdir / "logs")
        for n in range(plan.relays):
            self.processes.add(
                f"relay-{n + 1}", "relay", ready_event="relay.started", env=plan.relay_env
            )
        for sink, count in (("redis", plan.redis_consumers), ("kafka", plan.kafka_consumers)):
            for n in range(count):
                self.processes.add(
                    f"consume-{sink}-{n + 1}",
                    "consume",
                    "--sink",
                    sink,
                    ready_event="consumer.started",
                )
        self.driver = WorkloadDriver(
            endpoints.database_url,
            Outbox.from_settings(self.settings()),
            total=plan.events,
            rate=plan.rate,
            seed=plan.seed,
        )
        self.faults: list[FaultRecord] = []
        self.timeline: list[str] = []
        self._t0 = time.monotonic()
        self._floor = 0  # every event up to this seq has a valid receipt everywhere
        self._watches: list[asyncio.Task[None]] = []
        self._sampler: asyncio.Task[None] | None = None
        self._verifier: asyncio.Task[None] | None = None
        # (seconds into the run, the checks that failed) of each evaluation during the run
        self.evaluations: list[tuple[float, frozenset[str]]] = []
        self.lost_during: list[str] = []
        self._behind: str | None = None  # why a lossy sink was last found not caught up
        self.lost_expected_during: list[str] = []  # flow.lost of a lossy sink during the run
        self.verify_errors: list[str] = []  # evaluations during the run that raised

    # --- what a scenario uses -------------------------------------------------------------------

    def mark(self, what: str) -> None:
        """Note a moment of the run (written to timeline.txt in the test's folder)."""
        line = f"{time.monotonic() - self._t0:7.2f}s emitted={self.driver.emitted:6d} {what}"
        self.timeline.append(line)
        (self.workdir / "timeline.txt").write_text("\n".join(self.timeline) + "\n")

    def settings(self, **update: object) -> Settings:
        """Settings for in-process use (the verifier): direct connections, this run's names."""
        base = Settings(
            database_url=SecretStr(self.endpoints.database_url),
            redis_url=SecretStr(self.endpoints.redis_url),
            kafka_bootstrap_servers=self.endpoints.kafka_bootstrap,
            stream_prefix=self.prefix,
            topic_prefix=self.prefix,
            consumer_group=self.group,
            relay_prune_interval_seconds=0,
            metrics_port=0,
        )
        return base.model_copy(update=update)

    def process(self, name: str) -> FlowproofProcess:
        return self.processes.by_name[name]

    def named(self, prefix: str) -> list[FlowproofProcess]:
        return self.processes.named(prefix)

    async def at_fraction(self, low: float, high: float) -> float:
        """Wait until a random share in [low, high) of the workload is written; the share."""
        share = self.rng.uniform(low, high)
        await self.driver.wait_emitted(int(self.plan.events * share))
        return share

    async def pause(self, low: float, high: float) -> None:
        """A random pause (the time between faults is part of what is random)."""
        await asyncio.sleep(self.rng.uniform(low, high))

    @contextlib.asynccontextmanager
    async def fault(self, label: str) -> AsyncIterator[FaultRecord]:
        """Time a fault: the recovery clock starts when the block ends (the fault is over)."""
        record = FaultRecord(label, time.monotonic())
        self.faults.append(record)
        self.mark(f"fault: {label}")
        yield record
        record.healed = time.monotonic()
        self.mark(f"fault over: {label}")
        watermark = await self._watermark()
        self._watches.append(
            asyncio.create_task(self._watch(record, watermark), name=f"recovery {label}")
        )

    async def recovered(self) -> None:
        """Wait until every fault so far has recovered (AssertionError past the timeout)."""
        pending = [task for task in self._watches if not task.done()]
        if pending:
            await asyncio.wait(pending)
        for task in self._watches:
            task.result()

    async def wait_until(
        self, condition: Callable[[], Awaitable[bool]], within: float, what: str
    ) -> float:
        """Poll `condition` until true; the seconds it took (AssertionError naming `what`)."""
        started = time.monotonic()
        while not await condition():
            if time.monotonic() - started > within:
                raise AssertionError(f"{what}: not within {within:.0f} s")
            await asyncio.sleep(POLL)
        return time.monotonic() - started

    # --- recovery clocks ------------------------------------------------------------------------

    async def _watermark(self) -> int:
        conn = await self._connect()
        try:
            value: int = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM flowproof_outbox")
            return value
        finally:
            await conn.close()

    async def _connect(self) -> asyncpg.Connection:
        """A connection for the accounting and the recovery clocks. Nested loops are off: the
        tables of a young database have no statistics yet, and the planner's guess (a nested
        loop over "a few" receipts) turns a 0.1 s anti join into minutes."""
        deadline = time.monotonic() + self.plan.recover_timeout
        while True:
            try:
                return await asyncpg.connect(
                    self.endpoints.database_url,
                    timeout=5,
                    server_settings={"enable_nestloop": "off"},
                )
            except _DB_LOST:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(POLL)  # PostgreSQL is restarting (a scenario)

    async def all_received(self, upto: int) -> bool:
        """Every event with seq <= upto has a valid receipt in every sink and group (in a lossy
        sink: is published, and the group has read everything there)."""
        if self._floor >= upto:
            return True
        conn = await self._connect()
        started = time.monotonic()
        lanes = [(sink, group) for sink, group in self.lanes if sink not in self.plan.lossy]
        try:
            for sink, group in self.lanes:
                if sink in self.plan.lossy and not await self._caught_up(conn, sink, group, upto):
                    return False
            first = await first_missing(conn, self._floor, upto, lanes)
        except _DB_LOST:
            return False  # PostgreSQL went away meanwhile: look again
        finally:
            conn.terminate()
        if (took := time.monotonic() - started) > 1.0:
            self.mark(f"the look for missing receipts took {took:.1f} s")
        if first is None:
            self._floor = max(self._floor, upto)
            return True
        self._floor = max(self._floor, first - 1)
        return False

    async def _caught_up(self, conn: asyncpg.Connection, sink: str, group: str, upto: int) -> bool:
        """Every event up to `upto` published to `sink`, and `group` has read everything there:
        what it will ever receive, it has."""
        unpublished = """SELECT count(*) FROM flowproof_outbox o WHERE o.seq <= $1
            AND NOT EXISTS (SELECT 1 FROM flowproof_outbox_deliveries d
                            WHERE d.sink = $2 AND d.seq = o.seq)"""
        if await conn.fetchval(unpublished, upto, sink):
            return False
        try:
            if sink == "redis":
                behind = await redis_group_behind(self.settings(), group)
            elif await group_caught_up(self.endpoints.kafka_bootstrap, group, self.prefix):
                behind = None
            else:
                behind = "the group has not read its topics to their end"
        except (RedisError, RedisClusterException, KafkaError, OSError, TimeoutError) as exc:
            behind = f"{type(exc).__name__}: {exc}"  # failing over: look again
        if behind is not None and behind != self._behind:
            self.mark(f"{sink}/{group} not caught up: {behind}")
        self._behind = behind
        return behind is None

    async def _sample(self, every: float = 5.0) -> None:
        """Every few seconds, note how far each stage got (timeline.txt): what a slow recovery
        is waiting for."""
        sql = """
            SELECT (SELECT count(*) FROM flowproof_outbox) AS written,
                   (SELECT count(DISTINCT seq) FROM flowproof_outbox_deliveries
                    WHERE sink = 'redis') AS redis_published,
                   (SELECT count(DISTINCT seq) FROM flowproof_outbox_deliveries
                    WHERE sink = 'kafka') AS kafka_published,
                   (SELECT count(DISTINCT event_id) FROM flowproof_receipts
                    WHERE sink = 'redis' AND valid) AS redis_received,
                   (SELECT count(DISTINCT event_id) FROM flowproof_receipts
                    WHERE sink = 'kafka' AND valid) AS kafka_received"""
        while True:
            await asyncio.sleep(every)
            try:
                conn = await asyncpg.connect(self.endpoints.database_url, timeout=5)
                try:
                    row = await conn.fetchrow(sql, timeout=10)
                finally:
                    conn.terminate()
            except _DB_LOST as exc:
                self.mark(f"progress: unknown ({type(exc).__name__})")
                continue
            assert row is not None
            self.mark("progress: " + ", ".join(f"{k}={v}" for k, v in row.items()))

    async def _verify_during(self, every: float = 3.0) -> None:
        """Evaluate every few seconds while the run goes on; note each verdict, and any loss."""
        settings = self.settings(flow_lost_grace_seconds=1.0)
        while True:
            await asyncio.sleep(every)
            try:
                report = await check_once(settings)
            except Exception as exc:  # a fault may take a service away; the next one judges
                self.verify_errors.append(f"{self.now():.1f}s {type(exc).__name__}: {exc}")
                self.mark(f"verifier during the run: {type(exc).__name__}: {exc}")
                continue
            at = time.monotonic() - self._t0
            failed = frozenset(c.name for c in report.checks if not c.passed)
            self.evaluations.append((at, failed))
            for finding in report.check(FLOW_LOST).findings:
                if finding.data.get("lost"):
                    expected = finding.data.get("sink") in self.plan.lossy
                    (self.lost_expected_during if expected else self.lost_during).append(
                        f"{at:.1f}s {finding.line()}"
                    )
                    self.mark(f"verifier during the run: {finding.line()}")

    def failed_during(self, check: str, since: float, until: float) -> int:
        """How many evaluations between `since` and `until` (seconds into the run) failed
        `check`."""
        return sum(1 for at, failed in self.evaluations if since <= at <= until and check in failed)

    def now(self) -> float:
        """Seconds into the run (the clock of `mark` and `evaluations`)."""
        return time.monotonic() - self._t0

    def into_run(self, moment: float) -> float:
        """A `time.monotonic()` moment (a FaultRecord's) as seconds into the run."""
        return moment - self._t0

    async def _watch(self, record: FaultRecord, watermark: int) -> None:
        await self.wait_until(
            lambda: self.all_received(watermark),
            self.plan.recover_timeout,
            f"recovery from {record.label}",
        )
        record.recovered = time.monotonic()
        self.mark(f"recovered from {record.label} in {record.recover_seconds:.1f} s")

    # --- the whole run --------------------------------------------------------------------------

    async def execute(self, faults: Faults) -> Result:
        """Run the scenario and record its row of the fault table (see the module)."""
        result = Result(self.plan.name, timeline=self.timeline)
        RESULTS.append(result)
        started = time.monotonic()
        try:
            await self._execute(faults, result)
        finally:
            result.seconds = time.monotonic() - started
            await self._cleanup()
        return result

    async def _execute(self, faults: Faults, result: Result) -> None:
        await self.processes.start_all()
        self._sampler = asyncio.create_task(self._sample(), name="progress")
        self._verifier = asyncio.create_task(self._verify_during(), name="verify-during")
        workload = asyncio.create_task(self.driver.run(), name="workload")
        injector = asyncio.create_task(faults(self), name="faults")
        # A fault that failed (an assertion, a recovery that never came) is a finding, not the
        # end: the run still drains, stops, accounts and asks the verifier, so the table shows
        # what the fault cost.
        for outcome in await asyncio.gather(injector, return_exceptions=True):
            if isinstance(outcome, BaseException):
                result.problems.append(f"faults: {type(outcome).__name__}: {outcome}")
        await workload
        self.mark("workload written, faults done")
        for outcome in await asyncio.gather(self.recovered(), return_exceptions=True):
            if isinstance(outcome, BaseException):
                result.problems.append(f"recovery: {outcome}")
        result.faults = len(self.faults)
        recoveries = [f.recover_seconds for f in self.faults if f.recover_seconds is not None]
        result.recover_seconds = max(recoveries) if recoveries else None

        last = await self._watermark()
        try:
            result.drain_seconds = await self.wait_until(
                lambda: self.all_received(last), self.plan.drain_timeout, "every event received"
            )
            self.mark("every event received")
        except AssertionError as exc:
            result.problems.append(str(exc))
        if self._verifier is not None:
            self._verifier.cancel()
            await asyncio.gather(self._verifier, return_exceptions=True)
        crashed = self.processes.died()
        codes = await self.processes.stop_all()
        self.mark(f"processes stopped: {codes}")
        strays = stray_processes(self.run_id)
        accounts = await self._accounts()
        self.mark("accounted")
        report = await check_once(self._verdict_settings())
        self.mark("verifier evaluated")
        self._record(result, accounts, report)
        self._judge(
            result=result,
            accounts=accounts,
            report=report,
            crashed=crashed,
            codes=codes,
            strays=strays,
        )

    def _verdict_settings(self) -> Settings:
        # Everything is delivered and every process stopped: judge every event (no grace), allow
        # the duplicates at-least-once allows here, and do not fail on the latency the faults
        # caused by design (it is reported, not judged).
        return self.settings(
            flow_lost_grace_seconds=0.0,
            flow_duplicates_grace_seconds=0.0,
            flow_order_grace_seconds=0.0,
            flow_duplicates_threshold=max(self.plan.allowed_duplicates(s) for s, _ in self.lanes),
            latency_e2e_threshold_seconds=3600.0,
        )

    async def _accounts(self) -> list[Account]:
        conn = await self._connect()
        try:
            return [await account(conn, sink, group) for sink, group in self.lanes]
        finally:
            await conn.close()

    def _record(self, result: Result, accounts: list[Account], report: Report) -> None:
        result.events = max(a.events for a in accounts)
        result.lost = sum(a.lost for a in accounts)
        result.duplicates = sum(a.duplicated for a in accounts)
        result.reordered = sum(a.reordered for a in accounts)
        result.per_lane = [
            f"{a.sink} {a.lost}/{a.duplicated}/{a.reordered}"
            + (f" ({a.published_twice} published twice)" if a.published_twice else "")
            for a in accounts
        ]
        problems = disagreements(report, accounts)
        result.verifier_agrees = not problems
        result.problems += problems

    def _judge(
        self,
        *,
        result: Result,
        accounts: list[Account],
        report: Report,
        crashed: list[str],
        codes: dict[str, int | None],
        strays: list[str],
    ) -> None:
        problems = result.problems
        if self.driver.retries:
            self.mark(
                f"the workload retried {self.driver.retries} batches, e.g. {self.driver.errors[:2]}"
            )
        for acc in accounts:
            where = f"{acc.sink}/{acc.group}"
            if acc.events < self.plan.events:
                problems.append(f"{where}: only {acc.events} events in the outbox")
            if acc.sink in self.plan.lossy:
                # Lost by the fault itself: no problem when the relay had published it (the
                # verifier's count is compared with ours in `disagreements`).
                if acc.lost != acc.lost_published:
                    problems.append(f"{where}: {acc.unpublished} never published")
            elif acc.lost:
                problems.append(
                    f"{where}: {acc.lost} lost ({acc.unpublished} unpublished), e.g. "
                    f"{', '.join(acc.lost_examples)}"
                )
            elif acc.lost:
                self.mark(f"{where}: {acc.lost} acknowledged events lost by the sink, e.g. "
                          f"{', '.join(acc.lost_examples)}")  # fmt: skip
            if acc.reordered or acc.split:
                problems.append(f"{where}: {acc.reordered} reordered, {acc.split} split")
            if acc.duplicated > self.plan.allowed_duplicates(acc.sink):
                problems.append(
                    f"{where}: {acc.duplicated} duplicated, more than the "
                    f"{self.plan.allowed_duplicates(acc.sink)} at-least-once allows here"
                )
            if acc.unexpected or acc.invalid:
                problems.append(f"{where}: {acc.unexpected} unexpected, {acc.invalid} invalid")
        if not report.passed:
            failing = [c for c in report.checks if not c.passed and not self._expected(c)]
            problems += [f"verifier: {c.name} failed: {c.detail}" for c in failing]
        problems += [f"verifier called events lost during the run: {x}" for x in self.lost_during]
        problems += [f"died during the run: {text}" for text in crashed]
        problems += [f"{name} exited {code} on SIGTERM" for name, code in codes.items() if code]
        problems += [f"stray process: {line}" for line in strays]
        problems += [f"{f.label}: never recovered" for f in self.faults if f.recovered is None]
        result.problems = list(dict.fromkeys(problems))
        result.passed = not result.problems

    async def redis_dropped(self) -> Dropped:
        """The published events whose Redis entries are gone, looked up one by one (see
        `accounting.redis_dropped`); noted in the timeline."""
        conn = await self._connect()
        try:
            dropped = await redis_dropped(conn, self.settings(), self.group)
        finally:
            await conn.close()
        self.mark(f"accounting by lookup: {dropped}")
        return dropped

    def _expected(self, check: CheckResult) -> bool:
        """flow.lost failing for the lossy sinks only: what the run is there to show."""
        failing = [f for f in check.findings if not f.ok]
        return (
            check.name == FLOW_LOST
            and bool(failing)
            and all(f.data.get("sink") in self.plan.lossy for f in failing)
        )

    async def _cleanup(self) -> None:
        tasks = [*self._watches, *(t for t in (self._sampler, self._verifier) if t is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.processes.kill_all()
