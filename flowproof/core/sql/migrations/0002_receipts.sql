-- Every delivery a consumer saw, valid or not, first time or again. The verifier computes lost,
-- duplicated, unexpected and reordered events from these rows and the outbox.
CREATE TABLE flowproof_receipts (
    receipt_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid,                     -- NULL when the message was too broken to tell
    sink            text        NOT NULL CHECK (sink IN ('redis', 'kafka')),
    consumer_group  text        NOT NULL,
    consumer        text        NOT NULL,     -- the consumer instance's name
    source          text        NOT NULL,     -- stream or topic
    position        text        NOT NULL,     -- stream entry id, or partition:offset
    event_type      text,
    aggregatetype   text,
    aggregateid     text,
    schema_id       bigint,
    created_at      timestamptz,              -- the event's created_at, from its envelope
    received_at     timestamptz NOT NULL,     -- when the consumer read the message
    valid           boolean     NOT NULL,
    reason          text,                     -- NULL when valid: bad_magic, unknown_schema, ...
    error           text,
    delivery_count  integer     NOT NULL DEFAULT 1,
    CONSTRAINT flowproof_receipts_reason CHECK (valid = (reason IS NULL))
);

CREATE INDEX flowproof_receipts_event ON flowproof_receipts (event_id, sink, consumer_group);
CREATE INDEX flowproof_receipts_received_at ON flowproof_receipts (received_at);
