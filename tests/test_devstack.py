"""The devstack's env file and compose.yaml are what the rest of the project relies on."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from flowproof.core.config import Settings, known_env_names
from flowproof.core.connect import redis_client

ROOT = Path(__file__).resolve().parent.parent
# Services only the tests use, under names no flowproof command reads.
# The Redis topologies beside the single server (devstack/redis_topologies.sh; the bench uses the
# Cluster's): not FLOWPROOF_REDIS_URL, which stays the single server.
# DEVSTACK_KAFKA_CLUSTER_BOOTSTRAP_SERVERS: the 3-broker cluster of `stack.sh up --kafka-cluster`.
TEST_ONLY = {
    "DEVSTACK_SCHEMA_REGISTRY_URL",
    "DEVSTACK_APICURIO_JAR",
    "DEVSTACK_APICURIO_JAVA",
    "DEVSTACK_REDIS_SENTINEL_URL",
    "DEVSTACK_REDIS_CLUSTER_URL",
    "DEVSTACK_KAFKA_CLUSTER_BOOTSTRAP_SERVERS",
}


def test_env_file_is_shell_sourceable_and_uses_known_names() -> None:
    env_file = ROOT / ".devstack" / "env"
    assert env_file.is_file(), "run `make stack-up` first"
    lines = env_file.read_text().splitlines()
    assert lines
    keys = set()
    for line in lines:
        key, sep, value = line.partition("=")
        assert sep and key and value and " " not in line, line
        assert key in known_env_names() or key in TEST_ONLY, f"{key} is not a flowproof setting"
        keys.add(key)
    # The registry is the registry tests' own: by default flowproof keeps its embedded ids.
    assert "DEVSTACK_SCHEMA_REGISTRY_URL" in keys
    assert "FLOWPROOF_SCHEMA_REGISTRY_URL" not in keys


def test_compose_has_the_services_with_health_checks() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    for name in ("postgres", "redis", "kafka"):
        assert name in services, f"compose.yaml lacks {name}"
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


async def test_the_redis_topologies_answer_through_flowproofs_clients() -> None:
    """The devstack's primary+replica behind a Sentinel, and its 3-primary Cluster."""
    env = dict(line.split("=", 1) for line in (ROOT / ".devstack" / "env").read_text().splitlines())
    for name, kind in (
        ("DEVSTACK_REDIS_SENTINEL_URL", Redis),
        ("DEVSTACK_REDIS_CLUSTER_URL", RedisCluster),
    ):
        client = redis_client(Settings(redis_url=SecretStr(env[name])))
        try:
            assert isinstance(client, kind), name
            assert await client.ping(), name
        finally:
            await client.aclose()
    cluster = redis_client(Settings(redis_url=SecretStr(env["DEVSTACK_REDIS_CLUSTER_URL"])))
    assert isinstance(cluster, RedisCluster)
    try:
        await cluster.initialize()
        assert len(cluster.get_primaries()) == 3
    finally:
        await cluster.aclose()
