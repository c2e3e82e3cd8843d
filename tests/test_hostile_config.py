"""Hostile configuration: names that end up in SQL, Redis keys and Kafka topics, and malformed
values of every FLOWPROOF_* variable.

A name is either one of the legal ones (checked here against the test's own patterns) or a
ConfigError naming the variable, never interpolated. Every SQL text the packages run is a
literal, a named query rendered from validated names, or an f-string over module constants
(checked on the source). Any value of any variable either loads, into finite numbers that fit
the drivers, or is a ConfigError naming the variable; `flowproof check` then exits 2 naming it,
with no traceback.
"""

from __future__ import annotations

import ast
import asyncio
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from flowproof.cli import app
from flowproof.consumers.kafka import topic_pattern
from flowproof.consumers.options import ConsumerOptions
from flowproof.core import migrations, redact
from flowproof.core.config import ENV_PREFIX, Settings, env_name, load_settings
from flowproof.core.errors import ConfigError
from flowproof.core.identifiers import quote_ident
from flowproof.publisher import queries as publisher_queries
from flowproof.verifier import queries as verifier_queries
from tests.test_hostile_support import HOSTILE_NAMES, bounded

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("publisher", "consumers", "verifier", "flowproof")

# What docs/configuration.md promises, written independently of flowproof.core.identifiers.
LEGAL = {
    "outbox_table": re.compile(r"[a-z_][a-z0-9_]{0,39}"),
    "stream_prefix": re.compile(r"[A-Za-z0-9._\-]{0,200}"),
    "topic_prefix": re.compile(r"[A-Za-z0-9._\-]{0,200}"),
    "consumer_group": re.compile(r"[A-Za-z0-9._\-]{1,200}"),
    "consumer_name": re.compile(r"[A-Za-z0-9._\-]{1,200}"),
}
# Environment values hold neither NUL nor lone surrogates (the OS cannot pass them).
env_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60
)
huge_text = st.sampled_from(["x" * 5000, "9" * 5000, "1e400", "-" * 300, "é" * 3000])
env_values = st.one_of(
    env_text,
    st.sampled_from(HOSTILE_NAMES).filter(lambda s: "\x00" not in s),
    huge_text,
    st.sampled_from(
        [
            "",
            " ",
            "0",
            "-1",
            "1e308",
            "inf",
            "-inf",
            "nan",
            "NaN",
            "Infinity",
            "1_000",
            "0x10",
            "true",
            "yes",
            "none",
            "null",
            "[]",
            "{}",
            "redis,redis",
            "redis://",
            "postgresql://",
            "\uff19",
            "١٢٣",
            "²",
            "\u00a0",
            "\t1\n",
            "99999999999999999999",
            "-9223372036854775809",
        ]
    ),
)


@pytest.fixture(autouse=True)
def _keep_process_state() -> Iterator[None]:
    """Commands run here configure structlog for their (captured) stderr, and every loaded
    configuration registers its secrets for scrubbing (a fuzzed password may be any word):
    put both back, so other tests see neither."""
    saved = structlog.get_config()
    secrets = set(redact._registered)
    yield
    structlog.configure(**saved)
    redact._registered.clear()
    redact._registered.update(secrets)


def _load(env: dict[str, str]) -> Settings:
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.upper().startswith(ENV_PREFIX):
                mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        return load_settings()


# --- names ----------------------------------------------------------------------------------------


@bounded(250)
@given(
    field=st.sampled_from(sorted(LEGAL)),
    value=st.one_of(st.sampled_from(HOSTILE_NAMES), env_text, huge_text),
)
def test_configurable_names_are_legal_or_a_config_error_naming_the_variable(
    field: str, value: str
) -> None:
    if "\x00" in value:
        return  # no environment can hold it
    try:
        settings = _load({env_name(field): value})
    except ConfigError as exc:
        assert env_name(field) in str(exc), exc
        assert not LEGAL[field].fullmatch(value), f"{value!r} is legal but refused: {exc}"
        return
    assert LEGAL[field].fullmatch(value), f"{value!r} was accepted"
    assert getattr(settings, field) == value
    if field == "outbox_table":
        assert quote_ident(value) == f'"{value}"'
    elif field.endswith("prefix"):
        # SCAN MATCH <prefix>* and the Kafka pattern must mean "under this prefix", nothing more.
        assert not set(value) & set("*?[]\\^$ \n")
        pattern = re.compile(topic_pattern(value))
        assert pattern.fullmatch(f"{value}orders") and not pattern.fullmatch(f"{value}orders.dlq")
        assert not pattern.fullmatch(f"x{value}orders") or value == ""


@bounded(40)
@given(st.one_of(st.sampled_from(HOSTILE_NAMES), env_text, huge_text))
def test_group_option_refuses_hostile_names_with_exit_2(group: str) -> None:
    if "\x00" in group or LEGAL["consumer_group"].fullmatch(group):
        return  # a legal group would start a consumer
    result = CliRunner().invoke(app, ["consume", "--sink", "redis", "--group", group])
    assert result.exit_code == 2, result.output
    assert "--group" in result.output and "Traceback" not in result.output
    if group:  # the Python API takes "" (or None) for FLOWPROOF_CONSUMER_GROUP
        with pytest.raises(ConfigError) as caught:
            ConsumerOptions.from_settings(Settings(), sink="redis", group=group)
        assert "group" in str(caught.value)


@bounded(100)
@given(st.sampled_from(HOSTILE_NAMES).filter(lambda s: not LEGAL["outbox_table"].fullmatch(s)))
def test_sql_renderers_refuse_hostile_table_and_sink_names(name: str) -> None:
    """The last gate: even a name that skipped the settings never reaches SQL text."""
    for render in (
        lambda: publisher_queries.query("claim", name, "redis"),
        lambda: publisher_queries.query("claim", "flowproof_outbox", name),
        lambda: publisher_queries.query("emit", name),
        lambda: verifier_queries.query("flow", name, "redis"),
        lambda: verifier_queries.query("outbox_pending", "flowproof_outbox", name),
        lambda: migrations.load_migrations(name),
        lambda: quote_ident(name),
    ):
        with pytest.raises(ValueError):
            render()


def test_every_named_query_renders_only_known_placeholders() -> None:
    templates = [
        *(ROOT / "publisher" / "sql").glob("*.sql"),
        *(ROOT / "verifier" / "sql").glob("*.sql"),
        *(ROOT / "flowproof" / "core" / "sql" / "migrations").glob("*.sql"),
    ]
    assert len(templates) >= 10
    found = set()
    for path in templates:
        found |= set(re.findall(r"\{\{(\w+)\}\}", path.read_text(encoding="utf-8")))
    # outbox and sink are validated names; `sampled` is rendered by flowproof from numbers, and
    # `partition_seconds` from a float load_migrations checks (test_migrations.py).
    assert found <= {"outbox", "sink", "sampled", "partition_seconds"}, found


# --- SQL in the source ----------------------------------------------------------------------------

SQL_METHODS = {"execute", "executemany", "fetch", "fetchval", "fetchrow", "prepare", "cursor"}
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT INTO|UPDATE|DELETE FROM|CREATE|ALTER|DROP|TRUNCATE|GRANT|LISTEN|NOTIFY|"
    r"WHERE|IS NOT NULL|IS NULL)\b"
)
VALIDATORS = {"quote_ident", ".quote_ident", "validate_sql_identifier", ".validate_sql_identifier"}
# SQL f-strings over values that are not module constants, each with why it is safe; the test
# below also proves each reason.
ALLOWED_FSTRINGS: dict[tuple[str, str], str] = {}
# Values of SQL calls that are not literal, query(...) or f-strings over constants.
ALLOWED_SQL_VALUES = {
    (
        "flowproof/core/migrations.py",
        "migration.sql",
    ): "load_migrations renders validated names only",
}


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            yield rel, ast.parse(path.read_text(encoding="utf-8"), rel)


def _target_key(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f".{node.attr}"
    return None


class _Module:
    """What the check needs of one module: its string constants and every assignment."""

    def __init__(self, rel: str, tree: ast.Module) -> None:
        self.rel = rel
        self.constants = {
            t.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            for t in node.targets
            if isinstance(t, ast.Name)
        }
        self.assigned: dict[str, list[ast.expr]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    key = _target_key(target)
                    if key:
                        self.assigned.setdefault(key, []).append(node.value)
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                key = _target_key(node.target)
                if key:
                    self.assigned.setdefault(key, []).append(node.value)

    def identifier(self, node: ast.expr, seen: frozenset[str] = frozenset()) -> bool:
        """Whether `node` is a name SQL may hold: a module constant, the configured outbox
        table (Settings validates it), or what flowproof.core.identifiers returned."""
        if isinstance(node, ast.Name) and node.id in self.constants:
            return True
        if isinstance(node, ast.Attribute) and node.attr == "outbox_table":
            return True
        if isinstance(node, ast.Call):
            return _target_key(node.func) in VALIDATORS
        key = _target_key(node)
        if not isinstance(node, ast.Name) or key is None or key in seen:
            return False
        values = self.assigned.get(key, [])
        return bool(values) and all(self.identifier(v, seen | {key}) for v in values)

    def safe(  # noqa: PLR0911 - one case per kind of expression
        self, node: ast.expr, seen: frozenset[str] = frozenset()
    ) -> bool:
        """Whether `node` is SQL text built only from literals and validated names."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.JoinedStr):
            return all(
                isinstance(part, ast.Constant)
                or (isinstance(part, ast.FormattedValue) and self.identifier(part.value))
                for part in node.values
            )
        if isinstance(node, ast.Call):
            name = _target_key(node.func)
            if name in ("query", ".query"):
                return not node.keywords  # only validated names reach a named query
            return False
        key = _target_key(node)
        if key is None or key in seen:
            return False
        if (self.rel, ast.unparse(node)) in ALLOWED_SQL_VALUES:
            return True
        values = self.assigned.get(key, [])
        return bool(values) and all(self.safe(v, seen | {key}) for v in values)


def test_the_sql_check_tells_validated_names_from_anything_else() -> None:
    source = """
TABLE = "t"
def f(conn, settings, name, env):
    table = settings.outbox_table
    sql = query("claim", settings.outbox_table, "redis")
    conn.execute("SELECT 1")                                   # 0 safe
    conn.execute(sql)                                          # 1 safe
    conn.execute(f"SELECT * FROM {TABLE}")                     # 2 safe
    conn.execute(f"SELECT * FROM {table}")                     # 3 safe
    conn.execute(f"SELECT * FROM {quote_ident(name)}")         # 4 safe
    conn.execute(f"SELECT * FROM {name}")                      # 5 unsafe
    conn.execute("SELECT * FROM " + name)                      # 6 unsafe
    conn.execute(query("claim", "t", extra=name))              # 7 unsafe
    conn.execute(f"SELECT * FROM {env['X']}")                  # 8 unsafe
    other = name
    conn.execute(f"DROP TABLE {other}")                        # 9 unsafe
"""
    tree = ast.parse(source)
    module = _Module("example.py", tree)
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and _target_key(n.func) == ".execute"
    ]
    verdicts = [module.safe(call.args[0]) for call in sorted(calls, key=lambda c: c.lineno)]
    assert verdicts == [True] * 5 + [False] * 5


def test_sql_is_run_only_from_literals_named_queries_and_constants() -> None:
    unsafe = []
    calls = 0
    for rel, tree in _modules():
        module = _Module(rel, tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in SQL_METHODS
                and node.args
            ):
                calls += 1
                if not module.safe(node.args[0]):
                    unsafe.append(f"{rel}:{node.lineno}: {ast.unparse(node.args[0])}")
    assert calls >= 25  # the check saw the relay's, consumers' and verifier's queries
    assert not unsafe, "SQL built from something else than validated names:\n" + "\n".join(unsafe)


def test_sql_fstrings_interpolate_only_constants_or_reviewed_values() -> None:
    reviewed = set()
    for rel, tree in _modules():
        module = _Module(rel, tree)
        for function in [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]:
            for node in ast.walk(function):
                if not isinstance(node, ast.JoinedStr):
                    continue
                text = "".join(p.value for p in node.values if isinstance(p, ast.Constant))
                if not SQL_WORDS.search(text) or module.safe(node):
                    continue
                assert (rel, function.name) in ALLOWED_FSTRINGS, (
                    f"{rel}:{node.lineno} builds SQL from {ast.unparse(node)}"
                )
                reviewed.add((rel, function.name))
    assert reviewed == set(ALLOWED_FSTRINGS)  # the list stays true
    # ... and each reviewed reason holds.
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _target_key(node.func) in (
                "sql_predicate",
                ".sql_predicate",
            ):
                assert all(isinstance(a, ast.Constant) for a in node.args), f"{rel}:{node.lineno}"


# --- every variable, any value --------------------------------------------------------------------

FIELDS = sorted(Settings.model_fields)


def _check_loaded(settings: Settings) -> None:
    """What loaded must be usable: finite numbers, integers the drivers take (int64)."""
    for name in FIELDS:
        value = getattr(settings, name)
        if isinstance(value, float):
            assert math.isfinite(value) and math.isfinite(value * 1000), (name, value)
        elif isinstance(value, int) and not isinstance(value, bool):
            assert -(2**63) <= value < 2**63, (name, value)


@bounded(400)
@given(field=st.sampled_from(FIELDS), value=env_values)
def test_any_value_of_any_variable_loads_or_is_a_config_error_naming_it(
    field: str, value: str
) -> None:
    try:
        settings = _load({env_name(field): value})
    except ConfigError as exc:
        assert env_name(field) in str(exc), exc
        return
    _check_loaded(settings)


@bounded(120)
@given(st.dictionaries(st.sampled_from(FIELDS).map(env_name), env_values, min_size=2, max_size=5))
def test_several_bad_values_are_all_named(env: dict[str, str]) -> None:
    # A value is bad when it is refused on its own; each of them must be named at once, so one
    # start tells the whole story (and a good value is not blamed for a bad one).
    bad = [name for name, value in env.items() if _refused({name: value})]
    try:
        settings = _load(env)
    except ConfigError as exc:
        unnamed = [name for name in bad if name not in str(exc)]
        assert not unnamed, f"{unnamed} not named in: {exc}"
        assert bad, f"refused though each value loads on its own: {exc}"
        return
    assert not bad, f"{bad} refused alone but loaded together"
    _check_loaded(settings)


def _refused(env: dict[str, str]) -> bool:
    try:
        _load(env)
    except ConfigError:
        return True
    return False


@bounded(100)
@given(field=st.sampled_from(FIELDS), content=st.binary(max_size=40))
def test_any_secret_file_loads_or_is_a_config_error_naming_it(
    field: str, content: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("secret") / "value"
    path.write_bytes(content)
    variable = env_name(field) + "_FILE"
    try:
        settings = _load({variable: str(path)})
    except ConfigError as exc:
        assert variable in str(exc), exc
        return
    _check_loaded(settings)


def test_unreadable_secret_files_are_config_errors_naming_them(tmp_path: Path) -> None:
    for path in [tmp_path / "missing", tmp_path, Path("x" * 5000), Path("/proc/self/mem")]:
        with pytest.raises(ConfigError) as caught:
            _load({"FLOWPROOF_DATABASE_URL_FILE": str(path)})
        assert "FLOWPROOF_DATABASE_URL_FILE" in str(caught.value)


# --- the command line -----------------------------------------------------------------------------

# A few values through the real command (the in-process tests above try thousands); the first
# four once loaded and then crashed `check` or a relay task.
BAD_ENV = [
    ("FLOWPROOF_VERIFY_TIMEOUT_SECONDS", "inf"),
    ("FLOWPROOF_VERIFY_INTERVAL_SECONDS", "1e308"),
    ("FLOWPROOF_RELAY_PARTITION_SECONDS", "1e15"),
    ("FLOWPROOF_OUTBOX_TABLE", "flowproof_outbox; DROP TABLE flowproof_receipts; --"),
    ("FLOWPROOF_TOPIC_PREFIX", "ﬂowproof."),
    ("FLOWPROOF_DATABSE_URL", "postgresql://x@y/z"),  # a typo: named with the closest variable
]


async def _check_command(env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flowproof",
        "check",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_check_exits_2_naming_the_variable_without_a_traceback(
    settings_env: dict[str, str], tmp_path: Path
) -> None:
    binary = tmp_path / "password"
    binary.write_bytes(b"\xff\xfe\x00secret")
    cases = [*BAD_ENV, ("FLOWPROOF_DATABASE_URL_FILE", str(binary))]
    envs = []
    for name, value in cases:
        env = dict(settings_env)
        env.pop(name.removesuffix("_FILE"), None)
        env[name] = value
        envs.append(env)
    results = await asyncio.gather(*(_check_command(env) for env in envs))
    for (name, _), (code, out, err) in zip(cases, results, strict=True):
        assert code == 2, (name, code, err)
        assert name in err, (name, err)
        assert "Traceback" not in err and "Error:" not in out, (name, err)
    assert "did you mean FLOWPROOF_DATABASE_URL" in results[BAD_ENV.index(BAD_ENV[-1])][2]


def test_a_hostile_group_from_the_environment_and_the_option_exit_2(
    settings_env: dict[str, str],
) -> None:
    for env_group, option in [("x'; DROP TABLE t; --", []), ("ok", ["--group", "a b"])]:
        env = {**settings_env, "FLOWPROOF_CONSUMER_GROUP": env_group}
        done = subprocess.run(
            [sys.executable, "-m", "flowproof", "consume", "--sink", "kafka", "--drain", *option],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert ("--group" if option else "FLOWPROOF_CONSUMER_GROUP") in done.stderr
        assert "Traceback" not in done.stderr
