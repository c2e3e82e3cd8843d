"""Counting the produce errors the Kafka producer retries by itself.

An idempotent aiokafka producer never gives up on a batch the broker refused with a retriable
error: it sends it again until the broker takes it. The relay only sees its own bound
(`relay_sink_timeout_seconds`) pass, counts a publish failure, marks nothing and tries again
later. Why the broker refused (most often `NotEnoughReplicasError`: fewer replicas in sync than
the topic's `min.insync.replicas`, the setting that keeps an acknowledged record on several
brokers) is only in the warning aiokafka logs on each retry; a filter on its logger counts those
in `flowproof_relay_kafka_produce_retries_total{error}`, so an operator sees it in the metrics,
not only in the log (the warning itself still goes through flowproof's logging).
"""

from __future__ import annotations

import logging

from flowproof.core.metrics import RELAY_KAFKA_PRODUCE_RETRIES

# aiokafka's sender logs these (its messages are stable: aiokafka/producer/sender.py).
SENDER_LOGGER = "aiokafka.producer.sender"
_RETRYING = "Got error produce response"


def error_name(error: object) -> str:
    """A bounded label value: the error class's name (aiokafka logs the class or an instance)."""
    if isinstance(error, type):
        return error.__name__
    if isinstance(error, BaseException):
        return type(error).__name__
    return "other"  # a broker's free-text message: not a label value


class ProduceRetryCounter(logging.Filter):
    """Counts each retried produce error; never drops the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_RETRYING):
            args = record.args if isinstance(record.args, tuple) else ()
            RELAY_KAFKA_PRODUCE_RETRIES.labels(error_name(args[-1] if args else None)).inc()
        return True


def count_produce_retries() -> None:
    """Install the counter on aiokafka's sender logger (once per process)."""
    logger = logging.getLogger(SENDER_LOGGER)
    if not any(isinstance(f, ProduceRetryCounter) for f in logger.filters):
        logger.addFilter(ProduceRetryCounter())
