"""The whole pipeline with everything locked down, run for real, and no secret in any output.

PostgreSQL over TLS (verify-full) with the roles of deploy/sql, Redis over TLS with one ACL user
per component, Kafka over SASL_SSL (SCRAM-SHA-512) with ACLs: all private servers of this module,
with certificates from one test CA. Every flowproof command runs as a subprocess with the
credentials of its component only, each secret given as FLOWPROOF_<NAME>_FILE:

1. `emit` as flowproof_writer (and the publisher API as the same role), `relay` as the relay,
   `consume --drain` for each sink as the consumer, `check --json` as the verifier: passes.
2. `relay`, both consumers and `verify` running, `smoke --json` as flowproof_smoke: passes;
   /metrics of every long-running process scraped; each stopped with SIGTERM, exit 0.
3. Commands given a wrong password for each service: exit 2 naming the component.

Then every stdout, stderr, /metrics text and JSON document of all of them is searched for every
password (raw and URL-encoded), the right ones and the wrong ones: zero hits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from flowproof.publisher.outbox import emit
from tests.private_services import (
    PrivateKafka,
    PrivatePostgres,
    PrivateRedis,
    RedisUser,
    TestCA,
)
from tests.test_security_kafka import kafka_users, start_secured_kafka
from tests.test_security_postgres import SecuredPostgres, provision
from tests.test_security_redis import redis_users

pytestmark = pytest.mark.slow  # private servers, a JVM among them
FLOWPROOF = [sys.executable, "-m", "flowproof"]
PREFIX = "flowproof."  # the default stream and topic prefix
GROUP = "flowproof"  # the default consumer group
COMPONENTS = ("writer", "relay", "consumer", "verifier", "smoke")
# Special characters in the passwords, so that URL-encoded forms differ from the raw ones.
PUNCTUATION = "/+@:%"


@dataclass
class Stack:
    """The three locked-down services and where each component's secrets are."""

    ca: TestCA
    pg: SecuredPostgres
    redis: PrivateRedis
    redis_users: Mapping[str, RedisUser]
    kafka_bootstrap: str
    kafka_passwords: Mapping[str, str]  # user -> password, the admin included
    secrets_dir: Path
    wrong_passwords: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)

    def passwords(self) -> list[str]:
        """Every secret of the module: to be found in no output."""
        values = [*self.pg.passwords.values(), *self.kafka_passwords.values()]
        values += [user.password for user in self.redis_users.values()]
        if self.redis.admin is not None:
            values.append(self.redis.admin.password)
        return values + self.wrong_passwords

    def secret_file(self, name: str, value: str) -> str:
        path = self.secrets_dir / name
        path.write_text(value + "\n", encoding="utf-8")
        path.chmod(0o600)
        return str(path)

    def env(self, component: str, **overrides: str) -> dict[str, str]:
        """The environment of `component`: its own credentials only, secrets as _FILE."""
        redis_user = {"smoke": "verifier", "writer": None}.get(component, component)
        kafka_user = {"smoke": "verifier", "writer": None}.get(component, component)
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLOWPROOF_")}
        env.update(
            FLOWPROOF_LOG_FORMAT="json",
            FLOWPROOF_METRICS_PORT="0",
            FLOWPROOF_DATABASE_URL_FILE=str(self.pg.dsn_file(component)),
        )
        if redis_user is not None:
            user = self.redis_users[redis_user]
            env["FLOWPROOF_REDIS_URL_FILE"] = self.secret_file(
                f"redis_url.{component}", self.redis.url_for(user)
            )
            env["FLOWPROOF_REDIS_SSL_CAFILE"] = str(self.ca.cert)
        if kafka_user is not None:
            name = f"flowproof-{kafka_user}"
            env.update(
                FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS=self.kafka_bootstrap,
                FLOWPROOF_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
                FLOWPROOF_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
                FLOWPROOF_KAFKA_SASL_USERNAME=name,
                FLOWPROOF_KAFKA_SASL_PASSWORD_FILE=self.secret_file(
                    f"kafka_password.{component}", self.kafka_passwords[name]
                ),
                FLOWPROOF_KAFKA_SSL_CAFILE=str(self.ca.cert),
            )
        env.update(overrides)
        return env


@dataclass
class Captured:
    """What one flowproof process printed, and how it ended."""

    label: str
    returncode: int | None
    stdout: str
    stderr: str

    def logs(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr.splitlines():
            with contextlib.suppress(ValueError):  # aiokafka's own plain-text lines
                found.append(json.loads(line))
        return found

    def describe(self) -> str:
        return (
            f"{self.label} exited {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


@dataclass
class Outputs:
    """Everything the module's processes printed or served, for the secrets search."""

    runs: list[Captured] = field(default_factory=list)
    scraped: dict[str, str] = field(default_factory=dict)  # label -> /metrics text


async def run_flowproof(
    outputs: Outputs, label: str, env: Mapping[str, str], *args: str, within: float = 90
) -> Captured:
    """Run one flowproof command to its end; its output is kept in `outputs`."""
    process = await asyncio.create_subprocess_exec(
        *FLOWPROOF,
        *args,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        stdout, stderr = await process.communicate()
    captured = Captured(label, process.returncode, stdout.decode(), stderr.decode())
    outputs.runs.append(captured)
    return captured


class Running:
    """A long-running flowproof command (relay, consume, verify), its output in files."""

    def __init__(self, outputs: Outputs, label: str, workdir: Path) -> None:
        self.outputs = outputs
        self.label = label
        self.stdout_path = workdir / f"{label}.stdout"
        self.stderr_path = workdir / f"{label}.stderr"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, env: Mapping[str, str], *args: str) -> Running:
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = await asyncio.create_subprocess_exec(
                *FLOWPROOF, *args, env=dict(env), stdin=asyncio.subprocess.DEVNULL,
                stdout=out, stderr=err,
            )  # fmt: skip
        return self

    def captured(self) -> Captured:
        return Captured(
            self.label,
            self.process.returncode if self.process else None,
            self.stdout_path.read_text(encoding="utf-8", errors="replace"),
            self.stderr_path.read_text(encoding="utf-8", errors="replace"),
        )

    async def wait_for_log(self, event: str, within: float = 60) -> dict[str, Any]:
        async with asyncio.timeout(within):
            while True:
                for line in self.captured().logs():
                    if line.get("event") == event:
                        return line
                if self.process is not None and self.process.returncode is not None:
                    raise AssertionError(f"exited before {event}: {self.captured().describe()}")
                await asyncio.sleep(0.1)

    async def scrape(self) -> str:
        """GET /metrics (the address it logged), kept in `outputs`."""
        url = str((await self.wait_for_log("metrics.serving"))["url"])

        def fetch() -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())

        text = await asyncio.to_thread(fetch)
        self.outputs.scraped[self.label] = text
        return text

    async def stop(self, within: float = 30) -> Captured:
        """SIGTERM and wait; SIGKILL if it does not exit in time (the exit code then shows)."""
        process = self.process
        assert process is not None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), within)
            except TimeoutError:
                process.kill()
                await process.wait()
        captured = self.captured()
        self.outputs.runs.append(captured)
        return captured


def _password(kind: str) -> str:
    return f"{kind}-{os.urandom(9).hex()}{PUNCTUATION}"


# --- the services ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ca = TestCA(tmp_path_factory.mktemp("ca"))
    secrets_dir = tmp_path_factory.mktemp("secrets")
    kafka_passwords = kafka_users(PUNCTUATION)
    with contextlib.ExitStack() as cleanup:
        # The broker takes longest to start: in a thread while PostgreSQL and Redis get ready.
        # (Unwinding, the pool waits for that thread before the broker is closed.)
        starts: list[Future[PrivateKafka]] = []
        cleanup.callback(_close_started, starts)
        pool = cleanup.enter_context(ThreadPoolExecutor(1, thread_name_prefix="kafka-start"))
        starting = pool.submit(
            start_secured_kafka, tmp_path_factory.mktemp("kafka"), ca, kafka_passwords
        )
        starts.append(starting)
        postgres = PrivatePostgres(
            tmp_path_factory.mktemp("pg"), tls=ca.issue("flowproof-test-postgres")
        )
        cleanup.enter_context(postgres)
        pg = provision(postgres, tmp_path_factory.mktemp("pg-secrets"), punctuation=PUNCTUATION)
        users = {
            name: RedisUser(user.name, _password("redis"), user.rules)
            for name, user in redis_users(PREFIX).items()
        }
        redis = PrivateRedis(
            tmp_path_factory.mktemp("redis"),
            tls=ca.issue("flowproof-test-redis"),
            users=list(users.values()),
        )
        cleanup.enter_context(redis)
        kafka = starting.result()
        assert kafka.security is not None
        yield Stack(
            ca=ca,
            pg=pg,
            redis=redis,
            redis_users=users,
            kafka_bootstrap=kafka.bootstrap,
            kafka_passwords={
                **kafka_passwords,
                kafka.security.admin: kafka.security.admin_password,
            },
            secrets_dir=secrets_dir,
        )


def _close_started(starts: list[Future[PrivateKafka]]) -> None:
    for start in starts:
        if start.exception() is None:  # else it closed what it had started itself
            start.result().close()


@pytest.fixture(scope="module")
def outputs() -> Outputs:
    return Outputs()


# --- 1. emit, relay, drain both consumers, check ---------------------------------------------

EVENTS_PER_AGGREGATE = 10
AGGREGATES = ("a-1", "a-2", "a-3", "a-4")


@dataclass
class DrainedRun:
    events: int
    relay: Running
    check: Captured
    report: dict[str, Any]


async def _unpublished(pg: SecuredPostgres) -> int:
    conn = await asyncpg.connect(pg.dsn("verifier"))
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM flowproof_outbox_progress "
            "WHERE redis_published_at IS NULL OR kafka_published_at IS NULL"
        )
        return count
    finally:
        await conn.close()


async def _emit_as_writer(pg: SecuredPostgres) -> int:
    """Events through the publisher API on a flowproof_writer connection (verify-full TLS)."""
    conn = await asyncpg.connect(pg.dsn("writer"))
    try:
        for n in range(EVENTS_PER_AGGREGATE):
            async with conn.transaction():
                for aggregate in AGGREGATES:
                    payload = {"run_id": "security", "sequence": n, "total": EVENTS_PER_AGGREGATE}
                    await emit(
                        conn,
                        type="flowproof.Canary",
                        aggregate_type="canary",
                        aggregate_id=aggregate,
                        payload=payload,
                    )
    finally:
        await conn.close()
    return EVENTS_PER_AGGREGATE * len(AGGREGATES)


@pytest.fixture(scope="module")
async def drained(
    stack: Stack, outputs: Outputs, tmp_path_factory: pytest.TempPathFactory
) -> DrainedRun:
    events = 0
    for n in range(2):
        emitted = await run_flowproof(
            outputs, f"emit-{n}", stack.env("writer"), "emit", "--type", "flowproof.Canary",
            "--aggregate-type", "order", "--aggregate-id", "o-1",
            "--payload", json.dumps({"run_id": "security-cli", "sequence": n, "total": 2}),
        )  # fmt: skip
        assert emitted.returncode == 0, emitted.describe()
        events += 1
    events += await _emit_as_writer(stack.pg)
    relay = Running(outputs, "relay", tmp_path_factory.mktemp("relay"))
    await relay.start(stack.env("relay", FLOWPROOF_RELAY_POLL_INTERVAL_SECONDS="0.5"), "relay")
    async with asyncio.timeout(60):
        while await _unpublished(stack.pg):
            if relay.process is not None and relay.process.returncode is not None:
                raise AssertionError(relay.captured().describe())
            await asyncio.sleep(0.2)
    consumer_env = stack.env("consumer")
    for drained in await asyncio.gather(
        *(
            run_flowproof(
                outputs, f"consume-{sink}-drain", consumer_env, "consume", "--sink", sink, "--drain"
            )
            for sink in ("redis", "kafka")
        )
    ):
        assert drained.returncode == 0, drained.describe()
    check = await run_flowproof(
        outputs,
        "check",
        stack.env(
            "verifier",
            # Judge every event at once (no grace): the check must have looked at all of them.
            FLOWPROOF_FLOW_LOST_GRACE_SECONDS="0",
            FLOWPROOF_FLOW_DUPLICATES_GRACE_SECONDS="0",
            FLOWPROOF_FLOW_ORDER_GRACE_SECONDS="0",
            # The events waited in the outbox for the relay to start: latency is not the point.
            FLOWPROOF_LATENCY_E2E_THRESHOLD_SECONDS="300",
        ),
        "check",
        "--json",
    )
    report = json.loads(check.stdout) if check.stdout.strip().startswith("{") else {}
    return DrainedRun(events, relay, check, report)


async def test_every_component_does_its_work_with_only_its_own_grants(
    drained: DrainedRun, stack: Stack
) -> None:
    assert drained.check.returncode == 0, drained.check.describe()
    assert drained.report["passed"] is True, drained.report
    checks = {c["name"]: c for c in drained.report["checks"]}
    assert checks["components.up"]["passed"], checks["components.up"]
    # The flow checks looked at every event in both sinks (nothing passed for want of data).
    conn = await asyncpg.connect(stack.pg.dsn("verifier"))
    try:
        receipts = await conn.fetch(
            "SELECT sink, count(DISTINCT event_id) AS events, bool_and(valid) AS valid "
            "FROM flowproof_receipts GROUP BY sink ORDER BY sink"
        )
    finally:
        await conn.close()
    assert [(r["sink"], r["events"], r["valid"]) for r in receipts] == [
        ("kafka", drained.events, True),
        ("redis", drained.events, True),
    ]
    judged = {(e["sink"], e["judged"], e["lost"]) for e in checks["flow.lost"]["evidence"]}
    assert judged == {("redis", drained.events, 0), ("kafka", drained.events, 0)}, judged


async def test_the_running_relay_holds_only_tls_sessions_as_its_role(
    stack: Stack, drained: DrainedRun
) -> None:
    conn = await asyncpg.connect(stack.pg.server.dsn(database="flowproof"))
    try:
        sessions = await conn.fetch(
            "SELECT a.usename, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
            "WHERE a.usename LIKE 'flowproof\\_%'"
        )
    finally:
        await conn.close()
    # The relay still runs: its sessions are there, as flowproof_relay, all over TLS.
    assert {s["usename"] for s in sessions} == {"flowproof_relay"}, sessions
    assert all(s["ssl"] for s in sessions), sessions


# --- 2. long-running: relay, consumers, verify; smoke ------------------------------------------


@dataclass
class SmokeRun:
    smoke: Captured
    report: dict[str, Any]
    stopped: list[Captured]


@pytest.fixture(scope="module")
async def smoked(
    stack: Stack,
    outputs: Outputs,
    drained: DrainedRun,
    tmp_path_factory: pytest.TempPathFactory,
) -> SmokeRun:
    workdir = tmp_path_factory.mktemp("running")
    quick = {"FLOWPROOF_CONSUMER_DISCOVERY_INTERVAL_SECONDS": "1"}
    consumers = [
        await Running(outputs, f"consume-{sink}", workdir).start(
            stack.env("consumer", **quick), "consume", "--sink", sink
        )
        for sink in ("redis", "kafka")
    ]
    verify = await Running(outputs, "verify", workdir).start(
        stack.env("verifier", FLOWPROOF_VERIFY_INTERVAL_SECONDS="1"), "verify"
    )
    everything = [drained.relay, *consumers, verify]
    try:
        for process in consumers:
            await process.wait_for_log("consumer.started")
        # The first part's events waited for the relay: their latency is not the point here.
        slow_ok = stack.env("smoke", FLOWPROOF_LATENCY_E2E_THRESHOLD_SECONDS="300")
        smoke = await run_flowproof(
            outputs, "smoke", slow_ok, "smoke", "--json", "--events", "5", "--timeout", "60"
        )
        await verify.wait_for_log("verify.evaluated", within=30)
        for process in everything:
            await process.scrape()
    finally:
        stopped = [await process.stop() for process in everything]
    report = json.loads(smoke.stdout) if smoke.stdout.strip().startswith("{") else {}
    return SmokeRun(smoke, report, stopped)


async def test_smoke_passes_as_the_smoke_role(smoked: SmokeRun) -> None:
    assert smoked.smoke.returncode == 0, smoked.smoke.describe()
    assert smoked.report["passed"] is True, smoked.report
    received = {
        (sink, group): figures["received"]
        for sink, groups in smoked.report["smoke"]["sinks"].items()
        for group, figures in groups.items()
    }
    assert received == {("redis", "flowproof"): 5, ("kafka", "flowproof"): 5}, smoked.report


async def test_the_long_running_components_stop_cleanly(smoked: SmokeRun) -> None:
    for captured in smoked.stopped:
        assert captured.returncode == 0, captured.describe()


# --- 3. wrong passwords ------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def refused(
    stack: Stack, outputs: Outputs, smoked: SmokeRun, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Captured]:
    """Commands with a wrong password, a bad value, a Kafka user without ACLs (run at once)."""
    wrong = {kind: _password(f"wrong-{kind}") for kind in ("pg", "redis", "kafka", "scheme")}
    stack.wrong_passwords.extend(wrong.values())
    user = stack.redis_users["verifier"]
    bad = {
        "postgresql": {
            "FLOWPROOF_DATABASE_URL_FILE": stack.secret_file(
                "database_url.wrong", stack.pg.dsn("verifier", password=wrong["pg"])
            )
        },
        "redis": {
            "FLOWPROOF_REDIS_URL_FILE": stack.secret_file(
                "redis_url.wrong", stack.redis.url_for(RedisUser(user.name, wrong["redis"], ""))
            )
        },
        "kafka": {
            "FLOWPROOF_KAFKA_SASL_PASSWORD_FILE": stack.secret_file(
                "kafka_password.wrong", wrong["kafka"]
            )
        },
        # A secret in a value flowproof refuses: the error names the variable, not the value.
        "scheme": {
            "FLOWPROOF_REDIS_URL_FILE": stack.secret_file(
                "redis_url.bad",
                stack.redis.url_for(RedisUser(user.name, wrong["scheme"], "")).replace(
                    "rediss", "https"
                ),
            )
        },
    }
    intruder = _kafka_login(stack, "intruder")  # a Kafka user no ACL mentions
    as_relay = _kafka_login(stack, "flowproof-relay")  # topic ACLs, none on the group
    payload = json.dumps({"run_id": "refused", "sequence": 1, "total": 1})
    emit_args = ("emit", "--type", "flowproof.Canary", "--aggregate-type", "order",
                 "--payload", payload)  # fmt: skip
    check = ("check", "--json")
    commands: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
        "check-postgresql": (stack.env("verifier", **bad["postgresql"]), check),
        "check-redis": (stack.env("verifier", **bad["redis"]), check),
        "check-kafka": (stack.env("verifier", **bad["kafka"]), check),
        "config-redis": (stack.env("verifier", **bad["scheme"]), check),
        "consume-redis": (stack.env("consumer", **bad["redis"]),
                          ("consume", "--sink", "redis", "--drain")),
        "consume-kafka-intruder": (stack.env("consumer", **intruder),
                                   ("consume", "--sink", "kafka", "--drain")),
        "consume-kafka-as-relay": (stack.env("consumer", **as_relay),
                                   ("consume", "--sink", "kafka", "--drain", "--group", GROUP)),
        "emit-postgresql": (stack.env("writer", **bad["postgresql"]),
                            (*emit_args, "--aggregate-id", "o-2")),
    }  # fmt: skip
    # The relay as the intruder, with one new event to publish: its Kafka sink is refused.
    emitted = await run_flowproof(
        outputs, "emit-for-intruder", stack.env("writer"), *emit_args, "--aggregate-id", "o-3"
    )
    assert emitted.returncode == 0, emitted.describe()
    relay = Running(outputs, "relay-intruder", tmp_path_factory.mktemp("refused"))
    await relay.start(stack.env("relay", **intruder), "relay")
    try:
        runs = await asyncio.gather(
            *(run_flowproof(outputs, label, env, *args) for label, (env, args) in commands.items())
        )
        failure = await relay.wait_for_log("relay.publish_failed")
    finally:
        stopped = await relay.stop()
    found = dict(zip(commands, runs, strict=True))
    found["relay-intruder"] = stopped
    found["relay-intruder-log"] = Captured("relay-intruder-log", None, json.dumps(failure), "")
    return found


def _kafka_login(stack: Stack, user: str) -> dict[str, str]:
    return {
        "FLOWPROOF_KAFKA_SASL_USERNAME": user,
        "FLOWPROOF_KAFKA_SASL_PASSWORD_FILE": stack.secret_file(
            f"kafka_password.{user}", stack.kafka_passwords[user]
        ),
    }


def test_kafka_users_without_acls_are_refused_by_name(refused: dict[str, Captured]) -> None:
    # No ACL at all: its dead-letter producer gets no producer id; exit 2 naming the user.
    intruder = refused["consume-kafka-intruder"]
    assert intruder.returncode == 2, intruder.describe()
    assert "configuration error: kafka refused intruder" in intruder.stderr, intruder.describe()
    assert "ClusterAuthorizationFailedError" in intruder.stderr, intruder.describe()
    # The relay goes on (and stops cleanly), saying why each Kafka batch failed.
    failed = json.loads(refused["relay-intruder-log"].stdout)
    assert failed["sink"] == "kafka", failed
    assert "ClusterAuthorizationFailedError" in failed["error"], failed
    assert refused["relay-intruder"].returncode == 0, refused["relay-intruder"].describe()
    # Topic ACLs (the relay's) but none on the group: the consumer stops when it joins, with
    # exit 2 and one line naming the user and the refusal, no traceback.
    as_relay = refused["consume-kafka-as-relay"]
    assert as_relay.returncode == 2, as_relay.describe()
    assert "configuration error: kafka refused flowproof-relay" in as_relay.stderr
    assert "GroupAuthorizationFailedError" in as_relay.stderr, as_relay.describe()
    assert "Traceback" not in as_relay.stderr, as_relay.describe()


def test_a_secret_in_a_bad_value_exits_2_naming_only_the_variable(
    refused: dict[str, Captured],
) -> None:
    captured = refused["config-redis"]
    assert captured.returncode == 2, captured.describe()
    expected = "configuration error: FLOWPROOF_REDIS_URL_FILE: must be a redis://, rediss://"
    assert expected in captured.stderr, captured.describe()


@pytest.mark.parametrize(
    ("run", "component"),
    [
        ("check-postgresql", "postgresql"),
        ("check-redis", "redis"),
        ("check-kafka", "kafka"),
        ("consume-redis", "redis"),
        ("emit-postgresql", "postgresql"),
    ],
)
def test_a_wrong_password_exits_2_naming_the_component(
    refused: dict[str, Captured], run: str, component: str
) -> None:
    captured = refused[run]
    assert captured.returncode == 2, captured.describe()
    assert f"flowproof: {component} is unreachable" in captured.stderr, captured.describe()


# --- no secret anywhere --------------------------------------------------------------------------


def _forms(secret: str) -> set[str]:
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}


def test_no_secret_in_any_output_metric_or_json(
    stack: Stack, outputs: Outputs, smoked: SmokeRun, refused: dict[str, Captured]
) -> None:
    texts = {f"{run.label} stdout": run.stdout for run in outputs.runs}
    texts |= {f"{run.label} stderr": run.stderr for run in outputs.runs}
    texts |= {f"{label} /metrics": text for label, text in outputs.scraped.items()}
    texts["db migrate (stdout and stderr)"] = stack.pg.migrate_output
    # What was searched: every command of the module, with real output in it.
    labels = {run.label for run in outputs.runs}
    assert {
        *("emit-0", "relay", "consume-redis-drain", "consume-kafka-drain", "check", "smoke"),
        *("consume-redis", "consume-kafka", "verify", "check-kafka", "relay-intruder"),
    } <= labels, labels
    assert set(outputs.scraped) == {"relay", "consume-redis", "consume-kafka", "verify"}
    assert all("flowproof_" in text for text in outputs.scraped.values())
    assert sum(len(text) for text in texts.values()) > 10_000
    assert "migrat" in stack.pg.migrate_output, stack.pg.migrate_output  # it said something
    secrets = stack.passwords()
    assert len(secrets) == 6 + 4 + 5 + 4  # PostgreSQL roles, Redis users, Kafka users, wrong
    hits = [
        f"{where}: a form of password #{n}"
        for n, secret in enumerate(secrets)
        for form in _forms(secret)
        for where, text in texts.items()
        if form in text
    ]
    assert not hits, hits


def _samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def test_metrics_carry_no_connection_details(
    stack: Stack, outputs: Outputs, smoked: SmokeRun
) -> None:
    """No host, port, user name, certificate or secret path in any /metrics text (label values
    searched one by one: user names such as flowproof_relay are also metric name prefixes)."""
    ports = [stack.pg.server.port, stack.redis.port, int(stack.kafka_bootstrap.rsplit(":", 1)[1])]
    everywhere = [*(f"127.0.0.1:{port}" for port in ports), str(stack.ca.directory),
                  str(stack.secrets_dir), str(stack.pg.secrets_dir), "sslrootcert", "rediss://",
                  "postgresql://", "SASL"]  # fmt: skip
    in_labels = [
        "127.0.0.1", "localhost", *(str(port) for port in ports),
        *(f"flowproof_{role}" for role in stack.pg.passwords),
        *(user.name for user in stack.redis_users.values()), *stack.kafka_passwords,
    ]  # fmt: skip
    assert set(outputs.scraped) == {"relay", "consume-redis", "consume-kafka", "verify"}
    hits = [
        f"{label}: {needle!r}"
        for label, text in outputs.scraped.items()
        for needle in everywhere
        if needle in text
    ]
    labels = {
        (label, sample.name, name, value)
        for label, text in outputs.scraped.items()
        for sample in _samples(text)
        for name, value in sample.labels.items()
        if name != "le"  # histogram bucket bounds: numbers of ours
    }
    assert len(labels) > 20, labels
    hits += [
        f"{label}: {metric}{{{name}={value!r}}} has {needle!r}"
        for label, metric, name, value in labels
        for needle in in_labels
        if needle in value
    ]
    assert not hits, hits


# The series alerts and dashboard panels use that only the running verifier sets (a labelled
# series is absent from /metrics until a process sets it).
VERIFIER_SERIES = {
    "flowproof_redis_group_lag_entries": {"stream", "group"},
    "flowproof_redis_group_pending_entries": {"stream", "group"},
    "flowproof_kafka_consumer_lag_messages": {"topic", "partition", "group"},
    "flowproof_verify_duplicate_events": {"sink", "group"},
    "flowproof_verify_out_of_order_events": {"sink", "group"},
}


def test_the_running_verifier_sets_the_lag_and_flow_series(
    stack: Stack, smoked: SmokeRun, outputs: Outputs
) -> None:
    samples = _samples(outputs.scraped["verify"])
    for name, labels in VERIFIER_SERIES.items():
        found = [s for s in samples if s.name == name and s.labels.get("group") == GROUP]
        assert found, f"{name} not set by the running verifier"
        assert all(set(s.labels) == labels and 0 <= s.value < 1e6 for s in found), found
    flows = {
        (s.name, s.labels["sink"])
        for s in samples
        if s.name in VERIFIER_SERIES and "sink" in s.labels
    }
    assert flows == {(n, sink) for n in VERIFIER_SERIES if n.startswith("flowproof_verify_")
                     for sink in ("redis", "kafka")}, flows  # fmt: skip
    streams = {s.labels["stream"] for s in samples if s.name == "flowproof_redis_group_lag_entries"}
    assert {f"{PREFIX}order", f"{PREFIX}canary"} <= streams, streams
    [last] = [s for s in samples if s.name == "flowproof_verify_last_evaluation_timestamp_seconds"]
    # Set by an evaluation of this run: after the services of this module started.
    assert stack.started_at < last.value <= time.time(), (stack.started_at, last.value)
