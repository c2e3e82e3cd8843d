"""A private replicated Kafka cluster for tests: 3 KRaft nodes on loopback, each a broker and a
controller in one JVM (tests/private_services.PrivateKafka), sharing one cluster id and one
static controller quorum.

Three combined nodes rather than three brokers beside a controller: one JVM less on a 2-core
machine, and the quorum (2 of 3 voters) survives any one node's crash, so a test may SIGKILL any
node, a partition leader or the active controller alike.

    with PrivateKafkaCluster(tmp_path / "kafka") as cluster:
        settings = settings.model_copy(update={"kafka_bootstrap_servers": cluster.bootstrap})
        leader = (await cluster.partitions(topic))[0].leader
        cluster.node(leader).kill()          # SIGKILL; the controller fences it in seconds
        cluster.node(leader).start()         # same ports, same data; rejoins as a follower

Topics the brokers create (the relay's, the consumers' dead-letter topics) get replication
factor 3 and `min.insync.replicas` (2 by default): an acknowledged record (acks=all) is on at
least two brokers. `unclean=True` with `min_insync=1` is the configuration that can lose
acknowledged records (the fault scenario that shows it). The nodes find their jars where
`make stack-up` fetched them, as the single broker does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from tests.private_services import (
    PrivateKafka,
    ServerGroup,
    ServiceFailed,
    free_port,
    kraft_cluster_id,
)

NODES = 3
# Sized for a shared 2-core machine: a small heap and few threads per node.
NODE_HEAP = "256m"


def cluster_properties(
    *, nodes: int = NODES, min_insync: int = 2, unclean: bool = False
) -> dict[str, str]:
    """The broker settings of every node (devstack/stack.sh's `--kafka-cluster` has the same)."""
    replicas = str(nodes)
    return {
        "default.replication.factor": replicas,
        "min.insync.replicas": str(min_insync),
        "unclean.leader.election.enable": "true" if unclean else "false",
        "offsets.topic.replication.factor": replicas,
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": str(min(2, nodes)),
        "share.coordinator.state.topic.replication.factor": replicas,
        "share.coordinator.state.topic.min.isr": str(min(2, nodes)),
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "true",
        # A crashed node is fenced, and its partitions led elsewhere, within seconds (the
        # defaults take 9 s and more); a follower that stops fetching leaves the ISR in 10 s.
        "broker.session.timeout.ms": "6000",
        "broker.heartbeat.interval.ms": "1000",
        "replica.lag.time.max.ms": "10000",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.replica.fetchers": "1",
    }


@dataclass(frozen=True)
class PartitionState:
    """Who leads a partition and who is in sync, from the cluster's metadata."""

    topic: str
    partition: int
    leader: int  # -1: no leader
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


class PrivateKafkaCluster(ServerGroup):
    """`nodes` combined KRaft nodes (node ids 1..nodes) on free loopback ports; see the module.

    `advertised_ports`, one per node, make each node advertise another port than it listens on
    (a fault proxy in front of it listens there, tests/faults/proxy.py). `listeners` adds
    plain-text listeners: name -> the port each node advertises for it (None: its own port);
    with `inter_broker_listener` one of them, the brokers replicate over it, so a proxy there
    cuts a node's followers off while its clients and the controller quorum still reach it."""

    def __init__(
        self,
        workdir: Path,
        *,
        nodes: int = NODES,
        heap: str = NODE_HEAP,
        partitions: int = 3,
        min_insync: int = 2,
        unclean: bool = False,
        properties: Mapping[str, str] | None = None,
        advertised_ports: Sequence[int] | None = None,
        listeners: Mapping[str, Sequence[int | None]] | None = None,
        inter_broker_listener: str = "PLAINTEXT",
        start_timeout: float = 150.0,
    ) -> None:
        for ports in (advertised_ports, *(listeners or {}).values()):
            if ports is not None and len(ports) != nodes:
                raise ValueError(f"{len(ports)} advertised ports for {nodes} nodes")
        self.workdir = workdir
        controllers = [free_port() for _ in range(nodes)]
        voters = ",".join(f"{n + 1}@127.0.0.1:{port}" for n, port in enumerate(controllers))
        settings = {
            **cluster_properties(nodes=nodes, min_insync=min_insync, unclean=unclean),
            **(properties or {}),
        }
        cluster_id = kraft_cluster_id()
        self.nodes = [
            PrivateKafka(
                workdir / f"node-{n + 1}",
                start_timeout=start_timeout,
                heap=heap,
                partitions=partitions,
                advertised_port=advertised_ports[n] if advertised_ports else None,
                node_id=n + 1,
                controller_port=controllers[n],
                voters=voters,
                cluster_id=cluster_id,
                properties=settings,
                listeners={name: ports[n] for name, ports in (listeners or {}).items()},
                inter_broker_listener=inter_broker_listener,
            )
            for n in range(nodes)
        ]

    @property
    def bootstrap(self) -> str:
        """Every node's client listener (as they advertise it), comma-separated."""
        return ",".join(f"127.0.0.1:{node.advertised_port}" for node in self.nodes)

    def bootstrap_of(self, listener: str) -> str:
        """Every node's `listener` (one of `listeners`), as advertised, comma-separated."""
        return ",".join(f"127.0.0.1:{node.listener_advertised[listener]}" for node in self.nodes)

    def node(self, node_id: int) -> PrivateKafka:
        return self.nodes[node_id - 1]

    def start(self) -> Self:
        """Launch every node, then wait until each is healthy (they need each other's votes)."""
        try:
            for node in self.nodes:
                node.launch()
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                for done in [pool.submit(node.wait_healthy) for node in self.nodes]:
                    done.result()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    async def partitions(self, topic: str, within: float = 30.0) -> list[PartitionState]:
        """The leader, replicas and in-sync replicas of each partition of `topic`. The admin
        client asks one node; a node just killed may still be its pick: then ask again (up to
        `within` seconds, then the last error)."""
        deadline = time.monotonic() + within
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
            try:
                await admin.start()
                described = await admin.describe_topics([topic])
                break
            except (KafkaError, OSError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
            finally:
                await admin.close()
        states = []
        for item in described:
            for part in item["partitions"]:
                states.append(
                    PartitionState(
                        topic=item["topic"],
                        partition=part["partition"],
                        leader=part["leader"],
                        replicas=tuple(part["replicas"]),
                        isr=tuple(part["isr"]),
                    )
                )
        return sorted(states, key=lambda s: s.partition)

    async def end_offsets(self, topic: str) -> dict[int, int]:
        """Each partition's end offset (its high watermark): how many records it holds."""
        partitions = [TopicPartition(topic, s.partition) for s in await self.partitions(topic)]
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, request_timeout_ms=10000)
        await consumer.start()
        try:
            ends = await consumer.end_offsets(partitions)
        finally:
            await consumer.stop()
        return {tp.partition: offset for tp, offset in ends.items()}

    async def busiest_leader(self, topic: str) -> tuple[PartitionState, int]:
        """The partition of `topic` holding the most records (its state) and that many."""
        ends = await self.end_offsets(topic)
        states = {s.partition: s for s in await self.partitions(topic)}
        busiest = max(ends, key=lambda p: (ends[p], -p))
        return states[busiest], ends[busiest]

    async def wait_leader_moved(self, topic: str, away_from: int, within: float = 60.0) -> None:
        """Until no partition of `topic` is led by node `away_from` and each has a leader."""
        deadline = time.monotonic() + within
        seen: object = None
        while time.monotonic() < deadline:
            try:
                states = await self.partitions(topic)
            except Exception as exc:  # the metadata came from the dead node: ask again
                seen = exc
            else:
                seen = describe(states)
                if states and all(s.leader not in (-1, away_from) for s in states):
                    return
            await asyncio.sleep(0.25)
        raise ServiceFailed(
            f"{topic}: still led by node {away_from} after {within:.0f} s: {seen!r}"
        )

    async def wait_in_sync(self, topic: str, within: float = 60.0) -> list[PartitionState]:
        """Until every partition of `topic` has a leader and all its replicas in sync."""
        deadline = time.monotonic() + within
        seen: object = None
        while time.monotonic() < deadline:
            try:
                states = await self.partitions(topic)
            except Exception as exc:  # a node may be starting: ask again, say so if it lasts
                seen = exc
            else:
                seen = describe(states)
                if states and all(s.leader >= 0 and set(s.isr) == set(s.replicas) for s in states):
                    return states
            await asyncio.sleep(0.5)
        raise ServiceFailed(f"{topic}: replicas not all in sync within {within:.0f} s: {seen!r}")


def describe(states: Sequence[PartitionState]) -> list[dict[str, Any]]:
    """States as plain dicts (for timelines and assertion messages)."""
    return [
        {"p": s.partition, "leader": s.leader, "isr": list(s.isr), "replicas": list(s.replicas)}
        for s in states
    ]
