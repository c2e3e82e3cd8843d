"""Fault scenarios on flowproof's own processes: relays and consumers killed with SIGKILL at
random moments, a consumer frozen with SIGSTOP while the rest of its group takes over, every
consumer stopped for minutes (late, never lost)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from flowproof.verifier.model import FLOW_LOST, LAG_KAFKA, LAG_REDIS, LATENCY_E2E
from tests.faults.conftest import RunFactory
from tests.faults.processes import FlowproofProcess
from tests.faults.scenario import Endpoints, Plan, Run

RELAY_BATCH = 500  # FLOWPROOF_RELAY_BATCH_SIZE's default: the in-flight batch a kill repeats
CONSUMER_BATCH = 256  # FLOWPROOF_CONSUMER_BATCH_SIZE's default


@pytest.mark.timeout(300)
async def test_relays_killed_at_random_moments(
    make_run: RunFactory, shared_endpoints: Endpoints
) -> None:
    """Two relays; one of them, at random, is killed three times (and started again): the other
    takes its slots over; the unmarked in-flight batch is published again (duplicates bounded by
    one batch per kill and sink), nothing is lost or reordered."""
    kills = 3
    plan = Plan(
        "relay SIGKILL x3 (2 relays)", relays=2, max_duplicates=kills * RELAY_BATCH, seed=11
    )

    async def faults(run: Run) -> None:
        for n in range(kills):
            await run.at_fraction(0.1 + 0.28 * n, 0.3 + 0.28 * n)
            await kill_and_restart(run, run.rng.choice(run.named("relay-")))

    result = await make_run(plan, shared_endpoints).execute(faults)
    assert result.passed, result.explain()


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("kills", "rate"),
    [
        pytest.param(2, 800.0, id="one-per-sink"),
        pytest.param(4, 400.0, id="two-per-sink", marks=pytest.mark.faults_full),
    ],
)
async def test_consumers_killed_at_random_moments(
    make_run: RunFactory, shared_endpoints: Endpoints, kills: int, rate: float
) -> None:
    """Two consumers per sink; a consumer of each sink, in random order, is killed (and started
    again) `kills / 2` times: Redis entries it read and never acknowledged are claimed by the
    other (XAUTOCLAIM), Kafka partitions move to the other member once the group has noticed
    (its session timeout). A receipt is written before the ack, so a kill costs at most the
    duplicates of the batch in hand. The rate is such that the workload spans the kills."""
    plan = Plan(
        f"consumer SIGKILL x{kills} (2 per sink)",
        rate=rate,
        redis_consumers=2,
        kafka_consumers=2,
        max_duplicates=kills * CONSUMER_BATCH,
        seed=23 + kills,
    )

    async def faults(run: Run) -> None:
        sinks = ["redis", "kafka"] * (kills // 2)
        run.rng.shuffle(sinks)
        step = 0.8 / kills
        for n, sink in enumerate(sinks):
            await run.at_fraction(0.1 + step * n, 0.1 + step * (n + 0.5))
            await kill_and_restart(run, run.rng.choice(run.named(f"consume-{sink}-")))

    result = await make_run(plan, shared_endpoints).execute(faults)
    assert result.passed, result.explain()


@pytest.mark.timeout(300)
async def test_a_frozen_consumer_is_taken_over(
    make_run: RunFactory, shared_endpoints: Endpoints
) -> None:
    """A consumer of each sink is frozen (SIGSTOP) in turn; while it is frozen, the other member
    of its group must deliver everything written before the freeze: its Redis pending entries
    claimed (XAUTOCLAIM after the claim idle time), its Kafka partitions rebalanced (after the
    session timeout). Then it is thawed (SIGCONT) and finishes the batches it held: duplicates of
    those, whose late commits the group refuses, nothing else. In Redis that is one batch. In
    Kafka it is up to three: the batch in its durable end (receipts written, commit refused), the
    one it was processing meanwhile (consumers.commit's lane: its receipts are written once the
    commit before it has answered, refused or not), and one the client had fetched ahead and may
    still hand out before it learns it lost its partitions (seen: 548 duplicates, over two
    batches of 256)."""
    plan = Plan(
        "consumer SIGSTOP/SIGCONT (each sink)",
        redis_consumers=2,
        kafka_consumers=2,
        max_duplicates={"redis": CONSUMER_BATCH, "kafka": 3 * CONSUMER_BATCH},
        seed=31,
    )

    async def faults(run: Run) -> None:
        await run.at_fraction(0.1, 0.3)
        victim = run.rng.choice(run.named("consume-redis-"))
        async with run.fault(f"SIGSTOP {victim.name}"):
            held = await freeze_holding_entries(run, victim)
        run.mark(f"{victim.name} frozen holding {held} pending entries")
        await run.recovered()  # taken over while it is still frozen
        # Recovered can come first: the victim may have written the receipts of what it holds
        # and been frozen before its XACK. Frozen, it cannot acknowledge: only another member's
        # claim empties its pending list.
        claimed = await taken_over(run, victim, held, within=60.0)
        assert claimed >= held, f"{held} entries held by the frozen consumer, {claimed} claimed"
        victim.thaw()

        await run.at_fraction(0.5, 0.7)
        victim = run.rng.choice(run.named("consume-kafka-"))
        async with run.fault(f"SIGSTOP {victim.name}"):
            victim.freeze()
        await run.recovered()
        for other in run.named("consume-kafka-"):
            if other is not victim:
                assigned = other.log_events("consumer.partitions_assigned")[-1]["partitions"]
                assert len(assigned) == 3, f"{other.name} was given {assigned} only"
        victim.thaw()

    result = await make_run(plan, shared_endpoints).execute(faults)
    assert result.passed, result.explain()


FREEZE_SECONDS = 300.0


@pytest.mark.faults_full
@pytest.mark.timeout(900)
async def test_consumers_stopped_for_five_minutes_are_late_never_lost(
    make_run: RunFactory, shared_endpoints: Endpoints
) -> None:
    """Every consumer of both sinks frozen (SIGSTOP) for five minutes under load, then resumed.
    The verifier, evaluating every few seconds all along, sees the events as late (latency.e2e,
    then lag.redis and lag.kafka fail) and never as lost; afterwards every event arrives, and
    only the batches each consumer held are received twice: in Redis one, in Kafka up to three,
    as in test_a_frozen_consumer_is_taken_over (the group has dropped the frozen members and
    refuses their commits)."""
    plan = Plan(
        "every consumer stopped 5 minutes (late, not lost)",
        max_duplicates={"redis": CONSUMER_BATCH, "kafka": 3 * CONSUMER_BATCH},
        drain_timeout=300.0,
        recover_timeout=300.0,
        seed=53,
    )
    window: list[float] = []

    async def faults(run: Run) -> None:
        await run.at_fraction(0.2, 0.3)
        victims = run.named("consume-")
        async with run.fault("SIGSTOP every consumer for 5 minutes"):
            for victim in victims:
                victim.freeze()
            window.append(run.now())
            await asyncio.sleep(FREEZE_SECONDS)
            window.append(run.now())
            for victim in victims:
                victim.thaw()
        await run.recovered()

    run = make_run(plan, shared_endpoints)
    result = await run.execute(faults)
    assert result.passed, result.explain()
    start, end = window
    # Late is seen for what it is: latency within seconds, lag after its 60 s grace.
    assert run.failed_during(LATENCY_E2E, start + 15, end) > 0, run.evaluations
    assert run.failed_during(LAG_REDIS, start + 75, end) > 0, run.evaluations
    assert run.failed_during(LAG_KAFKA, start + 75, end) > 0, run.evaluations
    assert run.failed_during(FLOW_LOST, 0, run.now()) == 0, run.lost_during


async def kill_and_restart(run: Run, victim: FlowproofProcess) -> None:
    """SIGKILL `victim`, start it again after a random pause, wait until the run has recovered."""
    async with run.fault(f"SIGKILL {victim.name}"):
        await victim.kill()
    await run.pause(0.2, 2.0)
    await victim.start()
    await victim.started()
    await run.recovered()


async def pending_of(run: Run, consumer: str) -> int:
    """Entries of the run's stream read by `consumer` and not acknowledged yet."""
    client = aioredis.Redis.from_url(run.endpoints.redis_url)
    try:
        summary = await client.xpending(f"{run.prefix}order", run.group)
    finally:
        await client.aclose()
    return sum(int(c["pending"]) for c in summary["consumers"] if c["name"] == consumer.encode())


async def taken_over(run: Run, victim: FlowproofProcess, held: int, within: float) -> int:
    """Wait until the frozen `victim` holds no pending entry and the other members have logged
    claims of at least `held` entries (or `within` passed); the entries they claimed."""
    name = victim.log_events("consumer.started")[-1]["consumer"]
    deadline = asyncio.get_running_loop().time() + within
    while True:
        claimed: int = sum(
            entry["entries"]
            for other in run.named("consume-redis-")
            if other is not victim
            for entry in other.log_events("consumer.claimed")
        )
        done = claimed >= held and await pending_of(run, name) == 0
        if done or asyncio.get_running_loop().time() > deadline:
            return claimed
        await asyncio.sleep(0.2)


async def freeze_holding_entries(run: Run, victim: FlowproofProcess) -> int:
    """SIGSTOP `victim` at a moment it holds pending entries (so that only XAUTOCLAIM by
    another member can deliver them); how many it holds."""
    name = victim.log_events("consumer.started")[-1]["consumer"]
    for _ in range(200):
        victim.freeze()
        held = await pending_of(run, name)
        if held:
            return held
        victim.thaw()
        await asyncio.sleep(0.01)  # let it read its next batch
    raise AssertionError(f"{victim.name} never held pending entries when frozen")
