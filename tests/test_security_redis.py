"""Redis over TLS with ACL users limited to flowproof's keys and commands.

A private redis-server listens on TLS only (plain port 0) with a certificate from a CA made here,
the default user disabled and one ACL user per component with the rules docs/security.md
documents (`REDIS_ACL`, checked against that page below). Each user is shown to be
allowed what its component runs and refused the rest: other keys, other commands, FLUSHALL,
CONFIG. The components run as these users in tests/test_security_pipeline.py.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr
from redis.exceptions import NoPermissionError, ResponseError

from flowproof.core.config import Settings, load_settings
from flowproof.core.connect import ping_redis, redis_client
from flowproof.core.errors import ComponentUnreachable, ConfigError
from tests.private_services import (
    WRONG_HOST,
    PrivateRedis,
    RedisUser,
    TestCA,
    is_tls_alert,
    plaintext_reply,
)

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "flowproof."  # the default stream prefix, as in docs/security.md

# What each component runs (publisher/redis_sink.py; consumers/redis.py and consumers' DLQ;
# verifier/redis_lag.py), on the keys under the prefix only; the verifier's keys are read-only.
REDIS_ACL = {
    "relay": "resetkeys ~{prefix}* resetchannels -@all +ping +multi +exec +xadd",
    "consumer": "resetkeys ~{prefix}* resetchannels -@all +ping +scan +xgroup|create "
    "+xgroup|delconsumer +xreadgroup +xautoclaim +xpending +xack +xinfo|consumers +xadd",
    "verifier": "resetkeys %R~{prefix}* resetchannels -@all +ping +scan +exists +xlen +xrange "
    "+xpending +xinfo|stream +xinfo|groups +xinfo|consumers",
}


def redis_users(prefix: str) -> dict[str, RedisUser]:
    """One ACL user per component (`flowproof-<component>`) with a fresh random password."""
    return {
        component: RedisUser(
            f"flowproof-{component}",
            f"redis-{component}-{os.urandom(9).hex()}",
            rules.format(prefix=prefix),
        )
        for component, rules in REDIS_ACL.items()
    }


def redis_settings(server: PrivateRedis, user: RedisUser | None, **extra: object) -> Settings:
    """Settings of a component logging in as `user`, verifying the server against the test CA."""
    assert server.tls is not None
    values: dict[str, object] = {
        "redis_url": SecretStr(server.url_for(user)),
        "redis_ssl_cafile": server.tls.ca,
        **extra,
    }
    return Settings(**values)  # type: ignore[arg-type]


async def refused_ping(settings: Settings) -> ComponentUnreachable:
    """The error a client with `settings` gets for its PING (AssertionError if it gets none)."""
    client = redis_client(settings)
    try:
        with pytest.raises(ComponentUnreachable) as refused:
            await ping_redis(client)
    finally:
        await client.aclose()
    return refused.value


@pytest.fixture(scope="module")
def redis_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("redis-ca"))


@pytest.fixture(scope="module")
def users() -> dict[str, RedisUser]:
    return redis_users(PREFIX)


@pytest.fixture(scope="module")
def secured_redis(
    tmp_path_factory: pytest.TempPathFactory, redis_ca: TestCA, users: dict[str, RedisUser]
) -> Iterator[PrivateRedis]:
    certificate = redis_ca.issue("flowproof-test-redis")
    with PrivateRedis(
        tmp_path_factory.mktemp("redis"), tls=certificate, users=list(users.values())
    ) as server:
        yield server


@pytest.fixture(scope="module")
async def prepared_stream(secured_redis: PrivateRedis) -> AsyncIterator[str]:
    """A stream under the prefix with one entry and a group, and one outside the prefix."""
    admin = redis_client(redis_settings(secured_redis, secured_redis.admin))
    try:
        await admin.xadd(f"{PREFIX}order", {"k": "v"})
        await admin.xgroup_create(f"{PREFIX}order", "flowproof", id="0")
        await admin.xadd("other.order", {"k": "v"})
        await admin.xgroup_create("other.order", "flowproof", id="0")
        yield f"{PREFIX}order"
    finally:
        await admin.aclose()


# --- TLS and login ---------------------------------------------------------------------------


async def test_each_user_connects_over_verified_tls(
    secured_redis: PrivateRedis, users: dict[str, RedisUser]
) -> None:
    admin = redis_client(redis_settings(secured_redis, secured_redis.admin))
    try:
        for user in users.values():
            client = redis_client(redis_settings(secured_redis, user))
            try:
                await ping_redis(client)
                # The server's view: a connection logged in as that user, not as the default.
                clients = await admin.client_list()
                assert user.name in {c["user"] for c in clients}, clients
            finally:
                await client.aclose()
    finally:
        await admin.aclose()


async def test_a_server_certificate_from_another_ca_is_refused(
    secured_redis: PrivateRedis, users: dict[str, RedisUser], tmp_path: Path
) -> None:
    stranger = TestCA(tmp_path / "other-ca", name="someone else's CA")
    settings = redis_settings(secured_redis, users["relay"], redis_ssl_cafile=stranger.cert)
    refused = await refused_ping(settings)
    assert refused.component == "redis"
    assert "certificate verify failed" in str(refused), refused


@pytest.fixture(scope="module")
def cert_auth_redis(
    tmp_path_factory: pytest.TempPathFactory, redis_ca: TestCA, users: dict[str, RedisUser]
) -> Iterator[PrivateRedis]:
    """A TLS-only server that also asks every client for a certificate from the test CA
    (`tls-auth-clients yes`, Redis's default once TLS is on)."""
    certificate = redis_ca.issue("flowproof-test-redis-mtls")
    with PrivateRedis(
        tmp_path_factory.mktemp("redis-mtls"),
        tls=certificate,
        users=list(users.values()),
        client_auth=True,
    ) as server:
        yield server


async def test_a_client_certificate_is_presented_to_a_server_that_asks(
    cert_auth_redis: PrivateRedis, redis_ca: TestCA, users: dict[str, RedisUser]
) -> None:
    client_cert = redis_ca.issue("flowproof-relay-client")
    settings = redis_settings(
        cert_auth_redis,
        users["relay"],
        redis_ssl_certfile=client_cert.cert,
        redis_ssl_keyfile=client_cert.key,
    )
    client = redis_client(settings)
    try:
        await ping_redis(client)
        assert await client.xadd(f"{PREFIX}mtls", {"k": "v"})
    finally:
        await client.aclose()


async def test_a_server_that_asks_refuses_clients_without_its_cas_certificate(
    cert_auth_redis: PrivateRedis, users: dict[str, RedisUser], tmp_path: Path
) -> None:
    await refused_ping(redis_settings(cert_auth_redis, users["relay"]))
    stranger = TestCA(tmp_path / "client-ca", name="someone else's CA").issue("intruder")
    await refused_ping(
        redis_settings(
            cert_auth_redis,
            users["relay"],
            redis_ssl_certfile=stranger.cert,
            redis_ssl_keyfile=stranger.key,
        )
    )


def test_the_server_answers_nothing_in_plain_text(secured_redis: PrivateRedis) -> None:
    # Every port the server process listens on (the kernel's view, not its configuration) gets
    # a plain-text PING: a plain listener would answer (+PONG, -NOAUTH ...); TLS says nothing or
    # sends an alert record.
    ports = secured_redis.listening_ports()
    assert secured_redis.port in ports, ports
    for port in ports:
        reply = plaintext_reply(port, b"PING\r\n")
        assert reply == b"" or is_tls_alert(reply), f"port {port} answered in plain text: {reply!r}"


async def test_a_plain_client_is_told_nothing_about_the_password(
    secured_redis: PrivateRedis, users: dict[str, RedisUser]
) -> None:
    plain = secured_redis.url_for(users["relay"]).replace("rediss://", "redis://", 1)
    refused = await refused_ping(Settings(redis_url=SecretStr(plain)))
    assert refused.component == "redis"
    assert users["relay"].password not in str(refused)


@pytest.fixture(scope="module")
def misnamed_redis(
    tmp_path_factory: pytest.TempPathFactory, redis_ca: TestCA
) -> Iterator[PrivateRedis]:
    """A TLS-only server whose certificate, from the trusted CA, names another host."""
    certificate = redis_ca.issue("flowproof-misnamed-redis", hosts=[WRONG_HOST])
    with PrivateRedis(tmp_path_factory.mktemp("redis-misnamed"), tls=certificate) as server:
        yield server


@pytest.mark.parametrize("query", ["", "?ssl_check_hostname=false", "?ssl_cert_reqs=none"])
async def test_a_certificate_for_another_host_is_refused(
    misnamed_redis: PrivateRedis, query: str
) -> None:
    """Whatever the URL asks for: flowproof verifies the certificate and the host name."""
    assert misnamed_redis.tls is not None
    # The chain is good (a client that skips the name check connects): only the name is wrong.
    lenient = aioredis.Redis.from_url(
        misnamed_redis.url, ssl_ca_certs=str(misnamed_redis.tls.ca), ssl_check_hostname=False
    )
    try:
        assert await lenient.ping()
    finally:
        await lenient.aclose()
    if query:  # a URL that would turn a check off is refused at start, naming only the variable
        with pytest.MonkeyPatch.context() as env:
            env.setenv("FLOWPROOF_REDIS_URL", misnamed_redis.url + query)
            env.setenv("FLOWPROOF_REDIS_SSL_CAFILE", str(misnamed_redis.tls.ca))
            with pytest.raises(ConfigError) as refused_at_start:
                load_settings()
        assert "FLOWPROOF_REDIS_URL: its query sets ssl_" in str(refused_at_start.value)
        assert misnamed_redis.url not in str(refused_at_start.value)
        return
    refused = await refused_ping(redis_settings(misnamed_redis, None))
    assert refused.component == "redis"
    assert "IP address mismatch" in str(refused), refused


@pytest.mark.parametrize("who", ["nobody", "default", "wrong-password"])
async def test_logins_other_than_the_users_are_refused(
    secured_redis: PrivateRedis, users: dict[str, RedisUser], who: str
) -> None:
    wrong = f"redis-wrong-{os.urandom(6).hex()}"
    user = {
        "nobody": None,  # the default user without a password: disabled
        "default": RedisUser("default", wrong, ""),
        "wrong-password": RedisUser(users["relay"].name, wrong, ""),
    }[who]
    refused = await refused_ping(redis_settings(secured_redis, user))
    message = str(refused)
    assert refused.component == "redis"
    words = ("Authentication required", "WRONGPASS", "invalid username-password")
    assert any(word in message for word in words), message
    assert wrong not in message


def test_the_security_docs_show_these_rules() -> None:
    docs = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    for component, rules in REDIS_ACL.items():
        line = f"user flowproof-{component} on >{component.upper()}_PASSWORD " + rules.format(
            prefix=PREFIX
        )
        assert line in docs, f"docs/security.md should show: {line}"


# --- what each user may run ------------------------------------------------------------------

S = f"{PREFIX}order"
# (user, command, allowed)
COMMANDS: list[tuple[str, tuple[str, ...], bool]] = [
    ("relay", ("XADD", S, "MAXLEN", "~", "1000", "*", "k", "v"), True),
    ("relay", ("PING",), True),
    ("relay", ("XADD", "other.order", "*", "k", "v"), False),
    ("relay", ("XRANGE", S, "-", "+"), False),
    ("relay", ("XREADGROUP", "GROUP", "flowproof", "r", "STREAMS", S, ">"), False),
    ("relay", ("DEL", S), False),
    ("relay", ("SET", f"{PREFIX}x", "1"), False),
    ("consumer", ("SCAN", "0", "MATCH", f"{PREFIX}*", "TYPE", "stream"), True),
    ("consumer", ("XGROUP", "CREATE", S, "g2", "0", "MKSTREAM"), True),
    ("consumer", ("XREADGROUP", "GROUP", "flowproof", "c1", "COUNT", "1", "STREAMS", S, ">"), True),
    ("consumer", ("XAUTOCLAIM", S, "flowproof", "c2", "0", "0-0", "COUNT", "1"), True),
    ("consumer", ("XPENDING", S, "flowproof"), True),
    ("consumer", ("XACK", S, "flowproof", "0-1"), True),
    ("consumer", ("XINFO", "CONSUMERS", S, "flowproof"), True),
    ("consumer", ("XGROUP", "DELCONSUMER", S, "flowproof", "c2"), True),
    ("consumer", ("XADD", f"{S}.dlq", "*", "dlq_reason", "bad_magic"), True),
    ("consumer", ("XADD", "other.order.dlq", "*", "k", "v"), False),
    ("consumer", ("XREADGROUP", "GROUP", "flowproof", "c1", "STREAMS", "other.order", ">"), False),
    ("consumer", ("XGROUP", "DESTROY", S, "flowproof"), False),
    ("consumer", ("XGROUP", "SETID", S, "flowproof", "0"), False),
    ("consumer", ("XTRIM", S, "MAXLEN", "0"), False),
    ("consumer", ("DEL", S), False),
    ("verifier", ("SCAN", "0", "MATCH", f"{PREFIX}*", "TYPE", "stream"), True),
    ("verifier", ("XLEN", S), True),
    ("verifier", ("XRANGE", S, "-", "+", "COUNT", "1"), True),
    ("verifier", ("XPENDING", S, "flowproof"), True),
    ("verifier", ("XINFO", "GROUPS", S), True),
    ("verifier", ("XINFO", "CONSUMERS", S, "flowproof"), True),
    ("verifier", ("XLEN", "other.order"), False),
    ("verifier", ("XADD", S, "*", "k", "v"), False),
    ("verifier", ("XACK", S, "flowproof", "0-1"), False),
    ("verifier", ("XREADGROUP", "GROUP", "flowproof", "v", "STREAMS", S, ">"), False),
    *[
        (user, command, False)
        for user in REDIS_ACL
        for command in [
            ("FLUSHALL",),
            ("FLUSHDB",),
            ("CONFIG", "GET", "*"),
            ("CONFIG", "SET", "appendonly", "no"),
            ("KEYS", "*"),
            ("ACL", "LIST"),
            ("ACL", "SETUSER", "intruder", "on", ">x", "+@all", "~*"),
            ("EVAL", "return 1", "0"),
            ("MODULE", "LIST"),
            ("BGREWRITEAOF",),
            ("SCRIPT", "FLUSH"),
            ("CLIENT", "KILL", "TYPE", "normal"),
            ("SUBSCRIBE", f"{PREFIX}order"),
        ]
    ],
]


@pytest.mark.parametrize(
    ("user", "command", "allowed"),
    COMMANDS,
    ids=[f"{u}-{'may' if ok else 'not'}-{' '.join(c[:2])}" for u, c, ok in COMMANDS],
)
async def test_each_user_may_run_its_commands_on_its_keys_only(  # noqa: PLR0917 - parameters
    secured_redis: PrivateRedis,
    users: dict[str, RedisUser],
    prepared_stream: str,
    user: str,
    command: tuple[str, ...],
    allowed: bool,
) -> None:
    client = redis_client(redis_settings(secured_redis, users[user]))
    try:
        outcome: ResponseError | None = None
        try:
            await client.execute_command(*command)  # type: ignore[no-untyped-call]
        except ResponseError as exc:
            outcome = exc
    finally:
        await client.aclose()
    if allowed:
        assert outcome is None, f"{user} must be allowed {command}: {outcome}"
    else:
        assert isinstance(outcome, NoPermissionError), f"{user} must be refused {command}"
        assert "NOPERM" in str(outcome) or "no permissions" in str(outcome), outcome


async def test_the_acl_log_names_the_refusals(
    secured_redis: PrivateRedis, users: dict[str, RedisUser]
) -> None:
    client = redis_client(redis_settings(secured_redis, users["relay"]))
    try:
        with pytest.raises(NoPermissionError):
            await client.execute_command("FLUSHALL")  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()
    admin = aioredis.Redis.from_url(
        secured_redis.admin_url,
        ssl_ca_certs=str(secured_redis.tls.ca) if secured_redis.tls else None,
    )
    try:
        entries = await admin.acl_log(count=128)
    finally:
        await admin.aclose()
    refused = {(e["username"], e["object"]) for e in entries}
    assert ("flowproof-relay", "flushall") in refused, refused
