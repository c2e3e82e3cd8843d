"""Fault scenarios on a replicated Kafka cluster: 3 KRaft nodes (tests/kafka_cluster.py), topics
with replication factor 3 and min.insync.replicas 2, the relay producing with acks=all and
idempotence, the consumers and the verifier given the three brokers as bootstrap list.

- the pipeline on the cluster, no fault (fast, `make test`);
- the leader of the busiest partition SIGKILLed under load and started again: its partitions
  get new leaders among the in-sync followers, the relay's unacknowledged batch is sent again
  to the new leader, the consumers follow, nothing lost, order kept; a short run in `make test`,
  the 20,000-event one with `make faults`. All along, the verifier's lag and group checks are
  evaluated (they must not raise, and never call an event lost);
- the configuration that loses acknowledged records (min.insync.replicas 1, unclean leader
  election allowed): the busiest partition's leader is cut off from its followers (a fault proxy
  on the listener the brokers replicate over), so it is soon alone in sync and acknowledges
  alone, then SIGKILLed: an out-of-sync follower becomes leader and what only the dead leader
  had is gone (truncated when it comes back). The verifier's flow.lost must report exactly the
  events the accounting finds lost (`Plan.lossy`);
- a network partition between the relay and one broker (the relay reaches the brokers through
  a listener of its own, behind the fault proxy; consumers, verifier and replication do not):
  dropped, slowed, then half-open; nothing lost.

The session's cluster (tests/conftest.py `kafka_cluster`) is shared: a scenario that kills a node
starts it again and waits for every replica to be back in sync before it ends. The last two
scenarios start clusters of their own (other settings, other listeners).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from prometheus_client import REGISTRY

from tests.faults.conftest import RunFactory
from tests.faults.proxy import ProxyProcess
from tests.faults.scenario import Endpoints, Faults, Plan, Run
from tests.faults.test_faults_network import assert_faults_happened, network_faults
from tests.kafka_cluster import PrivateKafkaCluster, describe
from tests.private_services import free_port

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


def read_errors() -> float:
    """Reads the verifier failed so far in this process (flowproof_verify_read_errors_total)."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name == "flowproof_verify_read_errors"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def assert_judged_during_the_move(run: Run, read_errors_before: float) -> None:
    """The verifier evaluated while leadership moved, and never failed to, nor to read a part
    (its Kafka lag and group status come from whichever broker answers)."""
    assert read_errors() == read_errors_before, "the verifier failed reads during the run"
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
    errors = read_errors()
    result = await run.execute(leader_killed(kafka_cluster, down=(0.5, 1.5)))
    assert result.passed, result.explain()
    assert_judged_during_the_move(run, errors)


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
    errors = read_errors()
    result = await run.execute(leader_killed(kafka_cluster, down=(3.0, 6.0)))
    assert result.passed, result.explain()
    assert_judged_during_the_move(run, errors)


@pytest.fixture
async def cluster_behind_proxy(
    request: pytest.FixtureRequest, tmp_path: Path, base_env: dict[str, str]
) -> AsyncIterator[tuple[PrivateKafkaCluster, ProxyProcess]]:
    """A private cluster with one more listener (the test's parameter: name, inter-broker or
    not) each node advertises at a proxy route `node-<id>`; the cluster settings in
    `request.param` too."""
    listener, inter_broker, settings = request.param
    advertised = [free_port() for _ in range(3)]
    cluster = PrivateKafkaCluster(
        tmp_path / "kafka-cluster",
        listeners={listener: advertised},
        inter_broker_listener=listener if inter_broker else "PLAINTEXT",
        **settings,
    )
    routes = {
        f"node-{node.node_id}": (advertised[n], "127.0.0.1", node.listener_ports[listener])
        for n, node in enumerate(cluster.nodes)
    }
    proxy = ProxyProcess(routes, tmp_path / "proxy.log")
    await proxy.start(base_env)
    try:
        await asyncio.to_thread(cluster.start)
        yield cluster, proxy
    finally:
        await asyncio.to_thread(cluster.close)
        await proxy.stop()


def followers_cut_then_leader_killed(
    cluster: PrivateKafkaCluster, proxy: ProxyProcess, done: dict[str, int]
) -> Faults:
    """Cut the busiest partition's leader off from its followers until it is alone in sync,
    let it acknowledge alone a few seconds, SIGKILL it and heal the cut: the controller elects
    an out-of-sync follower (unclean), and the dead leader, started again, truncates its log to
    the new leader's. The Kafka consumers are frozen (SIGSTOP) from the cut until the new leader
    is elected, as consumers that lag behind would be: what they had not read of the dead
    leader's records by then is gone for them. (Read before the election, those records would
    have arrived, and the new leader's records would reuse their offsets.) `done["truncated"]`
    gets how many records the end offsets lost in the election."""

    async def faults(run: Run) -> None:
        await run.at_fraction(0.2, 0.3)
        topic = topic_of(run)
        state, records = await cluster.busiest_leader(topic)
        leader, route = state.leader, f"node-{state.leader}"
        node = cluster.node(leader)

        async def alone_in_sync() -> bool:
            led = [s for s in await cluster.partitions(topic) if s.leader == leader]
            return bool(led) and all(s.isr == (leader,) for s in led)

        try:
            async with run.fault(
                f"node {leader} (leads partition {state.partition}, {records} records) cut off "
                "from its followers, alone in sync, SIGKILL+start"
            ):
                consumers = run.named("consume-kafka-")
                for consumer in consumers:
                    consumer.freeze()
                await proxy.mode(route, "drop")
                took = await run.wait_until(alone_in_sync, 90, f"node {leader} alone in sync")
                run.mark(f"alone in sync after {took:.1f} s: "
                         f"{describe(await cluster.partitions(topic))}")  # fmt: skip
                await run.pause(2.0, 4.0)  # records only node `leader` has, acknowledged
                before = await cluster.end_offsets(topic)
                await asyncio.to_thread(node.kill)
                await proxy.mode(route, "pass")
                await cluster.wait_leader_moved(topic, leader)
                after = await cluster.end_offsets(topic)
                truncated = done["truncated"] = sum(
                    max(before[p] - after.get(p, 0), 0) for p in before
                )
                run.mark(
                    f"unclean election: {describe(await cluster.partitions(topic))}; end offsets "
                    f"{before} -> {after}: {truncated} records gone with node {leader}"
                )
                for consumer in consumers:
                    consumer.thaw()
                await asyncio.to_thread(node.start)
        finally:
            for consumer in run.named("consume-kafka-"):
                if consumer.frozen:
                    consumer.thaw()
            await proxy.mode(route, "pass")
            if not node.running:
                await asyncio.to_thread(node.start)
        await run.recovered()
        run.mark(f"back in sync: {describe(await cluster.wait_in_sync(topic))}")

    return faults


@pytest.mark.faults_full
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "cluster_behind_proxy",
    [("REPLICATION", True, {"min_insync": 1, "unclean": True})],
    indirect=True,
    ids=["min-isr-1-unclean"],
)
async def test_unclean_leader_election_loss_is_reported_exactly(
    make_run: RunFactory,
    shared_endpoints: Endpoints,
    cluster_behind_proxy: tuple[PrivateKafkaCluster, ProxyProcess],
) -> None:
    """RF 3 but min.insync.replicas 1 and unclean leader election allowed: the leader alone in
    sync acknowledges records no follower has, then dies; an out-of-sync follower takes over.
    Whatever Kafka lost this way was marked published by the relay (it was acknowledged), so
    only the verifier can tell: flow.lost for kafka must report exactly the events the
    accounting finds without a receipt, every one of them published. Redis loses nothing.
    Duplicates are allowed up to the number of events: a consumer whose committed offset lies
    past the new leader's log end starts the partition again from the beginning
    (auto.offset.reset earliest)."""
    cluster, proxy = cluster_behind_proxy
    plan = Plan(
        "Kafka cluster: min ISR 1 + unclean election, leader alone in sync then SIGKILL",
        rate=600.0,
        kafka_consumers=2,
        max_duplicates={"redis": 0, "kafka": 20_000},
        seed=109,
        recover_timeout=180.0,
        drain_timeout=180.0,
        lossy=("kafka",),
    )
    endpoints = replace(shared_endpoints, kafka_bootstrap=cluster.bootstrap)
    run = make_run(plan, endpoints)
    done: dict[str, int] = {}
    result = await run.execute(followers_cut_then_leader_killed(cluster, proxy, done))
    assert result.passed, result.explain()
    # The election did take acknowledged records away (else the scenario proved nothing).
    assert done.get("truncated", 0) > 0, f"no record truncated: {done}\n{result.explain()}"


def relay_cut_from_one_broker(
    cluster: PrivateKafkaCluster, proxy: ProxyProcess, done: dict[str, int]
) -> Faults:
    """The relay's connections to the busiest partition's leader dropped, slowed, then left
    half-open (`test_faults_network.network_faults`); every other connection is untouched, so
    the cluster sees nothing wrong and leadership stays where it is."""

    async def faults(run: Run) -> None:
        await run.at_fraction(0.02, 0.04)
        state, _ = await cluster.busiest_leader(topic_of(run))
        run.mark(f"cutting the relay from node {state.leader}")
        await network_faults(proxy, f"node-{state.leader}", done)(run)

    return faults


@pytest.mark.faults_full
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "cluster_behind_proxy", [("RELAY", False, {})], indirect=True, ids=["relay-listener"]
)
async def test_relay_partitioned_from_one_broker(
    make_run: RunFactory,
    shared_endpoints: Endpoints,
    cluster_behind_proxy: tuple[PrivateKafkaCluster, ProxyProcess],
) -> None:
    """A network partition between the relay and one broker (RF 3, min ISR 2): the relay cannot
    reach the leader of some partitions while the cluster is healthy; its sends there time out,
    are retried and marked only once acknowledged. Nothing lost or reordered."""
    cluster, proxy = cluster_behind_proxy
    bound = 3 * (RELAY_BATCH + 2 * CONSUMER_BATCH)
    plan = Plan(
        "Kafka cluster: relay cut from one broker (drop, delay, half-open)",
        rate=250.0,
        kafka_consumers=2,
        max_duplicates={"redis": 0, "kafka": bound},
        seed=113,
        recover_timeout=120.0,
        relay_env={"FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap_of("RELAY")},
    )
    endpoints = replace(shared_endpoints, kafka_bootstrap=cluster.bootstrap)
    done: dict[str, int] = {}
    run = make_run(plan, endpoints)
    result = await run.execute(relay_cut_from_one_broker(cluster, proxy, done))
    assert result.passed, result.explain()
    assert_faults_happened(done)
