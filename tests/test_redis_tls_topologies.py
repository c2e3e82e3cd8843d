"""Redis Sentinel and Redis Cluster over TLS (`rediss+sentinel://`, `rediss+cluster://`).

Private servers listen on TLS only (plain port 0), with certificates from a CA made here, and
ask every client for a certificate from it (`tls-auth-clients yes`, Redis's default): a primary
with a replica and a Sentinel (replication and the Sentinel's own links over TLS too), and a
3-primary Cluster (its bus over TLS). The relay publishes, the consumer reads and the verifier
judges nothing lost through the TLS URL with FLOWPROOF_REDIS_SSL_CAFILE and the client
certificate (FLOWPROOF_REDIS_SSL_CERTFILE, _KEYFILE); none of the servers answers plain text, so
every connection of the pipeline was TLS; the same clients refuse the servers when given a CA
that did not sign their certificates, and the servers refuse a client without a certificate.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from flowproof.publisher.relay import Relay
from flowproof.verifier.commands import check_once
from flowproof.verifier.model import FLOW_LOST
from tests.private_services import (
    Certificate,
    PrivateRedisCluster,
    PrivateService,
    ReplicatedRedis,
    TestCA,
    is_tls_alert,
    plaintext_reply,
)
from tests.readback import insert_canaries, unpublished
from tests.test_security_redis import refused_ping

AGGREGATES = ["t-1", "t-2", "t-3"]
TYPES = ["tlsa", "tlsb", "tlsc", "tlsd"]  # streams on more than one Cluster node
PER_AGGREGATE = 10


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("redis-tls-ca"))


@pytest.fixture(scope="module")
def tls_cluster(
    tmp_path_factory: pytest.TempPathFactory, ca: TestCA
) -> Iterator[PrivateRedisCluster]:
    cert = ca.issue("redis-cluster")
    with PrivateRedisCluster(
        tmp_path_factory.mktemp("redis-tls-cluster"), tls=cert, client_auth=True
    ) as servers:
        yield servers


@pytest.fixture(scope="module")
def tls_sentinel(tmp_path_factory: pytest.TempPathFactory, ca: TestCA) -> Iterator[ReplicatedRedis]:
    cert = ca.issue("redis-sentinel")
    with ReplicatedRedis(
        tmp_path_factory.mktemp("redis-tls-sentinel"), tls=cert, client_auth=True
    ) as servers:
        yield servers


def _topology(request: pytest.FixtureRequest, name: str) -> tuple[str, list[PrivateService]]:
    """The TLS URL of the topology `name` and its servers."""
    if name == "cluster":
        cluster: PrivateRedisCluster = request.getfixturevalue("tls_cluster")
        return cluster.url, list(cluster.nodes)
    replicated: ReplicatedRedis = request.getfixturevalue("tls_sentinel")
    return replicated.url, [replicated.primary, replicated.replica, replicated.sentinel]


@pytest.fixture(scope="module")
def client_cert(ca: TestCA) -> Certificate:
    return ca.issue("flowproof-redis-client")


def _on(settings: Settings, url: str, ca: Path, client: Certificate | None) -> Settings:
    """`settings` on the TLS topology `url`, presenting `client`'s certificate if given."""
    update: dict[str, object] = {
        "redis_url": SecretStr(url),
        "redis_ssl_cafile": ca,
        "sinks": ("redis",),
    }
    if client is not None:
        update |= {"redis_ssl_certfile": client.cert, "redis_ssl_keyfile": client.key}
    return settings.model_copy(update=update)


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
async def test_publish_consume_verify_over_tls(  # noqa: PLR0917 - fixtures
    topology: str,
    request: pytest.FixtureRequest,
    settings: Settings,
    database_url: str,
    ca: TestCA,
    client_cert: Certificate,
) -> None:
    url, servers = _topology(request, topology)
    assert url.startswith("rediss+")
    on_tls = _on(settings, url, ca.cert, client_cert)
    conn = await asyncpg.connect(database_url)
    try:
        for aggregatetype in TYPES:
            await insert_canaries(conn, AGGREGATES, PER_AGGREGATE, aggregatetype=aggregatetype)
        await Relay(on_tls).run_until_idle()
        assert await unpublished(conn, "redis") == 0
    finally:
        await conn.close()
    expected = len(TYPES) * len(AGGREGATES) * PER_AGGREGATE
    stats = await consume(on_tls, sink="redis", group=on_tls.consumer_group, drain=True)
    assert stats.receipts == expected
    report = await check_once(on_tls.model_copy(update={"flow_lost_grace_seconds": 0.0}))
    lost = report.check(FLOW_LOST)
    assert lost.passed, lost.detail
    assert any(f.data.get("judged") == expected for f in lost.findings), lost
    # No port of any server (its clients', the cluster bus: the kernel's view) speaks plain
    # text, so all the pipeline did went over TLS: a TLS server says nothing or sends an alert.
    for server in servers:
        ports = server.listening_ports()
        assert ports, server.workdir
        for port in ports:
            reply = plaintext_reply(port, b"PING\r\n")
            assert reply == b"" or is_tls_alert(reply), f"port {port} answered: {reply!r}"


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
async def test_servers_signed_by_another_ca_are_refused(
    topology: str,
    request: pytest.FixtureRequest,
    settings: Settings,
    tmp_path: Path,
    client_cert: Certificate,
) -> None:
    url, _ = _topology(request, topology)
    other = TestCA(tmp_path / "other-ca", name="another CA")
    refused = await refused_ping(_on(settings, url, other.cert, client_cert))
    # Why, in the error: for Sentinel too (redis-py's own message names only the error's class).
    assert "certificate verify failed" in str(refused), refused


@pytest.mark.parametrize("topology", ["cluster", "sentinel"])
async def test_a_client_without_a_certificate_is_refused(
    topology: str, request: pytest.FixtureRequest, settings: Settings, ca: TestCA
) -> None:
    url, _ = _topology(request, topology)
    await refused_ping(_on(settings, url, ca.cert, None))
