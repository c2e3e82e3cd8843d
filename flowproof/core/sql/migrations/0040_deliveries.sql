-- Where each event went: one row per event and sink each time the sink acknowledged it (a
-- republished event has two). Written by the relay with COPY, in the transaction that marks the
-- batch published, and never updated. The verifier judges loss by these positions: an event is
-- lost for a consumer group when the group has gone past its position without a receipt, or when
-- its entry is no longer in the sink; it is late while the group has not reached it.
CREATE TABLE {{outbox}}_deliveries (
    seq             bigint      NOT NULL,     -- the outbox row
    sink            text        NOT NULL,
    destination     text        NOT NULL,     -- stream or topic
    partition       integer,                  -- Kafka partition; NULL for Redis
    position        text        NOT NULL,     -- stream entry id, or partition:offset
    position_order  bigint GENERATED ALWAYS AS (flowproof_position_order(sink, position)) STORED,
    created_at      timestamptz,              -- the event's, copied: see the partial index
    published_at    timestamptz NOT NULL DEFAULT now()
);

-- Where the events the verifier could not find a receipt for went.
CREATE INDEX {{outbox}}_deliveries_seq ON {{outbox}}_deliveries (seq, sink);
-- The verifier's window covers events created or published within it. Those created up to a
-- minute before it are read from the outbox by created_at; these are the rest: events published
-- more than a minute after they were created (a backlog replayed after an outage), few.
CREATE INDEX {{outbox}}_deliveries_published_late ON {{outbox}}_deliveries (sink, published_at)
    WHERE published_at - created_at > interval '1 minute';
-- Pruning by age: the rows are appended in published_at order, so a BRIN index is enough.
CREATE INDEX {{outbox}}_deliveries_published ON {{outbox}}_deliveries
    USING brin (published_at);

-- The sinks this outbox is published to, whichever relay publishes them: a relay registers its
-- own when it starts. Pruning keeps every row that one of these has neither published nor
-- parked, so a relay running with one sink never deletes what another sink still owes. A sink
-- taken out of service for good is removed with `flowproof db sinks --remove NAME`.
CREATE TABLE {{outbox}}_sinks (
    sink            text        PRIMARY KEY,
    registered_at   timestamptz NOT NULL DEFAULT now()
);
-- Rows already in the outbox were published by the sinks that have a published mark there.
INSERT INTO {{outbox}}_sinks (sink)
SELECT s FROM (VALUES ('redis'), ('kafka')) AS v (s)
WHERE (s = 'redis' AND EXISTS (SELECT 1 FROM {{outbox}} WHERE redis_published_at IS NOT NULL))
   OR (s = 'kafka' AND EXISTS (SELECT 1 FROM {{outbox}} WHERE kafka_published_at IS NOT NULL));

-- A dead letter the sink would not take at all (refused, or too large even without the original
-- bytes): the receipt still says why the message was given up on, and this says the dead letter
-- itself is missing. schema.conformance reports these.
ALTER TABLE flowproof_receipts ADD COLUMN dead_letter_error text;
