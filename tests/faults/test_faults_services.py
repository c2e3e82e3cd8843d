"""Fault scenarios on the services: Redis (AOF on), the Kafka broker and PostgreSQL restarted
mid-run, and a sink down for a long while. Each uses a private instance of the service
(tests/private_services.py): the shared devstack services are never stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from flowproof.core.migrations import migrate
from flowproof.verifier.commands import check_once
from flowproof.verifier.model import LAG_OUTBOX
from tests.faults.conftest import RunFactory
from tests.faults.scenario import Endpoints, Faults, Plan, Run
from tests.private_services import PrivateKafka, PrivatePostgres, PrivateRedis, PrivateService

RELAY_BATCH = 500
CONSUMER_BATCH = 256


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    with PrivateRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    with PrivateKafka(tmp_path / "kafka") as server:
        yield server


@pytest.fixture
async def private_postgres(tmp_path: Path) -> AsyncIterator[tuple[PrivatePostgres, str]]:
    """A private PostgreSQL with a migrated database `flowproof`; the server and its DSN."""
    server = PrivatePostgres(tmp_path / "postgres")
    await asyncio.to_thread(server.start)
    try:
        admin = await asyncpg.connect(server.dsn())
        try:
            await admin.execute("CREATE DATABASE flowproof")
        finally:
            await admin.close()
        dsn = server.dsn(database="flowproof")
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn, "flowproof_outbox")
        finally:
            await conn.close()
        yield server, dsn
    finally:
        await asyncio.to_thread(server.close)


def restarts(server: PrivateService, what: str, times: int, *, kill: bool = False) -> Faults:
    """`times` restarts of `server` at random moments spread over the workload, each waited
    for to recover before the next; `kill` makes each a crash (SIGKILL) instead of a shutdown."""

    async def faults(run: Run) -> None:
        for n in range(times):
            low = 0.1 + n * 0.7 / times
            await run.at_fraction(low, low + 0.15)
            how = "SIGKILL+start" if kill else "restart"
            async with run.fault(f"{what} {how} {n + 1}"):
                if kill:
                    await asyncio.to_thread(server.kill)
                    await asyncio.to_thread(server.start)
                else:
                    await asyncio.to_thread(server.restart)
            await run.recovered()

    return faults


@pytest.mark.timeout(300)
async def test_redis_restarted_mid_run(
    make_run: RunFactory, shared_endpoints: Endpoints, private_redis: PrivateRedis
) -> None:
    """Redis (AOF, fsync always) shut down and started again twice while events flow: the relay
    republishes the batch whose acknowledgement it lost, consumers retry reads and acks, and a
    read whose reply was lost is claimed back (XAUTOCLAIM). Nothing lost or reordered."""
    restarts_ = 2
    plan = Plan(
        "Redis restart x2 (AOF on)",
        max_duplicates={"redis": restarts_ * (RELAY_BATCH + CONSUMER_BATCH), "kafka": 0},
        seed=41,
    )
    endpoints = replace(shared_endpoints, redis_url=private_redis.url)
    run = make_run(plan, endpoints)
    result = await run.execute(restarts(private_redis, "Redis", restarts_))
    assert result.passed, result.explain()


@pytest.mark.faults_full
@pytest.mark.timeout(300)
async def test_redis_killed_mid_run(
    make_run: RunFactory, shared_endpoints: Endpoints, private_redis: PrivateRedis
) -> None:
    """Redis crashes (SIGKILL) twice and comes back from its AOF: what it acknowledged was
    fsynced, so nothing the relay marked published is gone."""
    kills = 2
    plan = Plan(
        "Redis SIGKILL x2 (AOF fsync always)",
        max_duplicates={"redis": kills * (RELAY_BATCH + CONSUMER_BATCH), "kafka": 0},
        seed=43,
    )
    endpoints = replace(shared_endpoints, redis_url=private_redis.url)
    result = await make_run(plan, endpoints).execute(
        restarts(private_redis, "Redis", kills, kill=True)
    )
    assert result.passed, result.explain()


@pytest.mark.faults_full
@pytest.mark.timeout(420)
async def test_kafka_broker_restarted_mid_run(
    make_run: RunFactory, shared_endpoints: Endpoints, private_kafka: PrivateKafka
) -> None:
    """The Kafka broker shut down and started again while events flow: the relay's producer
    fails, is replaced and the unacknowledged batch sent again; the consumers rejoin their
    group and resume from the committed offsets."""
    plan = Plan(
        "Kafka broker restart",
        kafka_consumers=2,
        max_duplicates={"redis": 0, "kafka": RELAY_BATCH + 2 * CONSUMER_BATCH},
        seed=47,
        recover_timeout=150.0,
    )
    endpoints = replace(shared_endpoints, kafka_bootstrap=private_kafka.bootstrap)
    result = await make_run(plan, endpoints).execute(restarts(private_kafka, "Kafka", 1))
    assert result.passed, result.explain()


@pytest.mark.timeout(300)
async def test_postgres_restarted_mid_run(
    make_run: RunFactory,
    shared_endpoints: Endpoints,
    private_postgres: tuple[PrivatePostgres, str],
) -> None:
    """PostgreSQL (outbox, receipts, slot locks) restarted 3 times while events flow: relays lose
    their slots and connections and take them again, consumers retry their receipts, the
    application retries its transactions. A batch published but not marked is published again;
    a receipt COPY whose answer was lost may be written twice."""
    server, dsn = private_postgres
    restarts_ = 3
    bound = restarts_ * (RELAY_BATCH + CONSUMER_BATCH)
    plan = Plan(
        "PostgreSQL restart x3",
        max_duplicates={"redis": bound, "kafka": bound},
        seed=53,
    )
    endpoints = replace(shared_endpoints, database_url=dsn)
    result = await make_run(plan, endpoints).execute(restarts(server, "PostgreSQL", restarts_))
    assert result.passed, result.explain()


async def _lag_outbox(run: Run, grace: float) -> tuple[bool, str]:
    """The verifier's lag.outbox verdict and its evidence."""
    report = await check_once(run.settings(lag_outbox_grace_seconds=grace))
    lag = report.check(LAG_OUTBOX)
    return lag.passed, lag.detail


async def _pending(run: Run, sink: str) -> int:
    conn = await asyncpg.connect(run.endpoints.database_url)
    try:
        count: int = await conn.fetchval(
            f"SELECT count(*) FROM flowproof_outbox_progress WHERE {sink}_published_at IS NULL"
        )
        return count
    finally:
        await conn.close()


def sink_down(server: PrivateRedis, seconds: float, grace: float = 5.0) -> Faults:
    """Redis down for `seconds`: the outbox backlog of the Redis sink grows, the verifier's
    lag.outbox fails once events wait longer than `grace`, Kafka keeps flowing; then Redis comes
    back and the backlog drains."""

    async def faults(run: Run) -> None:
        await run.at_fraction(0.05, 0.15)
        async with run.fault(f"Redis down {seconds:.0f} s"):
            await asyncio.to_thread(server.stop)
            down_at = asyncio.get_running_loop().time()
            before = await _pending(run, "redis")

            async def lag_fails() -> bool:
                passed, _ = await _lag_outbox(run, grace)
                return not passed

            waited = await run.wait_until(lag_fails, seconds, "lag.outbox failing")
            _, detail = await _lag_outbox(run, grace)
            run.mark(f"lag.outbox failed after {waited:.1f} s of outage: {detail}")
            after = await _pending(run, "redis")
            run.mark(f"Redis backlog {before} -> {after} events")
            assert after > before, f"the Redis backlog did not grow ({before} -> {after})"
            assert await _pending(run, "kafka") < after, "Kafka waited for Redis"
            # The outage itself is the fault: it lasts what it lasts.
            remaining = seconds - (asyncio.get_running_loop().time() - down_at)
            await asyncio.sleep(max(remaining, 0.0))
            run.mark(f"Redis backlog at the end of the outage: {await _pending(run, 'redis')}")
            await asyncio.to_thread(server.start)
        await run.recovered()
        passed, detail = await _lag_outbox(run, grace)
        assert passed, f"lag.outbox still failing once drained: {detail}"

    return faults


@pytest.mark.timeout(300)
async def test_a_sink_down_for_a_while_drains_when_back(
    make_run: RunFactory, shared_endpoints: Endpoints, private_redis: PrivateRedis
) -> None:
    """The fast version of the long outage: Redis down for 20 s."""
    plan = Plan("Redis down 20 s", max_duplicates={"redis": RELAY_BATCH, "kafka": 0}, seed=59)
    endpoints = replace(shared_endpoints, redis_url=private_redis.url)
    result = await make_run(plan, endpoints).execute(sink_down(private_redis, 20.0))
    assert result.passed, result.explain()


@pytest.mark.faults_full
@pytest.mark.timeout(480)
async def test_a_sink_down_for_minutes_drains_when_back(
    make_run: RunFactory, shared_endpoints: Endpoints, private_redis: PrivateRedis
) -> None:
    """Redis down for 100 s while the workload keeps coming (at 160 events/s, so that it spans
    the outage): the backlog grows to thousands, lag.outbox fails, Kafka is not held back; once
    Redis is back the backlog drains with nothing lost."""
    plan = Plan(
        "Redis down 100 s",
        rate=160.0,
        max_duplicates={"redis": RELAY_BATCH, "kafka": 0},
        seed=61,
        recover_timeout=180.0,
    )
    endpoints = replace(shared_endpoints, redis_url=private_redis.url)
    result = await make_run(plan, endpoints).execute(sink_down(private_redis, 100.0))
    assert result.passed, result.explain()
