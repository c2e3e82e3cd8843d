-- The relay's queries, by name. `{{outbox}}` is the configured outbox table and `{{sink}}` one of
-- redis/kafka (both validated before they get here); publisher/queries.py renders them.

-- name: begin_round
-- A new round for each owned slot of this sink that has none: the rows whose transaction is
-- visible in this statement's snapshot and was not in the slot's cursor snapshot, from the
-- first seq to the last. pg_current_snapshot() is the statement's own snapshot, so the span is
-- exactly the rows the claims will see. A slot with no such row moves to the snapshot, at most
-- once a second (moving it is never needed for correctness, it only keeps the span scanned here
-- short; writing 64 cursor rows on every cycle of an idle relay would not be). The claims run in
-- later statements (later snapshots): every row of the round is visible to them.
WITH now AS MATERIALIZED (SELECT pg_current_snapshot() AS snap),
idle AS MATERIALIZED (
    SELECT slot, snap FROM {{outbox}}_cursors
    WHERE sink = '{{sink}}' AND slot = ANY($1::smallint[]) AND next_snap IS NULL
),
span AS (
    SELECT o.slot, min(o.seq) AS first_seq, max(o.seq) AS last_seq
    FROM {{outbox}} AS o
    JOIN idle AS i ON i.slot = o.slot
    CROSS JOIN now
    WHERE o.txid >= (SELECT min(pg_snapshot_xmin(snap)) FROM idle)
      AND o.txid < pg_snapshot_xmax(now.snap)
      AND NOT pg_visible_in_snapshot(o.txid, i.snap)
      AND pg_visible_in_snapshot(o.txid, now.snap)
    GROUP BY o.slot
)
UPDATE {{outbox}}_cursors AS c
SET snap = CASE WHEN s.slot IS NULL THEN now.snap ELSE c.snap END,
    next_snap = CASE WHEN s.slot IS NULL THEN NULL ELSE now.snap END,
    next_seq = coalesce(s.first_seq - 1, 0),
    last_seq = s.last_seq,
    moved_at = now()
FROM idle AS i LEFT JOIN span AS s ON s.slot = i.slot, now
WHERE c.sink = '{{sink}}' AND c.slot = i.slot
  AND (s.slot IS NOT NULL OR c.moved_at < now() - interval '1 second');

-- name: claim
-- The next rows of the owned slots' rounds, in publication order (seq: for the rows of one
-- aggregate, their commit order; see emit), after seq $3 (the batch still in flight, or 0). The primary key is walked in seq order over the
-- span of the rounds, each row checked against its slot's cursor (a scalar subquery, so that
-- the planner keeps the walk and stops at the limit).
-- `behind` says the row waits behind rows of its aggregate in {{outbox}}_parked (held when one
-- of them is parked or held, queued when they are all queued). A created_at Python cannot hold
-- (infinity, BC, after 9999) comes back NULL, and the row is parked for its envelope: decoding
-- it would fail the whole claim, again on every retry.
WITH rounds AS MATERIALIZED (
    SELECT min(next_seq) AS after, max(last_seq) AS upto FROM {{outbox}}_cursors
    WHERE sink = '{{sink}}' AND slot = ANY($1::smallint[]) AND next_snap IS NOT NULL
)
SELECT o.seq, o.id, o.aggregatetype, o.aggregateid, o.type,
       o.payload::text AS payload, o.headers::text AS headers,
       CASE WHEN o.created_at >= '0001-01-01 00:00:00+00' AND o.created_at < '10000-01-01 00:00:00+00'
            THEN o.created_at END AS created_at,
       o.slot,
       (SELECT CASE WHEN count(*) = 0 THEN NULL
                    WHEN bool_or(p.state <> 'queued') THEN 'held' ELSE 'queued' END
        FROM {{outbox}}_parked AS p
        WHERE p.sink = '{{sink}}' AND p.aggregatetype = o.aggregatetype
          AND p.aggregateid = o.aggregateid AND p.seq < o.seq) AS behind
FROM {{outbox}} AS o
WHERE o.seq > (SELECT after FROM rounds) AND o.seq <= (SELECT upto FROM rounds)
  AND o.slot = ANY($1::smallint[])
  AND o.seq > $3::bigint
  AND (SELECT o.seq > c.next_seq AND o.seq <= c.last_seq
              AND pg_visible_in_snapshot(o.txid, c.next_snap)
              AND NOT pg_visible_in_snapshot(o.txid, c.snap)
       FROM {{outbox}}_cursors AS c
       WHERE c.sink = '{{sink}}' AND c.slot = o.slot AND c.next_snap IS NOT NULL)
ORDER BY o.seq
LIMIT $2;

-- name: advance
-- After a batch of the rounds: every row of the owned slots' rounds up to seq $2 is done; with
-- $3 (the claim found fewer rows than it asked for, and none failed) the rounds are done.
-- Only on the connection that holds the slots' locks, in the transaction of the batch's
-- delivery records.
UPDATE {{outbox}}_cursors
SET snap = CASE WHEN $3::boolean THEN next_snap ELSE snap END,
    next_snap = CASE WHEN $3::boolean THEN NULL ELSE next_snap END,
    next_seq = CASE WHEN $3::boolean THEN 0 ELSE greatest(next_seq, $2::bigint) END,
    last_seq = CASE WHEN $3::boolean THEN NULL ELSE last_seq END,
    moved_at = now()
WHERE sink = '{{sink}}' AND slot = ANY($1::smallint[]) AND next_snap IS NOT NULL;

-- name: claim_queued
-- Queued rows of the owned slots (see {{outbox}}_parked), in seq order, after seq $3 (the
-- batch still in flight, or 0), except those behind a parked or held row of their aggregate.
SELECT o.seq, o.id, o.aggregatetype, o.aggregateid, o.type,
       o.payload::text AS payload, o.headers::text AS headers,
       CASE WHEN o.created_at >= '0001-01-01 00:00:00+00' AND o.created_at < '10000-01-01 00:00:00+00'
            THEN o.created_at END AS created_at,
       o.slot, NULL::text AS behind
FROM {{outbox}}_parked AS q
JOIN {{outbox}} AS o ON o.seq = q.seq
WHERE q.sink = '{{sink}}' AND q.state = 'queued' AND q.slot = ANY($1::smallint[])
  AND q.seq > $3::bigint
  AND NOT EXISTS (
      SELECT 1 FROM {{outbox}}_parked AS p
      WHERE p.sink = '{{sink}}' AND p.aggregatetype = q.aggregatetype
        AND p.aggregateid = q.aggregateid AND p.seq < q.seq AND p.state <> 'queued')
ORDER BY q.seq
LIMIT $2;

-- name: any_queued
SELECT EXISTS (SELECT 1 FROM {{outbox}}_parked WHERE sink = '{{sink}}' AND state = 'queued');

-- name: set_aside
-- Rows of a batch that were not published: parked, held behind a parked row, or queued behind
-- queued rows of their aggregate. A queued row tried again changes its state in place.
INSERT INTO {{outbox}}_parked AS p
    (sink, seq, slot, aggregatetype, aggregateid, state, reason, error)
SELECT '{{sink}}', r.seq, r.slot, r.aggregatetype, r.aggregateid, r.state, r.reason, r.error
FROM unnest($1::bigint[], $2::smallint[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::text[]) AS r (seq, slot, aggregatetype, aggregateid, state, reason, error)
ON CONFLICT (sink, seq) DO UPDATE
SET state = excluded.state, reason = excluded.reason, error = excluded.error, parked_at = now();

-- name: unqueue
-- Queued rows the sink acknowledged.
DELETE FROM {{outbox}}_parked
WHERE sink = '{{sink}}' AND seq = ANY($1::bigint[]) AND state = 'queued';

-- name: sink_stats
-- The outbox gauges of one sink: the rows it still owes (see {{outbox}}_owed in migration 0050)
-- with the age of the oldest, and the parked ones.
SELECT count(*) AS pending,
       extract(epoch FROM now() - min(created_at))::float8 AS oldest_age,
       (SELECT count(*) FROM {{outbox}}_parked WHERE sink = '{{sink}}' AND state = 'parked')
           AS parked
FROM {{outbox}}_owed('{{sink}}');

-- name: waiting_behind_parked
SELECT count(*) FROM {{outbox}}_parked AS o
WHERE o.sink = '{{sink}}' AND o.state <> 'parked'
  AND EXISTS (
      SELECT 1 FROM {{outbox}}_parked AS p
      WHERE p.sink = '{{sink}}' AND p.aggregatetype = o.aggregatetype
        AND p.aggregateid = o.aggregateid AND p.seq < o.seq AND p.state = 'parked');

-- name: parked_rows
SELECT o.seq, o.id, o.type, o.aggregatetype, o.aggregateid, p.reason, p.error,
       p.parked_at AS since
FROM {{outbox}}_parked AS p
JOIN {{outbox}} AS o ON o.seq = p.seq
WHERE p.sink = '{{sink}}' AND p.state = 'parked'
ORDER BY p.seq
LIMIT $1;

-- name: unpark
-- `flowproof parked retry`: the relay tries the row again (and re-parks it if it still cannot
-- go), then the rows held behind it, in seq order: they are all queued. `parked` tells the
-- rows that were parked from those that were held.
UPDATE {{outbox}}_parked AS p
SET state = 'queued', reason = NULL, error = NULL, parked_at = now()
FROM (
    SELECT DISTINCT h.seq, h.state FROM {{outbox}}_parked AS r
    JOIN {{outbox}} AS o ON o.seq = r.seq
    JOIN {{outbox}}_parked AS h
      ON h.sink = r.sink AND h.aggregatetype = r.aggregatetype
     AND h.aggregateid = r.aggregateid AND h.seq >= r.seq AND h.state <> 'queued'
    WHERE r.sink = '{{sink}}' AND r.state = 'parked' AND ($1::uuid IS NULL OR o.id = $1::uuid)
) AS t
WHERE p.sink = '{{sink}}' AND p.seq = t.seq
RETURNING p.seq, t.state = 'parked' AS parked;

-- name: wake_relays
SELECT pg_notify('{{outbox}}', '');

-- name: prune
-- Rows older than the retention that every sink of this outbox ({{outbox}}_sinks, whichever
-- relay registered it) has published: its cursor passed them and did not set them aside. A few
-- at a time, by one relay at a time (prune_lock: the relay may not lock rows FOR UPDATE, it has
-- no UPDATE privilege on the outbox). A row a sink still owes, or has parked, stays, whatever
-- the sinks of the relay that prunes; with no sink registered (or one this version does not
-- know) nothing is pruned.
DELETE FROM {{outbox}}
WHERE seq IN (
    SELECT o.seq FROM {{outbox}} AS o
    WHERE o.created_at < now() - make_interval(secs => $1)
      AND EXISTS (SELECT 1 FROM {{outbox}}_sinks)
      AND NOT EXISTS (
          SELECT 1 FROM {{outbox}}_sinks AS s
          LEFT JOIN {{outbox}}_cursors AS c ON c.sink = s.sink AND c.slot = o.slot
          WHERE c.sink IS NULL
             OR NOT flowproof_cursor_passed(o.txid, o.seq, c.snap, c.next_snap, c.next_seq)
             OR EXISTS (SELECT 1 FROM {{outbox}}_parked AS p
                        WHERE p.sink = s.sink AND p.seq = o.seq))
    ORDER BY o.created_at
    LIMIT $2);

-- name: prune_lock
SELECT pg_try_advisory_lock($1::int, 0);

-- name: prune_unlock
SELECT pg_advisory_unlock($1::int, 0);

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
-- Which relays take part for this sink (membership locks) and which slots anyone holds.
-- Advisory locks are per database: relays of other databases on the same server do not count.
SELECT
    ARRAY(SELECT objid::bigint::int FROM pg_locks
          WHERE locktype = 'advisory' AND database = d.oid AND granted
            AND classid = $1::bigint::oid AND objsubid = 2) AS members,
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
-- Tests and the bench: rows the sink has not acknowledged (owed, or parked).
SELECT (SELECT count(*) FROM {{outbox}}_owed('{{sink}}'))
     + (SELECT count(*) FROM {{outbox}}_parked AS p JOIN {{outbox}} AS o ON o.seq = p.seq
        WHERE p.sink = '{{sink}}' AND p.state = 'parked');

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
