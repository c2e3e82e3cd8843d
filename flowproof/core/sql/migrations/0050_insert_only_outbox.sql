-- The outbox becomes insert-only: the relay never updates its rows. Instead of a published mark
-- per row and sink (a new row version, its index entries and WAL for each), each sink keeps a
-- cursor per slot, moved once per batch, in the transaction that appends the batch's delivery
-- records; the rows a sink could not publish live in {{outbox}}_parked.
--
-- The cursor is a snapshot, as in PgQ's batches: a row is done for a sink once its inserting
-- transaction (txid) is visible in the slot's snapshot. A batch is the rows whose transaction is
-- visible in a newer snapshot and was not in the older one, so a transaction that commits after
-- a later row was published is never skipped: it was in progress in the older snapshot and is
-- visible in a newer one. A round (snap, next_snap] larger than a batch is published in seq
-- order, next_seq saying how far; see {{outbox}}_claim (migration 0060).

-- The inserting transaction. Rows already here keep NULL: they were written before this
-- migration, and what the sinks still owe of them is queued in {{outbox}}_parked below.
ALTER TABLE {{outbox}} ADD COLUMN txid xid8;
ALTER TABLE {{outbox}} ALTER COLUMN txid SET DEFAULT pg_current_xact_id();
-- A round's rows, found by their transaction; seq and slot for an index-only scan.
CREATE INDEX {{outbox}}_txid ON {{outbox}} (txid) INCLUDE (slot, seq);

-- True when a sink's cursor for the row's slot has passed the row (published, parked, held or
-- queued: see {{outbox}}_parked for the last three). Rows written before migration 0050 (txid
-- NULL) have been passed: what was still owed of them is in {{outbox}}_parked.
CREATE FUNCTION flowproof_cursor_passed(
    row_txid xid8, row_seq bigint, snap pg_snapshot, next_snap pg_snapshot, next_seq bigint
) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT row_txid IS NULL
        OR pg_visible_in_snapshot(row_txid, snap)
        OR coalesce(row_seq <= next_seq AND pg_visible_in_snapshot(row_txid, next_snap), false)
$$;

-- Where each sink stands, per slot. Only the relay that holds a slot's lock moves its cursor.
CREATE TABLE {{outbox}}_cursors (
    sink        text        NOT NULL,
    slot        smallint    NOT NULL,
    -- Every row whose transaction is visible in this snapshot is done.
    snap        pg_snapshot NOT NULL,
    -- The round in progress (NULL: none): the rows visible in next_snap and not in snap, whose
    -- seqs lie in (next_seq, last_seq], are still to do; those up to next_seq are done.
    next_snap   pg_snapshot,
    next_seq    bigint      NOT NULL DEFAULT 0,
    last_seq    bigint,
    moved_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, slot)
);
-- Rows committed from now on are new for every sink: this statement's snapshot is taken after
-- the ALTER TABLE above locked out every writer of the outbox.
INSERT INTO {{outbox}}_cursors (sink, slot, snap)
SELECT s.sink, n::smallint, pg_current_snapshot()
FROM (VALUES ('redis'), ('kafka')) AS s (sink), generate_series(0, 63) AS n;

-- The index of parked outbox rows (0001) gives its name to their table; it still serves the
-- move below, and goes with the parked columns.
ALTER INDEX {{outbox}}_parked RENAME TO {{outbox}}_parked_0001;

-- The rows a sink's cursor passed without publishing them, per sink:
--   parked  it cannot be published as it is (reason, error: `flowproof parked list`);
--   held    an earlier row of its aggregate is parked or held: it waits behind it;
--   queued  to be published before any later row of its aggregate: a parked row given another
--           try (`flowproof parked retry`, with the rows held behind it), a row whose aggregate
--           had queued rows when the cursor passed it, or a row still owed at this migration.
-- Published queued rows are deleted; the relay only appends to and deletes from this table.
CREATE TABLE {{outbox}}_parked (
    sink            text        NOT NULL,
    seq             bigint      NOT NULL,
    slot            smallint    NOT NULL,
    aggregatetype   text        NOT NULL,
    aggregateid     text        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('parked', 'held', 'queued')),
    reason          text,
    error           text,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sink, seq),
    CONSTRAINT {{outbox}}_parked_reason CHECK ((state = 'parked') = (reason IS NOT NULL))
);
CREATE INDEX {{outbox}}_parked_aggregate
    ON {{outbox}}_parked (sink, aggregatetype, aggregateid, seq);
CREATE INDEX {{outbox}}_parked_queued ON {{outbox}}_parked (sink, seq) WHERE state = 'queued';

-- The rows a sink still owes (neither published nor parked): those its cursors have not passed,
-- and those set aside behind a parked or queued row of their aggregate (the relay's gauges, the
-- verifier's lag.outbox). One range of the txid index from the oldest cursor, inlined by the
-- planner (a single SELECT in SQL).
CREATE FUNCTION {{outbox}}_owed(owed_sink text)
    RETURNS TABLE (seq bigint, created_at timestamptz) LANGUAGE sql STABLE AS $$
    WITH c AS MATERIALIZED (SELECT * FROM {{outbox}}_cursors WHERE sink = owed_sink)
    SELECT o.seq, o.created_at FROM {{outbox}} AS o JOIN c ON c.slot = o.slot
    WHERE o.txid >= (SELECT min(pg_snapshot_xmin(snap)) FROM c)
      AND NOT flowproof_cursor_passed(o.txid, o.seq, c.snap, c.next_snap, c.next_seq)
    UNION ALL
    SELECT o.seq, o.created_at FROM {{outbox}}_parked AS p JOIN {{outbox}} AS o ON o.seq = p.seq
    WHERE p.sink = owed_sink AND p.state <> 'parked'
$$;

-- Upgrade in place: what the old marks said moves here. A row a sink had parked stays parked;
-- a row still pending is held when an earlier row of its aggregate is parked for that sink,
-- queued otherwise (published once, in seq order, before any newer row of its aggregate). For
-- the sinks of the outbox ({{outbox}}_sinks), or both when no relay registered one yet: a sink
-- that never published this outbox starts with the rows written from now on.
INSERT INTO {{outbox}}_parked
    (sink, seq, slot, aggregatetype, aggregateid, state, reason, error, parked_at)
SELECT s.sink, o.seq, o.slot, o.aggregatetype, o.aggregateid,
       CASE WHEN s.reason IS NOT NULL THEN 'parked'
            WHEN EXISTS (
                SELECT 1 FROM {{outbox}} AS p
                WHERE p.aggregatetype = o.aggregatetype AND p.aggregateid = o.aggregateid
                  AND p.seq < o.seq
                  -- implies the predicate of the index of parked rows (0001): one probe a row
                  AND (p.redis_parked_reason IS NOT NULL OR p.kafka_parked_reason IS NOT NULL)
                  AND CASE s.sink WHEN 'redis' THEN p.redis_parked_reason
                                  ELSE p.kafka_parked_reason END IS NOT NULL)
                THEN 'held'
            ELSE 'queued' END,
       s.reason, s.error, coalesce(s.parked_at, now())
FROM {{outbox}} AS o
CROSS JOIN LATERAL (
    VALUES ('redis', o.redis_published_at, o.redis_parked_reason, o.redis_parked_error,
            o.redis_parked_at),
           ('kafka', o.kafka_published_at, o.kafka_parked_reason, o.kafka_parked_error,
            o.kafka_parked_at)
) AS s (sink, published_at, reason, error, parked_at)
WHERE s.published_at IS NULL
  AND (s.sink IN (SELECT sink FROM {{outbox}}_sinks) OR NOT EXISTS (SELECT 1 FROM {{outbox}}_sinks));

-- The marks are gone with their columns (and the partial indexes on them).
ALTER TABLE {{outbox}}
    DROP COLUMN redis_published_at,
    DROP COLUMN kafka_published_at,
    DROP COLUMN redis_parked_reason,
    DROP COLUMN redis_parked_at,
    DROP COLUMN redis_parked_error,
    DROP COLUMN kafka_parked_reason,
    DROP COLUMN kafka_parked_at,
    DROP COLUMN kafka_parked_error;

-- Publication is read from the delivery records now (the verifier's flow query groups a sink's
-- records by event): by sink, in seq order, with the time, for an index-only scan.
DROP INDEX {{outbox}}_deliveries_seq;
CREATE INDEX {{outbox}}_deliveries_sink_seq ON {{outbox}}_deliveries (sink, seq)
    INCLUDE (published_at);

-- Each row with what each sink made of it, in the columns the outbox had before, for people
-- and tests (lookups per row: not for large scans). *_published_at is the first delivery's;
-- *_state is parked, held or queued (see {{outbox}}_parked), NULL when published or pending.
CREATE VIEW {{outbox}}_progress AS
SELECT o.*,
       (SELECT min(d.published_at) FROM {{outbox}}_deliveries AS d
        WHERE d.seq = o.seq AND d.sink = 'redis') AS redis_published_at,
       r.state AS redis_state,
       r.reason AS redis_parked_reason,
       r.error AS redis_parked_error,
       CASE WHEN r.state = 'parked' THEN r.parked_at END AS redis_parked_at,
       (SELECT min(d.published_at) FROM {{outbox}}_deliveries AS d
        WHERE d.seq = o.seq AND d.sink = 'kafka') AS kafka_published_at,
       k.state AS kafka_state,
       k.reason AS kafka_parked_reason,
       k.error AS kafka_parked_error,
       CASE WHEN k.state = 'parked' THEN k.parked_at END AS kafka_parked_at
FROM {{outbox}} AS o
LEFT JOIN {{outbox}}_parked AS r ON r.sink = 'redis' AND r.seq = o.seq
LEFT JOIN {{outbox}}_parked AS k ON k.sink = 'kafka' AND k.seq = o.seq;
