"""The one settings model every flowproof command shares.

Values come from, highest priority first: `FLOWPROOF_<NAME>_FILE` (a path whose contents are the
value, the Docker-secrets convention), `FLOWPROOF_<NAME>` environment variables, the TOML file
given by `--config`, then the defaults below. `load_settings` turns every problem into a
`ConfigError` that names the variable, and refuses unknown `FLOWPROOF_*` variables, naming the
closest known one: a misspelt variable silently ignored is the drift flowproof exists to catch.
"""

from __future__ import annotations

import difflib
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from flowproof.core.errors import ConfigError
from flowproof.core.identifiers import (
    validate_group_name,
    validate_name_prefix,
    validate_sql_identifier,
)
from flowproof.core.logging import get_logger
from flowproof.core.migrations import (
    PARTITION_SECONDS,
    PARTITION_SECONDS_MAX,
    PARTITION_SECONDS_MIN,
)
from flowproof.core.redact import register_secret
from flowproof.core.redis_topology import check_redis_url, uses_tls
from flowproof.core.routing import InvalidDestination, destination
from flowproof.core.sinks import SINK_NAMES

ENV_PREFIX = "FLOWPROOF_"
FILE_SUFFIX = "_FILE"
MAX_FLOAT = 1e15  # seconds: about 30 million years, and still finite in milliseconds

# A sink's name: one of flowproof.core.sinks.SINK_NAMES (validated where settings name one).
Sink = str
# Set per load_settings call: pydantic-settings builds sources from the class, not the instance.
_toml_path: Path | None = None


# redis-py reads these from a URL's query, and they override what flowproof passes: the values
# that keep the certificate and host name checks on.
_STRICT_REDIS_TLS = {
    "ssl_cert_reqs": {"REQUIRED"},
    "ssl_check_hostname": {"TRUE", "T", "YES", "Y", "1"},
}


def _weakened_redis_tls(url: str) -> str | None:
    """The URL query parameter that would switch a TLS check off (redis-py honours it), or None."""
    query = parse_qs(urlsplit(url).query, keep_blank_values=True)
    for name, strict in _STRICT_REDIS_TLS.items():
        if any(value.strip().upper() not in strict for value in query.get(name, ())):
            return name
    return None


class Settings(BaseSettings):
    """Configuration shared by every command (docs/design.md, "Configuration")."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
        frozen=True,
        # "inf" and "nan" parse as floats; every float here is a duration, ratio or threshold.
        allow_inf_nan=False,
    )

    # --- services -----------------------------------------------------------------------------
    database_url: SecretStr = Field(
        default=SecretStr("postgresql://postgres@127.0.0.1:5432/flowproof"),
        description="PostgreSQL DSN, `postgresql://user:password@host:port/db`; libpq's TLS "
        "parameters (`sslmode=verify-full&sslrootcert=...`) go in its query (see "
        "[Security](security.md))",
    )
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="`redis://` or `rediss://` URL of one server; a query that would turn a TLS "
        "check off is refused. `redis+sentinel://[user:password@]host:port[,host:port]/<primary>"
        "[/<db>]` names the Sentinels that know where the primary `<primary>` is: every client "
        "follows it after a failover; `redis+cluster://[user:password@]host:port[,host:port]` "
        "names nodes of a Redis Cluster; `rediss+sentinel://` and `rediss+cluster://`: the same "
        "over TLS (see [Redis topologies](pipeline.md#redis-topologies))",
    )
    redis_ssl_cafile: Path | None = Field(
        default=None,
        description="CA bundle (PEM) the certificate of a `rediss://` server (every server of "
        "a `rediss+sentinel://` or `rediss+cluster://` URL) must chain to; none means "
        "the system's CAs (see [Security](security.md))",
    )
    redis_ssl_certfile: Path | None = Field(
        default=None,
        description="client certificate (PEM) for Redis servers that ask for one "
        "(`tls-auth-clients yes`, Redis's default with TLS); needs `FLOWPROOF_REDIS_SSL_KEYFILE`",
    )
    redis_ssl_keyfile: Path | None = Field(
        default=None,
        description="the unencrypted private key (PEM) of `FLOWPROOF_REDIS_SSL_CERTFILE`",
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092", description="Kafka bootstrap servers, `host:port[,host:port]`"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="`PLAINTEXT`, `SSL`, `SASL_PLAINTEXT`, `SASL_SSL`"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None,
        description="`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`; mechanism, username and password "
        "are required with `SASL_*`",
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="SASL username; required with `SASL_*`"
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password; required with `SASL_*`"
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="CA bundle (PEM) the brokers' certificates must chain to, for `SSL` / "
        "`SASL_SSL`; none means the system's CAs",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None,
        description="client certificate (PEM) for brokers that authenticate clients by TLS "
        "(`ssl.client.auth=required`), with `SSL` / `SASL_SSL`; needs "
        "`FLOWPROOF_KAFKA_SSL_KEYFILE`",
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None,
        description="the unencrypted private key (PEM) of `FLOWPROOF_KAFKA_SSL_CERTFILE`",
    )

    # --- what flows where ---------------------------------------------------------------------
    sinks: Annotated[tuple[Sink, ...], NoDecode] = Field(
        default=SINK_NAMES,
        description="sinks the relay publishes to and the verifier expects, comma-separated: "
        f"{', '.join(f'`{name}`' for name in SINK_NAMES)}",
    )
    outbox_table: str = Field(
        default="flowproof_outbox",
        description="outbox table (validated identifier, at most 40 characters)",
    )
    schema_dir: Path | None = Field(
        default=None,
        description="folder with your own `.avsc` files (`<namespace>.<Name>.v<N>.avsc`), loaded "
        "beside the built-in ones",
    )
    stream_prefix: str = Field(
        default="flowproof.", description="Redis stream name = prefix + `aggregatetype`"
    )
    topic_prefix: str = Field(
        default="flowproof.", description="Kafka topic name = prefix + `aggregatetype`"
    )
    schema_registry_url: SecretStr | None = Field(
        default=None,
        description="Confluent-compatible schema registry (http:// or https://, e.g. Apicurio's "
        ".../apis/ccompat/v7); schema ids are then the registry's; default: embedded ids",
    )
    schema_registry_username: str | None = Field(
        default=None, description="basic-auth user of the schema registry"
    )
    schema_registry_password: SecretStr | None = Field(
        default=None, description="basic-auth password of the schema registry"
    )
    schema_registry_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) an https:// registry's certificate must chain to; "
        "default: the system's trust store",
    )
    schema_registry_ssl_certfile: Path | None = Field(
        default=None,
        description="client certificate (PEM) for an https:// registry that asks for one; "
        "needs `FLOWPROOF_SCHEMA_REGISTRY_SSL_KEYFILE`",
    )
    schema_registry_ssl_keyfile: Path | None = Field(
        default=None,
        description="the unencrypted private key (PEM) of `FLOWPROOF_SCHEMA_REGISTRY_SSL_CERTFILE`",
    )
    schema_registry_subject_name_strategy: Literal[
        "TopicNameStrategy", "RecordNameStrategy", "TopicRecordNameStrategy"
    ] = Field(
        default="TopicNameStrategy",
        description="subject of a schema: <topic>-value, <record full name>, or "
        "<topic>-<record full name> (the topic is FLOWPROOF_TOPIC_PREFIX + aggregatetype)",
    )
    schema_registry_compatibility: Literal[
        "BACKWARD",
        "BACKWARD_TRANSITIVE",
        "FORWARD",
        "FORWARD_TRANSITIVE",
        "FULL",
        "FULL_TRANSITIVE",
        "NONE",
    ] = Field(
        default="BACKWARD",
        description="compatibility level the relay sets on a subject it creates",
    )
    schema_registry_timeout_seconds: float = Field(
        default=5.0, gt=0, le=300, description="timeout of one request to the schema registry"
    )
    receipt_sample_ratio: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="share of events receipted (chosen by event-id hash, the same in consumers and "
        "verifier, which scales its expectations to it); invalid messages are always receipted",
    )
    consumer_group: str = Field(
        default="flowproof",
        description="group `consume` joins unless `--group` is given, and the group the verifier "
        "expects in each sink",
    )

    # --- process ------------------------------------------------------------------------------
    metrics_host: str = Field(
        default="127.0.0.1",
        description="address `/metrics` binds to (`0.0.0.0` in containers)",
    )
    metrics_port: int = Field(
        default=9400,
        ge=0,
        le=65535,
        description="`/metrics` port; `0` picks a free one and logs it",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="`debug`, `info`, `warning`, `error`"
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="`json`, `console`, or `auto` (JSON unless stderr is a terminal)",
    )
    allow_unknown_env: bool = Field(
        default=False,
        description="warn about unknown `FLOWPROOF_*` variables instead of refusing them",
    )

    # --- relay (issue 3) ------------------------------------------------------------------------
    relay_batch_size: int = Field(
        default=500,
        ge=1,
        le=10000,
        description="rows a relay claims and publishes at once, per sink (also the bound on "
        "duplicates after a crash)",
    )
    relay_poll_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="an idle relay looks for rows this often when no NOTIFY woke it",
    )
    relay_max_message_bytes: int = Field(
        default=1_000_000,
        ge=1024,
        description="larger messages (value, key, header fields) are parked as `oversized`; keep "
        "it below the topics' `max.message.bytes`",
    )
    relay_redis_maxlen: int | None = Field(
        default=None,
        ge=1,
        description="approximate cap of each stream (`XADD MAXLEN ~`); none keeps every entry. "
        "Entries trimmed before a group read them are lost, and `flow.lost` says so: size it well "
        "above the lag you tolerate",
    )
    relay_redis_min_replicas: int = Field(
        default=0,
        ge=0,
        le=100,
        description="replicas that must confirm a batch (`WAIT <n> <timeout>`) before the relay "
        "marks it published; a shortfall is counted "
        "(`flowproof_relay_redis_replica_shortfalls_total`), logged and published again, never "
        "marked. `0` marks what the primary acknowledged, which a failover can lose (see "
        "[Redis topologies](pipeline.md#redis-topologies))",
    )
    relay_redis_replica_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="how long `WAIT` waits for `FLOWPROOF_RELAY_REDIS_MIN_REPLICAS` replicas; "
        "must be below `FLOWPROOF_RELAY_SINK_TIMEOUT_SECONDS`",
    )
    relay_kafka_linger_ms: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="how long a record batch waits before it is sent; `0` sends it at once (the "
        "relay hands Kafka a whole claimed batch, one record batch per partition, so waiting only "
        "adds latency)",
    )
    relay_sink_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="time limit of one publish (Redis socket, Kafka acknowledgement); past it the "
        "batch is retried",
    )
    relay_retry_base_seconds: float = Field(
        default=0.2,
        gt=0,
        description="first backoff (full jitter) before publishing again to a failing sink",
    )
    relay_retry_cap_seconds: float = Field(
        default=30.0,
        gt=0,
        description="longest backoff (full jitter) between two publish attempts to a failing sink; "
        "the relay never gives up",
    )
    relay_rebalance_interval_seconds: float = Field(
        default=2.0,
        gt=0,
        description="how often a relay counts the live relays and adjusts its share of the 64 "
        "slots",
    )
    relay_metrics_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how often the outbox gauges (pending, oldest) are refreshed; less often "
        "while counting them takes over a tenth of the time (a large backlog)",
    )
    relay_retention_seconds: float = Field(
        default=86400.0,
        ge=0,
        description="time partitions of the outbox, its delivery records and the receipts are "
        "dropped once all of their rows are this old (the outbox's once every sink of the outbox "
        "published them); keep it above the verifier's window",
    )
    relay_prune_interval_seconds: float = Field(
        default=60.0,
        ge=0,
        description="how often old partitions are dropped and new ones made; `0` never drops "
        "(partitions are still made ahead, every minute)",
    )
    relay_partition_seconds: float = Field(
        default=PARTITION_SECONDS,
        ge=PARTITION_SECONDS_MIN,
        le=PARTITION_SECONDS_MAX,
        description="the span of time of one partition of the outbox, its delivery records and "
        "the receipts; the relay makes the current span's and the next two",
    )
    relay_shutdown_timeout_seconds: float = Field(
        default=10.0,
        ge=0,
        description="after SIGTERM, how long the in-flight batches may take before they are "
        "abandoned (and republished by the next relay)",
    )

    # --- consumers (issue 4) --------------------------------------------------------------------
    consumer_name: str | None = Field(
        default=None,
        description="this consumer's name in its group; none means `<host>-<pid>-<random>`. A "
        "fixed name re-reads its own unacknowledged Redis entries after a restart",
    )
    consumer_aggregatetypes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="comma-separated aggregate types to consume; none means every stream/topic "
        "under the prefix except `*.dlq`, looked for again every discovery interval (a Redis "
        "stream whose name no aggregatetype gives, e.g. not UTF-8, is left alone and logged once "
        "as `consumer.stream_ignored`)",
    )
    consumer_batch_size: int = Field(
        default=256,
        ge=1,
        le=10000,
        description="messages read, receipted and acknowledged together",
    )
    consumer_block_ms: int = Field(
        default=500, ge=1, le=60000, description="longest `XREADGROUP` wait for new entries (Redis)"
    )
    consumer_fetch_max_wait_ms: int = Field(
        default=20, ge=0, le=60000, description="longest fetch wait for new messages (Kafka)"
    )
    consumer_discovery_interval_seconds: float = Field(
        default=5.0, gt=0, description="how often consumers look for new streams/topics"
    )
    consumer_claim_idle_ms: int = Field(
        default=30000,
        ge=0,
        description="a Redis entry read but not acknowledged this long is taken over from its "
        "consumer (`XAUTOCLAIM`)",
    )
    consumer_max_deliveries: int = Field(
        default=5,
        ge=1,
        description="a Redis entry delivered more often goes to the DLQ (`max_deliveries`) instead "
        "of to the handler",
    )
    consumer_handler_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="attempts of a handler that raises before the message is dead-lettered "
        "(`handler_error`)",
    )
    consumer_max_message_bytes: int = Field(
        default=1048576,
        ge=64,
        description="larger messages are dead-lettered unread (`oversized`)",
    )
    consumer_shutdown_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="time to finish the batches in hand after SIGTERM (the one being processed and "
        "the one being receipted); after it they are left for redelivery",
    )

    @field_validator("consumer_name")
    @classmethod
    def _check_consumer_name(cls, value: str | None) -> str | None:
        return None if value is None else validate_group_name(value)

    @field_validator("consumer_aggregatetypes", mode="before")
    @classmethod
    def _split_aggregatetypes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        if isinstance(value, list | tuple):
            for item in value:
                try:
                    destination("", str(item))
                except InvalidDestination as exc:
                    raise ValueError(str(exc)) from None
            return tuple(dict.fromkeys(str(item) for item in value))
        return value

    # --- verifier (issue 5) ---------------------------------------------------------------------
    verify_interval_seconds: float = Field(
        default=15.0, gt=0, description="seconds between two evaluations of `flowproof verify`"
    )
    verify_window_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="the flow, latency and conformance checks look at events created or published "
        "(receipts received) this recently; keep it below `FLOWPROOF_RELAY_RETENTION_SECONDS`",
    )
    verify_groups: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="`sink:group` pairs the verifier expects, comma-separated "
        "(`redis:flowproof,kafka:flowproof,kafka:billing`); none means `FLOWPROOF_CONSUMER_GROUP` "
        "in every enabled sink",
    )
    verify_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="time limit of each component probe and each read of an evaluation",
    )
    verify_status_window: int = Field(
        default=10, ge=2, description="observations kept per consumer-group lane for its status"
    )
    verify_status_min_observations: int = Field(
        default=3, ge=2, description="observations needed before a lagging lane gets a status"
    )
    flow_lost_threshold: int = Field(
        default=0, ge=0, description="lost events allowed per sink and group"
    )
    flow_lost_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        description="events published more recently are not judged lost or late yet (loss itself "
        "is decided by positions, not by this time)",
    )
    flow_unexpected_threshold: int = Field(
        default=0,
        ge=0,
        description="receipts of events the outbox never had, allowed per sink and group (fails "
        "`flow.duplicates`)",
    )
    flow_duplicates_threshold: int = Field(
        default=0,
        ge=0,
        description="events received more than once (and valid copies from another stream or "
        "topic), allowed",
    )
    flow_duplicates_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="events published more recently are not judged for duplicates yet",
    )
    flow_order_threshold: int = Field(
        default=0,
        ge=0,
        description="events first received before an earlier event of their aggregate, allowed",
    )
    flow_order_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="events published more recently are not judged for order yet",
    )
    lag_outbox_threshold: int = Field(
        default=0,
        ge=0,
        description="events allowed to wait in the outbox longer than the grace period, per sink",
    )
    lag_outbox_grace_seconds: float = Field(
        default=60.0, ge=0, description="how long an event may wait in the outbox"
    )
    lag_outbox_parked_threshold: int = Field(
        default=0, ge=0, description="parked outbox events allowed"
    )
    lag_redis_threshold: int = Field(
        default=0,
        ge=0,
        description="entries a group may be behind once the oldest waited longer than the grace "
        "period",
    )
    lag_redis_grace_seconds: float = Field(
        default=60.0,
        ge=0,
        description="how long an entry may wait unread or unacknowledged; also how recently a "
        "consumer must have been seen to count as alive",
    )
    lag_kafka_threshold: int = Field(
        default=0,
        ge=0,
        description="messages a group may be behind once the oldest waited longer than the grace "
        "period",
    )
    lag_kafka_grace_seconds: float = Field(
        default=60.0, ge=0, description="how long a message may wait uncommitted"
    )
    latency_e2e_threshold_seconds: float = Field(
        default=5.0,
        gt=0,
        description="highest p99 of `created_at` to first receipt per sink and group, and the "
        "oldest age a late event (published, not received yet) may reach",
    )
    latency_e2e_grace_seconds: float = Field(
        default=0.0, ge=0, description="events younger than this are left out"
    )
    schema_conformance_threshold: float = Field(
        default=1.0, ge=0, le=1, description="lowest share of valid receipts per sink and group"
    )
    schema_conformance_dlq_threshold: int = Field(
        default=0, ge=0, description="dead letters allowed per DLQ within the window"
    )
    schema_conformance_grace_seconds: float = Field(
        default=0.0, ge=0, description="receipts younger than this are not judged"
    )
    smoke_events: int = Field(
        default=10, ge=1, le=10000, description="canaries `smoke` emits (`--events` overrides)"
    )
    smoke_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="how long `smoke` waits for its canaries (`--timeout` overrides)",
    )
    smoke_aggregate_type: str = Field(
        default="canary",
        description="aggregatetype of the canaries: they flow through `<prefix>canary`",
    )

    @field_validator("verify_groups", mode="before")
    @classmethod
    def _split_groups(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        if isinstance(value, list | tuple):
            pairs = []
            for item in value:
                sink, sep, group = str(item).partition(":")
                if not sep or sink not in SINK_NAMES:
                    raise ValueError(
                        f"{item!r} is not sink:group (sink is one of {', '.join(SINK_NAMES)})"
                    )
                pairs.append(f"{sink}:{validate_group_name(group)}")
            if len(set(pairs)) != len(pairs):
                raise ValueError("lists a sink:group pair twice")
            return tuple(pairs)
        return value

    @field_validator("smoke_aggregate_type")
    @classmethod
    def _check_canary_type(cls, value: str) -> str:
        try:
            destination("", value)
        except InvalidDestination as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("*")
    @classmethod
    def _usable_number(cls, value: Any) -> Any:
        # Numbers reach PostgreSQL (bigint), Redis and Kafka, seconds become milliseconds: a
        # value past these bounds loads, then fails there, late (a relay task dies on it).
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ValueError(f"is out of range (at most {2**63 - 1})")
        if isinstance(value, float) and abs(value) > MAX_FLOAT:
            raise ValueError(f"is out of range (at most {MAX_FLOAT:g})")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// DSN")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr) -> SecretStr:
        check_redis_url(value.get_secret_value())
        if weakened := _weakened_redis_tls(value.get_secret_value()):
            raise ValueError(
                f"its query sets {weakened}, which would turn TLS verification off; flowproof "
                "always verifies the certificate and the host name (see docs/security.md)"
            )
        return value

    @field_validator("relay_sink_timeout_seconds")
    @classmethod
    def _check_sink_timeout(cls, value: float, info: ValidationInfo) -> float:
        # WAIT runs inside the publish's time limit: a longer WAIT would always time out first.
        wait = info.data.get("relay_redis_replica_timeout_seconds")
        if wait is not None and wait >= value:
            raise ValueError(
                f"must be above FLOWPROOF_RELAY_REDIS_REPLICA_TIMEOUT_SECONDS ({wait:g})"
            )
        return value

    @field_validator("redis_ssl_cafile")
    @classmethod
    def _check_redis_cafile(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        url = info.data.get("redis_url")
        if value is not None and url and not uses_tls(url.get_secret_value()):
            raise ValueError(
                "is set but FLOWPROOF_REDIS_URL is not a rediss://, rediss+sentinel:// or "
                "rediss+cluster:// URL"
            )
        return _readable_file(value)

    @field_validator("redis_ssl_certfile")
    @classmethod
    def _check_redis_certfile(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        url = info.data.get("redis_url")
        if value is not None and url and not uses_tls(url.get_secret_value()):
            raise ValueError("is set but FLOWPROOF_REDIS_URL uses no TLS (rediss://...)")
        return _readable_file(value)

    @field_validator("redis_ssl_keyfile", "kafka_ssl_keyfile", "schema_registry_ssl_keyfile")
    @classmethod
    def _check_keyfile(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # Each `<x>_ssl_keyfile` is the key of `<x>_ssl_certfile`, which is validated before it.
        assert info.field_name is not None
        return _client_key(value, info, info.field_name.replace("_keyfile", "_certfile"))

    @field_validator("kafka_ssl_certfile")
    @classmethod
    def _check_kafka_certfile(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        protocol = info.data.get("kafka_security_protocol")
        if value is not None and protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
            raise ValueError(f"is set but FLOWPROOF_KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS")
        return _readable_file(value)

    @field_validator("schema_registry_url")
    @classmethod
    def _check_registry_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = value.get_secret_value()
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return SecretStr(url.rstrip("/"))

    @field_validator("schema_registry_password")
    @classmethod
    def _check_registry_password(
        cls, value: SecretStr | None, info: ValidationInfo
    ) -> SecretStr | None:
        if value is not None and info.data.get("schema_registry_username") is None:
            raise ValueError("is set but FLOWPROOF_SCHEMA_REGISTRY_USERNAME is not")
        return value

    @field_validator("schema_registry_ssl_cafile", "schema_registry_ssl_certfile")
    @classmethod
    def _check_registry_tls_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        url = info.data.get("schema_registry_url")
        if value is not None and not (url and url.get_secret_value().startswith("https://")):
            raise ValueError("is set but FLOWPROOF_SCHEMA_REGISTRY_URL is not an https:// URL")
        return _readable_file(value)

    @field_validator("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
    @classmethod
    def _check_sasl(cls, value: Any, info: ValidationInfo) -> Any:
        # A SASL protocol without its credentials would fail only at the first connection, with
        # the broker's words; say which variable is missing instead.
        protocol = info.data.get("kafka_security_protocol")
        if value is None and protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
            raise ValueError(f"is required with FLOWPROOF_KAFKA_SECURITY_PROTOCOL={protocol}")
        return value

    @field_validator("kafka_ssl_cafile")
    @classmethod
    def _check_kafka_cafile(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        protocol = info.data.get("kafka_security_protocol")
        if value is not None and protocol in ("PLAINTEXT", "SASL_PLAINTEXT"):
            raise ValueError(f"is set but FLOWPROOF_KAFKA_SECURITY_PROTOCOL={protocol} uses no TLS")
        return _readable_file(value)

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("needs at least one host:port")
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port")
        return ",".join(servers)

    @field_validator("sinks", mode="before")
    @classmethod
    def _split_sinks(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [s.strip().lower() for s in value.split(",") if s.strip()]
        if isinstance(value, list | tuple):
            unknown = [s for s in value if s not in SINK_NAMES]
            if unknown:
                raise ValueError(f"unknown sink {unknown[0]!r} (expected {', '.join(SINK_NAMES)})")
            if not value:
                raise ValueError(f"needs at least one sink ({', '.join(SINK_NAMES)})")
            if len(set(value)) != len(value):
                raise ValueError("lists a sink twice")
            return tuple(value)
        return value

    @field_validator("outbox_table")
    @classmethod
    def _check_table(cls, value: str) -> str:
        # Index and trigger names are derived from it and must fit PostgreSQL's 63 characters.
        if len(value) > 40:
            raise ValueError("must be at most 40 characters")
        return validate_sql_identifier(value)

    @field_validator("consumer_group")
    @classmethod
    def _check_group(cls, value: str) -> str:
        return validate_group_name(value)

    @field_validator("stream_prefix", "topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return validate_name_prefix(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if _toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_toml_path))
        return tuple(sources)

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, including passwords inside DSNs."""
        values: list[str] = []
        for name in SECRET_FIELDS:
            secret = getattr(self, name)
            if isinstance(secret, SecretStr):
                value = secret.get_secret_value()
                if name not in PLAIN_URL_FIELDS:
                    values.append(value)
                    continue
                # A service URL is kept readable in errors (which registry?): only its password,
                # raw and URL-decoded, is secret.
                password = _password_of(value)
                if password:
                    values += [password, unquote(password)]
        return values


SECRET_FIELDS = frozenset(
    {
        "database_url",
        "redis_url",
        "kafka_sasl_password",
        "schema_registry_url",
        "schema_registry_password",
    }
)


# URLs named in error messages (which server could not be reached); their password is secret.
PLAIN_URL_FIELDS = frozenset({"schema_registry_url"})


def _readable_file(path: Path | None) -> Path | None:
    if path is not None and not (path.is_file() and os.access(path, os.R_OK)):
        raise ValueError("is not a readable file")
    return path


def _client_key(key: Path | None, info: ValidationInfo, cert_field: str) -> Path | None:
    """A client certificate's key file: the certificate and its key both given or neither."""
    if cert_field in info.data:  # else the certificate's own error says what is wrong
        cert = info.data[cert_field]
        if cert is not None and key is None:
            raise ValueError(f"is required with {env_name(cert_field)}")
        if key is not None and cert is None:
            raise ValueError(f"is set without {env_name(cert_field)}")
        if key is not None and cert is not None:
            _readable_file(key)
            _check_key_pair(cert, key, env_name(cert_field))
    return _readable_file(key)


def _encrypted_key() -> bytes:
    # ssl's password callback: OpenSSL would otherwise ask for the passphrase on the terminal.
    raise ValueError("is an encrypted key; give the key unencrypted (PEM), kept as a secret file")


def _check_key_pair(cert: Path, key: Path, cert_name: str) -> None:
    """ValueError unless `key` is the unencrypted private key of the certificate `cert`."""
    try:
        ssl.create_default_context().load_cert_chain(cert, key, password=_encrypted_key)
    except ssl.SSLError as exc:
        raise ValueError(
            f"is not the private key of {cert_name}, or one of the two is not PEM ({exc.reason})"
        ) from None


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return f"{ENV_PREFIX}{field.upper()}"


def known_env_names() -> set[str]:
    names = {env_name(field) for field in Settings.model_fields}
    return names | {name + FILE_SUFFIX for name in names}


def unknown_env_report(environ: Mapping[str, str]) -> list[str]:
    """Describe each FLOWPROOF_* variable that no setting reads, with the closest known name."""
    known = known_env_names()
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        closest = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.5)
        hint = f"; did you mean {closest[0]}?" if closest else ""
        problems.append(f"{name} is not a flowproof setting{hint}")
    return problems


def _read_secret_files(environ: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for field in Settings.model_fields:
        file_var = env_name(field) + FILE_SUFFIX
        path = environ.get(file_var)
        if path is None:
            continue
        if env_name(field) in environ:
            raise ConfigError(f"{env_name(field)} and {file_var} are both set; set only one")
        try:
            # Secret files conventionally end with a newline that is not part of the value.
            values[field] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"{file_var}: cannot read {path!r}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file_var}: {path!r} is not UTF-8 text") from None
    return values


def _describe(error: Mapping[str, Any], from_file: set[str]) -> str:
    field = str(error["loc"][0]) if error["loc"] else "?"
    name = env_name(field) + (FILE_SUFFIX if field in from_file else "")
    message = str(error["msg"]).removeprefix("Value error, ")
    unset = error.get("input") is None  # e.g. a setting another one requires
    if field in SECRET_FIELDS or error["type"] in ("extra_forbidden", "missing") or unset:
        return f"{name}: {message}"
    return f"{name}={error.get('input')!r}: {message}"


def load_settings(config_file: Path | None = None) -> Settings:
    """Build the settings from the environment (and TOML file), or raise ConfigError."""
    global _toml_path  # noqa: PLW0603 - see the comment at its definition
    env = os.environ
    unknown = unknown_env_report(env)
    allow_unknown = env.get(env_name("allow_unknown_env"), "").lower() in ("1", "true", "yes")
    if unknown and not allow_unknown:
        raise ConfigError(
            "; ".join(unknown) + f" (set {env_name('allow_unknown_env')}=true to only warn)"
        )
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"--config: no such file {str(config_file)!r}")
    from_files = _read_secret_files(env)
    _toml_path = config_file
    try:
        settings = Settings(**from_files)  # type: ignore[arg-type]
    except ValidationError as exc:
        described = [_describe(err, set(from_files)) for err in exc.errors()]
        raise ConfigError("; ".join(described)) from None
    finally:
        _toml_path = None
    for secret in settings.secret_values():
        register_secret(secret)
        password = _password_of(secret)
        register_secret(password)
        # A driver may quote the password as it uses it: decoded from the URL (%40 -> @).
        register_secret(unquote(password) if password else None)
    for problem in unknown:
        get_logger(__name__).warning("config.unknown_variable", problem=problem)
    return settings


def _password_of(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None
