-- The claim (migration 0060) reads each slot's cursor once per claim instead of once per row,
-- and always walks the primary keys in seq order.
--
-- Each row of a round was checked against its slot's cursor by a correlated subquery: a scan of
-- the cursors table (two rows per slot) per outbox row, about 6 µs of PostgreSQL's CPU per row and
-- sink. The cursors of the owned slots are now read once, into arrays by slot, which the walk
-- indexes per row.
--
-- The walk's plan depended on estimates: with a round's bounds unknown at planning time and the
-- per-row check estimated to keep few rows, the planner could choose to read the whole round and
-- sort it (a top-N sort) rather than merge the partitions' primary keys in seq order and stop at
-- the limit: over a backlog of 100,000 rows one claim took 0.7 s instead of a few ms, and a
-- backlog was drained in quadratic time. `enable_sort` is off inside the function, so that the
-- only plan without a penalty is the walk (tests/test_relay_claim_plan.py).
CREATE OR REPLACE FUNCTION {{outbox}}_claim(
    claim_sink text, owned smallint[], wanted integer,
    past_queued bigint, past_round bigint, may_end boolean
) RETURNS TABLE (
    seq bigint, id uuid, aggregatetype text, aggregateid text, type text, payload text,
    headers text, created_at timestamptz, slot smallint, behind text, queued boolean
) LANGUAGE plpgsql VOLATILE SET enable_sort = off AS $$
#variable_conflict use_column
DECLARE
    -- The owned slots' rounds, by slot: NULL where a slot has none.
    cursor_snap pg_snapshot[];
    cursor_next_snap pg_snapshot[];
    cursor_next_seq bigint[];
    cursor_last_seq bigint[];
    round_after bigint;
    round_upto bigint;
    cur record;
BEGIN
    -- Queued rows of the owned slots (see {{outbox}}_parked), in seq order, except those behind
    -- a parked or held row of their aggregate. A created_at Python cannot hold (infinity, BC,
    -- after 9999) comes back NULL, and the row is parked for its envelope.
    RETURN QUERY
    SELECT o.seq, o.id, o.aggregatetype, o.aggregateid, o.type,
           o.payload::text, o.headers::text,
           CASE WHEN o.created_at >= '0001-01-01 00:00:00+00'
                 AND o.created_at < '10000-01-01 00:00:00+00' THEN o.created_at END,
           o.slot, NULL::text, true
    FROM {{outbox}}_parked AS q
    JOIN {{outbox}} AS o ON o.seq = q.seq
    WHERE q.sink = claim_sink AND q.state = 'queued' AND q.slot = ANY(owned)
      AND q.seq > past_queued
      AND NOT EXISTS (
          SELECT 1 FROM {{outbox}}_parked AS p
          WHERE p.sink = claim_sink AND p.aggregatetype = q.aggregatetype
            AND p.aggregateid = q.aggregateid AND p.seq < q.seq AND p.state <> 'queued')
    ORDER BY q.seq
    LIMIT wanted;
    IF FOUND THEN
        RETURN;
    END IF;

    -- A new round for each owned slot that has none: the rows whose transaction is visible in
    -- this statement's snapshot and was not in the slot's cursor snapshot, from the first seq
    -- to the last. A slot with no such row moves to the snapshot, at most every 50 ms: moving
    -- it only keeps the span scanned here short (the rows since the oldest idle snapshot, which
    -- at a steady rate grow with the interval), and writing every idle cursor on every cycle
    -- would cost more than it saves.
    WITH now AS MATERIALIZED (SELECT pg_current_snapshot() AS snap),
    idle AS MATERIALIZED (
        SELECT c.slot, c.snap FROM {{outbox}}_cursors AS c
        WHERE c.sink = claim_sink AND c.slot = ANY(owned) AND c.next_snap IS NULL
    ),
    span AS (
        SELECT o.slot, min(o.seq) AS first_seq, max(o.seq) AS last_seq
        FROM {{outbox}} AS o
        JOIN idle AS i ON i.slot = o.slot
        CROSS JOIN now
        WHERE o.txid >= (SELECT min(pg_snapshot_xmin(idle.snap)) FROM idle)
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
    WHERE c.sink = claim_sink AND c.slot = i.slot
      AND (s.slot IS NOT NULL OR c.moved_at < now() - interval '50 milliseconds');

    -- The cursors of the rounds, read once: each row below is checked against its slot's.
    FOR cur IN
        SELECT c.slot, c.snap, c.next_snap, c.next_seq, c.last_seq FROM {{outbox}}_cursors AS c
        WHERE c.sink = claim_sink AND c.slot = ANY(owned) AND c.next_snap IS NOT NULL
    LOOP
        cursor_snap[cur.slot] := cur.snap;
        cursor_next_snap[cur.slot] := cur.next_snap;
        cursor_next_seq[cur.slot] := cur.next_seq;
        cursor_last_seq[cur.slot] := cur.last_seq;
        round_after := least(round_after, cur.next_seq);
        round_upto := greatest(round_upto, cur.last_seq);
    END LOOP;

    -- The next rows of the rounds, in publication order (seq: for the rows of one aggregate,
    -- their commit order), after the batch still in flight: the primary keys walked in seq
    -- order over the span of the rounds (merged across partitions), each row checked against
    -- its slot's cursor, stopping at the limit. `behind` says the row waits behind rows of its
    -- aggregate in {{outbox}}_parked (held when one of them is parked or held, queued when they
    -- are all queued).
    RETURN QUERY
    WITH aside AS MATERIALIZED (
        SELECT EXISTS (SELECT 1 FROM {{outbox}}_parked AS p WHERE p.sink = claim_sink)
            AS anything
    )
    SELECT o.seq, o.id, o.aggregatetype, o.aggregateid, o.type,
           o.payload::text, o.headers::text,
           CASE WHEN o.created_at >= '0001-01-01 00:00:00+00'
                 AND o.created_at < '10000-01-01 00:00:00+00' THEN o.created_at END,
           o.slot,
           -- Looked up only while the sink has rows set aside at all (one probe per claim,
           -- not one per row, in the common case).
           CASE WHEN (SELECT anything FROM aside) THEN
               (SELECT CASE WHEN count(*) = 0 THEN NULL
                            WHEN bool_or(p.state <> 'queued') THEN 'held' ELSE 'queued' END
                FROM {{outbox}}_parked AS p
                WHERE p.sink = claim_sink AND p.aggregatetype = o.aggregatetype
                  AND p.aggregateid = o.aggregateid AND p.seq < o.seq)
           END,
           false
    FROM {{outbox}} AS o
    WHERE o.seq > round_after AND o.seq <= round_upto
      AND o.slot = ANY(owned)
      AND o.seq > past_round
      -- A slot without a round has NULLs here: its rows are not taken.
      AND o.seq > cursor_next_seq[o.slot] AND o.seq <= cursor_last_seq[o.slot]
      AND pg_visible_in_snapshot(o.txid, cursor_next_snap[o.slot])
      AND NOT pg_visible_in_snapshot(o.txid, cursor_snap[o.slot])
    ORDER BY o.seq
    LIMIT wanted;
    IF FOUND OR NOT may_end THEN
        RETURN;
    END IF;

    -- Nothing left in the rounds: their rows were all in earlier, recorded batches.
    UPDATE {{outbox}}_cursors AS c
    SET snap = c.next_snap, next_snap = NULL, next_seq = 0, last_seq = NULL,
        moved_at = now()
    WHERE c.sink = claim_sink AND c.slot = ANY(owned) AND c.next_snap IS NOT NULL;
END
$$;
