"""Scratch places for one benchmark: its own database, stream prefix and topic prefix.

Nothing a benchmark does touches the shared development data: each `Scratch` creates a fresh
database on the configured server (migrated like tests/conftest.py does) and names its streams
and topics under a prefix of its own; `close()` drops the database and deletes the streams and
topics. Filled databases are reused through `CREATE DATABASE ... TEMPLATE` (a file copy).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from flowproof.core.config import ENV_PREFIX, Settings
from flowproof.core.connect import redis_client
from flowproof.core.migrations import PARTITION_SECONDS, migrate

ROOT = Path(__file__).resolve().parent.parent
STACK_ENV = ROOT / ".devstack" / "env"
OUTBOX = "flowproof_outbox"


def service_env() -> dict[str, str]:
    """FLOWPROOF_* service addresses: the environment, else .devstack/env (make stack-up)."""
    env: dict[str, str] = {}
    if STACK_ENV.is_file():
        for line in STACK_ENV.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                env[key.strip()] = value.strip()
    env.update({k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)})
    for name in (
        "FLOWPROOF_DATABASE_URL",
        "FLOWPROOF_REDIS_URL",
        "FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS",
    ):
        if not env.get(name):
            raise SystemExit(f"{name} is not set: run `make stack-up` (or set it) first")
    return env


@dataclass
class Services:
    """Where the services are, and the server's maintenance database."""

    database_url: str
    redis_url: str
    kafka: str
    # The 3-broker cluster of `devstack/stack.sh up --kafka-cluster`, when it runs.
    kafka_cluster: str | None = None

    @classmethod
    def from_env(cls) -> Services:
        env = service_env()
        return cls(
            env["FLOWPROOF_DATABASE_URL"],
            env["FLOWPROOF_REDIS_URL"],
            env["FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS"],
            env.get("DEVSTACK_KAFKA_CLUSTER_BOOTSTRAP_SERVERS") or None,
        )

    def on_kafka_cluster(self) -> Services:
        """The same services with the Kafka cluster as Kafka (SystemExit when none runs)."""
        if self.kafka_cluster is None:
            raise SystemExit("no Kafka cluster: run `devstack/stack.sh up --kafka-cluster`")
        return replace(self, kafka=self.kafka_cluster)

    def database(self, name: str) -> str:
        base, _, _ = self.database_url.rpartition("/")
        return f"{base}/{name}"

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url)


@dataclass
class Scratch:
    """One benchmark's database and stream/topic prefix."""

    services: Services
    label: str
    db_name: str = field(default="")
    prefix: str = field(default="")
    # The span of the time partitions the migration makes (FLOWPROOF_RELAY_PARTITION_SECONDS).
    partition_seconds: float = PARTITION_SECONDS

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:8]
        self.db_name = self.db_name or f"fp_bench_{self.label}_{tag}"
        self.prefix = self.prefix or f"bench{tag}."

    @property
    def database_url(self) -> str:
        return self.services.database(self.db_name)

    async def create(self, template: str | None = None) -> Scratch:
        """Create the database: migrated from scratch, or copied from a filled `template`."""
        admin = await self.services.admin()
        try:
            if template is None:
                await admin.execute(f'CREATE DATABASE "{self.db_name}"')
            else:
                await admin.execute(
                    f'CREATE DATABASE "{self.db_name}" TEMPLATE "{template}" STRATEGY FILE_COPY'
                )
        finally:
            await admin.close()
        if template is None:
            conn = await self.connect()
            try:
                await migrate(conn, OUTBOX, partition_seconds=self.partition_seconds)
            finally:
                await conn.close()
        return self

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.database_url)

    def settings(self, **more: object) -> Settings:
        """Settings of this scratch place (relay and consumer defaults otherwise)."""
        values: dict[str, object] = {
            "database_url": self.database_url,
            "redis_url": self.services.redis_url,
            "kafka_bootstrap_servers": self.services.kafka,
            "stream_prefix": self.prefix,
            "topic_prefix": self.prefix,
            "metrics_port": 0,
        }
        values.update(more)
        return Settings(**values)  # type: ignore[arg-type]

    def env(self, **more: str) -> dict[str, str]:
        """The environment of a `flowproof` subprocess working here."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        env.update(
            FLOWPROOF_DATABASE_URL=self.database_url,
            FLOWPROOF_REDIS_URL=self.services.redis_url,
            FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS=self.services.kafka,
            FLOWPROOF_STREAM_PREFIX=self.prefix,
            FLOWPROOF_TOPIC_PREFIX=self.prefix,
            FLOWPROOF_METRICS_PORT="0",
            FLOWPROOF_LOG_LEVEL="warning",
            FLOWPROOF_LOG_FORMAT="json",
            FLOWPROOF_RELAY_PRUNE_INTERVAL_SECONDS="0",
        )
        env.update(more)
        return env

    async def close(self) -> None:
        """Drop the database and delete the streams and topics under the prefix."""
        await drop_database(self.services, self.db_name)
        await delete_names(self.services, self.prefix)


async def drop_database(services: Services, name: str) -> None:
    admin = await services.admin()
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def delete_names(services: Services, prefix: str) -> None:
    """Delete every stream and topic under `prefix` (the benchmark's own)."""
    client = redis_client(Settings(redis_url=SecretStr(services.redis_url)))
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        for key in keys:  # one by one: on a Redis Cluster they live on different nodes
            await client.delete(key)
    finally:
        await client.aclose()
    admin = AIOKafkaAdminClient(bootstrap_servers=services.kafka)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()
