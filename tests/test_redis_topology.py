"""FLOWPROOF_REDIS_URL's topologies: redis+sentinel:// and redis+cluster:// taken apart, a clear
configuration error (exit 2 naming the variable) for a wrong one, the clients they give, and the
replica settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from flowproof.core.config import load_settings
from flowproof.core.connect import ping_redis, redis_client
from flowproof.core.errors import ComponentUnreachable, ConfigError
from flowproof.core.http import free_port
from flowproof.core.redis_topology import parse_cluster_url, parse_sentinel_url


def test_sentinel_url_parts() -> None:
    target = parse_sentinel_url("redis+sentinel://app:p%40ss@s1:26379,s2:26380/orders/2")
    assert target.sentinels == (("s1", 26379), ("s2", 26380))
    assert (target.service, target.db) == ("orders", 2)
    assert (target.username, target.password) == ("app", "p@ss")
    assert parse_sentinel_url("redis+sentinel://s1:26379/orders").db == 0


def test_cluster_url_parts() -> None:
    target = parse_cluster_url("redis+cluster://:secret@n1:7000,n2:7001/")
    assert target.nodes == (("n1", 7000), ("n2", 7001))
    assert (target.username, target.password) == (None, "secret")
    assert not target.tls


def test_the_tls_schemes_ask_for_tls() -> None:
    assert parse_cluster_url("rediss+cluster://n1:7000").tls
    assert parse_sentinel_url("REDISS+SENTINEL://s1:26379/orders").tls
    assert not parse_sentinel_url("redis+sentinel://s1:26379/orders").tls


def test_a_ca_file_needs_a_tls_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here\n")
    monkeypatch.setenv("FLOWPROOF_REDIS_SSL_CAFILE", str(ca))
    monkeypatch.setenv("FLOWPROOF_REDIS_URL", "redis+cluster://n1:7000")
    with pytest.raises(ConfigError, match="FLOWPROOF_REDIS_SSL_CAFILE"):
        load_settings()
    for url in ("rediss+cluster://n1:7000", "rediss+sentinel://s1:26379/orders"):
        monkeypatch.setenv("FLOWPROOF_REDIS_URL", url)
        assert load_settings().redis_ssl_cafile == ca


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://s1:26379", "ends with /<primary name>"),
        ("redis+sentinel://s1:26379/orders/x", "is not a number"),
        ("redis+sentinel://s1/orders", "is not host:port"),
        ("redis+sentinel:///orders", "at least one host:port"),
        ("redis+cluster://n1:7000/3", "only database 0"),
        ("redis+cluster://n1:7000?ssl=true", "no query"),
        ("rediss+cluster://n1:7000/1", "only database 0"),
        ("rediss+sentinel://s1:26379", "rediss+sentinel:// URL ends with /<primary name>"),
        ("redis+clusters://n1:7000", "must be a redis://"),
        ("http://n1:7000", "must be a redis://"),
    ],
)
def test_a_wrong_url_is_a_configuration_error(
    url: str, says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWPROOF_REDIS_URL", url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "FLOWPROOF_REDIS_URL" in str(caught.value) and says in str(caught.value)


def test_the_password_of_a_sentinel_url_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWPROOF_REDIS_URL", "redis+sentinel://:hunter2secret@s1:26379")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "hunter2secret" not in str(caught.value)


async def test_each_url_gives_its_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWPROOF_REDIS_URL", "redis+sentinel://127.0.0.1:1/orders/1")
    sentinel = redis_client(load_settings())
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    assert sentinel.connection_pool.service_name == "orders"
    await sentinel.aclose()
    monkeypatch.setenv("FLOWPROOF_REDIS_URL", "redis+cluster://127.0.0.1:1,127.0.0.1:2")
    cluster = redis_client(load_settings())
    assert isinstance(cluster, RedisCluster)
    await cluster.aclose()


def test_the_replica_wait_must_fit_in_the_publish_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWPROOF_RELAY_REDIS_MIN_REPLICAS", "1")
    monkeypatch.setenv("FLOWPROOF_RELAY_REDIS_REPLICA_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("FLOWPROOF_RELAY_SINK_TIMEOUT_SECONDS", "5")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert "FLOWPROOF_RELAY_SINK_TIMEOUT_SECONDS" in str(caught.value)
    monkeypatch.setenv("FLOWPROOF_RELAY_SINK_TIMEOUT_SECONDS", "6")
    assert load_settings().relay_redis_min_replicas == 1
    monkeypatch.setenv("FLOWPROOF_RELAY_REDIS_MIN_REPLICAS", "-1")
    with pytest.raises(ConfigError, match="FLOWPROOF_RELAY_REDIS_MIN_REPLICAS"):
        load_settings()


async def test_a_failed_sentinel_lookup_says_why_for_each_sentinel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed = free_port()  # nothing listens there
    monkeypatch.setenv("FLOWPROOF_REDIS_URL", f"redis+sentinel://127.0.0.1:{closed}/orders")
    client = redis_client(load_settings())
    try:
        with pytest.raises(ComponentUnreachable) as refused:
            await ping_redis(client)
    finally:
        await client.aclose()
    message = str(refused.value)
    assert f"no Sentinel names a primary 'orders': 127.0.0.1:{closed}: " in message, message
    assert "Connection refused" in message or "connecting" in message, message
