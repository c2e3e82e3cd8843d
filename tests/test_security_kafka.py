"""Kafka over SASL_SSL (SCRAM-SHA-512) with ACLs.

A private KRaft broker (tests/private_services.py) has a SASL_SSL listener for clients with a
certificate from a CA made here, SCRAM users made when its storage is formatted, the standard
authorizer with `allow.everyone.if.no.acl.found=false`, and one user per component with the ACLs
docs/security.md documents (`KAFKA_ACLS`, checked against that page below). A user
without ACLs (or with ACLs for another prefix) is refused, and flowproof says so. The components
run as these users in tests/test_security_pipeline.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import struct
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    GroupCoordinatorNotAvailableError,
    KafkaError,
    for_code,
)
from aiokafka.protocol.admin import CreateAclsRequest
from pydantic import SecretStr

from flowproof.consumers.run import consume
from flowproof.core.config import Settings
from flowproof.core.connect import kafka_client_kwargs, ping_kafka
from flowproof.core.errors import ComponentUnreachable, ConfigError
from flowproof.core.routing import DLQ_SUFFIX
from flowproof.publisher.errors import SinkError
from flowproof.publisher.kafka_sink import KafkaSink
from flowproof.publisher.rows import Message
from tests.private_services import (
    WRONG_HOST,
    Certificate,
    KafkaSecurity,
    PrivateKafka,
    TestCA,
    is_tls_alert,
    plaintext_reply,
)
from tests.readback import read_topic

pytestmark = pytest.mark.slow  # private servers, a JVM among them
ROOT = Path(__file__).resolve().parent.parent
PREFIX = "flowproof."  # the default topic prefix, as in docs/security.md
MTLS_RELAY = "flowproof-mtls-relay"  # the CN of the relay's client certificate (mTLS listener)
GROUP = "flowproof"  # the default consumer group

# Kafka's protocol codes (org.apache.kafka.common.acl / resource).
_RESOURCE = {"topic": 2, "group": 3, "cluster": 4}
_PATTERN = {"literal": 3, "prefixed": 4}
_OPERATION = {"Read": 3, "Write": 4, "Create": 5, "Describe": 8}
_ALLOW = 3


@dataclass(frozen=True)
class KafkaAcl:
    """Allow `operations` on a topic or group, named exactly (literal) or by prefix."""

    resource: str
    name: str
    pattern: str
    operations: tuple[str, ...]


def kafka_acls(prefix: str, group: str) -> dict[str, list[KafkaAcl]]:
    """What each component's clients do (publisher/kafka_sink.py; consumers/run.py and the DLQ
    producer; verifier/kafka_lag.py), on the topics under `prefix` and the group `group` only.
    Topics are created by auto-creation (Create); an idempotent producer needs Write on a topic
    (Kafka >= 3.0), no cluster ACL."""
    return {
        "relay": [KafkaAcl("topic", prefix, "prefixed", ("Write", "Describe", "Create"))],
        "consumer": [
            KafkaAcl("topic", prefix, "prefixed", ("Read", "Describe", "Write", "Create")),
            KafkaAcl("group", group, "literal", ("Read",)),
        ],
        "verifier": [
            KafkaAcl("topic", prefix, "prefixed", ("Read", "Describe")),
            KafkaAcl("group", group, "literal", ("Describe",)),
        ],
    }


def kafka_acls_command(user: str, acl: KafkaAcl) -> str:
    """The same ACL as a `kafka-acls.sh` command line (what docs/security.md shows)."""
    operations = " ".join(f"--operation {op}" for op in acl.operations)
    return (
        f"kafka-acls.sh --bootstrap-server BROKER:9093 --command-config admin.properties --add "
        f"--allow-principal User:{user} {operations} --{acl.resource} {acl.name}"
        + (" --resource-pattern-type prefixed" if acl.pattern == "prefixed" else "")
    )


def kafka_users(punctuation: str = "") -> dict[str, str]:
    """SCRAM user -> password (ending with `punctuation`): one per component, and `intruder`
    that no ACL mentions."""
    names = [*(f"flowproof-{c}" for c in ("relay", "consumer", "verifier")), "intruder"]
    return {name: f"kafka-{name}-{os.urandom(9).hex()}{punctuation}" for name in names}


def kafka_settings(
    server: PrivateKafka, user: str, password: str, secrets_dir: Path | None = None, **extra: object
) -> Settings:
    """Settings of a client logging in as `user` over SASL_SSL, verifying the broker."""
    assert server.security is not None
    values: dict[str, object] = {
        "kafka_bootstrap_servers": server.bootstrap,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": user,
        "kafka_sasl_password": SecretStr(password),
        "kafka_ssl_cafile": server.security.certificate.ca,
        "topic_prefix": PREFIX,
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


async def grant(server: PrivateKafka, acls: Mapping[str, list[KafkaAcl]]) -> None:
    """Create the ACLs as the super user (CreateAcls through aiokafka's protocol classes: its
    admin client has no ACL call)."""
    security = server.security
    assert security is not None
    admin = AIOKafkaAdminClient(
        **kafka_client_kwargs(kafka_settings(server, security.admin, security.admin_password))
    )
    await admin.start()
    try:
        for user, entries in acls.items():
            for acl in entries:
                for operation in acl.operations:
                    request = CreateAclsRequest(
                        _RESOURCE[acl.resource],
                        acl.name,
                        _PATTERN[acl.pattern],
                        f"User:{user}",
                        "*",
                        _OPERATION[operation],
                        _ALLOW,
                    )
                    response = await admin._send_request(request)
                    for error_code, error_message in response.creation_responses:
                        assert error_code == 0, f"CreateAcls {user} {acl}: {error_message}"
    finally:
        await admin.close()


def component_acls(prefix: str, group: str) -> dict[str, list[KafkaAcl]]:
    return {f"flowproof-{c}": acls for c, acls in kafka_acls(prefix, group).items()}


def start_secured_kafka(
    workdir: Path,
    ca: TestCA,
    users: Mapping[str, str],
    extra_acls: Mapping[str, list[KafkaAcl]] | None = None,
    misnamed: Certificate | None = None,
    *,
    mtls: bool = False,
) -> PrivateKafka:
    """A SASL_SSL broker with `users` and the components' ACLs (plus `extra_acls`); with
    `misnamed`, a second listener presents that certificate; with `mtls`, a listener where
    clients log in with a certificate."""
    certificate = ca.issue("flowproof-test-broker")
    security = KafkaSecurity(certificate, users=dict(users), misnamed=misnamed, mtls=mtls)
    server = PrivateKafka(workdir, security=security)
    server.start()
    try:
        asyncio.run(grant(server, {**component_acls(PREFIX, GROUP), **(extra_acls or {})}))
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="module")
def users() -> dict[str, str]:
    return {**kafka_users(), "elsewhere": f"kafka-elsewhere-{os.urandom(9).hex()}"}


@pytest.fixture(scope="module")
def kafka_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("kafka-ca"))


@pytest.fixture(scope="module")
def secured_kafka(
    tmp_path_factory: pytest.TempPathFactory, kafka_ca: TestCA, users: dict[str, str]
) -> Iterator[PrivateKafka]:
    # `elsewhere` may publish, but under another prefix: the misconfiguration to recognise.
    elsewhere = {"elsewhere": [KafkaAcl("topic", "other.", "prefixed", ("Write", "Describe"))]}
    # The relay's ACLs for the principal of its client certificate too (the mTLS listener).
    by_certificate = {f"CN={MTLS_RELAY}": kafka_acls(PREFIX, GROUP)["relay"]}
    misnamed = kafka_ca.issue("flowproof-misnamed-broker", hosts=[WRONG_HOST])
    server = start_secured_kafka(
        tmp_path_factory.mktemp("kafka"),
        kafka_ca,
        users,
        {**elsewhere, **by_certificate},
        misnamed,
        mtls=True,
    )
    try:
        yield server
    finally:
        server.close()


def _message(topic: str) -> Message:
    event_id = str(uuid.uuid4()).encode()
    return Message(
        seq=1,
        aggregate=("order", "o-1"),
        destination=topic,
        key=b"o-1",
        value=b"\x00\x00\x00\x00\x01",
        fields={"id": event_id, "created_at": dt.datetime.now(dt.UTC).isoformat().encode()},
    )


async def _publish(settings: Settings, topic: str) -> SinkError | None:
    """One message through the relay's Kafka sink: None when acknowledged, else the error."""
    sink = KafkaSink(settings)
    try:
        await sink.start()
        [outcome] = await sink.publish([_message(topic)])
        return outcome if isinstance(outcome, SinkError) else None
    except SinkError as exc:
        return exc
    finally:
        await sink.close()


# --- SASL_SSL --------------------------------------------------------------------------------


async def test_each_component_user_logs_in_over_sasl_ssl(
    secured_kafka: PrivateKafka, users: dict[str, str]
) -> None:
    for user in ("flowproof-relay", "flowproof-consumer", "flowproof-verifier"):
        await ping_kafka(kafka_settings(secured_kafka, user, users[user]))


async def test_a_wrong_password_is_refused(
    secured_kafka: PrivateKafka, users: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    wrong = f"kafka-wrong-{os.urandom(6).hex()}"
    with pytest.raises(ComponentUnreachable) as refused:
        await ping_kafka(kafka_settings(secured_kafka, "flowproof-relay", wrong))
    assert refused.value.component == "kafka"
    # aiokafka says why in its own log line; flowproof's error says who is unreachable.
    assert "invalid credentials with SASL mechanism SCRAM-SHA-512" in caplog.text, caplog.text
    for text in (str(refused.value), caplog.text):
        assert wrong not in text
        assert users["flowproof-relay"] not in text


async def test_a_broker_certificate_from_another_ca_is_refused(
    secured_kafka: PrivateKafka,
    users: dict[str, str],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stranger = TestCA(tmp_path / "other-ca", name="someone else's CA")
    settings = kafka_settings(
        secured_kafka, "flowproof-relay", users["flowproof-relay"], kafka_ssl_cafile=stranger.cert
    )
    with pytest.raises(ComponentUnreachable) as refused:
        await ping_kafka(settings)
    assert refused.value.component == "kafka"
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text, caplog.text


async def test_a_broker_certificate_for_another_host_is_refused(
    secured_kafka: PrivateKafka, users: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    settings = kafka_settings(
        secured_kafka,
        "flowproof-relay",
        users["flowproof-relay"],
        kafka_bootstrap_servers=f"127.0.0.1:{secured_kafka.misnamed_port}",
    )
    # The chain is good (a client that skips the name check logs in): only the name is wrong.
    lenient = kafka_client_kwargs(settings)
    lenient["ssl_context"].check_hostname = False
    admin = AIOKafkaAdminClient(**lenient, request_timeout_ms=5000)
    try:
        await admin.start()
        assert (await admin.describe_cluster())["cluster_id"]
    finally:
        await admin.close()
    caplog.clear()
    with pytest.raises(ComponentUnreachable) as refused:
        await ping_kafka(settings)
    assert refused.value.component == "kafka"
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text, caplog.text
    assert "IP address mismatch" in caplog.text, caplog.text


def test_the_broker_answers_nothing_in_plain_text(secured_kafka: PrivateKafka) -> None:
    # Every port the broker's JVM listens on (the kernel's view: client, controller and the
    # misnamed listener) gets a plain-text ApiVersions request; a plain listener would answer
    # with a response carrying its correlation id.
    ports = secured_kafka.listening_ports()
    assert {secured_kafka.port, secured_kafka.controller_port} <= ports, ports
    client = b"flowproof-probe"
    body = struct.pack(">hhih", 18, 0, 0x0F10E9F, len(client)) + client  # ApiVersions v0
    for port in ports:
        reply = plaintext_reply(port, struct.pack(">i", len(body)) + body)
        assert reply == b"" or is_tls_alert(reply), f"port {port} answered in plain text: {reply!r}"


async def test_a_plain_client_is_told_nothing_about_the_password(
    secured_kafka: PrivateKafka, users: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    plain = Settings(
        kafka_bootstrap_servers=secured_kafka.bootstrap,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="flowproof-relay",
        kafka_sasl_password=SecretStr(users["flowproof-relay"]),
    )
    with pytest.raises(ComponentUnreachable) as refused:
        await ping_kafka(plain)
    assert refused.value.component == "kafka"
    assert users["flowproof-relay"] not in str(refused.value) + caplog.text


# --- TLS client certificates (SSL with ssl.client.auth=required) ----------------------------


def mtls_settings(server: PrivateKafka, client: Certificate | None) -> Settings:
    """Settings of a client of the mTLS listener: SSL, the broker verified against the test CA,
    and `client`'s certificate presented (none: no certificate)."""
    assert server.security is not None and server.mtls_port is not None
    values: dict[str, object] = {
        "kafka_bootstrap_servers": f"127.0.0.1:{server.mtls_port}",
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": server.security.certificate.ca,
        "topic_prefix": PREFIX,
    }
    if client is not None:
        values |= {"kafka_ssl_certfile": client.cert, "kafka_ssl_keyfile": client.key}
    return Settings(**values)  # type: ignore[arg-type]


async def test_a_client_certificate_logs_the_relay_in_with_its_acls(
    secured_kafka: PrivateKafka, kafka_ca: TestCA, users: dict[str, str]
) -> None:
    relay = mtls_settings(secured_kafka, kafka_ca.issue(MTLS_RELAY))
    topic = f"{PREFIX}mtls{uuid.uuid4().hex[:8]}"
    assert await _publish(relay, topic) is None
    verifier = kafka_settings(secured_kafka, "flowproof-verifier", users["flowproof-verifier"])
    assert [d.key for d in await read_topic(verifier, topic)] == [b"o-1"]
    # The certificate's principal has the relay's ACLs only: a topic elsewhere is refused.
    refused = await _publish(relay, f"other.mtls{uuid.uuid4().hex[:8]}")
    assert refused is not None and "TopicAuthorizationFailedError" in str(refused), refused


async def test_without_a_client_certificate_the_mtls_listener_refuses(
    secured_kafka: PrivateKafka, kafka_ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ComponentUnreachable) as refused:
        await ping_kafka(mtls_settings(secured_kafka, None))
    assert refused.value.component == "kafka"
    # A certificate from another CA is refused the same way.
    stranger = TestCA(kafka_ca.directory / "stranger-ca", name="someone else's CA")
    with pytest.raises(ComponentUnreachable):
        await ping_kafka(mtls_settings(secured_kafka, stranger.issue(MTLS_RELAY)))


# --- ACLs ------------------------------------------------------------------------------------


async def test_the_relay_user_publishes_and_the_verifier_user_reads_it_back(
    secured_kafka: PrivateKafka, users: dict[str, str]
) -> None:
    topic = f"{PREFIX}acl{uuid.uuid4().hex[:8]}"
    relay = kafka_settings(secured_kafka, "flowproof-relay", users["flowproof-relay"])
    assert await _publish(relay, topic) is None
    verifier = kafka_settings(secured_kafka, "flowproof-verifier", users["flowproof-verifier"])
    delivered = await read_topic(verifier, topic)
    assert [d.key for d in delivered] == [b"o-1"]


# (user, topic prefix, refusal): who may not publish where.
WRITE_REFUSALS = [
    ("intruder", PREFIX, "ClusterAuthorizationFailedError"),  # no ACL: not even a producer id
    ("flowproof-verifier", PREFIX, "ClusterAuthorizationFailedError"),  # reads, never writes
    ("flowproof-verifier", "other.", "ClusterAuthorizationFailedError"),
    ("elsewhere", PREFIX, "TopicAuthorizationFailedError"),  # may write, under another prefix
    ("flowproof-relay", "other.", "TopicAuthorizationFailedError"),
    ("flowproof-consumer", "other.", "TopicAuthorizationFailedError"),  # its DLQs: the prefix
]


@pytest.mark.parametrize(("user", "prefix", "refusal"), WRITE_REFUSALS)
async def test_users_cannot_publish_where_no_write_acl_allows(
    secured_kafka: PrivateKafka, users: dict[str, str], user: str, prefix: str, refusal: str
) -> None:
    topic = f"{prefix}acl{uuid.uuid4().hex[:8]}"
    outcome = await _publish(kafka_settings(secured_kafka, user, users[user]), topic)
    assert isinstance(outcome, SinkError), outcome
    assert refusal in str(outcome), outcome
    if refusal == "TopicAuthorizationFailedError":  # docs/security.md: "...: <topic>"
        assert f"{refusal}: {topic}" in str(outcome), outcome
    assert users[user] not in str(outcome)


@pytest.fixture(scope="module")
async def readable_topics(secured_kafka: PrivateKafka) -> dict[str, str]:
    """A topic under the prefix and one outside it, one message each (written by the admin)."""
    security = secured_kafka.security
    assert security is not None
    admin = kafka_settings(secured_kafka, security.admin, security.admin_password)
    topics = {prefix: f"{prefix}read{uuid.uuid4().hex[:8]}" for prefix in (PREFIX, "other.")}
    for topic in topics.values():
        assert await _publish(admin, topic) is None
    return topics


async def _fetch(settings: Settings, topic: str) -> list[bytes | None] | KafkaError:
    """Describe `topic`, then fetch its partition 0 from the start, outside any group: its
    values, or the error the broker answered with (a reader without Describe cannot even find
    the partition's leader: it is refused there)."""
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described["error_code"]:
        return for_code(described["error_code"])()
    consumer = AIOKafkaConsumer(**kafka_client_kwargs(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        async with asyncio.timeout(30):
            await consumer.seek_to_beginning(partition)
            values: list[bytes | None] = []
            while not values:
                batch = await consumer.getmany(partition, timeout_ms=500)
                values += [record.value for record in batch.get(partition, [])]
            return values
    except KafkaError as exc:
        return exc
    finally:
        await consumer.stop()


# (user, topic prefix, refusal or None when it may read)
READS = [
    ("flowproof-consumer", PREFIX, None),
    ("flowproof-verifier", PREFIX, None),
    ("flowproof-relay", PREFIX, "TopicAuthorizationFailedError"),  # publishes, never reads
    ("flowproof-consumer", "other.", "TopicAuthorizationFailedError"),
    ("flowproof-verifier", "other.", "TopicAuthorizationFailedError"),
    ("intruder", PREFIX, "TopicAuthorizationFailedError"),
]


@pytest.mark.parametrize(("user", "prefix", "refusal"), READS)
async def test_users_read_only_the_topics_their_acls_allow(  # noqa: PLR0917 - parameters
    secured_kafka: PrivateKafka,
    users: dict[str, str],
    readable_topics: dict[str, str],
    user: str,
    prefix: str,
    refusal: str | None,
) -> None:
    outcome = await _fetch(
        kafka_settings(secured_kafka, user, users[user]), readable_topics[prefix]
    )
    if refusal is None:
        assert isinstance(outcome, list) and len(outcome) == 1, outcome
    else:
        assert type(outcome).__name__ == refusal, repr(outcome)


async def test_the_verifier_describes_the_group_but_cannot_join_or_commit(
    secured_kafka: PrivateKafka, users: dict[str, str], readable_topics: dict[str, str]
) -> None:
    settings = kafka_settings(secured_kafka, "flowproof-verifier", users["flowproof-verifier"])
    topic = readable_topics[PREFIX]
    admin = AIOKafkaAdminClient(**kafka_client_kwargs(settings))
    await admin.start()
    try:  # what verifier/kafka_lag.py asks: allowed (once the new broker has a coordinator)
        async with asyncio.timeout(60):
            while True:
                try:
                    await admin.list_consumer_group_offsets(GROUP)
                    break
                except GroupCoordinatorNotAvailableError:
                    await asyncio.sleep(0.5)
        await admin.describe_consumer_groups([GROUP])
    finally:
        await admin.close()
    joining = AIOKafkaConsumer(topic, **kafka_client_kwargs(settings), group_id=GROUP)
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            async with asyncio.timeout(30):
                await joining.start()  # it joins the group as it starts
                await joining.getone()
    finally:
        await joining.stop()
    committing = AIOKafkaConsumer(
        **kafka_client_kwargs(settings), group_id=GROUP, enable_auto_commit=False
    )
    try:
        await committing.start()
        committing.assign([TopicPartition(topic, 0)])
        with pytest.raises(GroupAuthorizationFailedError):
            await committing.commit({TopicPartition(topic, 0): 1})
    finally:
        await committing.stop()


@pytest.mark.parametrize(
    ("user", "group", "refusal"),
    [
        ("flowproof-relay", GROUP, "GroupAuthorizationFailedError"),  # publishes, never consumes
        ("flowproof-consumer", "not-flowproof", "GroupAuthorizationFailedError"),  # not its group
        ("intruder", GROUP, "ClusterAuthorizationFailedError"),  # its DLQ producer, first
    ],
)
async def test_users_without_a_group_acl_cannot_consume(  # noqa: PLR0917 - parameters
    secured_kafka: PrivateKafka,
    users: dict[str, str],
    database_url: str,
    user: str,
    group: str,
    refusal: str,
) -> None:
    settings = kafka_settings(
        secured_kafka,
        user,
        users[user],
        database_url=SecretStr(database_url),
        consumer_aggregatetypes=("order",),
    )
    with pytest.raises(ConfigError) as refused:
        await asyncio.wait_for(consume(settings, sink="kafka", group=group, drain=True), 60)
    assert f"kafka refused {user} (FLOWPROOF_KAFKA_SASL_USERNAME): {refusal}" in str(
        refused.value
    ), refused.value
    if refusal == "GroupAuthorizationFailedError":  # docs/security.md: "...: <group>"
        assert str(refused.value).split("; ")[0].endswith(f": {group}"), refused.value
    assert users[user] not in str(refused.value)


async def test_the_consumer_user_writes_dead_letters_under_its_acls(
    secured_kafka: PrivateKafka, users: dict[str, str], database_url: str
) -> None:
    aggregatetype = f"dlq{uuid.uuid4().hex[:8]}"
    topic = f"{PREFIX}{aggregatetype}"
    relay = kafka_settings(secured_kafka, "flowproof-relay", users["flowproof-relay"])
    assert await _publish(relay, topic) is None  # no envelope to speak of: a dead letter
    consumer = kafka_settings(
        secured_kafka,
        "flowproof-consumer",
        users["flowproof-consumer"],
        database_url=SecretStr(database_url),
        consumer_aggregatetypes=(aggregatetype,),
    )
    stats = await asyncio.wait_for(consume(consumer, sink="kafka", group=GROUP, drain=True), 90)
    assert stats is not None and stats.dead_lettered == 1, stats
    verifier = kafka_settings(secured_kafka, "flowproof-verifier", users["flowproof-verifier"])
    [letter] = await read_topic(verifier, f"{topic}{DLQ_SUFFIX}")
    assert letter.fields["dlq_reason"] == "envelope", letter.fields


def test_the_security_docs_show_these_acls() -> None:
    docs = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    for user, acls in component_acls(PREFIX, GROUP).items():
        for acl in acls:
            line = kafka_acls_command(user, acl)
            assert line in docs, f"docs/security.md should show: {line}"
