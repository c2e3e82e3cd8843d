-- A sink worker's claim in one round trip: the queued rows of its slots if there are any, else a
-- new round for the slots that have none and the next rows of the rounds (see migration 0050 for
-- the cursors). The three statements were sent one by one; on a busy machine each round trip
-- costs a wake-up of the relay and of its PostgreSQL backend, and the claim was most of the time
-- between a commit and its publication at a steady low rate.
--
-- In a VOLATILE PL/pgSQL function each statement takes a new snapshot (READ COMMITTED), so the
-- claim statement sees every row of the round the statement before it began: what the separate
-- statements relied on still holds. Called as `SELECT * FROM {{outbox}}_claim(...)` outside an
-- explicit transaction: the new rounds are committed with the claim.
--
-- Arguments: the sink; the worker's slots; how many rows; the last seq of the batch still in
-- flight (0: none) from the queue or from the rounds; and may_end: true when no batch is in
-- flight, so that a round whose rows were all in earlier, recorded batches is done.
CREATE FUNCTION {{outbox}}_claim(
    claim_sink text, owned smallint[], wanted integer,
    past_queued bigint, past_round bigint, may_end boolean
) RETURNS TABLE (
    seq bigint, id uuid, aggregatetype text, aggregateid text, type text, payload text,
    headers text, created_at timestamptz, slot smallint, behind text, queued boolean
) LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
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

    -- The next rows of the rounds, in publication order (seq: for the rows of one aggregate,
    -- their commit order), after the batch still in flight. The primary key is walked in seq
    -- order over the span of the rounds, each row checked against its slot's cursor (a scalar
    -- subquery, so that the planner keeps the walk and stops at the limit). `behind` says the
    -- row waits behind rows of its aggregate in {{outbox}}_parked (held when one of them is
    -- parked or held, queued when they are all queued).
    RETURN QUERY
    WITH rounds AS MATERIALIZED (
        SELECT min(c.next_seq) AS after, max(c.last_seq) AS upto FROM {{outbox}}_cursors AS c
        WHERE c.sink = claim_sink AND c.slot = ANY(owned) AND c.next_snap IS NOT NULL
    ),
    aside AS MATERIALIZED (
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
    WHERE o.seq > (SELECT after FROM rounds) AND o.seq <= (SELECT upto FROM rounds)
      AND o.slot = ANY(owned)
      AND o.seq > past_round
      AND (SELECT o.seq > c.next_seq AND o.seq <= c.last_seq
                  AND pg_visible_in_snapshot(o.txid, c.next_snap)
                  AND NOT pg_visible_in_snapshot(o.txid, c.snap)
           FROM {{outbox}}_cursors AS c
           WHERE c.sink = claim_sink AND c.slot = o.slot AND c.next_snap IS NOT NULL)
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
