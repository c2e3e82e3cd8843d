"""PostgreSQL over TLS with certificate verification, and the least-privilege roles we ship.

A private PostgreSQL (tests/private_services.py) accepts only `hostssl` connections with
scram-sha-256 passwords, with a server certificate signed by a CA made here. The roles come from
deploy/sql/roles.sql and deploy/sql/grants.sql, applied with psql exactly as docs/security.md says,
with `flowproof db migrate` run in between as flowproof_owner. Each role is then shown to be able
to do what its component does and refused everything else. The components themselves run as
these roles in tests/test_security_pipeline.py.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from flowproof.core.config import Settings
from flowproof.core.connect import connect_postgres
from flowproof.core.errors import ComponentUnreachable
from flowproof.core.sqltext import text_array
from flowproof.publisher.maintenance import prune, refresh_gauges
from flowproof.publisher.parked import retry_parked
from flowproof.publisher.queries import query
from tests.private_services import WRONG_HOST, PrivatePostgres, TestCA

ROOT = Path(__file__).resolve().parent.parent
ROLES_SQL = ROOT / "deploy" / "sql" / "roles.sql"
GRANTS_SQL = ROOT / "deploy" / "sql" / "grants.sql"
FLOWPROOF = [sys.executable, "-m", "flowproof"]
DATABASE = "flowproof"
# Short name -> role; every one gets a login here (writer and smoke are optional in roles.sql).
ROLES = ("owner", "writer", "relay", "consumer", "verifier", "smoke")


@dataclass(frozen=True)
class SecuredPostgres:
    """A TLS-only PostgreSQL with flowproof's roles, its tables migrated and granted."""

    server: PrivatePostgres
    passwords: Mapping[str, str]  # by short role name
    secrets_dir: Path
    migrate_output: str = ""  # what `flowproof db migrate` printed (stdout, then stderr)

    def dsn(
        self,
        role: str,
        *,
        password: str | None = None,
        sslmode: str = "verify-full",
        ca: Path | None = None,
    ) -> str:
        """The DSN `flowproof_<role>` connects with (verify-full against the test CA)."""
        return self.server.dsn(
            f"flowproof_{role}",
            password if password is not None else self.passwords[role],
            DATABASE,
            sslmode=sslmode,
            ca=ca,
        )

    def dsn_file(self, role: str) -> Path:
        """A file holding the role's DSN, for FLOWPROOF_DATABASE_URL_FILE."""
        path = self.secrets_dir / f"database_url.{role}"
        if not path.exists():
            path.write_text(self.dsn(role) + "\n", encoding="utf-8")
            path.chmod(0o600)
        return path


def psql(
    server: PrivatePostgres,
    *args: str,
    user: str | None = None,
    password: str | None = None,
    database: str = "postgres",
) -> subprocess.CompletedProcess[str]:
    """Run psql against `server` over TLS (verify-full); the password goes in PGPASSWORD."""
    env = {**os.environ, **server.libpq_env(user, password), "PGDATABASE": database}
    return subprocess.run(
        [str(server.bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def flowproof_env(**values: str) -> dict[str, str]:
    """The environment of a flowproof subprocess: no FLOWPROOF_* of ours, JSON logs, `values`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("FLOWPROOF_")}
    env.update(FLOWPROOF_LOG_FORMAT="json", FLOWPROOF_METRICS_PORT="0", **values)
    return env


def _checked(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, f"{what} failed ({result.returncode}): {result.stderr}"


def provision(
    server: PrivatePostgres,
    secrets_dir: Path,
    logins: Sequence[str] = ROLES,
    punctuation: str = "",
) -> SecuredPostgres:
    """Create the database and the roles, migrate as the owner, grant: the documented steps.
    Only the roles in `logins` are given a password (writer and smoke are optional); each
    password ends with `punctuation`."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    passwords = {role: f"pg-{role}-{os.urandom(9).hex()}{punctuation}" for role in logins}
    files = []
    for role, password in passwords.items():
        path = secrets_dir / f"pg_{role}"
        path.write_text(password + "\n", encoding="utf-8")
        path.chmod(0o600)
        files += ["-v", f"{role}_password_file={path}"]
    _checked(psql(server, "-c", f"CREATE DATABASE {DATABASE}"), "CREATE DATABASE")
    _checked(psql(server, *files, "-f", str(ROLES_SQL), database=DATABASE), "roles.sql")
    secured = SecuredPostgres(server, passwords, secrets_dir)
    migrate = subprocess.run(
        [*FLOWPROOF, "db", "migrate"],
        env=flowproof_env(FLOWPROOF_DATABASE_URL_FILE=str(secured.dsn_file("owner"))),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrate.returncode == 0, f"migrate as flowproof_owner failed: {migrate.stderr}"
    secured = dataclasses.replace(secured, migrate_output=migrate.stdout + migrate.stderr)
    # A hardened database, where PUBLIC may not execute functions: grants.sql must grant each
    # role every function its statements call.
    hardened = psql(
        server,
        "-c",
        "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC",
        user="flowproof_owner",
        password=passwords["owner"],
        database=DATABASE,
    )
    _checked(hardened, "REVOKE EXECUTE ... FROM PUBLIC as flowproof_owner")
    grants = psql(
        server,
        "-f",
        str(GRANTS_SQL),
        user="flowproof_owner",
        password=passwords["owner"],
        database=DATABASE,
    )
    _checked(grants, "grants.sql as flowproof_owner")
    return secured


@pytest.fixture(scope="module")
def certificate_authority(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pg-ca"))


@pytest.fixture(scope="module")
def secured_pg(
    tmp_path_factory: pytest.TempPathFactory, certificate_authority: TestCA
) -> Iterator[SecuredPostgres]:
    certificate = certificate_authority.issue("flowproof-test-postgres")
    with PrivatePostgres(tmp_path_factory.mktemp("pg"), tls=certificate) as server:
        yield provision(server, tmp_path_factory.mktemp("pg-secrets"))


def role_settings(secured: SecuredPostgres, role: str, **dsn: object) -> Settings:
    return Settings(database_url=SecretStr(secured.dsn(role, **dsn)))  # type: ignore[arg-type]


# --- TLS -------------------------------------------------------------------------------------


async def test_verify_full_connects_over_tls(secured_pg: SecuredPostgres) -> None:
    settings = role_settings(secured_pg, "verifier")
    assert "sslmode=verify-full" in settings.database_url.get_secret_value()
    conn = await connect_postgres(settings)
    try:
        row = await conn.fetchrow(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        user = await conn.fetchval("SELECT current_user")
    finally:
        await conn.close()
    assert row is not None and row["ssl"] is True, row
    assert row["version"].startswith("TLSv1."), row
    assert user == "flowproof_verifier"


async def test_a_server_certificate_from_another_ca_is_refused(
    secured_pg: SecuredPostgres, tmp_path: Path
) -> None:
    stranger = TestCA(tmp_path / "other-ca", name="someone else's CA")
    with pytest.raises(ComponentUnreachable) as refused:
        await connect_postgres(role_settings(secured_pg, "verifier", ca=stranger.cert))
    assert refused.value.component == "postgresql"
    assert "certificate verify failed" in str(refused.value), refused.value


async def test_verify_full_refuses_a_certificate_for_another_host(
    certificate_authority: TestCA, tmp_path: Path
) -> None:
    # A TLS-only server whose certificate, from the trusted CA, names another host.
    certificate = certificate_authority.issue("flowproof-misnamed-postgres", hosts=[WRONG_HOST])
    with PrivatePostgres(tmp_path / "pg-misnamed", tls=certificate) as misnamed_pg:
        # The chain is good (verify-ca connects): only the name is wrong.
        verify_ca = Settings(database_url=SecretStr(misnamed_pg.dsn(sslmode="verify-ca")))
        conn = await connect_postgres(verify_ca)
        await conn.close()
        with pytest.raises(ComponentUnreachable) as refused:
            await connect_postgres(Settings(database_url=SecretStr(misnamed_pg.url)))
        assert refused.value.component == "postgresql"
        assert "IP address mismatch" in str(refused.value), refused.value
        # psql (libpq), which runs roles.sql and grants.sql, with the same verify-full.
        result = psql(misnamed_pg, "-c", "SELECT 1")
        assert result.returncode != 0, result.stdout
        assert f'server certificate for "{WRONG_HOST}"' in result.stderr, result.stderr
        assert 'does not match host name "127.0.0.1"' in result.stderr, result.stderr


async def test_a_plain_connection_is_refused_by_the_server(secured_pg: SecuredPostgres) -> None:
    with pytest.raises(ComponentUnreachable) as refused:
        await connect_postgres(role_settings(secured_pg, "verifier", sslmode="disable"))
    assert refused.value.component == "postgresql"
    assert "no pg_hba.conf entry" in str(refused.value), refused.value
    assert "no encryption" in str(refused.value), refused.value


async def test_a_wrong_password_is_refused_and_not_repeated(secured_pg: SecuredPostgres) -> None:
    wrong = "pg-wrong-" + os.urandom(6).hex()
    with pytest.raises(ComponentUnreachable) as refused:
        await connect_postgres(role_settings(secured_pg, "relay", password=wrong))
    message = str(refused.value)
    assert "password authentication failed" in message, message
    assert wrong not in message
    assert secured_pg.passwords["relay"] not in message


# --- the roles -------------------------------------------------------------------------------

OUTBOX_ROW = (
    "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload) "
    "VALUES ('order', 'o-1', 'flowproof.Canary', '{}')"
)
RECEIPT_ROW = (
    "INSERT INTO flowproof_receipts (sink, consumer_group, consumer, source, position, "
    "received_at, valid) VALUES ('redis', 'g', 'c', 's', '1-0', now(), true)"
)

# The function that makes and drops time partitions with its owner's rights (migration 0070).
MAINTAIN = "flowproof_outbox_partitions_maintain"

# (role, statement, allowed): each role may do what its component does, and nothing else.
PRIVILEGES = [
    ("writer", OUTBOX_ROW, True),
    ("writer", "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload, "
     "txid) VALUES ('order', 'o-1', 'flowproof.Canary', '{}', '1')", False),
    ("writer", "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload, "
     "created_at) VALUES ('order', 'o-1', 'flowproof.Canary', '{}', now())", False),
    ("writer", "SELECT id FROM flowproof_outbox", False),
    ("writer", "UPDATE flowproof_outbox SET payload = '{}'", False),
    ("writer", "DELETE FROM flowproof_outbox", False),
    ("writer", RECEIPT_ROW, False),
    ("writer", f"SELECT * FROM {MAINTAIN}('outbox', 'drop', 0, 86400, 2)", False),
    ("relay", "SELECT seq, id, payload, created_at FROM flowproof_outbox", True),
    ("relay", "UPDATE flowproof_outbox_cursors SET next_seq = next_seq WHERE slot = 1", True),
    ("relay", "UPDATE flowproof_outbox_cursors SET sink = 'redis' WHERE slot = 1", False),
    ("relay", "INSERT INTO flowproof_outbox_parked (sink, seq, slot, aggregatetype, aggregateid, "
     "state, reason) VALUES ('kafka', 1, 1, 'order', 'o-1', 'parked', 'oversized')", True),
    ("relay", "DELETE FROM flowproof_outbox WHERE seq IN (SELECT seq FROM flowproof_outbox "
     "WHERE txid IS NOT NULL LIMIT 10)", False),
    ("relay", "DELETE FROM flowproof_outbox_deliveries", False),
    ("relay", f"SELECT * FROM {MAINTAIN}('outbox', 'make', 86400, 86400, 2)", True),
    ("relay", f"SELECT * FROM {MAINTAIN}('deliveries', 'drop', 86400, 86400, 2)", True),
    ("relay", "DROP TABLE flowproof_outbox_default", False),
    ("relay", "SELECT flowproof_partition_ensure('flowproof_outbox', now(), '1 day')", False),
    ("relay", "SELECT seq FROM flowproof_outbox FOR UPDATE SKIP LOCKED", False),
    ("relay", "UPDATE flowproof_outbox SET txid = txid WHERE seq = 1", False),
    ("relay", "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", True),
    ("relay", "LISTEN flowproof_outbox", True),
    ("relay", "UPDATE flowproof_outbox SET payload = '{}' WHERE seq = 1", False),
    ("relay", "UPDATE flowproof_outbox SET created_at = now() WHERE seq = 1", False),
    ("relay", OUTBOX_ROW, False),
    ("relay", "SELECT count(*) FROM flowproof_receipts", False),
    ("relay", RECEIPT_ROW, False),
    ("consumer", RECEIPT_ROW, True),
    ("consumer", "SELECT count(*) FROM flowproof_receipts", False),
    ("consumer", "UPDATE flowproof_receipts SET valid = false", False),
    ("consumer", "DELETE FROM flowproof_receipts", False),
    ("consumer", "SELECT count(*) FROM flowproof_outbox", False),
    ("consumer", "UPDATE flowproof_outbox_cursors SET next_seq = 0", False),
    ("consumer", OUTBOX_ROW, False),
    ("consumer", f"SELECT * FROM {MAINTAIN}('receipts', 'drop', 0, 86400, 2)", False),
    ("verifier", "SELECT count(*) FROM flowproof_outbox", True),
    ("verifier", "SELECT count(*) FROM flowproof_receipts", True),
    ("verifier", RECEIPT_ROW, False),
    ("verifier", OUTBOX_ROW, False),
    ("verifier", "SELECT count(*) FROM flowproof_outbox_progress", True),
    ("verifier", "UPDATE flowproof_outbox_cursors SET next_seq = 0", False),
    ("verifier", "DELETE FROM flowproof_outbox_parked", False),
    ("verifier", "DELETE FROM flowproof_receipts", False),
    ("verifier", f"SELECT * FROM {MAINTAIN}('receipts', 'drop', 0, 86400, 2)", False),
    ("smoke", OUTBOX_ROW + " RETURNING created_at", True),
    ("smoke", "SELECT count(*) FROM flowproof_receipts", True),
    ("smoke", "DELETE FROM flowproof_outbox", False),
    ("smoke", RECEIPT_ROW, False),
    ("smoke", f"SELECT * FROM {MAINTAIN}('outbox', 'drop', 0, 86400, 2)", False),
    *[(role, "CREATE TABLE flowproof_intruder (x int)", False) for role in ROLES[1:]],
    *[(role, "DROP TABLE flowproof_receipts", False) for role in ROLES[1:]],
    *[(role, "TRUNCATE flowproof_outbox", False) for role in ROLES[1:]],
    ("owner", "CREATE ROLE flowproof_intruder", False),
    ("owner", f"CREATE DATABASE {DATABASE}_intruder", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("role", "statement", "allowed"),
    PRIVILEGES,
    ids=[f"{role}-{'may' if ok else 'not'}-{i}" for i, (role, _, ok) in enumerate(PRIVILEGES)],
)
async def test_each_role_may_do_its_work_and_nothing_else(
    secured_pg: SecuredPostgres, role: str, statement: str, allowed: bool
) -> None:
    conn = await asyncpg.connect(secured_pg.dsn(role))
    try:
        if statement.startswith("CREATE DATABASE"):  # not allowed in a transaction block
            outcome = await _attempt(conn, statement)
        else:
            transaction = conn.transaction()
            await transaction.start()
            try:
                outcome = await _attempt(conn, statement)
            finally:
                await transaction.rollback()  # the allowed ones change nothing either
    finally:
        await conn.close()
    if allowed:
        assert outcome is None, f"flowproof_{role} must be allowed: {statement}: {outcome}"
    else:
        assert outcome is not None, f"flowproof_{role} must be refused: {statement}"
        assert isinstance(outcome, asyncpg.InsufficientPrivilegeError), (
            f"flowproof_{role}: {statement}: expected permission denied, got {outcome!r}"
        )


async def _attempt(conn: asyncpg.Connection, statement: str) -> asyncpg.PostgresError | None:
    try:
        await conn.execute(statement)
    except asyncpg.PostgresError as exc:
        return exc
    return None


async def test_roles_are_plain_logins_and_own_nothing_but_the_owner(
    secured_pg: SecuredPostgres,
) -> None:
    conn = await asyncpg.connect(secured_pg.dsn("verifier"))
    try:
        roles = await conn.fetch(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, "
            "rolbypassrls, rolcanlogin FROM pg_roles WHERE rolname LIKE 'flowproof\\_%'"
        )
        owners = await conn.fetch(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE tablename LIKE 'flowproof\\_%'"
        )
    finally:
        await conn.close()
    assert sorted(r["rolname"] for r in roles) == sorted(f"flowproof_{r}" for r in ROLES)
    for role in roles:
        powers = [k for k in ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication",
                              "rolbypassrls") if role[k]]  # fmt: skip
        assert not powers, f"{role['rolname']} has {powers}"
        assert role["rolcanlogin"], role["rolname"]
    assert [r["tableowner"] for r in owners] == ["flowproof_owner"]


def test_roles_and_grants_can_be_applied_again(secured_pg: SecuredPostgres) -> None:
    files = [
        arg
        for role in ROLES
        for arg in ("-v", f"{role}_password_file={secured_pg.secrets_dir / f'pg_{role}'}")
    ]
    again = psql(secured_pg.server, *files, "-f", str(ROLES_SQL), database=DATABASE)
    _checked(again, "roles.sql a second time")
    grants = psql(
        secured_pg.server,
        "-f",
        str(GRANTS_SQL),
        user="flowproof_owner",
        password=secured_pg.passwords["owner"],
        database=DATABASE,
    )
    _checked(grants, "grants.sql a second time")


def test_roles_sql_refuses_to_run_without_a_password(secured_pg: SecuredPostgres) -> None:
    result = psql(
        secured_pg.server, "-v", "owner_password=x", "-f", str(ROLES_SQL), database=DATABASE
    )
    assert result.returncode != 0
    assert "give -v relay_password_file=PATH" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def group_roles_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredPostgres]:
    """roles.sql without writer_password and smoke_password (plain TCP: TLS is not the point)."""
    with PrivatePostgres(tmp_path_factory.mktemp("pg-groups")) as server:
        yield provision(
            server, tmp_path_factory.mktemp("pg-groups-secrets"), ROLES_WITHOUT_OPTIONAL_LOGINS
        )


ROLES_WITHOUT_OPTIONAL_LOGINS = ("owner", "relay", "consumer", "verifier")


async def test_without_writer_password_the_writer_and_smoke_roles_are_groups(
    group_roles_pg: SecuredPostgres,
) -> None:
    server = group_roles_pg.server
    app_password = "pg-app-" + os.urandom(6).hex()
    setup = psql(
        server,
        "-c",
        f"CREATE ROLE orders_app LOGIN PASSWORD '{app_password}' IN ROLE flowproof_writer",
        database=DATABASE,
    )
    _checked(setup, "CREATE ROLE orders_app")
    admin = await asyncpg.connect(server.dsn(database=DATABASE))
    try:
        logins = dict(
            await admin.fetch(
                "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'flowproof\\_%'"
            )
        )
        verifiers = await admin.fetchval(
            "SELECT count(*) FROM pg_authid WHERE rolname IN ('flowproof_writer', "
            "'flowproof_smoke') AND rolpassword IS NOT NULL"
        )
    finally:
        await admin.close()
    assert logins == {f"flowproof_{r}": r in ROLES_WITHOUT_OPTIONAL_LOGINS for r in ROLES}, logins
    assert verifiers == 0
    # The application's own login, granted the group, writes events and nothing else.
    conn = await asyncpg.connect(server.dsn("orders_app", app_password, DATABASE))
    try:
        async with conn.transaction():
            await conn.execute(OUTBOX_ROW)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM flowproof_outbox")
    finally:
        await conn.close()


# --- the relay's own statements, as flowproof_relay ------------------------------------------


async def test_the_relays_park_prune_and_gauge_statements_run_as_its_role(
    secured_pg: SecuredPostgres,
) -> None:
    """The statements the pipeline test rarely reaches (registering its sinks, parking a row,
    dropping old time partitions through the owner's function) as the relay runs them, on a
    flowproof_relay connection."""
    owner = await asyncpg.connect(secured_pg.dsn("owner"))
    try:
        # Three rows of one day, and the row to park a day later: a partition each.
        seqs = await owner.fetch(
            "INSERT INTO flowproof_outbox (aggregatetype, aggregateid, type, payload, created_at) "
            "SELECT 'order', 'prune-' || n, 'flowproof.Canary', '{}', "
            "       now() - make_interval(days => CASE WHEN n < 3 THEN 3 ELSE 2 END) "
            "FROM generate_series(0, 3) AS n RETURNING seq"
        )
    finally:
        await owner.close()
    *delivered, to_park = [r["seq"] for r in seqs]
    settings = role_settings(secured_pg, "relay")
    table, slots = settings.outbox_table, list(range(64))
    conn = await connect_postgres(settings)
    try:
        # What the relay does when it starts: its sinks become the outbox's (pruning needs them).
        await conn.execute(query("register_sinks", table), ["redis", "kafka"])
        # A batch per sink, as a worker runs it; Kafka parks the last row.
        for sink in ("redis", "kafka"):
            claimed = await conn.fetch(query("claim", table, sink), slots, 10, 0, 0, True)
            assert [r["seq"] for r in claimed] == [r["seq"] for r in seqs]
            assert not any(r["queued"] for r in claimed)
            last = claimed[-1]
            parks = sink == "kafka"
            await conn.execute(
                query("record", table, sink),
                delivered, text_array(["s"] * 3), [None] * 3, text_array(["1-1", "1-2", "1-3"]),
                [to_park] if parks else [], [last["slot"]] if parks else [],
                [last["aggregatetype"]] if parks else [], [last["aggregateid"]] if parks else [],
                ["parked"] if parks else [], ["oversized"] if parks else [],
                ["too big"] if parks else [],
                [], slots, to_park, True, False,
            )  # fmt: skip
        for sink in ("redis", "kafka"):  # nothing left: the rounds end, the cursors move on
            assert await conn.fetch(query("claim", table, sink), slots, 10, 0, 0, True) == []
        await refresh_gauges(conn, settings)  # with a parked row: its waiting-behind query too
        pruned = await prune(conn, settings)
        left = await conn.fetch("SELECT seq FROM flowproof_outbox ORDER BY seq")
        parked = await conn.fetch("SELECT seq, sink, reason FROM flowproof_outbox_parked")
        # `flowproof parked retry`, as the relay role: the row is queued for another try.
        assert await retry_parked(conn, table, ("kafka",)) == {"kafka": 1}
    finally:
        await conn.close()
    assert pruned == len(delivered) == 3
    assert [r["seq"] for r in left] == [to_park]
    assert [tuple(r) for r in parked] == [(to_park, "kafka", "oversized")]
