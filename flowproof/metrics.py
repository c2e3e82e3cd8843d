"""Every Prometheus metric of flowproof, defined once (DESIGN.md, "Metrics").

One module so that a name is registered exactly once per process, whichever components the
process runs (tests and `flowproof demo` run several). Label values are bounded: sinks, groups,
streams, topics, partitions, reasons and check names, never event or aggregate ids.
Hot paths update these once per batch, not once per event.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# 1 ms to 60 s: the span from a healthy local pipeline to a badly lagging one.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# --- components and outbox --------------------------------------------------------------------
COMPONENT_UP = Gauge(
    "flowproof_component_up", "1 when the component answered, 0 when not.", ["component"]
)
OUTBOX_PENDING = Gauge(
    "flowproof_outbox_pending_events", "Outbox events not yet published to the sink.", ["sink"]
)
OUTBOX_OLDEST_PENDING_AGE = Gauge(
    "flowproof_outbox_oldest_pending_age_seconds",
    "Age of the oldest outbox event not yet published to the sink.",
    ["sink"],
)

# --- relay ------------------------------------------------------------------------------------
RELAY_PUBLISHED = Counter(
    "flowproof_relay_published_total", "Events the sink acknowledged.", ["sink"]
)
RELAY_PUBLISH_FAILURES = Counter(
    "flowproof_relay_publish_failures_total",
    "Publish attempts that failed (the events are retried).",
    ["sink"],
)
RELAY_PARKED = Counter(
    "flowproof_relay_parked_total", "Events parked because they can never be published.", ["reason"]
)

# --- consumers --------------------------------------------------------------------------------
CONSUMER_RECEIVED = Counter(
    "flowproof_consumer_received_total", "Messages read, valid or not.", ["sink", "group"]
)
CONSUMER_INVALID = Counter(
    "flowproof_consumer_invalid_total",
    "Messages that failed decoding or validation, by reason.",
    ["sink", "group", "reason"],
)
E2E_LATENCY = Histogram(
    "flowproof_e2e_latency_seconds",
    "Time from the event's created_at to its receipt by the consumer.",
    ["sink", "group"],
    buckets=LATENCY_BUCKETS,
)

# --- verifier ---------------------------------------------------------------------------------
REDIS_GROUP_LAG = Gauge(
    "flowproof_redis_group_lag_entries",
    "Stream entries the group has not read yet.",
    ["stream", "group"],
)
REDIS_GROUP_PENDING = Gauge(
    "flowproof_redis_group_pending_entries",
    "Entries read by the group but not acknowledged.",
    ["stream", "group"],
)
KAFKA_CONSUMER_LAG = Gauge(
    "flowproof_kafka_consumer_lag_messages",
    "End offset minus the group's committed offset.",
    ["topic", "partition", "group"],
)
VERIFY_LOST = Gauge(
    "flowproof_verify_lost_events",
    "Events published longer ago than the grace period with no receipt.",
    ["sink", "group"],
)
VERIFY_DUPLICATES = Gauge(
    "flowproof_verify_duplicate_events", "Events received more than once.", ["sink", "group"]
)
VERIFY_OUT_OF_ORDER = Gauge(
    "flowproof_verify_out_of_order_events",
    "Events first received before an earlier event of their aggregate.",
    ["sink", "group"],
)
VERIFY_CHECK_PASSED = Gauge(
    "flowproof_verify_check_passed", "1 when the check passed at the last evaluation.", ["check"]
)
