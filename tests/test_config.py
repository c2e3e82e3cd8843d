"""Configuration: exit 2 naming the variable, unknown variables, secret files, redaction."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from flowproof.core.config import Settings, load_settings
from flowproof.core.errors import ConfigError
from flowproof.core.logging import configure_logging, get_logger
from flowproof.core.redact import redact_url

FLOWPROOF = [sys.executable, "-m", "flowproof"]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWPROOF_")}
    return subprocess.run(
        [*FLOWPROOF, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.sinks == ("redis", "kafka")
    assert settings.outbox_table == "flowproof_outbox"
    assert settings.topic_prefix == "flowproof."


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("FLOWPROOF_SINKS", "redis,rabbitmq", "unknown sink 'rabbitmq'"),
        ("FLOWPROOF_METRICS_PORT", "seventy", "valid integer"),
        ("FLOWPROOF_METRICS_PORT", "70000", "less than or equal to 65535"),
        ("FLOWPROOF_KAFKA_BOOTSTRAP_SERVERS", "localhost", "is not host:port"),
        ("FLOWPROOF_REDIS_URL", "http://x", "redis://"),
        ("FLOWPROOF_OUTBOX_TABLE", "outbox; DROP TABLE x", "not a valid table name"),
        ("FLOWPROOF_TOPIC_PREFIX", "a b", "not a valid stream/topic prefix"),
        ("FLOWPROOF_LOG_LEVEL", "loud", "FLOWPROOF_LOG_LEVEL"),
    ],
)
def test_wrong_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert variable in str(info.value)
    assert expected in str(info.value)


def test_wrong_value_exits_2_naming_the_variable() -> None:
    result = run_cli("relay", FLOWPROOF_SINKS="kafka,nats")
    assert result.returncode == 2
    assert "FLOWPROOF_SINKS" in result.stderr
    assert "unknown sink 'nats'" in result.stderr


def test_unknown_variable_names_the_closest_known_one() -> None:
    result = run_cli("relay", FLOWPROOF_DATABASE_URI="postgresql://x@h/db")
    assert result.returncode == 2
    assert "FLOWPROOF_DATABASE_URI is not a flowproof setting" in result.stderr
    assert "did you mean FLOWPROOF_DATABASE_URL?" in result.stderr


def test_unknown_variable_only_warns_when_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWPROOF_ALLOW_UNKNOWN_ENV", "true")
    monkeypatch.setenv("FLOWPROOF_SINK", "redis")
    with structlog.testing.capture_logs() as logs:
        load_settings()
    assert logs[0]["event"] == "config.unknown_variable"
    assert "did you mean FLOWPROOF_SINKS?" in logs[0]["problem"]


def test_secret_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "db_url"
    secret.write_text("postgresql://app:s3cret-pw@db:5432/app\n")
    monkeypatch.setenv("FLOWPROOF_DATABASE_URL_FILE", str(secret))
    settings = load_settings()
    assert settings.database_url.get_secret_value() == "postgresql://app:s3cret-pw@db:5432/app"
    assert "s3cret-pw" not in repr(settings)


def test_secret_file_and_variable_together_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("x")
    monkeypatch.setenv("FLOWPROOF_KAFKA_SASL_PASSWORD", "y")
    monkeypatch.setenv("FLOWPROOF_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "pw"))
    with pytest.raises(ConfigError, match=r"FLOWPROOF_KAFKA_SASL_PASSWORD and .*_FILE"):
        load_settings()


def test_missing_secret_file_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWPROOF_REDIS_URL_FILE", "/nonexistent/redis-url")
    with pytest.raises(ConfigError, match="FLOWPROOF_REDIS_URL_FILE: cannot read"):
        load_settings()


def test_bad_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWPROOF_DATABASE_URL", "mysql://app:hunter2-pw@db/app")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "FLOWPROOF_DATABASE_URL" in str(info.value)
    assert "hunter2-pw" not in str(info.value)


def test_toml_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "flowproof.toml"
    config.write_text('sinks = "kafka"\ntopic_prefix = "prod."\n')
    monkeypatch.setenv("FLOWPROOF_TOPIC_PREFIX", "env.")
    settings = load_settings(config)
    assert settings.sinks == ("kafka",)
    assert settings.topic_prefix == "env."  # the environment wins over the file


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://app:pw@db:5432/x", "postgresql://app:***@db:5432/x"),
        ("rediss://default:p%40ss@r:6380/0", "rediss://default:***@r:6380/0"),
        (
            "postgresql://db/x?password=pw&sslmode=require",
            "postgresql://db/x?password=***&sslmode=require",
        ),
        ("redis://r:6379/0", "redis://r:6379/0"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_log_lines_never_carry_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWPROOF_DATABASE_URL", "postgresql://app:Very-Secret-1@db/app")
    monkeypatch.setenv("FLOWPROOF_KAFKA_SASL_PASSWORD", "Kafka-Secret-2")
    settings = load_settings()
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    try:
        log = get_logger("test")
        log.info("connecting", dsn=settings.database_url.get_secret_value())
        log.info("sasl", detail="login with Kafka-Secret-2 failed")
        try:
            raise RuntimeError("cannot connect to postgresql://app:Very-Secret-1@db/app")
        except RuntimeError:
            log.exception("boom")
    finally:
        configure_logging("info", "json")
    text = out.getvalue()
    assert "Very-Secret-1" not in text
    assert "Kafka-Secret-2" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["dsn"] == "postgresql://app:***@db/app"
    assert [line["event"] for line in lines] == ["connecting", "sasl", "boom"]


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.sinks = ("redis",)  # type: ignore[misc]


def test_driver_log_lines_are_rendered_and_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    out = io.StringIO()
    configure_logging("info", "json", stream=out)
    try:
        logging.getLogger("aiokafka.conn").warning(
            "cannot connect to %s", "redis://user:Driver-Secret-3@r:6379/0"
        )
        logging.getLogger("aiokafka.conn").info("chatter below WARNING is dropped")
    finally:
        configure_logging("info", "json")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["module"] == "aiokafka.conn"
    assert lines[0]["level"] == "warning"
    assert lines[0]["event"] == "cannot connect to redis://user:***@r:6379/0"
