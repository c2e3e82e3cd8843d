-- What the verifier reads on every evaluation, kept cheap on large tables.

-- The order of a delivery position within one stream or partition, as one bigint: a Redis
-- entry id "ms-seq" is ms * 2^20 + seq; a Kafka position "partition:offset" is
-- partition * 2^48 + offset (the verifier compares Kafka positions only within a partition).
-- NULL when malformed or out of range (a seq of 2^20 or more, a millisecond time after 2223,
-- partition 10000 or more, an offset of 2^48 or more): such deliveries are not ordered.
-- It never raises, so it can back a generated column that consumers' inserts go through.
CREATE FUNCTION flowproof_position_order(delivery_sink text, delivery_position text)
    RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN delivery_sink = 'redis'
             AND delivery_position ~ '^[0-7]?[0-9]{1,12}-[0-9]{1,7}$'
             AND split_part(delivery_position, '-', 2)::integer < 1048576
            THEN split_part(delivery_position, '-', 1)::bigint * 1048576
                 + split_part(delivery_position, '-', 2)::bigint
        WHEN delivery_sink = 'kafka'
             AND delivery_position ~ '^[0-9]{1,4}:[0-9]{1,15}$'
             AND split_part(delivery_position, ':', 2)::bigint < 281474976710656
            THEN split_part(delivery_position, ':', 1)::bigint * 281474976710656
                 + split_part(delivery_position, ':', 2)::bigint
    END
$$;

-- Parsed once when the receipt is written, not on every evaluation.
ALTER TABLE flowproof_receipts
    ADD COLUMN position_order bigint
        GENERATED ALWAYS AS (flowproof_position_order(sink, position)) STORED;

-- The receipts of one sink and consumer group in a time window (flow, latency, conformance).
CREATE INDEX flowproof_receipts_sink_group_received
    ON flowproof_receipts (sink, consumer_group, received_at);

-- Age of the oldest pending event per sink, and how many waited longer than the grace period,
-- without visiting every pending row.
CREATE INDEX {{outbox}}_redis_pending_age ON {{outbox}} (created_at)
    WHERE redis_published_at IS NULL AND redis_parked_reason IS NULL;
CREATE INDEX {{outbox}}_kafka_pending_age ON {{outbox}} (created_at)
    WHERE kafka_published_at IS NULL AND kafka_parked_reason IS NULL;
