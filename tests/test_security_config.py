"""The TLS and SASL settings: each secret from <NAME>_FILE, and misconfigurations named.

A TLS setting that would be silently ignored (a CA file with a plain URL), or SASL without its
credentials, is refused at start with the variable's name instead of failing later with the
broker's words. Secrets read from files are registered for redaction, in URL-decoded form too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flowproof.core.config import SECRET_FIELDS, env_name, load_settings
from flowproof.core.errors import ConfigError
from flowproof.core.redact import scrub
from tests.private_services import Certificate, TestCA

SASL = {
    "FLOWPROOF_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "FLOWPROOF_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "FLOWPROOF_KAFKA_SASL_USERNAME": "flowproof-relay",
    "FLOWPROOF_KAFKA_SASL_PASSWORD": "kafka-pw-0123456789",
}
SECRET_VALUES = {
    "database_url": "postgresql://flowproof_relay:pg%2Fpw%40x-123@db:5432/flowproof"
    "?sslmode=verify-full&sslrootcert=/run/secrets/ca.pem",
    "redis_url": "rediss://flowproof-relay:redis%2Bpw-456@redis:6380/0",
    "kafka_sasl_password": "kafka+pw/789-file",
    "schema_registry_url": "https://flowproof:reg%2Fpw-321@registry:8081/apis/ccompat/v7",
    "schema_registry_password": "registry+pw/654-file",
}


def _set(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("field", sorted(SECRET_FIELDS))
def test_every_secret_can_come_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, field: str
) -> None:
    _set(monkeypatch, {k: v for k, v in SASL.items() if k != "FLOWPROOF_KAFKA_SASL_PASSWORD"})
    secret_file = tmp_path / field
    secret_file.write_text(SECRET_VALUES[field] + "\n", encoding="utf-8")
    monkeypatch.setenv(env_name(field) + "_FILE", str(secret_file))
    if field != "kafka_sasl_password":
        monkeypatch.setenv("FLOWPROOF_KAFKA_SASL_PASSWORD", SASL["FLOWPROOF_KAFKA_SASL_PASSWORD"])
    if field == "schema_registry_password":
        monkeypatch.setenv("FLOWPROOF_SCHEMA_REGISTRY_USERNAME", "flowproof")
    settings = load_settings()
    value = getattr(settings, field)
    assert value.get_secret_value() == SECRET_VALUES[field]
    assert SECRET_VALUES[field] not in repr(settings)


def test_passwords_are_redacted_raw_and_url_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    _set(monkeypatch, SASL)
    monkeypatch.setenv("FLOWPROOF_DATABASE_URL", SECRET_VALUES["database_url"])
    monkeypatch.setenv("FLOWPROOF_REDIS_URL", SECRET_VALUES["redis_url"])
    monkeypatch.setenv("FLOWPROOF_SCHEMA_REGISTRY_URL", SECRET_VALUES["schema_registry_url"])
    monkeypatch.setenv("FLOWPROOF_SCHEMA_REGISTRY_USERNAME", "flowproof")
    monkeypatch.setenv(
        "FLOWPROOF_SCHEMA_REGISTRY_PASSWORD", SECRET_VALUES["schema_registry_password"]
    )
    load_settings()
    leaks = ("pg%2Fpw%40x-123", "pg/pw@x-123", "redis%2Bpw-456", "redis+pw-456", "reg%2Fpw-321")
    for leaked in (*leaks, "reg/pw-321", SECRET_VALUES["schema_registry_password"]):
        assert scrub(f"driver said: bad password {leaked}!") == "driver said: bad password ***!"
    assert scrub(f"sasl {SASL['FLOWPROOF_KAFKA_SASL_PASSWORD']} refused") == "sasl *** refused"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"FLOWPROOF_REDIS_SSL_CAFILE": "{ca}"},
            "FLOWPROOF_REDIS_SSL_CAFILE='{ca}': is set but FLOWPROOF_REDIS_URL is not a rediss://",
        ),
        (
            {"FLOWPROOF_REDIS_URL": "rediss://r:6380/0", "FLOWPROOF_REDIS_SSL_CAFILE": "/no/ca"},
            "FLOWPROOF_REDIS_SSL_CAFILE='/no/ca': is not a readable file",
        ),
        (
            {"FLOWPROOF_KAFKA_SSL_CAFILE": "{ca}"},
            "FLOWPROOF_KAFKA_SSL_CAFILE='{ca}': is set but "
            "FLOWPROOF_KAFKA_SECURITY_PROTOCOL=PLAINTEXT uses no TLS",
        ),
        (
            {**SASL, "FLOWPROOF_KAFKA_SSL_CAFILE": "/no/ca"},
            "FLOWPROOF_KAFKA_SSL_CAFILE='/no/ca': is not a readable file",
        ),
        *[
            (
                {k: v for k, v in SASL.items() if k != missing},
                f"{missing}: is required with FLOWPROOF_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
            )
            for missing in (
                "FLOWPROOF_KAFKA_SASL_MECHANISM",
                "FLOWPROOF_KAFKA_SASL_USERNAME",
                "FLOWPROOF_KAFKA_SASL_PASSWORD",
            )
        ],
    ],
    ids=[
        "redis-ca-plain-url",
        "redis-ca-missing",
        "kafka-ca-plaintext",
        "kafka-ca-missing",
        "no-mechanism",
        "no-username",
        "no-password",
    ],
)
def test_tls_and_sasl_mistakes_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, values: dict[str, str], message: str
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    _set(monkeypatch, {k: v.replace("{ca}", str(ca)) for k, v in values.items()})
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert message.replace("{ca}", str(ca)) in str(refused.value)
    assert SASL["FLOWPROOF_KAFKA_SASL_PASSWORD"] not in str(refused.value)


def test_a_complete_tls_configuration_loads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    _set(monkeypatch, SASL)
    monkeypatch.setenv("FLOWPROOF_KAFKA_SSL_CAFILE", str(ca))
    monkeypatch.setenv("FLOWPROOF_REDIS_URL", "rediss://u:p-123456@r:6380/0")
    monkeypatch.setenv("FLOWPROOF_REDIS_SSL_CAFILE", str(ca))
    settings = load_settings()
    assert settings.redis_ssl_cafile == ca
    assert settings.kafka_ssl_cafile == ca
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"


@pytest.fixture(scope="module")
def client_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Certificate, Certificate]:
    """Two client certificates with their keys, from a throw-away CA."""
    ca = TestCA(tmp_path_factory.mktemp("client-ca"))
    return ca.issue("client-one"), ca.issue("client-two")


@pytest.mark.parametrize("side", ["redis", "kafka", "schema_registry"])
def test_client_certificate_mistakes_name_the_variable(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    client_pair: tuple[Certificate, Certificate],
    side: str,
) -> None:
    one, two = client_pair
    cert, key = f"FLOWPROOF_{side.upper()}_SSL_CERTFILE", f"FLOWPROOF_{side.upper()}_SSL_KEYFILE"

    def refused(values: dict[str, str]) -> str:
        with monkeypatch.context() as scope:
            for name, value in values.items():
                scope.setenv(name, value)
            with pytest.raises(ConfigError) as caught:
                load_settings()
        return str(caught.value)

    # Without TLS a client certificate would be ignored: refused.
    assert f"{cert}='{one.cert}': is set but" in refused({cert: str(one.cert), key: str(one.key)})
    tls = {
        "redis": {"FLOWPROOF_REDIS_URL": "rediss://r:6380/0"},
        "kafka": {"FLOWPROOF_KAFKA_SECURITY_PROTOCOL": "SSL"},
        "schema_registry": {
            "FLOWPROOF_SCHEMA_REGISTRY_URL": "https://registry:8081/apis/ccompat/v7"
        },
    }[side]
    assert f"{key}: is required with {cert}" in refused({**tls, cert: str(one.cert)})
    assert f"{key}='{one.key}': is set without {cert}" in refused({**tls, key: str(one.key)})
    mismatched = refused({**tls, cert: str(one.cert), key: str(two.key)})
    assert f"{key}='{two.key}': is not the private key of {cert}" in mismatched
    # An encrypted key is refused, not asked for its passphrase on a terminal.
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(one.key), "-aes256", "-passout", "pass:secret-123",
         "-out", str(encrypted)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert "is an encrypted key" in refused({**tls, cert: str(one.cert), key: str(encrypted)})
    with monkeypatch.context() as scope:
        for name, value in {**tls, cert: str(one.cert), key: str(one.key)}.items():
            scope.setenv(name, value)
        settings = load_settings()
    assert getattr(settings, f"{side}_ssl_certfile") == one.cert
