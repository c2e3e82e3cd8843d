"""FLOWPROOF_SCHEMA_REGISTRY_URL against a real Apicurio Registry (the devstack's), proven with
the reference client, confluent-kafka's SchemaRegistryClient, AvroSerializer and AvroDeserializer.

The registry is shared by the tests; each test has its own topic prefix, hence its own subjects
(TopicNameStrategy: `<prefix><aggregatetype>-value`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from confluent_kafka.schema_registry import (
    Schema,
    SchemaRegistryClient,
    topic_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from pydantic import SecretStr
from structlog.testing import capture_logs

from flowproof.consumers.run import consume
from flowproof.core.config import Settings, load_settings
from flowproof.core.errors import ComponentUnreachable, ConfigError
from flowproof.publisher.outbox import Outbox
from flowproof.publisher.relay import Relay
from flowproof.schemas import framing
from flowproof.schemas.ids import subject_name
from flowproof.schemas.registry import BUILTIN_DIR, load_registry
from flowproof.schemas.registry_client import RegistryClient
from flowproof.verifier.evaluator import Evaluator
from flowproof.verifier.service import Readiness
from tests.conftest import STACK_ENV, Services
from tests.faults.proxy import ProxyProcess
from tests.private_services import Certificate, PrivateRegistry, TestCA, free_port
from tests.readback import read_stream, read_topic, wait_until
from tests.test_consumer_support import (
    Message,
    create_topics,
    event,
    group_name,
    order,
    produce_all,
    receipts,
    xadd_all,
)
from tests.test_verify_cli import flowproof

REGISTRY_VARIABLE = "DEVSTACK_SCHEMA_REGISTRY_URL"
HOW_TO_START = (
    "start it with `make stack-up` (Apicurio Registry, written to .devstack/env as "
    f"{REGISTRY_VARIABLE}), or point {REGISTRY_VARIABLE} at a Confluent-compatible registry"
)
ORDER_PLACED_V2 = (BUILTIN_DIR / "orders.OrderPlaced.v2.avsc").read_text(encoding="utf-8")


def _env_file() -> dict[str, str]:
    values = {}
    if STACK_ENV.is_file():
        for line in STACK_ENV.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _configured_url() -> str | None:
    return os.environ.get(REGISTRY_VARIABLE) or _env_file().get(REGISTRY_VARIABLE)


@pytest.fixture(scope="session")
def registry_url() -> str:
    """The running registry's Confluent-compatible API; fails (never skips) when there is none."""
    url = _configured_url()
    if not url:
        pytest.fail(f"{REGISTRY_VARIABLE} is not set and not in {STACK_ENV}: {HOW_TO_START}")
    try:
        httpx.get(f"{url}/config", timeout=5).raise_for_status()
    except httpx.HTTPError as exc:
        pytest.fail(f"the schema registry at {url} does not answer: {exc}; {HOW_TO_START}")
    return url


@pytest.fixture
def reference_client(registry_url: str) -> Iterator[SchemaRegistryClient]:
    client = SchemaRegistryClient({"url": registry_url, "timeout": 10})
    yield client
    client.close()


@pytest.fixture
def registry_settings(settings: Settings, registry_url: str) -> Settings:
    return settings.model_copy(update={"schema_registry_url": SecretStr(registry_url)})


@pytest.fixture
def registry_env(settings_env: dict[str, str], registry_url: str) -> dict[str, str]:
    return {**settings_env, "FLOWPROOF_SCHEMA_REGISTRY_URL": registry_url}


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    yield port


async def emit_orders(settings: Settings, conn: asyncpg.Connection, count: int) -> None:
    outbox = Outbox.from_settings(settings, load_registry(settings.schema_dir))
    async with conn.transaction():
        for n in range(count):
            await outbox.emit(
                conn,
                type="orders.OrderPlaced",
                aggregate_type="orders",
                aggregate_id=f"o-{n % 2}",
                payload=order(n),
            )


def deserializer(client: SchemaRegistryClient) -> AvroDeserializer:
    return AvroDeserializer(client, conf={"subject.name.strategy": topic_subject_name_strategy})


# --- the relay: registered ids, read by the reference deserializer --------------------------------


async def test_the_relay_frames_with_the_registrys_id_and_avro_deserializer_reads_it(
    registry_settings: Settings,
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
    reference_client: SchemaRegistryClient,
) -> None:
    settings = registry_settings
    await emit_orders(settings, conn, 4)
    await Relay(settings).run_until_idle()

    topic = f"{settings.topic_prefix}orders"
    subject = f"{topic}-value"
    registered = reference_client.get_latest_version(subject)
    local = load_registry(None).latest("orders.OrderPlaced")
    assert registered.schema_id != local.schema_id  # the registry's id, not the embedded one
    assert json.loads(registered.schema.schema_str)["name"] == "OrderPlaced"
    # Apicurio's default is NONE; the relay gave the subject it created flowproof's level.
    assert reference_client.get_compatibility(subject) == "BACKWARD"

    kafka = await read_topic(settings, topic)
    redis = await read_stream(redis_client, f"{settings.stream_prefix}orders")
    assert len(kafka) == len(redis) == 4
    # Both sinks carry the same id.
    assert {framing.read_header(m.value) for m in kafka + redis} == {registered.schema_id}

    read = deserializer(reference_client)
    payloads = sorted(
        (read(m.value, SerializationContext(topic, MessageField.VALUE)) for m in kafka),
        key=lambda p: p["order_id"],
    )
    assert payloads == [{**order(n), "channel": "web", "coupon_code": None} for n in range(4)]


def test_subject_names_follow_confluents_strategies() -> None:
    assert subject_name("TopicNameStrategy", "p.orders", "orders.OrderPaid") == "p.orders-value"
    assert subject_name("RecordNameStrategy", "p.orders", "orders.OrderPaid") == "orders.OrderPaid"
    assert (
        subject_name("TopicRecordNameStrategy", "p.orders", "orders.OrderPaid")
        == "p.orders-orders.OrderPaid"
    )


PAID = {"order_id": "o-1", "payment_id": "p-1", "amount_cents": 100, "method": "CARD"}


async def test_a_topic_with_several_event_types_needs_a_record_strategy(
    *,
    registry_settings: Settings,
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    reference_client: SchemaRegistryClient,
) -> None:
    async def emit_placed_and_paid(settings: Settings, aggregate: str) -> None:
        outbox = Outbox.from_settings(settings, load_registry(None))
        for event_type, payload in (("orders.OrderPlaced", order(1)), ("orders.OrderPaid", PAID)):
            await outbox.emit(
                conn,
                type=event_type,
                aggregate_type=aggregate,
                aggregate_id="o-1",
                payload=payload,
            )

    # TopicNameStrategy: one subject for the topic; the second record type is refused.
    settings = registry_settings.model_copy(update={"sinks": ("redis",)})
    await emit_placed_and_paid(settings, "orders")
    await Relay(settings).run_until_idle()
    [refused] = await conn.fetch(
        "SELECT type, redis_parked_reason, redis_parked_error FROM flowproof_outbox_progress "
        "WHERE redis_parked_reason IS NOT NULL"
    )
    assert (refused["type"], refused["redis_parked_reason"]) == (
        "orders.OrderPaid",
        "schema_refused",
    )
    assert "TopicRecordNameStrategy" in refused["redis_parked_error"]

    # TopicRecordNameStrategy: a subject per topic and record type; both flow.
    per_record = settings.model_copy(
        update={"schema_registry_subject_name_strategy": "TopicRecordNameStrategy"}
    )
    await emit_placed_and_paid(per_record, "payments")
    await Relay(per_record).run_until_idle()
    entries = await read_stream(redis_client, f"{settings.stream_prefix}payments")
    assert [e.fields["type"] for e in entries] == ["orders.OrderPlaced", "orders.OrderPaid"]
    for entry in entries:
        subject = f"{settings.topic_prefix}payments-{entry.fields['type']}"
        registered = reference_client.get_latest_version(subject)
        assert framing.read_header(entry.value) == registered.schema_id
        assert reference_client.get_compatibility(subject) == "BACKWARD"


async def test_without_the_setting_the_embedded_ids_stay(
    settings: Settings, conn: asyncpg.Connection, redis_client: aioredis.Redis
) -> None:
    await emit_orders(settings, conn, 1)
    await Relay(settings).run_until_idle()
    [entry] = await read_stream(redis_client, f"{settings.stream_prefix}orders")
    assert (
        framing.read_header(entry.value)
        == load_registry(None).latest("orders.OrderPlaced").schema_id
    )


@contextlib.asynccontextmanager
async def registry_behind_proxy(
    settings: Settings, registry_url: str, env: dict[str, str], log: Path
) -> AsyncIterator[tuple[ProxyProcess, Settings]]:
    """The registry behind a fault proxy (route `registry`), and `settings` pointing at it."""
    target = urlsplit(registry_url)
    assert target.port is not None
    routes = {"registry": (free_port(), "127.0.0.1", target.port)}
    async with ProxyProcess(routes, log) as proxy:
        await proxy.start(env)
        url = f"http://127.0.0.1:{proxy.port('registry')}{target.path}"
        yield (
            proxy,
            settings.model_copy(
                update={
                    "schema_registry_url": SecretStr(url),
                    "schema_registry_timeout_seconds": 2.0,
                }
            ),
        )


async def test_the_relay_waits_out_a_registry_outage_then_publishes_with_its_ids(
    *,
    registry_settings: Settings,
    registry_url: str,
    settings_env: dict[str, str],
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    reference_client: SchemaRegistryClient,
    tmp_path: Path,
) -> None:
    behind = registry_behind_proxy(registry_settings, registry_url, settings_env, tmp_path / "p")
    async with behind as (proxy, proxied):
        settings = proxied.model_copy(
            update={
                "sinks": ("redis",),
                "relay_retry_base_seconds": 0.1,
                "relay_retry_cap_seconds": 0.5,
            }
        )
        relay = Relay(settings)
        stream = f"{settings.stream_prefix}orders"
        with capture_logs() as logs:
            running = asyncio.create_task(relay.run())
            await asyncio.wait_for(relay.workers["redis"].idle.wait(), 20)
            await proxy.mode("registry", "drop")
            await emit_orders(settings, conn, 3)
            await wait_until(
                lambda: any(e["event"] == "relay.schema_registry_unreachable" for e in logs), 20
            )
            assert await read_stream(redis_client, stream) == []  # nothing framed without an id
            await proxy.mode("registry", "pass")

            async def published() -> bool:
                return len(await read_stream(redis_client, stream)) == 3

            await wait_until(published, 20)
            relay.stop()
            await asyncio.wait_for(running, 20)
    assert not [e for e in logs if e["event"] == "relay.parked"]  # retried, not parked
    registered = reference_client.get_latest_version(f"{settings.topic_prefix}orders-value")
    entries = await read_stream(redis_client, stream)
    assert {framing.read_header(e.value) for e in entries} == {registered.schema_id}


async def test_a_consumer_stops_on_a_registry_outage_without_acknowledging(
    *,
    registry_settings: Settings,
    registry_url: str,
    settings_env: dict[str, str],
    database_url: str,
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    stream = f"{registry_settings.stream_prefix}orders"
    group = group_name()
    behind = registry_behind_proxy(registry_settings, registry_url, settings_env, tmp_path / "p")
    async with behind as (proxy, settings):
        with capture_logs() as logs:
            running = asyncio.create_task(consume(settings, sink="redis", group=group))
            try:
                await wait_until(lambda: any(e["event"] == "consumer.started" for e in logs), 20)
                await proxy.mode("registry", "drop")
                await xadd_all(redis_client, stream, [event(1)])  # an id it has not seen
                with pytest.raises(ComponentUnreachable, match="schema-registry"):
                    await asyncio.wait_for(running, 30)
            finally:
                running.cancel()
    assert await receipts(database_url) == []
    pending = await redis_client.xpending(stream, group)
    assert pending["pending"] == 1  # read, not acknowledged: delivered again after a restart


# --- consumers: what the reference serializer produced is validated and receipted ------------

EXTENDED = json.loads(ORDER_PLACED_V2)
EXTENDED["fields"] = [*EXTENDED["fields"], {"name": "gift", "type": "boolean", "default": False}]


async def test_a_record_avro_serializer_produced_is_validated_and_receipted(
    *,
    registry_env: dict[str, str],
    settings: Settings,
    services: Services,
    database_url: str,
    redis_client: aioredis.Redis,
    kafka_admin: AIOKafkaAdminClient,
    reference_client: SchemaRegistryClient,
) -> None:
    topic = f"{settings.topic_prefix}orders"
    await create_topics(kafka_admin, topic, partitions=1)
    context = SerializationContext(topic, MessageField.VALUE)
    conf = {"auto.register.schemas": True, "subject.name.strategy": topic_subject_name_strategy}
    # The local schema as its file is, and a newer one the local files do not have (a producer
    # that is ahead): flowproof reads the second with the registry's schema as the writer's.
    same = AvroSerializer(reference_client, ORDER_PLACED_V2, conf=conf)
    ahead = AvroSerializer(reference_client, json.dumps(EXTENDED), conf=conf)
    first = event(1)
    second = event(2)
    messages = [
        Message(first.envelope, same(order(1), context)),
        Message(second.envelope, ahead({**order(2), "gift": True}, context)),
    ]
    ids = [framing.read_header(m.value) for m in messages]
    assert len(set(ids)) == 2
    await produce_all(services.kafka_bootstrap_servers, topic, messages)
    await xadd_all(redis_client, f"{settings.stream_prefix}orders", messages)

    group = group_name()
    for sink in ("kafka", "redis"):
        code, out, err = await flowproof(
            registry_env, "consume", "--sink", sink, "--group", group, "--drain"
        )
        assert code == 0, err[-2000:]
        assert "invalid=0" in out, out

    found = await receipts(database_url)
    assert len(found) == 4
    for receipt in found:
        assert receipt["error"] is None, receipt["error"]
        assert receipt["reason"] is None
    by_event = {(r["sink"], str(r["event_id"])): r["schema_id"] for r in found}
    for sink in ("kafka", "redis"):
        assert by_event[(sink, str(first.id))] == ids[0]
        assert by_event[(sink, str(second.id))] == ids[1]


async def test_an_unknown_registry_id_is_invalid_not_a_crash(
    registry_env: dict[str, str],
    settings: Settings,
    database_url: str,
    redis_client: aioredis.Redis,
) -> None:
    good = event(1)
    unknown = Message(good.envelope, b"\x00" + (2**31 - 7).to_bytes(4, "big") + good.value[5:])
    await xadd_all(redis_client, f"{settings.stream_prefix}orders", [unknown])
    code, _, err = await flowproof(
        registry_env, "consume", "--sink", "redis", "--group", group_name(), "--drain"
    )
    assert code == 0, err[-2000:]
    [receipt] = await receipts(database_url)
    assert receipt["reason"] == "unknown_schema"


# --- compatibility: the registry refuses, `schemas check --registry` reports --------------------


def without_customer_id(directory: Path) -> Path:
    """orders.OrderPlaced v3 without v2's required customer_id: BACKWARD-compatible (a new
    reader ignores it), not FORWARD (a v2 reader needs it)."""
    schema = json.loads(ORDER_PLACED_V2)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "customer_id"]
    schema["doc"] = "v3 drops customer_id"
    path = directory / "orders.OrderPlaced.v3.avsc"
    path.write_text(json.dumps(schema), encoding="utf-8")
    return directory


async def test_an_incompatible_schema_is_refused_and_reported_by_schemas_check(
    *,
    registry_settings: Settings,
    registry_env: dict[str, str],
    conn: asyncpg.Connection,
    kafka_admin: AIOKafkaAdminClient,
    reference_client: SchemaRegistryClient,
    tmp_path: Path,
) -> None:
    settings = registry_settings
    await emit_orders(settings, conn, 1)
    await Relay(settings).run_until_idle()  # registers v2 under <prefix>orders-value
    subject = f"{settings.topic_prefix}orders-value"
    reference_client.set_compatibility(subject, "FULL")
    env = {**registry_env, "FLOWPROOF_SCHEMA_DIR": str(without_customer_id(tmp_path))}

    v3 = (tmp_path / "orders.OrderPlaced.v3.avsc").read_text(encoding="utf-8")
    with pytest.raises(SchemaRegistryError) as refused:
        reference_client.register_schema(subject, Schema(v3, "AVRO"))
    assert refused.value.http_status_code == 409

    code, out, err = await flowproof(registry_env, "schemas", "check", "--registry")
    assert code == 0, out + err
    assert f"{subject}: version 1 (id " in out
    assert "is orders.OrderPlaced v2" in out

    code, out, err = await flowproof(env, "schemas", "check", "--registry")
    assert code == 1, out + err
    assert "version pairs checked (BACKWARD): compatible" in out  # locally v3 is fine
    assert (
        f"{subject}: orders.OrderPlaced v3 is incompatible with the registered versions under "
        "the subject's compatibility level FULL"
    ) in out
    assert "customer_id" in out

    # The relay parks an event whose schema the registry refuses, naming why.
    refusing = settings.model_copy(update={"schema_dir": tmp_path})
    outbox = Outbox.from_settings(refusing, load_registry(tmp_path))
    payload = {k: v for k, v in order(9).items() if k != "customer_id"}
    await outbox.emit(
        conn,
        type="orders.OrderPlaced",
        aggregate_type="orders",
        aggregate_id="o-9",
        payload=payload,
    )
    await Relay(refusing).run_until_idle()
    parked = await conn.fetch(
        "SELECT kafka_parked_reason, kafka_parked_error, redis_parked_reason "
        "FROM flowproof_outbox_progress WHERE aggregateid = 'o-9'"
    )
    assert [(r["kafka_parked_reason"], r["redis_parked_reason"]) for r in parked] == [
        ("schema_refused", "schema_refused")
    ]
    assert subject in parked[0]["kafka_parked_error"]


# --- an unreachable registry is a named component ----------------------------------------------


async def test_an_unreachable_registry_exits_2_naming_it(
    settings_env: dict[str, str], closed_port: int
) -> None:
    env = {
        **settings_env,
        "FLOWPROOF_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{closed_port}/apis/ccompat/v7",
        "FLOWPROOF_SCHEMA_REGISTRY_TIMEOUT_SECONDS": "2",
    }
    for args in (
        ("consume", "--sink", "redis", "--drain"),
        ("relay",),
        ("schemas", "check", "--registry"),
        ("check",),
    ):
        code, _, err = await flowproof(env, *args)
        assert code == 2, (args, err[-2000:])
        assert "schema-registry is unreachable" in err, (args, err[-2000:])
        assert f"127.0.0.1:{closed_port}" in err, (args, err[-2000:])


async def test_the_verifier_reports_an_unreachable_registry_and_is_not_ready(
    settings: Settings, closed_port: int, registry_url: str
) -> None:
    down = settings.model_copy(
        update={
            "schema_registry_url": SecretStr(f"http://127.0.0.1:{closed_port}"),
            "schema_registry_timeout_seconds": 2.0,
        }
    )
    async with Evaluator(down) as evaluator:
        report = await evaluator.evaluate()
    components = report.check("components.up")
    assert not components.passed
    [finding] = [f for f in components.findings if f.subject == "schema-registry"]
    assert not finding.ok
    assert f"127.0.0.1:{closed_port}" in finding.text
    readiness = Readiness(max_age=60)
    readiness.record(report)
    status, body = readiness.answer()
    assert status == 503
    assert "schema-registry is unreachable" in body

    up = settings.model_copy(update={"schema_registry_url": SecretStr(registry_url)})
    async with Evaluator(up) as evaluator:
        report = await evaluator.evaluate()
    [finding] = [
        f for f in report.check("components.up").findings if f.subject == "schema-registry"
    ]
    assert finding.ok


# --- TLS and basic auth -------------------------------------------------------------------------


def _devstack_value(name: str) -> str:
    value = os.environ.get(name) or _env_file().get(name)
    if not value:
        pytest.fail(f"{name} is not set and not in {STACK_ENV}: {HOW_TO_START}")
    return value


@pytest.fixture
def secure_registry(tmp_path: Path) -> Iterator[PrivateRegistry]:
    """An Apicurio of this test only: HTTPS with a test CA, basic auth (flowproof / its secret)."""
    ca = TestCA(tmp_path / "ca")
    registry = PrivateRegistry(
        tmp_path / "registry",
        java=_devstack_value("DEVSTACK_APICURIO_JAVA"),
        jar=_devstack_value("DEVSTACK_APICURIO_JAR"),
        cert=ca.issue("registry"),
        user="flowproof",
        password="reg-pw/0123456789",
    )
    with registry:
        yield registry


@pytest.mark.slow
async def test_https_and_basic_auth_with_secrets_from_files(
    *,
    secure_registry: PrivateRegistry,
    settings: Settings,
    settings_env: dict[str, str],
    conn: asyncpg.Connection,
    redis_client: aioredis.Redis,
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "registry-password"
    password_file.write_text(secure_registry.password + "\n", encoding="utf-8")
    env = {
        **settings_env,
        "FLOWPROOF_SCHEMA_REGISTRY_URL": secure_registry.url,
        "FLOWPROOF_SCHEMA_REGISTRY_USERNAME": secure_registry.user,
        "FLOWPROOF_SCHEMA_REGISTRY_PASSWORD_FILE": str(password_file),
        "FLOWPROOF_SCHEMA_REGISTRY_SSL_CAFILE": str(secure_registry.cert.ca),
    }
    # The relay registers through TLS and basic auth, and frames with the id it got.
    secured = load_settings_from(env)
    await emit_orders(secured, conn, 1)
    await Relay(secured).run_until_idle()
    [entry] = await read_stream(redis_client, f"{settings.stream_prefix}orders")
    code, out, err = await flowproof(env, "schemas", "check", "--registry")
    assert code == 0, out + err
    assert f"version 1 (id {framing.read_header(entry.value)}) is orders.OrderPlaced v2" in out

    without_ca = {k: v for k, v in env.items() if k != "FLOWPROOF_SCHEMA_REGISTRY_SSL_CAFILE"}
    code, _, err = await flowproof(without_ca, "schemas", "check", "--registry")
    assert code == 2, err
    assert "schema-registry is unreachable" in err
    assert "CERTIFICATE_VERIFY_FAILED" in err

    password_file.write_text("wrong-password", encoding="utf-8")
    code, out, err = await flowproof(env, "schemas", "check", "--registry")
    assert code == 2, err
    assert "refused the credentials (HTTP 401)" in err
    assert "FLOWPROOF_SCHEMA_REGISTRY_PASSWORD" in err
    assert "wrong-password" not in out + err


@contextlib.contextmanager
def _https_asking_for_certificates(cert: Certificate) -> Iterator[str]:
    """An HTTPS server on loopback that requires a client certificate from `cert`'s CA and
    answers `GET .../config` as a registry does: the base URL. (Apicurio's own client-auth is
    fixed when it is built, NONE in the ready-to-run distribution; in production a proxy in
    front of it asks for the certificates, as this server does.)"""

    class Config(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"compatibilityLevel": "BACKWARD"}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cert.ca))
    context.load_cert_chain(cert.cert, cert.key)
    context.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Config)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/apis/ccompat/v7"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_the_registry_client_presents_its_certificate_when_asked(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    client_cert = ca.issue("flowproof-relay")
    with _https_asking_for_certificates(ca.issue("registry")) as url:
        env = {
            "FLOWPROOF_SCHEMA_REGISTRY_URL": url,
            "FLOWPROOF_SCHEMA_REGISTRY_SSL_CAFILE": str(ca.cert),
        }
        with_cert = {
            **env,
            "FLOWPROOF_SCHEMA_REGISTRY_SSL_CERTFILE": str(client_cert.cert),
            "FLOWPROOF_SCHEMA_REGISTRY_SSL_KEYFILE": str(client_cert.key),
        }
        client = RegistryClient.from_settings(load_settings_from(with_cert))
        assert client is not None
        try:
            await client.check()
        finally:
            await client.aclose()
        # Without a certificate the server ends the TLS session (TLS 1.3: its alert may come
        # with the answer, after the handshake): unreachable, saying why, every time.
        client = RegistryClient.from_settings(load_settings_from(env))
        assert client is not None
        try:
            for _ in range(5):
                with pytest.raises(ComponentUnreachable) as refused:
                    await client.check()
                assert refused.value.component == "schema-registry"
                # The alert, or the reset that ends the session; never an empty reason.
                assert any(
                    why in str(refused.value)
                    for why in ("CERTIFICATE_REQUIRED", "ConnectionResetError", "EOF")
                ), refused.value
        finally:
            await client.aclose()


def load_settings_from(env: dict[str, str]) -> Settings:
    """The settings `env` gives a flowproof process (secret files included)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            if key.startswith("FLOWPROOF_"):
                patch.setenv(key, value)
        return load_settings()


# --- settings ------------------------------------------------------------------------------------


def test_registry_settings_are_checked_and_secrets_come_from_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FLOWPROOF_SCHEMA_REGISTRY_URL", "ftp://registry:8081")
    with pytest.raises(ConfigError, match="FLOWPROOF_SCHEMA_REGISTRY_URL: must be an http"):
        load_settings()
    monkeypatch.setenv("FLOWPROOF_SCHEMA_REGISTRY_URL", "https://registry.example:8081/")
    monkeypatch.setenv("FLOWPROOF_SCHEMA_REGISTRY_PASSWORD", "s3cret")
    with pytest.raises(ConfigError, match="FLOWPROOF_SCHEMA_REGISTRY_USERNAME is not"):
        load_settings()
    monkeypatch.delenv("FLOWPROOF_SCHEMA_REGISTRY_PASSWORD")
    secret = tmp_path / "password"
    secret.write_text("s3cret\n", encoding="utf-8")
    monkeypatch.setenv("FLOWPROOF_SCHEMA_REGISTRY_USERNAME", "flowproof")
    monkeypatch.setenv("FLOWPROOF_SCHEMA_REGISTRY_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("FLOWPROOF_SCHEMA_REGISTRY_SUBJECT_NAME_STRATEGY", "RecordNameStrategy")
    loaded = load_settings()
    assert loaded.schema_registry_url is not None
    assert loaded.schema_registry_url.get_secret_value() == "https://registry.example:8081"
    assert loaded.schema_registry_password is not None
    assert loaded.schema_registry_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(loaded)
    monkeypatch.setenv("FLOWPROOF_SCHEMA_REGISTRY_SUBJECT_NAME_STRATEGY", "TopicStrategy")
    with pytest.raises(ConfigError, match="FLOWPROOF_SCHEMA_REGISTRY_SUBJECT_NAME_STRATEGY"):
        load_settings()
