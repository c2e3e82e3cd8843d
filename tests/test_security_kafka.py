"""Kafka over SASL_SSL (SCRAM-SHA-512) with ACLs.

A private KRaft broker (tests/private_services.py) has a SASL_SSL listener for clients with a
certificate from a CA made here, SCRAM users made when its storage is formatted, the standard
authorizer with `allow.everyone.if.no.acl.found=false`, and one user per component with the ACLs
the README's Security section documents (`KAFKA_ACLS`, checked against the README below). A user
without ACLs (or with ACLs for another prefix) is refused, and flowproof says so. The components
run as these users in tests/test_security_pipeline.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.admin import CreateAclsRequest
from pydantic import SecretStr

from consumers.run import consume
from flowproof.config import Settings
from flowproof.connect import kafka_client_kwargs, ping_kafka
from flowproof.errors import ComponentUnreachable, ConfigError
from publisher.encoding import Message
from publisher.errors import SinkError
from publisher.kafka_sink import KafkaSink
from publisher.testing import read_topic
from tests.private_services import KafkaSecurity, PrivateKafka, TestCA

pytestmark = pytest.mark.slow  # private servers, a JVM among them
ROOT = Path(__file__).resolve().parent.parent
PREFIX = "flowproof."  # the default topic prefix, as in the README
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
    """The same ACL as a `kafka-acls.sh` command line (what the README shows)."""
    operations = " ".join(f"--operation {op}" for op in acl.operations)
    return (
        f"kafka-acls.sh --bootstrap-server BROKER:9093 --command-config admin.properties --add "
        f"--allow-principal User:{user} {operations} --{acl.resource} {acl.name}"
        + (" --resource-pattern-type prefixed" if acl.pattern == "prefixed" else "")
    )


def kafka_users() -> dict[str, str]:
    """SCRAM user -> password: one per component, and `intruder` that no ACL mentions."""
    names = [*(f"flowproof-{c}" for c in ("relay", "consumer", "verifier")), "intruder"]
    return {name: f"kafka-{name}-{os.urandom(9).hex()}" for name in names}


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
) -> PrivateKafka:
    """A SASL_SSL broker with `users` and the components' ACLs (plus `extra_acls`)."""
    certificate = ca.issue("flowproof-test-broker")
    server = PrivateKafka(workdir, security=KafkaSecurity(certificate, users=dict(users)))
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
    server = start_secured_kafka(tmp_path_factory.mktemp("kafka"), kafka_ca, users, elsewhere)
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


async def test_a_client_without_tls_gets_nothing(
    secured_kafka: PrivateKafka, users: dict[str, str]
) -> None:
    plain = Settings(kafka_bootstrap_servers=secured_kafka.bootstrap)
    with pytest.raises(ComponentUnreachable) as refused:
        await ping_kafka(plain)
    assert refused.value.component == "kafka"


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


@pytest.mark.parametrize(
    ("user", "refusal"),
    [
        ("intruder", "ClusterAuthorizationFailedError"),  # no ACL at all: not even a producer id
        ("flowproof-verifier", "ClusterAuthorizationFailedError"),  # reads, never writes
        ("elsewhere", "TopicAuthorizationFailedError"),  # may write, but under another prefix
    ],
)
async def test_users_without_a_write_acl_cannot_publish(
    secured_kafka: PrivateKafka, users: dict[str, str], user: str, refusal: str
) -> None:
    topic = f"{PREFIX}acl{uuid.uuid4().hex[:8]}"
    outcome = await _publish(kafka_settings(secured_kafka, user, users[user]), topic)
    assert isinstance(outcome, SinkError), outcome
    assert refusal in str(outcome), outcome
    assert users[user] not in str(outcome)


@pytest.mark.parametrize(
    ("user", "group", "refusal"),
    [
        ("flowproof-relay", GROUP, ConfigError),  # publishes, never consumes
        ("flowproof-consumer", "not-flowproof", ConfigError),  # not its group
        ("intruder", GROUP, ConfigError),
    ],
)
async def test_users_without_a_group_acl_cannot_consume(  # noqa: PLR0917 - parameters
    secured_kafka: PrivateKafka,
    users: dict[str, str],
    database_url: str,
    user: str,
    group: str,
    refusal: type[BaseException] | tuple[type[BaseException], ...],
) -> None:
    settings = kafka_settings(
        secured_kafka,
        user,
        users[user],
        database_url=SecretStr(database_url),
        consumer_aggregatetypes=("order",),
    )
    with pytest.raises(refusal) as refused:
        await asyncio.wait_for(consume(settings, sink="kafka", group=group, drain=True), 60)
    assert f"kafka refused {user}" in str(refused.value), refused.value
    assert "AuthorizationFailedError" in str(refused.value), refused.value
    assert users[user] not in str(refused.value)


def test_the_readme_documents_these_acls() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for user, acls in component_acls(PREFIX, GROUP).items():
        for acl in acls:
            line = kafka_acls_command(user, acl)
            assert line in readme, f"README's Security section should show: {line}"
