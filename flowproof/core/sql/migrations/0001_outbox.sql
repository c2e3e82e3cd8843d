-- The transactional outbox. The event columns follow Debezium's outbox convention (id,
-- aggregatetype, aggregateid, type, payload) so existing outbox producers fit; the rest is the
-- relay's state, kept per sink so that a sink that is down never holds back the other.
CREATE TABLE {{outbox}} (
    -- Insertion order; the relay publishes the events of one aggregate in this order.
    seq                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                  uuid        NOT NULL DEFAULT gen_random_uuid(),
    aggregatetype       text        NOT NULL,
    aggregateid         text        NOT NULL,
    type                text        NOT NULL,
    payload             jsonb       NOT NULL,
    headers             jsonb,
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Events of one aggregate share a slot; one relay at a time publishes a slot to a sink.
    slot                smallint    NOT NULL GENERATED ALWAYS AS (
                            (hashtextextended(aggregatetype || '/' || aggregateid, 0) & 63)::smallint
                        ) STORED,
    -- Set when the sink acknowledged the event.
    redis_published_at  timestamptz,
    kafka_published_at  timestamptz,
    -- Set when the event can never be published to that sink as it is (why, and since when).
    redis_parked_reason text,
    redis_parked_at     timestamptz,
    kafka_parked_reason text,
    kafka_parked_at     timestamptz,
    CONSTRAINT {{outbox}}_id_key UNIQUE (id),
    CONSTRAINT {{outbox}}_headers_object CHECK (headers IS NULL OR jsonb_typeof(headers) = 'object')
);

-- What each sink still has to publish, in order: only pending rows are in these. The claim walks
-- one in seq order and keeps the rows of the slots its relay owns; an index on (slot, seq) would
-- make it read up to a batch per owned slot (64 x batch) and sort them on every claim.
CREATE INDEX {{outbox}}_redis_pending ON {{outbox}} (seq) INCLUDE (slot)
    WHERE redis_published_at IS NULL AND redis_parked_reason IS NULL;
CREATE INDEX {{outbox}}_kafka_pending ON {{outbox}} (seq) INCLUDE (slot)
    WHERE kafka_published_at IS NULL AND kafka_parked_reason IS NULL;
-- Parked rows hold back the later events of their aggregate; few rows, looked up by aggregate.
CREATE INDEX {{outbox}}_parked ON {{outbox}} (aggregatetype, aggregateid, seq)
    WHERE redis_parked_reason IS NOT NULL OR kafka_parked_reason IS NOT NULL;
-- Windows of the verifier and the pruning of delivered rows.
CREATE INDEX {{outbox}}_created_at ON {{outbox}} (created_at);

-- Wake relays on commit. Per statement, not per row: one NOTIFY is enough to wake a relay, and
-- PostgreSQL folds identical notifications of one transaction into one.
CREATE FUNCTION {{outbox}}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{{outbox}}', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER {{outbox}}_notify AFTER INSERT ON {{outbox}}
    FOR EACH STATEMENT EXECUTE FUNCTION {{outbox}}_notify();
