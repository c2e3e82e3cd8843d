"""Opening connections to PostgreSQL, Redis and Kafka from the settings.

This is the boundary where driver errors on connect become `ComponentUnreachable`, naming the
component, with secrets scrubbed from the driver's message. Callers own what they open here.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError

from flowproof.core.config import Settings
from flowproof.core.errors import ComponentUnreachable, ConfigError
from flowproof.core.redact import scrub
from flowproof.core.redis_topology import (
    is_cluster_url,
    is_sentinel_url,
    parse_cluster_url,
    parse_sentinel_url,
)

CONNECT_TIMEOUT = 10.0

# What `redis_client` gives: one server's (or Sentinel's primary's) client, or a Cluster's.
RedisClient = aioredis.Redis | RedisCluster


def _unreachable(component: str, exc: BaseException) -> ComponentUnreachable:
    detail = scrub(str(exc)) or type(exc).__name__
    return ComponentUnreachable(component, detail)


async def connect_postgres(settings: Settings, **kwargs: Any) -> asyncpg.Connection:
    """One asyncpg connection, or ComponentUnreachable('postgresql')."""
    try:
        return await asyncpg.connect(
            settings.database_url.get_secret_value(), timeout=CONNECT_TIMEOUT, **kwargs
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise _unreachable("postgresql", exc) from None


async def create_postgres_pool(
    settings: Settings, *, min_size: int = 1, max_size: int = 4, **kwargs: Any
) -> asyncpg.Pool:
    """An asyncpg pool, or ComponentUnreachable('postgresql')."""
    try:
        pool = await asyncpg.create_pool(
            settings.database_url.get_secret_value(),
            min_size=min_size,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            **kwargs,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise _unreachable("postgresql", exc) from None
    assert pool is not None  # create_pool only returns None when awaited without init
    return pool


def redis_client(settings: Settings, **kwargs: Any) -> RedisClient:
    """A redis-py asyncio client (connections are made lazily; see `ping_redis`).

    With a rediss:// URL (or rediss+sentinel://, rediss+cluster://) every server's certificate
    and host name are verified, against FLOWPROOF_REDIS_SSL_CAFILE when set. With a
    redis+sentinel:// URL it is a client of the primary the Sentinels name, asked again on
    every new connection (see `flowproof.core.redis_topology`); with a redis+cluster:// URL, a
    RedisCluster client that sends each command to the node of its key's hash slot.
    """
    url = settings.redis_url.get_secret_value()
    if settings.redis_ssl_cafile is not None:
        kwargs.setdefault("ssl_ca_certs", str(settings.redis_ssl_cafile))
    if settings.redis_ssl_certfile is not None and settings.redis_ssl_keyfile is not None:
        kwargs.setdefault("ssl_certfile", str(settings.redis_ssl_certfile))
        kwargs.setdefault("ssl_keyfile", str(settings.redis_ssl_keyfile))
    if is_sentinel_url(url):
        return _sentinel_client(url, **kwargs)
    if is_cluster_url(url):
        return _cluster_client(url, **kwargs)
    client: aioredis.Redis = aioredis.Redis.from_url(
        url,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=30,
        **kwargs,
    )
    return client


class _SentinelPool(SentinelConnectionPool):
    """A Sentinel-managed pool that closes its Sentinel connections with its own (redis-py
    leaves them to the caller, and the client is all flowproof's callers hold)."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # the client's aclose, not a switch to a new primary
            await self.sentinel_manager.aclose()


_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
# How long each Sentinel has to say why it named no primary (see _Sentinels).
_WHY_SECONDS = 1.0


def _tls(enabled: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """redis-py's TLS arguments of a rediss+sentinel:// or rediss+cluster:// client: the
    certificate and the host name always checked (against the CA file in `kwargs`, or the
    system's), and the client certificate if any; the files are taken out of `kwargs`. None
    without TLS."""
    files = {name: kwargs.pop(name) for name in _TLS_FILES if kwargs.get(name)}
    if not enabled:
        return {}
    return {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True} | files


class _Sentinels(Sentinel):
    """Sentinels whose "no primary found" says why, Sentinel by Sentinel (redis-py's names the
    error's class only: a refused certificate and a refused connection read the same)."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            address: tuple[str, int] = await super().discover_master(service_name)
        except MasterNotFoundError as exc:
            raise MasterNotFoundError(await self._why(service_name)) from exc
        return address

    async def _why(self, service_name: str) -> str:
        # Every Sentinel at once, each within _WHY_SECONDS: explaining a failed lookup adds at
        # most that to it (a Sentinel that does not answer already cost its own timeout).
        reasons = await asyncio.gather(
            *(self._reason(sentinel, service_name) for sentinel in self.sentinels)
        )
        return f"no Sentinel names a primary {service_name!r}: " + "; ".join(reasons)

    @staticmethod
    async def _reason(sentinel: aioredis.Redis, service_name: str) -> str:
        pool = sentinel.connection_pool
        where = "{host}:{port}".format_map(pool.connection_kwargs)
        # A connection of its own, without the client's retries: the first error is the answer.
        probe = aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(
                connection_class=pool.connection_class,
                **{**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)},
            )
        )
        try:
            async with asyncio.timeout(_WHY_SECONDS):
                masters = await probe.sentinel_masters()
        except TimeoutError:
            return f"{where}: no answer within {_WHY_SECONDS:g} s"
        except (RedisError, OSError) as exc:
            return f"{where}: {exc}"
        finally:
            await probe.aclose()
            await probe.connection_pool.disconnect()
        # A dict by name (RESP2, what flowproof's clients speak); RESP3 would give a list.
        state = masters.get(service_name) if isinstance(masters, dict) else None
        if state is None:
            return f"{where}: monitors no primary named {service_name!r}"
        flags = ",".join(sorted(state.get("flags") or ()))
        return f"{where}: names {service_name!r} but flags it {flags or 'unusable'}"


def _sentinel_client(url: str, **kwargs: Any) -> aioredis.Redis:
    target = parse_sentinel_url(url)
    tls = _tls(target.tls, kwargs)
    sentinels = _Sentinels(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs={
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": CONNECT_TIMEOUT,
            **tls,
        },
    )
    client: aioredis.Redis = sentinels.master_for(
        target.service,
        connection_pool_class=_SentinelPool,
        db=target.db,
        username=target.username,
        password=target.password,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=30,
        **tls,
        **kwargs,
    )
    return client


class _ClusterClient(RedisCluster):
    """A RedisCluster whose `aclose` closes every connection it opened: redis-py's closes
    nothing when the client never finished learning the slots (a node down meanwhile), and
    leaves those sockets open."""

    async def aclose(self) -> None:
        await super().aclose()
        await self.nodes_manager.aclose()
        await self.nodes_manager.aclose("startup_nodes")


def _cluster_client(url: str, **kwargs: Any) -> RedisCluster:
    target = parse_cluster_url(url)
    tls = _tls(target.tls, kwargs)
    # redis-py's own retries stay as the caller asked (the relay: none); a Cluster client takes
    # them as `retry` too.
    return _ClusterClient(
        startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
        username=target.username,
        password=target.password,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=30,
        **tls,
        **kwargs,
    )


async def ping_redis(client: RedisClient) -> None:
    """Raise ComponentUnreachable('redis') unless the server answers PING."""
    try:
        await client.ping()
    except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
        raise _unreachable("redis", exc) from None


def kafka_client_kwargs(settings: Settings) -> dict[str, Any]:
    """The connection arguments every aiokafka client (producer, consumer, admin) shares."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        context = ssl.create_default_context(cafile=cafile)
        if settings.kafka_ssl_certfile is not None and settings.kafka_ssl_keyfile is not None:
            context.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
        kwargs["ssl_context"] = context
    if settings.kafka_security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism
        kwargs["sasl_plain_username"] = settings.kafka_sasl_username
        password = settings.kafka_sasl_password
        kwargs["sasl_plain_password"] = password.get_secret_value() if password else None
    return kwargs


_KAFKA_REFUSALS = (
    "ClusterAuthorizationFailedError",
    "GroupAuthorizationFailedError",
    "TopicAuthorizationFailedError",
    "TransactionalIdAuthorizationFailed",
)


def kafka_refusal(exc: BaseException, settings: Settings) -> ConfigError | None:
    """A ConfigError naming the user when Kafka refused on its ACLs, else None.

    A refusal is not an unreachable broker: the fix is a grant, so it is reported as the
    configuration problem it is (exit 2), not retried.
    """
    if type(exc).__name__ not in _KAFKA_REFUSALS:
        return None
    user = settings.kafka_sasl_username or "the anonymous user"
    return ConfigError(
        f"kafka refused {user} (FLOWPROOF_KAFKA_SASL_USERNAME): {type(exc).__name__}: "
        f"{scrub(str(exc))}; grant the ACLs listed in docs/security.md"
    )


async def ping_kafka(settings: Settings) -> None:
    """Raise ComponentUnreachable('kafka') unless the cluster answers a metadata request."""
    from aiokafka.admin import AIOKafkaAdminClient  # noqa: PLC0415 - heavy import, used rarely

    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings), request_timeout_ms=5000)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await admin.start()
            await admin.describe_cluster()
    except Exception as exc:  # aiokafka raises many unrelated types on connect
        raise _unreachable("kafka", exc) from None
    finally:
        await admin.close()
