-- The relay's queries, by name. `{{outbox}}` is the configured outbox table and `{{sink}}` one of
-- redis/kafka (both validated before they get here); publisher/queries.py renders them.

-- name: claim
-- Pending rows of the slots this worker owns, in publication order. Rows behind a parked row of
-- their aggregate are left where they are: publishing them would overtake the parked one.
-- A created_at Python cannot hold (infinity, BC, after 9999) comes back NULL, and the row is
-- parked for its envelope: decoding it would fail the whole claim, again on every retry.
SELECT o.seq, o.id, o.aggregatetype, o.aggregateid, o.type,
       o.payload::text AS payload, o.headers::text AS headers,
       CASE WHEN o.created_at >= '0001-01-01 00:00:00+00' AND o.created_at < '10000-01-01 00:00:00+00'
            THEN o.created_at END AS created_at
FROM {{outbox}} AS o
WHERE o.{{sink}}_published_at IS NULL AND o.{{sink}}_parked_reason IS NULL
  AND o.slot = ANY($1::smallint[])
  AND NOT EXISTS (
      SELECT 1 FROM {{outbox}} AS p
      WHERE p.aggregatetype = o.aggregatetype AND p.aggregateid = o.aggregateid
        AND p.seq < o.seq AND p.{{sink}}_parked_reason IS NOT NULL)
ORDER BY o.seq
LIMIT $2;

-- name: mark_published
-- Only on the connection that holds the rows' slot locks: a worker that lost them cannot mark.
UPDATE {{outbox}} SET {{sink}}_published_at = now()
WHERE seq = ANY($1::bigint[]) AND {{sink}}_published_at IS NULL;

-- name: park
UPDATE {{outbox}} AS o
SET {{sink}}_parked_reason = p.reason, {{sink}}_parked_at = now(), {{sink}}_parked_error = p.error
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS p (seq, reason, error)
WHERE o.seq = p.seq AND o.{{sink}}_published_at IS NULL;

-- name: sink_stats
-- The outbox gauges of one sink. The oldest pending row is taken by seq (the pending index's
-- order), which is its created_at order for rows written through the outbox.
SELECT
    (SELECT count(*) FROM {{outbox}}
     WHERE {{sink}}_published_at IS NULL AND {{sink}}_parked_reason IS NULL) AS pending,
    (SELECT extract(epoch FROM now() - created_at)::float8 FROM {{outbox}}
     WHERE {{sink}}_published_at IS NULL AND {{sink}}_parked_reason IS NULL
     ORDER BY seq LIMIT 1) AS oldest_age,
    (SELECT count(*) FROM {{outbox}} WHERE {{sink}}_parked_reason IS NOT NULL) AS parked;

-- name: waiting_behind_parked
SELECT count(*) FROM {{outbox}} AS o
WHERE o.{{sink}}_published_at IS NULL AND o.{{sink}}_parked_reason IS NULL
  AND EXISTS (
      SELECT 1 FROM {{outbox}} AS p
      WHERE p.aggregatetype = o.aggregatetype AND p.aggregateid = o.aggregateid
        AND p.seq < o.seq AND p.{{sink}}_parked_reason IS NOT NULL);

-- name: parked_rows
SELECT seq, id, type, aggregatetype, aggregateid, {{sink}}_parked_reason AS reason,
       {{sink}}_parked_error AS error, {{sink}}_parked_at AS since
FROM {{outbox}}
WHERE {{sink}}_parked_reason IS NOT NULL
ORDER BY seq
LIMIT $1;

-- name: unpark
-- `flowproof parked retry`: the relay tries the row again (and re-parks it if it still cannot go).
UPDATE {{outbox}}
SET {{sink}}_parked_reason = NULL, {{sink}}_parked_at = NULL, {{sink}}_parked_error = NULL
WHERE {{sink}}_parked_reason IS NOT NULL AND ($1::uuid IS NULL OR id = $1::uuid)
RETURNING seq;

-- name: wake_relays
SELECT pg_notify('{{outbox}}', '');

-- name: prune
-- Rows older than the retention that every sink of this outbox ({{outbox}}_sinks, whichever
-- relay registered it) has published; a few at a time, skipping rows another relay is pruning
-- right now. A row a sink still owes, or has parked, stays, whatever the sinks of the relay that
-- prunes; with no sink registered (or one this version does not know) nothing is pruned.
DELETE FROM {{outbox}}
WHERE seq IN (
    SELECT o.seq FROM {{outbox}} AS o
    WHERE o.created_at < now() - make_interval(secs => $1)
      AND EXISTS (SELECT 1 FROM {{outbox}}_sinks)
      AND NOT EXISTS (
          SELECT 1 FROM {{outbox}}_sinks AS s
          WHERE s.sink NOT IN ('redis', 'kafka')
             OR (s.sink = 'redis' AND o.redis_published_at IS NULL)
             OR (s.sink = 'kafka' AND o.kafka_published_at IS NULL))
    ORDER BY o.created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED);

-- name: prune_deliveries
-- Delivery records older than the retention (their events are pruned, or about to be).
DELETE FROM {{outbox}}_deliveries
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM {{outbox}}_deliveries
    WHERE sink = $3 AND published_at < now() - make_interval(secs => $1)
    LIMIT $2));

-- name: register_sinks
-- The sinks a relay publishes to become sinks of the outbox (see prune).
INSERT INTO {{outbox}}_sinks (sink) SELECT unnest($1::text[]) ON CONFLICT (sink) DO NOTHING;

-- name: outbox_sinks
SELECT sink, registered_at FROM {{outbox}}_sinks ORDER BY sink;

-- name: forget_sink
DELETE FROM {{outbox}}_sinks WHERE sink = $1 RETURNING sink;

-- name: outbox_exists
SELECT to_regclass('{{outbox}}') IS NOT NULL;

-- name: slot_census
-- How many relays take part for this sink (membership locks) and which slots anyone holds.
-- Advisory locks are per database: relays of other databases on the same server do not count.
SELECT
    (SELECT count(*) FROM pg_locks
     WHERE locktype = 'advisory' AND database = d.oid AND granted
       AND classid = $1::bigint::oid AND objsubid = 2)::int AS members,
    ARRAY(SELECT objid::bigint::int FROM pg_locks
          WHERE locktype = 'advisory' AND database = d.oid AND granted
            AND classid = $2::bigint::oid AND objsubid = 2) AS held
FROM pg_database AS d
WHERE d.datname = current_database();

-- name: join
SELECT pg_try_advisory_lock($1::int, $2::int);

-- name: take_slots
SELECT s FROM unnest($2::int[]) AS s WHERE pg_try_advisory_lock($1::int, s);

-- name: release_slots
SELECT s FROM unnest($2::int[]) AS s WHERE pg_advisory_unlock($1::int, s);

-- name: emit
-- The event's aggregate is locked (transaction-level advisory lock on a 64-bit hash of it)
-- before the row gets its seq, so two transactions writing events of one aggregate get seqs in
-- their commit order: the relay publishes by seq and must never see a later seq of an aggregate
-- committed before an earlier one. The lock is held until the caller's transaction ends.
INSERT INTO {{outbox}} (id, aggregatetype, aggregateid, type, payload, headers)
SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text::jsonb, $6::text::jsonb
FROM (SELECT pg_advisory_xact_lock(hashtextextended($2::text || '/' || $3::text, 0))) AS serialized;

-- name: count_unpublished
-- Tests and the bench: rows the sink has not acknowledged (pending or parked).
SELECT count(*) FROM {{outbox}} WHERE {{sink}}_published_at IS NULL;

-- name: insert_canaries
-- Tests and the bench: $2 canaries for each aggregate id of $1, round robin, by plain SQL.
INSERT INTO {{outbox}} (aggregatetype, aggregateid, type, payload)
SELECT $4::text, a.id, 'flowproof.Canary',
       jsonb_build_object('run_id', $3::text, 'sequence', n, 'total', $2::int)
FROM generate_series(1, $2::int) AS n, unnest($1::text[]) WITH ORDINALITY AS a (id, pos)
ORDER BY n, a.pos;

-- name: published_since
-- How many events each sink published of those created since $1 (epoch seconds): the demo's count.
SELECT sink, count(DISTINCT seq) AS n
FROM {{outbox}}_deliveries
WHERE created_at >= to_timestamp($1)
GROUP BY sink;
