"""Every Prometheus metric of flowproof, defined once (docs/design.md, "Metrics").

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
    "flowproof_relay_parked_total",
    "Events parked because they can never be published (one per event and sink).",
    ["reason"],
)
# Beyond docs/design.md's minimum: what an operator needs to see why a sink is not moving.
OUTBOX_PARKED = Gauge(
    "flowproof_outbox_parked_events", "Outbox events parked for the sink right now.", ["sink"]
)
OUTBOX_WAITING_BEHIND_PARKED = Gauge(
    "flowproof_outbox_waiting_behind_parked_events",
    "Pending events held back because an earlier event of their aggregate is parked.",
    ["sink"],
)
RELAY_OWNED_SLOTS = Gauge(
    "flowproof_relay_owned_slots", "Aggregate slots (of 64) this relay publishes.", ["sink"]
)
RELAY_REDIS_REPLICA_SHORTFALLS = Counter(
    "flowproof_relay_redis_replica_shortfalls_total",
    "Redis batches fewer replicas confirmed (WAIT) than FLOWPROOF_RELAY_REDIS_MIN_REPLICAS asks: "
    "not marked published, published again.",
)
RELAY_KAFKA_PRODUCE_RETRIES = Counter(
    "flowproof_relay_kafka_produce_retries_total",
    "Produce requests a Kafka broker refused with a retriable error, sent again by the producer "
    "(NotEnoughReplicasError: fewer replicas in sync than min.insync.replicas); the events stay "
    "unmarked until acknowledged.",
    ["error"],
)
RELAY_PRUNED = Counter(
    "flowproof_relay_pruned_total",
    "Outbox rows dropped with their time partition, past the retention, once every sink "
    "published them.",
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
# Beyond docs/design.md's minimum: what operators need to see a consumer struggle.
CONSUMER_DEAD_LETTER_UNWRITABLE = Counter(
    "flowproof_consumer_dead_letter_unwritable_total",
    "Dead letters the dead-letter stream/topic refused for good (the receipt says why).",
    ["sink", "group"],
)
CONSUMER_DEAD_LETTERED = Counter(
    "flowproof_consumer_dead_lettered_total",
    "Messages written to the dead-letter stream/topic, by reason.",
    ["sink", "group", "reason"],
)
CONSUMER_HANDLER_FAILURES = Counter(
    "flowproof_consumer_handler_failures_total",
    "Handler calls that raised (each attempt counts; the last one dead-letters).",
    ["sink", "group"],
)
CONSUMER_RECEIPTS_WRITTEN = Counter(
    "flowproof_consumer_receipts_written_total",
    "Receipts written to PostgreSQL (fewer than messages when sampling).",
    ["sink", "group"],
)
CONSUMER_REDIS_CLAIMED = Counter(
    "flowproof_consumer_redis_claimed_total",
    "Pending Redis entries taken over from another consumer (XAUTOCLAIM).",
    ["stream", "group"],
)
CONSUMER_ERRORS = Counter(
    "flowproof_consumer_errors_total",
    "Failures of the consumer's own work, retried: receipts, dead letters, acks, commits, reads.",
    ["sink", "group", "operation"],
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
# Beyond docs/design.md's minimum: the evidence behind each check, per sink, group, stream or topic.
CONSUMER_GROUP_STATUS = Gauge(
    "flowproof_consumer_group_status",
    "Burrow-style status of the group: 1 for the current one (OK, WARN, STALL, STOP, REWIND, "
    "UNKNOWN), 0 for the others.",
    ["sink", "group", "status"],
)
REDIS_GROUP_LAG_SECONDS = Gauge(
    "flowproof_redis_group_lag_seconds",
    "Age of the oldest stream entry the group has not read yet (from its entry id).",
    ["stream", "group"],
)
REDIS_GROUP_OLDEST_PENDING_IDLE = Gauge(
    "flowproof_redis_group_oldest_pending_idle_seconds",
    "Time since the oldest unacknowledged entry of the group was delivered.",
    ["stream", "group"],
)
KAFKA_CONSUMER_LAG_SECONDS = Gauge(
    "flowproof_kafka_consumer_lag_seconds",
    "Age of the record at the group's committed offset (its timestamp), 0 when caught up.",
    ["topic", "partition", "group"],
)
VERIFY_UNEXPECTED = Gauge(
    "flowproof_verify_unexpected_events",
    "Events received that the outbox never had.",
    ["sink", "group"],
)
VERIFY_LATE = Gauge(
    "flowproof_verify_late_events",
    "Events published, not received yet, that the group has not reached (or holds unacknowledged).",
    ["sink", "group"],
)
VERIFY_OLDEST_LATE_AGE = Gauge(
    "flowproof_verify_oldest_late_age_seconds",
    "Seconds since the oldest late event was published; 0 when none is late.",
    ["sink", "group"],
)
VERIFY_MISROUTED = Gauge(
    "flowproof_verify_misrouted_events",
    "Events received from another stream or topic than their destination.",
    ["sink", "group"],
)
VERIFY_E2E_LATENCY = Gauge(
    "flowproof_verify_e2e_latency_seconds",
    "Percentiles of created_at to first receipt over the verifier's window.",
    ["sink", "group", "quantile"],
)
VERIFY_VALID_RATIO = Gauge(
    "flowproof_verify_valid_receipt_ratio",
    "Share of receipts in the window that were valid.",
    ["sink", "group"],
)
VERIFY_INVALID = Gauge(
    "flowproof_verify_invalid_receipts",
    "Invalid receipts in the window, by reason.",
    ["sink", "group", "reason"],
)
DLQ_DEPTH = Gauge(
    "flowproof_dlq_depth_messages",
    "Messages in the dead-letter stream or topic.",
    ["sink", "dlq"],
)
DLQ_WINDOW = Gauge(
    "flowproof_dlq_window_messages",
    "Messages that reached the dead-letter stream or topic within the verifier's window.",
    ["sink", "dlq"],
)
VERIFY_EVALUATION_SECONDS = Gauge(
    "flowproof_verify_evaluation_duration_seconds", "How long the last evaluation took."
)
VERIFY_LAST_EVALUATION = Gauge(
    "flowproof_verify_last_evaluation_timestamp_seconds", "When the last evaluation finished."
)
VERIFY_READY = Gauge("flowproof_verify_ready", "1 when /readyz answers 200, 0 when not.")
VERIFY_READ_ERRORS = Counter(
    "flowproof_verify_read_errors_total",
    "Reads of a component that failed after it answered (the checks fed by it failed).",
    ["part"],
)
