"""The relay's count of the produce errors aiokafka retries by itself (publisher.kafka_retries):
what it counts from aiokafka's sender warnings, with bounded label values, and that it never
drops a log record. Its effect on a real cluster is in tests/test_relay_kafka_cluster.py."""

from __future__ import annotations

import logging

from aiokafka.errors import NotEnoughReplicasError, RequestTimedOutError
from prometheus_client import REGISTRY

from flowproof.publisher.kafka_retries import (
    SENDER_LOGGER,
    ProduceRetryCounter,
    count_produce_retries,
    error_name,
)


def retries(error: str) -> float:
    value = REGISTRY.get_sample_value(
        "flowproof_relay_kafka_produce_retries_total", {"error": error}
    )
    return value or 0.0


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(SENDER_LOGGER, logging.WARNING, __file__, 1, msg, args, None)


def test_error_names_are_class_names_or_other() -> None:
    assert error_name(NotEnoughReplicasError) == "NotEnoughReplicasError"
    assert error_name(RequestTimedOutError()) == "RequestTimedOutError"
    assert error_name("broker says: anything at all") == "other"
    assert error_name(None) == "other"


def test_the_sender_warnings_are_counted_and_kept() -> None:
    counter = ProduceRetryCounter()
    before = retries("NotEnoughReplicasError"), retries("RequestTimedOutError")
    tp = "TopicPartition(topic='t', partition=0)"
    retrying = "Got error produce response on topic-partition %s, retrying. Error: %s"
    assert counter.filter(record(retrying, tp, NotEnoughReplicasError))
    assert counter.filter(record("Got error produce response: %s", RequestTimedOutError()))
    assert counter.filter(record("Something else: %s", NotEnoughReplicasError))  # not counted
    after = retries("NotEnoughReplicasError"), retries("RequestTimedOutError")
    assert after == (before[0] + 1, before[1] + 1)


def test_the_counter_is_installed_once() -> None:
    count_produce_retries()
    count_produce_retries()
    filters = logging.getLogger(SENDER_LOGGER).filters
    assert sum(isinstance(f, ProduceRetryCounter) for f in filters) == 1
