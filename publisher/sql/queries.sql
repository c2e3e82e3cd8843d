-- The relay's queries, by name. `{{outbox}}` is the configured outbox table and `{{sink}}` one of
-- redis/kafka (both validated before they get here); publisher/queries.py renders them.

-- name: claim
-- The next batch of the owned slots $1: up to $2 rows, after the batch still in flight ($3: its
-- last seq when it came from the queue, $4 when from the rounds; 0: none); $5: no batch is in
-- flight (a round with nothing left ends). One round trip: see {{outbox}}_claim (migration
-- 0060) for the queue, the rounds and the order. `behind` says the row waits behind rows of its
-- aggregate in {{outbox}}_parked (held or queued); `queued`, that it came from the queue.
SELECT seq, id, aggregatetype, aggregateid, type, payload, headers, created_at, slot, behind,
       queued
FROM {{outbox}}_claim('{{sink}}', $1::smallint[], $2::int, $3::bigint, $4::bigint, $5::boolean);

-- name: record
-- What a batch did, in one statement (one transaction, one round trip): where the sink put each
-- event it acknowledged ($1-$4; destinations and positions as array literals, see
-- flowproof.core.sqltext.text_array), the rows set aside ($5-$11: parked, held behind a parked row,
-- queued behind queued rows of their aggregate; a queued row tried again changes its state in
-- place), the queued rows the sink took ($12), and for a batch of the rounds ($16 false) the
-- cursors of the owned slots $13: every row of their rounds up to seq $14 is done, and with $15
-- (the claim found fewer rows than it asked for, and none failed) the rounds are.
WITH delivered AS (
    INSERT INTO {{outbox}}_deliveries (seq, sink, destination, partition, position)
    SELECT d.seq, '{{sink}}', d.destination, d.partition, d.position
    FROM unnest($1::bigint[], $2::text::text[], $3::int[], $4::text::text[])
        AS d (seq, destination, partition, position)
),
aside AS (
    INSERT INTO {{outbox}}_parked AS p
        (sink, seq, slot, aggregatetype, aggregateid, state, reason, error)
    SELECT '{{sink}}', r.seq, r.slot, r.aggregatetype, r.aggregateid, r.state, r.reason, r.error
    FROM unnest($5::bigint[], $6::smallint[], $7::text[], $8::text[], $9::text[],
                $10::text[], $11::text[])
        AS r (seq, slot, aggregatetype, aggregateid, state, reason, error)
    ON CONFLICT (sink, seq) DO UPDATE
    SET state = excluded.state, reason = excluded.reason, error = excluded.error,
        parked_at = now()
),
unqueued AS (
    DELETE FROM {{outbox}}_parked
    WHERE sink = '{{sink}}' AND seq = ANY($12::bigint[]) AND state = 'queued'
)
UPDATE {{outbox}}_cursors
SET snap = CASE WHEN $15::boolean THEN next_snap ELSE snap END,
    next_snap = CASE WHEN $15::boolean THEN NULL ELSE next_snap END,
    next_seq = CASE WHEN $15::boolean THEN 0 ELSE greatest(next_seq, $14::bigint) END,
    last_seq = CASE WHEN $15::boolean THEN NULL ELSE last_seq END,
    moved_at = now()
WHERE NOT $16::boolean
  AND sink = '{{sink}}' AND slot = ANY($13::smallint[]) AND next_snap IS NOT NULL;

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

-- name: maintain_partitions
-- One step ('make', 'drop' or 'plan') of one table's partitions (migration 0070: it decides
-- what may go). One row per partition made, dropped, kept or busy (or, for 'plan', each one).
SELECT action, part, lo, hi, row_count, reason
FROM {{outbox}}_partitions_maintain($1::text, $2::text, $3::float8, $4::float8, $5::integer);

-- name: prune_lock
SELECT pg_try_advisory_lock($1::int, 0);

-- name: prune_unlock
SELECT pg_advisory_unlock($1::int, 0);

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
-- (Delivery records carry no created_at since migration 0110: it is the outbox row's.)
SELECT d.sink, count(DISTINCT d.seq) AS n
FROM {{outbox}}_deliveries AS d
JOIN {{outbox}} AS o ON o.seq = d.seq
WHERE d.published_at >= to_timestamp($1) AND o.created_at >= to_timestamp($1)
GROUP BY d.sink;
