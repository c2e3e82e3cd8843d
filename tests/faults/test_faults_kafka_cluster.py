"""Fault scenarios on a replicated Kafka cluster: 3 KRaft nodes (tests/kafka_cluster.py), topics
with replication factor 3 and min.insync.replicas 2, the relay producing with acks=all and
idempotence, the consumers and the verifier given the three brokers as bootstrap list.

- the pipeline on the cluster, no fault (fast, `make test`);
- the leader of the busiest partition SIGKILLed under load and started again: its partitions
  get new leaders among the in-sync followers, the relay's unacknowledged batch is sent again
  to the new leader, the consumers follow, nothing lost, order kept; a short run in `make test`,
  the 20,000-event one with `make faults`. All along, the verifier's lag and group checks are
  evaluated (they must not raise, and never call an event lost).

The session's cluster (tests/conftest.py `kafka_cluster`) is shared: a scenario that kills a node
starts it again and waits for every replica to be back in sync before it ends.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.faults.conftest import RunFactory
from tests.faults.scenario import Endpoints, Faults, Plan, Run
from tests.kafka_cluster import PrivateKafkaCluster, describe

RELAY_BATCH = 500
CONSUMER_BATCH = 256
AGGREGATE = "order"  # the workload's aggregate type: its topic is `<prefix>order`


def topic_of(run: Run) -> str:
    return f"{run.prefix}{AGGREGATE}"


async def no_faults(run: Run) -> None:
    run.mark("no fault")


async def topic_config(cluster: PrivateKafkaCluster, topic: str, *names: str) -> dict[str, str]:
    """The topic's effective settings `names` (its own, or the brokers' defaults)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {n: None for n in names})]
        )
    finally:
        await admin.close()
    found: dict[str, str] = {}
    for response in responses:
        for resource in response.resources:
            for entry in resource[4]:  # (name, value, read_only, ...)
                found[entry[0]] = entry[1]
    return found


def leader_killed(cluster: PrivateKafkaCluster, down: tuple[float, float]) -> Faults:
    """Once 30-50 % of the workload is written: SIGKILL the node leading the partition with the
    most records, wait until the controller moved its partitions to other leaders, keep it down
    a random `down` seconds more, start it again; then wait for the recovery and for every
    replica to be back in sync (the node caught up as a follower)."""

    async def faults(run: Run) -> None:
        await run.at_fraction(0.3, 0.5)
        topic = topic_of(run)
        state, records = await cluster.busiest_leader(topic)
        node = cluster.node(state.leader)
        run.mark(f"{topic}: {describe(await cluster.partitions(topic))}")
        try:
            async with run.fault(
                f"leader of the busiest partition (node {state.leader}, partition "
                f"{state.partition}, {records} records) SIGKILL+start"
            ):
                await asyncio.to_thread(node.kill)
                await cluster.wait_leader_moved(topic, state.leader)
                run.mark(f"leaders moved: {describe(await cluster.partitions(topic))}")
                await run.pause(*down)
                await asyncio.to_thread(node.start)
        finally:
            if not node.running:  # whatever failed above, the session's cluster stays whole
                await asyncio.to_thread(node.start)
        await run.recovered()
        states = await cluster.wait_in_sync(topic)
        run.mark(f"back in sync: {describe(states)}")

    return faults


def assert_judged_during_the_move(run: Run) -> None:
    """The verifier evaluated while leadership moved, and never failed to (its Kafka lag and
    group status come from whichever broker answers)."""
    fault = run.faults[0]
    assert fault.healed is not None
    since, until = run.into_run(fault.started), run.into_run(fault.healed)
    during = [at for at, _ in run.evaluations if since <= at <= until + 3.0]
    assert during, f"no evaluation during the leader move\n{run.timeline}"
    assert not run.verify_errors, f"the verifier raised during the run: {run.verify_errors}"


@pytest.mark.timeout(240)
async def test_pipeline_on_a_kafka_cluster(
    make_run: RunFactory, shared_endpoints: Endpoints, kafka_cluster: PrivateKafkaCluster
) -> None:
    """Relay, consumers and verifier unchanged against three brokers: everything arrives once,
    in order, the verdict passes, and the relay's topic is replicated 3 times, 2 in sync
    required."""
    plan = Plan(
        "Kafka cluster (3 brokers, RF 3, min ISR 2): no fault",
        events=4000,
        rate=2000.0,
        kafka_consumers=2,
        seed=101,
    )
    endpoints = replace(shared_endpoints, kafka_bootstrap=kafka_cluster.bootstrap)
    run = make_run(plan, endpoints)
    result = await run.execute(no_faults)
    assert result.passed, result.explain()
    states = await kafka_cluster.partitions(topic_of(run))
    assert len(states) == 3
    assert all(len(s.replicas) == 3 and set(s.isr) == set(s.replicas) for s in states), states
    config = await topic_config(kafka_cluster, topic_of(run), "min.insync.replicas")
    assert config == {"min.insync.replicas": "2"}
    assert not run.verify_errors, run.verify_errors


@pytest.mark.timeout(300)
async def test_leader_broker_killed_short_run(
    make_run: RunFactory, shared_endpoints: Endpoints, kafka_cluster: PrivateKafkaCluster
) -> None:
    """The fast leader move: 6,000 events, the busiest partition's leader SIGKILLed and started
    again. Nothing lost, order kept; the relay sends its unacknowledged batch again."""
    plan = Plan(
        "Kafka cluster: busiest leader SIGKILL+start (short)",
        events=6000,
        rate=1000.0,
        kafka_consumers=2,
        max_duplicates={"redis": 0, "kafka": RELAY_BATCH + 2 * CONSUMER_BATCH},
        seed=103,
        recover_timeout=120.0,
    )
    endpoints = replace(shared_endpoints, kafka_bootstrap=kafka_cluster.bootstrap)
    run = make_run(plan, endpoints)
    result = await run.execute(leader_killed(kafka_cluster, down=(0.5, 1.5)))
    assert result.passed, result.explain()
    assert_judged_during_the_move(run)


@pytest.mark.faults_full
@pytest.mark.timeout(480)
async def test_leader_broker_killed_under_load(
    make_run: RunFactory, shared_endpoints: Endpoints, kafka_cluster: PrivateKafkaCluster
) -> None:
    """20,000 events; the busiest partition's leader SIGKILLed under load and kept down a few
    seconds before it starts again and catches up as a follower. RF 3, min ISR 2: every record
    the relay saw acknowledged is on a surviving replica, so nothing is lost or reordered."""
    plan = Plan(
        "Kafka cluster: busiest leader SIGKILL+start (RF 3, min ISR 2)",
        kafka_consumers=2,
        max_duplicates={"redis": 0, "kafka": RELAY_BATCH + 2 * CONSUMER_BATCH},
        seed=107,
        recover_timeout=150.0,
    )
    endpoints = replace(shared_endpoints, kafka_bootstrap=kafka_cluster.bootstrap)
    run = make_run(plan, endpoints)
    result = await run.execute(leader_killed(kafka_cluster, down=(3.0, 6.0)))
    assert result.passed, result.explain()
    assert_judged_during_the_move(run)
