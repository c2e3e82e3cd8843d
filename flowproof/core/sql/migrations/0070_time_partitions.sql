-- Time partitions: old events go by dropping a partition, not by deleting rows. The outbox is
-- partitioned by created_at, its delivery records by published_at and the receipts by
-- received_at (declarative RANGE partitioning), one partition per span of time (a day unless
-- FLOWPROOF_RELAY_PARTITION_SECONDS says otherwise: `{{partition_seconds}}` is its value when
-- `flowproof db migrate` ran). The relay makes the spans ahead of now, and drops a partition
-- once all of it is older than its retention and, for the outbox, every sink has passed and
-- published every row of it ({{outbox}}_partitions_maintain below).
--
-- A row whose time has no partition (the relay was down longer than the spans made ahead, or an
-- owner wrote a created_at far from now) lands in the table's DEFAULT partition: never refused.
-- The next maintenance gives its span a partition and moves it there.
--
-- The keys of a partitioned table hold its partition key: the outbox's primary key is
-- (seq, created_at) and its event ids are unique per created_at, the receipts' key is
-- (receipt_id, received_at). seq and receipt_id are still drawn from one identity sequence each.
--
-- Upgrade in place: each table is rebuilt as a partitioned one with every row, seq, txid and
-- receipt_id kept, so the sinks' cursors (snapshots of txids) and the delivery records still
-- say which rows are done: nothing is lost or published again. The rebuild holds the tables'
-- locks while it copies them (an outbox pruned to a day or two of events).

-- The bounds of the partitions of a table partitioned by RANGE on one timestamptz column:
-- lo/hi are -infinity/infinity for MINVALUE/MAXVALUE; the DEFAULT partition has neither.
CREATE FUNCTION flowproof_partitions(parent regclass)
    RETURNS TABLE (part regclass, lo timestamptz, hi timestamptz, is_default boolean)
    LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass,
           CASE WHEN b.m[1] = 'MINVALUE' THEN '-infinity'
                ELSE trim(both '''' FROM b.m[1])::timestamptz END,
           CASE WHEN b.m[2] = 'MAXVALUE' THEN 'infinity'
                ELSE trim(both '''' FROM b.m[2])::timestamptz END,
           b.m IS NULL
    FROM pg_inherits AS i
    JOIN pg_class AS c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (
        SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                            '^FOR VALUES FROM \((.+)\) TO \((.+)\)$') AS m
    ) AS b
    WHERE i.inhparent = parent
$$;

-- The name of the partition of `parent` that starts at `lo`: <parent>_pYYYYMMDDtHHMMSS (UTC),
-- shortened with a hash of the parent's name where that would pass PostgreSQL's 63 bytes.
CREATE FUNCTION flowproof_partition_name(parent regclass, lo timestamptz)
    RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN length(r || s) <= 63 THEN r || s
                ELSE left(r, 63 - length(s) - 9) || '_' || left(md5(r), 8) || s END
    FROM (SELECT c.relname::text AS r,
                 '_p' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS') AS s
          FROM pg_class AS c WHERE c.oid = parent) AS n
$$;

-- Make sure a partition of `parent` holds the time `at`: the span of the grid of `span` (from the
-- Unix epoch) that holds it, cut where it would overlap a partition already there. Rows of that
-- span in the DEFAULT partition move into it (same values: seq, txid and ids are kept). Returns
-- the partition made, or NULL when one already held `at`.
CREATE FUNCTION flowproof_partition_ensure(parent regclass, at timestamptz, span interval)
    RETURNS regclass LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    width float8 := extract(epoch FROM span);
    start_at timestamptz;
    end_at timestamptz;
    key text;
    schema text;
    made regclass;
    fallback regclass;
    moved bigint := 0;
    cols text;
BEGIN
    IF width <= 0 OR at IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'flowproof_partition_ensure: no span of % holds %', span, at;
    END IF;
    IF EXISTS (SELECT 1 FROM flowproof_partitions(parent) AS p
               WHERE NOT p.is_default AND at >= p.lo AND at < p.hi) THEN
        RETURN NULL;
    END IF;
    start_at := to_timestamp(floor(extract(epoch FROM at) / width) * width);
    end_at := start_at + span;
    SELECT greatest(start_at, max(p.hi)) INTO start_at FROM flowproof_partitions(parent) AS p
    WHERE NOT p.is_default AND p.hi <= at;
    SELECT least(end_at, min(p.lo)) INTO end_at FROM flowproof_partitions(parent) AS p
    WHERE NOT p.is_default AND p.lo > at;

    SELECT a.attname, n.nspname INTO key, schema
    FROM pg_partitioned_table AS t
    JOIN pg_attribute AS a ON a.attrelid = t.partrelid AND a.attnum = t.partattrs[0]
    JOIN pg_class AS c ON c.oid = t.partrelid
    JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE t.partrelid = parent;
    SELECT p.part INTO fallback FROM flowproof_partitions(parent) AS p WHERE p.is_default;

    IF fallback IS NOT NULL THEN
        -- A new partition may not take rows the DEFAULT one holds: they leave it first.
        IF to_regclass('pg_temp.flowproof_partition_moving') IS NOT NULL THEN
            DROP TABLE pg_temp.flowproof_partition_moving;
        END IF;
        EXECUTE format(
            'CREATE TEMP TABLE flowproof_partition_moving ON COMMIT DROP AS '
            'WITH m AS (DELETE FROM %s WHERE %I >= $1 AND %I < $2 RETURNING *) SELECT * FROM m',
            fallback, key, key) USING start_at, end_at;
        GET DIAGNOSTICS moved = ROW_COUNT;
    END IF;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                   schema, flowproof_partition_name(parent, start_at), parent, start_at, end_at);
    made := format('%I.%I', schema, flowproof_partition_name(parent, start_at))::regclass;
    IF fallback IS NOT NULL THEN
        IF moved > 0 THEN
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
            FROM pg_attribute AS a
            WHERE a.attrelid = parent AND a.attnum > 0 AND NOT a.attisdropped
              AND a.attgenerated = '';
            EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s '
                           'FROM pg_temp.flowproof_partition_moving', parent, cols, cols);
        END IF;
        DROP TABLE pg_temp.flowproof_partition_moving;
    END IF;
    RETURN made;
END
$$;

-- Only the owner (and the function below, which runs with the owner's rights) makes partitions.
REVOKE ALL ON FUNCTION flowproof_partition_ensure(regclass, timestamptz, interval) FROM PUBLIC;

-- The outbox, rebuilt partitioned by created_at. Same columns in the same order.
-- The old identity sequences step aside, so that the new ones take their names.
DO $$
BEGIN
    EXECUTE format('ALTER SEQUENCE %s RENAME TO %I',
                   pg_get_serial_sequence('{{outbox}}', 'seq'), '{{outbox}}_0060_seq');
    EXECUTE format('ALTER SEQUENCE %s RENAME TO %I',
                   pg_get_serial_sequence('flowproof_receipts', 'receipt_id'),
                   'flowproof_receipts_0060_seq');
END
$$;
ALTER TABLE {{outbox}} RENAME TO {{outbox}}_0060;
DROP VIEW {{outbox}}_progress;
DROP TRIGGER {{outbox}}_notify ON {{outbox}}_0060;
CREATE TABLE {{outbox}} (
    -- Insertion order; the relay publishes the events of one aggregate in this order.
    seq                 bigint GENERATED ALWAYS AS IDENTITY,
    id                  uuid        NOT NULL DEFAULT gen_random_uuid(),
    aggregatetype       text        NOT NULL,
    aggregateid         text        NOT NULL,
    type                text        NOT NULL,
    payload             jsonb       NOT NULL,
    headers             jsonb,
    -- The partition key: old partitions are dropped (see {{outbox}}_partitions_maintain).
    created_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Events of one aggregate share a slot; one relay at a time publishes a slot to a sink.
    slot                smallint    NOT NULL GENERATED ALWAYS AS (
                            (hashtextextended(aggregatetype || '/' || aggregateid, 0) & 63)::smallint
                        ) STORED,
    -- The inserting transaction: a sink's cursor is a snapshot of these (migration 0050).
    txid                xid8        DEFAULT pg_current_xact_id(),
    CONSTRAINT {{outbox}}_headers_object CHECK (headers IS NULL OR jsonb_typeof(headers) = 'object')
) PARTITION BY RANGE (created_at);
CREATE TABLE {{outbox}}_default PARTITION OF {{outbox}} DEFAULT;

ALTER TABLE {{outbox}}_deliveries RENAME TO {{outbox}}_deliveries_0060;
CREATE TABLE {{outbox}}_deliveries (
    seq             bigint      NOT NULL,     -- the outbox row
    sink            text        NOT NULL,
    destination     text        NOT NULL,     -- stream or topic
    partition       integer,                  -- Kafka partition; NULL for Redis
    position        text        NOT NULL,     -- stream entry id, or partition:offset
    position_order  bigint GENERATED ALWAYS AS (flowproof_position_order(sink, position)) STORED,
    created_at      timestamptz,              -- the event's, copied: see the partial index
    -- The partition key.
    published_at    timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (published_at);
CREATE TABLE {{outbox}}_deliveries_default PARTITION OF {{outbox}}_deliveries DEFAULT;

ALTER TABLE flowproof_receipts RENAME TO flowproof_receipts_0060;
CREATE TABLE flowproof_receipts (
    receipt_id      bigint GENERATED ALWAYS AS IDENTITY,
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
    -- When the consumer read the message; the partition key.
    received_at     timestamptz NOT NULL,
    valid           boolean     NOT NULL,
    reason          text,                     -- NULL when valid: bad_magic, unknown_schema, ...
    error           text,
    delivery_count  integer     NOT NULL DEFAULT 1,
    dead_letter_reason text,
    position_order  bigint GENERATED ALWAYS AS (flowproof_position_order(sink, position)) STORED,
    dead_letter_error text,
    CONSTRAINT flowproof_receipts_reason CHECK (valid = (reason IS NULL))
) PARTITION BY RANGE (received_at);
CREATE TABLE flowproof_receipts_default PARTITION OF flowproof_receipts DEFAULT;

-- A partition for every span that has rows, and for the current span and the next two. The span
-- is FLOWPROOF_RELAY_PARTITION_SECONDS of `flowproof db migrate` (a day by default); a relay
-- with another span makes its partitions after these.
SELECT flowproof_partition_ensure(t.parent, t.at, make_interval(secs => {{partition_seconds}}))
FROM (
    SELECT DISTINCT '{{outbox}}'::regclass AS parent,
           to_timestamp(floor(extract(epoch FROM created_at) / {{partition_seconds}})
                        * {{partition_seconds}}) AS at
    FROM {{outbox}}_0060 WHERE created_at > '-infinity' AND created_at < 'infinity'
    UNION SELECT DISTINCT '{{outbox}}_deliveries'::regclass,
           to_timestamp(floor(extract(epoch FROM published_at) / {{partition_seconds}})
                        * {{partition_seconds}})
    FROM {{outbox}}_deliveries_0060 WHERE published_at > '-infinity' AND published_at < 'infinity'
    UNION SELECT DISTINCT 'flowproof_receipts'::regclass,
           to_timestamp(floor(extract(epoch FROM received_at) / {{partition_seconds}})
                        * {{partition_seconds}})
    FROM flowproof_receipts_0060 WHERE received_at > '-infinity' AND received_at < 'infinity'
    UNION SELECT p.parent, now() + make_interval(secs => {{partition_seconds}}) * n
    FROM (VALUES ('{{outbox}}'::regclass), ('{{outbox}}_deliveries'::regclass),
                 ('flowproof_receipts'::regclass)) AS p (parent),
         generate_series(0, 2) AS n
) AS t
ORDER BY t.parent::text, t.at;

INSERT INTO {{outbox}}
    (seq, id, aggregatetype, aggregateid, type, payload, headers, created_at, txid)
OVERRIDING SYSTEM VALUE
SELECT seq, id, aggregatetype, aggregateid, type, payload, headers, created_at, txid
FROM {{outbox}}_0060;
-- The identity goes on from where it was (never from the largest seq left: pruned seqs are
-- not drawn again).
SELECT setval(pg_get_serial_sequence('{{outbox}}', 'seq'), coalesce(v, 1), v IS NOT NULL)
FROM (SELECT pg_sequence_last_value('{{outbox}}_0060_seq') AS v) AS s;
DROP TABLE {{outbox}}_0060;

INSERT INTO {{outbox}}_deliveries
    (seq, sink, destination, partition, position, created_at, published_at)
SELECT seq, sink, destination, partition, position, created_at, published_at
FROM {{outbox}}_deliveries_0060;
DROP TABLE {{outbox}}_deliveries_0060;

INSERT INTO flowproof_receipts
    (receipt_id, event_id, sink, consumer_group, consumer, source, position, event_type,
     aggregatetype, aggregateid, schema_id, created_at, received_at, valid, reason, error,
     delivery_count, dead_letter_reason, dead_letter_error)
OVERRIDING SYSTEM VALUE
SELECT receipt_id, event_id, sink, consumer_group, consumer, source, position, event_type,
       aggregatetype, aggregateid, schema_id, created_at, received_at, valid, reason, error,
       delivery_count, dead_letter_reason, dead_letter_error
FROM flowproof_receipts_0060;
SELECT setval(pg_get_serial_sequence('flowproof_receipts', 'receipt_id'), coalesce(v, 1),
              v IS NOT NULL)
FROM (SELECT pg_sequence_last_value('flowproof_receipts_0060_seq') AS v) AS s;
DROP TABLE flowproof_receipts_0060;

-- The keys and indexes, built once the rows are in (each partition gets its own).
ALTER TABLE {{outbox}} ADD CONSTRAINT {{outbox}}_pkey PRIMARY KEY (seq, created_at);
ALTER TABLE {{outbox}} ADD CONSTRAINT {{outbox}}_id_key UNIQUE (id, created_at);
CREATE INDEX {{outbox}}_created_at ON {{outbox}} (created_at);
CREATE INDEX {{outbox}}_txid ON {{outbox}} (txid) INCLUDE (slot, seq);
CREATE TRIGGER {{outbox}}_notify AFTER INSERT ON {{outbox}}
    FOR EACH STATEMENT EXECUTE FUNCTION {{outbox}}_notify();

CREATE INDEX {{outbox}}_deliveries_sink_seq ON {{outbox}}_deliveries (sink, seq)
    INCLUDE (published_at);
CREATE INDEX {{outbox}}_deliveries_published_late ON {{outbox}}_deliveries (sink, published_at)
    WHERE published_at - created_at > interval '1 minute';
CREATE INDEX {{outbox}}_deliveries_published ON {{outbox}}_deliveries USING brin (published_at);

ALTER TABLE flowproof_receipts ADD CONSTRAINT flowproof_receipts_pkey
    PRIMARY KEY (receipt_id, received_at);
CREATE INDEX flowproof_receipts_event ON flowproof_receipts (event_id, sink, consumer_group);
CREATE INDEX flowproof_receipts_received_at ON flowproof_receipts (received_at);
CREATE INDEX flowproof_receipts_sink_group_received
    ON flowproof_receipts (sink, consumer_group, received_at);

-- As in migration 0050.
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

-- Why a partition of the outbox must stay (NULL: it may go): no sink is registered, a sink's
-- cursor has not passed all of it (some slot's snapshot does not see its newest transaction),
-- or a sink set rows of it aside (parked, held or queued in {{outbox}}_parked).
CREATE FUNCTION {{outbox}}_partition_kept_because(part regclass)
    RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    newest xid8;
    aside boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {{outbox}}_sinks) THEN
        RETURN 'no sink registered';
    END IF;
    EXECUTE format('SELECT max(txid) FROM %s', part) INTO newest;
    IF newest IS NOT NULL AND EXISTS (
        SELECT 1 FROM {{outbox}}_sinks AS s
        WHERE NOT EXISTS (SELECT 1 FROM {{outbox}}_cursors AS c WHERE c.sink = s.sink)
           OR EXISTS (SELECT 1 FROM {{outbox}}_cursors AS c
                      WHERE c.sink = s.sink AND newest >= pg_snapshot_xmin(c.snap))) THEN
        RETURN 'not passed by every sink';
    END IF;
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM {{outbox}}_parked AS p JOIN %s AS o '
                   'ON o.seq = p.seq WHERE p.sink IN (SELECT sink FROM {{outbox}}_sinks))', part)
        INTO aside;
    IF aside THEN
        RETURN 'rows set aside (parked, held or queued)';
    END IF;
    RETURN NULL;
END
$$;

-- The relay's maintenance of one table's partitions (`which`: outbox, deliveries or receipts),
-- one step per call, so that each is its own transaction:
--   make  the partitions of the spans from now to `ahead` spans ahead, and of the spans of rows
--         in the DEFAULT partition (moved into them);
--   drop  the partitions wholly older than the retention, the outbox's only once nothing of
--         them is owed (decided and counted first: the drop itself holds inserts back briefly);
--   plan  nothing changes: each partition with its bounds, its rows (counted for the DEFAULT
--         one, PostgreSQL's estimate for the others: NULL before the first ANALYZE) and what
--         `drop` would do with it: live (within the retention), due (would go), kept (why), or
--         default (`flowproof db partitions`).
-- One row per partition made, dropped or kept (with why). It runs with its owner's rights (only
-- an owner may make and drop partitions); its callers need EXECUTE, revoked from PUBLIC below.
-- It waits at most lock_timeout for a table's lock: when busy, it says so and the next call
-- tries again.
CREATE FUNCTION {{outbox}}_partitions_maintain(
    which text, step text, retention_seconds float8, span_seconds float8, ahead integer
) RETURNS TABLE (
    action text, part text, lo timestamptz, hi timestamptz, row_count bigint, reason text
) LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET lock_timeout = '500ms' AS $$
DECLARE
    parent regclass;
    span interval := make_interval(secs => span_seconds);
    -- Past some 300 years, nothing is old enough (and the date would leave timestamptz's range).
    horizon timestamptz := CASE WHEN retention_seconds < 1e10
                                THEN now() - make_interval(secs => retention_seconds)
                                ELSE '-infinity' END;
    fallback regclass;
    key text;
    oldest timestamptz;
    made regclass;
    p record;
    n bigint;
    why text;
    going text[] := '{}';
    counts bigint[] := '{}';
    lows timestamptz[] := '{}';
    highs timestamptz[] := '{}';
BEGIN
    parent := CASE which WHEN 'outbox' THEN '{{outbox}}'::regclass
                         WHEN 'deliveries' THEN '{{outbox}}_deliveries'::regclass
                         WHEN 'receipts' THEN 'flowproof_receipts'::regclass END;
    IF parent IS NULL THEN
        RAISE EXCEPTION 'unknown partitioned table %: outbox, deliveries or receipts', which;
    END IF;
    IF step NOT IN ('make', 'drop', 'plan') THEN
        RAISE EXCEPTION 'unknown step %: make, drop or plan', step;
    END IF;
    IF NOT (span_seconds BETWEEN 1 AND 1e8) OR ahead NOT BETWEEN 0 AND 1000
       OR NOT retention_seconds >= 0 THEN
        RAISE EXCEPTION 'span_seconds (%) must lie in [1, 1e8], ahead (%) in [0, 1000], '
                        'retention_seconds (%) be >= 0',
            span_seconds, ahead, retention_seconds;
    END IF;

    IF step = 'make' THEN
        BEGIN
            -- Rows that found no partition get their span's.
            SELECT b.part INTO fallback FROM flowproof_partitions(parent) AS b WHERE b.is_default;
            SELECT a.attname INTO key FROM pg_partitioned_table AS t
            JOIN pg_attribute AS a ON a.attrelid = t.partrelid AND a.attnum = t.partattrs[0]
            WHERE t.partrelid = parent;
            LOOP
                EXECUTE format('SELECT min(%I) FROM %s '
                               'WHERE %I > ''-infinity'' AND %I < ''infinity''',
                               key, fallback, key, key) INTO oldest;
                EXIT WHEN oldest IS NULL;
                made := flowproof_partition_ensure(parent, oldest, span);
                EXIT WHEN made IS NULL;
                action := 'created'; part := made::text; row_count := NULL;
                reason := 'rows in the default partition';
                SELECT b.lo, b.hi INTO lo, hi FROM flowproof_partitions(parent) AS b
                WHERE b.part = made;
                RETURN NEXT;
            END LOOP;
            FOR n IN 0..ahead LOOP
                made := flowproof_partition_ensure(parent, now() + span * n, span);
                IF made IS NOT NULL THEN
                    action := 'created'; part := made::text; row_count := NULL; reason := NULL;
                    SELECT b.lo, b.hi INTO lo, hi FROM flowproof_partitions(parent) AS b
                    WHERE b.part = made;
                    RETURN NEXT;
                END IF;
            END LOOP;
        EXCEPTION WHEN lock_not_available THEN
            action := 'busy'; part := parent::text; lo := NULL; hi := NULL; row_count := NULL;
            reason := 'its lock was not granted within lock_timeout: not made this time';
            RETURN NEXT;
        END;
        RETURN;
    END IF;

    IF step = 'plan' THEN
        FOR p IN SELECT * FROM flowproof_partitions(parent) AS b
                 ORDER BY b.is_default, b.lo LOOP
            part := p.part::text; lo := p.lo; hi := p.hi; reason := NULL;
            IF p.is_default THEN
                action := 'default';
                EXECUTE format('SELECT count(*) FROM %s', p.part) INTO row_count;
            ELSE
                SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END INTO row_count
                FROM pg_class AS c WHERE c.oid = p.part;
                IF p.hi > horizon THEN
                    action := 'live';
                ELSE
                    reason := CASE WHEN which = 'outbox'
                                   THEN {{outbox}}_partition_kept_because(p.part) END;
                    action := CASE WHEN reason IS NULL THEN 'due' ELSE 'kept' END;
                END IF;
            END IF;
            RETURN NEXT;
        END LOOP;
        RETURN;
    END IF;

    -- What goes is decided (and counted) first, before the lock that holds inserts back.
    FOR p IN SELECT * FROM flowproof_partitions(parent) AS b
             WHERE NOT b.is_default AND b.hi <= horizon ORDER BY b.lo LOOP
        why := CASE WHEN which = 'outbox' THEN {{outbox}}_partition_kept_because(p.part) END;
        IF why IS NULL THEN
            EXECUTE format('SELECT count(*) FROM %s', p.part) INTO n;
            going := going || p.part::text;
            counts := counts || n;
            lows := lows || p.lo;
            highs := highs || p.hi;
        ELSE
            action := 'kept'; part := p.part::text; lo := p.lo; hi := p.hi; row_count := NULL;
            reason := why;
            RETURN NEXT;
        END IF;
    END LOOP;
    FOR n IN 1..coalesce(array_length(going, 1), 0) LOOP
        BEGIN
            EXECUTE format('DROP TABLE %s', going[n]);
            action := 'dropped'; part := going[n]; row_count := counts[n]; reason := NULL;
            lo := lows[n]; hi := highs[n];
        EXCEPTION WHEN lock_not_available THEN
            action := 'busy'; part := going[n]; lo := lows[n]; hi := highs[n]; row_count := NULL;
            reason := 'its lock was not granted within lock_timeout: not dropped this time';
        END;
        RETURN NEXT;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION {{outbox}}_partitions_maintain(text, text, float8, float8, integer)
    FROM PUBLIC;
-- A function with its owner's rights finds tables in the outbox's schema only, never in a
-- caller's temporary schema.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION {{outbox}}_partitions_maintain(text, text, float8, float8, '
                   'integer) SET search_path = %I, pg_temp', current_schema());
END
$$;
