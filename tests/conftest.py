"""Test fixtures: real PostgreSQL, Redis and Kafka, found through .devstack/env or the environment.

A service that cannot be reached fails the tests that need it, with a message saying how to start
it; nothing is ever skipped. Each test gets its own database (copied from a migrated template),
and its own stream and topic prefix.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from flowproof.core.config import ENV_PREFIX, Settings
from flowproof.core.migrations import migrate
from tests.kafka_cluster import PrivateKafkaCluster

ROOT = Path(__file__).resolve().parent.parent
STACK_ENV = ROOT / ".devstack" / "env"
HOW_TO_START = (
    "start the local services with `make stack-up` (or point FLOWPROOF_DATABASE_URL, "
    "FLOWPROOF_REDIS_URL and FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS at running ones)"
)


def _read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# Captured at import, before the session fixture clears FLOWPROOF_* from the environment.
_SERVICE_ENV = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
if STACK_ENV.is_file():
    _SERVICE_ENV = {**_read_env_file(STACK_ENV), **_SERVICE_ENV}


@dataclass(frozen=True)
class Services:
    database_url: str  # the maintenance database: tests make their own from the template
    redis_url: str
    kafka_bootstrap_servers: str

    def database(self, name: str) -> str:
        base, _, _ = self.database_url.rpartition("/")
        return f"{base}/{name}"


def _required(name: str) -> str:
    value = _SERVICE_ENV.get(name)
    if not value:
        pytest.fail(f"{name} is not set and {STACK_ENV} does not exist: {HOW_TO_START}")
    return value


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    """No FLOWPROOF_* variable of the developer's shell may leak into a test."""
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.upper().startswith(ENV_PREFIX):
                mp.delenv(key)
        yield


@pytest.fixture(scope="session")
async def services() -> Services:
    """The running services, each checked once; fails (never skips) when one is unreachable."""
    found = Services(
        database_url=_required("FLOWPROOF_DATABASE_URL"),
        redis_url=_required("FLOWPROOF_REDIS_URL"),
        kafka_bootstrap_servers=_required("FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS"),
    )
    try:
        conn = await asyncpg.connect(found.database_url, timeout=5)
        await conn.close()
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        pytest.fail(f"PostgreSQL is unreachable at {found.database_url}: {exc}; {HOW_TO_START}")
    client = aioredis.Redis.from_url(found.redis_url, socket_connect_timeout=5)
    try:
        await client.ping()
    except (OSError, aioredis.RedisError) as exc:
        pytest.fail(f"Redis is unreachable at {found.redis_url}: {exc}; {HOW_TO_START}")
    finally:
        await client.aclose()
    admin = AIOKafkaAdminClient(
        bootstrap_servers=found.kafka_bootstrap_servers, request_timeout_ms=5000
    )
    try:
        await admin.start()
        await admin.describe_cluster()
    except Exception as exc:
        pytest.fail(
            f"Kafka is unreachable at {found.kafka_bootstrap_servers}: {exc!r}; {HOW_TO_START}"
        )
    finally:
        await admin.close()
    return found


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateKafkaCluster]:
    """A 3-node KRaft Kafka cluster of this test session (replication factor 3, min.insync.replicas
    2; tests/kafka_cluster.py), started by the first test that needs it. A test that kills or
    cuts off a node must leave the cluster whole again (every node running, replicas in sync)."""
    with PrivateKafkaCluster(tmp_path_factory.mktemp("kafka-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
async def template_database(services: Services) -> AsyncIterator[str]:
    """A database migrated once per session; every test copies it (fast) into its own."""
    name = f"fp_tpl_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(services.database(name))
        try:
            await migrate(conn, "flowproof_outbox")
        finally:
            await conn.close()
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(services: Services, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only; dropped afterwards."""
    name = f"fp_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(services.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        yield services.database(name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database, closed afterwards."""
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
def name_prefix() -> str:
    """A stream/topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture
def settings(services: Services, database_url: str, name_prefix: str) -> Settings:
    """Settings pointing at this test's database and its own streams and topics."""
    return Settings(
        database_url=database_url,  # type: ignore[arg-type]
        redis_url=services.redis_url,  # type: ignore[arg-type]
        kafka_bootstrap_servers=services.kafka_bootstrap_servers,
        stream_prefix=name_prefix,
        topic_prefix=name_prefix,
        metrics_port=0,
    )


@pytest.fixture
def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a flowproof subprocess needs to use this test's `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env.update(
        FLOWPROOF_DATABASE_URL=settings.database_url.get_secret_value(),
        FLOWPROOF_REDIS_URL=settings.redis_url.get_secret_value(),
        FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        FLOWPROOF_STREAM_PREFIX=settings.stream_prefix,
        FLOWPROOF_TOPIC_PREFIX=settings.topic_prefix,
        FLOWPROOF_METRICS_PORT="0",
        FLOWPROOF_LOG_FORMAT="json",
    )
    return env


@pytest.fixture
async def redis_client(services: Services, name_prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A Redis client; the keys under this test's prefix are deleted afterwards."""
    client = aioredis.Redis.from_url(services.redis_url)
    yield client
    keys = [key async for key in client.scan_iter(match=f"{name_prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def kafka_admin(services: Services, name_prefix: str) -> AsyncIterator[AIOKafkaAdminClient]:
    """A Kafka admin client; the topics under this test's prefix are deleted afterwards."""
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka_bootstrap_servers)
    await admin.start()
    yield admin
    topics = [t for t in await admin.list_topics() if t.startswith(name_prefix)]
    if topics:
        await admin.delete_topics(topics)
    await admin.close()
