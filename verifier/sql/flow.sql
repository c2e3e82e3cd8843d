-- flow.duplicates, flow.order, latency.e2e, unexpected and misrouted receipts of one sink and
-- consumer group, and the events still without a receipt (whose loss verifier/loss.py decides by
-- their positions), in one pass over the window's delivery records, outbox rows and the group's
-- receipts.
-- $1 window start (events created within the window, or published within it)
-- $2 receipts received from (a minute and a clock-skew margin before the window start)
-- $3 consumer group        $4 sampled ids are below this uuid (NULL: every event is sampled)
-- $5 lost: published before            $6 stream/topic prefix (an event's destination)
-- $7 duplicates: published before      $8 order: published before
-- $9 latency: created before           $10 unexpected: only events created after this horizon
--
-- A receipt counts as a delivery of its event only when it came from the event's destination
-- (prefix || aggregatetype); one from anywhere else is a misrouted copy (counted here when the
-- consumer took it for valid: flowproof's consumers receipt it as invalid, for conformance).
--
-- Cost (bench/verify_eval.py): the sink's delivery records of the window, grouped per event in
-- seq order from an index-only scan (the outbox itself has no publication state since migration
-- 0050), joined to their outbox rows; one hash of the window's events, probed by the receipts;
-- one sort of the joined rows by aggregate and seq, which serves both the grouping of each
-- event's receipts and the order window (run with enable_hashagg off, see verifier/flow.py).
WITH published AS (
    -- What this sink acknowledged within the window or the minute before it (the relay's
    -- delivery records, appended in publication order), per event: its first and last delivery.
    SELECT d.seq, min(d.published_at) AS first_published, max(d.published_at) AS last_published
    FROM {{outbox}}_deliveries d
    WHERE d.sink = '{{sink}}' AND d.published_at >= $1::timestamptz - interval '1 minute'
    GROUP BY d.seq
),
events AS (
    -- Events created within the window (or the minute before it and published within it), and
    -- those created earlier and published within it (a replayed backlog): judged all the same.
    SELECT o.seq, o.id, o.created_at, p.first_published AS published_at,
           $6::text || o.aggregatetype AS destination,
           -- One number per aggregate keeps the sort below cheap.
           hashtextextended(o.aggregatetype || '/' || o.aggregateid, 0) AS aggregate
    FROM published p
    JOIN {{outbox}} o ON o.seq = p.seq
    WHERE (o.created_at >= $1
           OR (o.created_at >= $1::timestamptz - interval '1 minute' AND p.first_published >= $1)
           OR (o.created_at < $1::timestamptz - interval '1 minute' AND p.last_published >= $1))
      -- flowproof.sampling's choice (the id's first 32 bits below the threshold) as one uuid
      -- comparison instead of a text conversion per row.
      AND ($4::uuid IS NULL OR o.id < $4::uuid)
),
receipts AS (
    -- Every receipt is a delivery, valid or not: an invalid one arrived all the same.
    SELECT r.event_id, r.source, r.position_order, r.received_at, r.valid
    FROM flowproof_receipts r
    WHERE r.sink = '{{sink}}' AND r.consumer_group = $3 AND r.received_at >= $2
      AND r.event_id IS NOT NULL
),
paired AS (
    -- Each event with each receipt of its id (or alone); `home`: the receipt came from the
    -- event's destination, compared once here rather than in every aggregate below.
    SELECT e.aggregate, e.seq, coalesce(e.id, r.event_id) AS id, e.published_at, e.created_at,
           r.received_at, r.position_order, r.source = e.destination AS home,
           -- A consumer that checks routing marks a copy from elsewhere invalid (misrouted),
           -- which schema.conformance reports; a valid one elsewhere is this check's to report.
           r.source <> e.destination AND r.valid AS elsewhere
    FROM events e
    FULL JOIN receipts r ON r.event_id = e.id
),
deliveries AS (
    -- One row per event of the window, and per event id received that is not in it (seq NULL).
    SELECT p.aggregate, p.seq, p.id, p.published_at, p.created_at,
           count(*) FILTER (WHERE p.home) AS receipts,
           count(*) FILTER (WHERE p.elsewhere) AS elsewhere,
           min(p.position_order) FILTER (WHERE p.home) AS first_position,
           max(p.position_order) FILTER (WHERE p.home) AS last_position,
           min(p.received_at) FILTER (WHERE p.home) AS first_received
    FROM paired p
    GROUP BY p.aggregate, p.seq, p.id, p.published_at, p.created_at
),
joined AS (
    SELECT d.id, d.seq, d.aggregate, d.first_position, d.first_received,
           -- Kafka orders only within a partition (the high bits of the position); the topic
           -- is the aggregate's, as only receipts from the event's destination count.
           CASE WHEN '{{sink}}' = 'kafka' THEN d.first_position >> 48 END AS lane,
           d.seq IS NOT NULL AND d.published_at < $5 AS lost_judged,
           d.seq IS NOT NULL AND d.published_at < $5 AND d.receipts = 0 AS unreceived,
           d.published_at < $7 AND d.receipts > 1 AS duplicated,
           d.published_at < $7 AND d.last_position <> d.first_position AS published_twice,
           d.published_at < $7 AND d.elsewhere > 0 AS misrouted,
           d.published_at < $8 AS order_judged,
           -- date_part computes in float8 and equals extract(...)::float8 (which goes through
           -- numeric, three times slower) while the interval has no day part: under a day.
           CASE WHEN d.created_at < $9 THEN
               CASE WHEN d.first_received - d.created_at < interval '1 day'
                         AND d.first_received - d.created_at > interval '-1 day'
                    THEN date_part('epoch', d.first_received - d.created_at)
                    ELSE extract(epoch FROM d.first_received - d.created_at)::float8 END
           END AS latency,
           -- Pruned rows are gone from the outbox: only events created after its oldest row
           -- still there (and after the horizon) can be judged unexpected. Looked up only for
           -- the event ids the window does not have, which are few.
           d.seq IS NULL AND (
               SELECT bool_or(r.valid) AND min(r.created_at) >= $10
                      AND min(r.created_at) >= (SELECT coalesce(min(created_at), 'infinity')
                                                FROM {{outbox}})
               FROM flowproof_receipts r
               WHERE r.event_id = d.id AND r.sink = '{{sink}}' AND r.consumer_group = $3
                 AND r.received_at >= $2
           ) AS maybe_unexpected
    FROM deliveries d
),
ordered AS (
    -- The latest first-delivery position among the earlier events of the same aggregate in the
    -- same lane: an event first delivered before it was overtaken. Redeliveries do not move a
    -- first position. Across lanes (a Kafka aggregate whose partition changed when partitions
    -- were added) positions do not compare: the times of first receipt do.
    SELECT j.*,
           max(j.first_position) OVER (
               PARTITION BY j.aggregate, j.lane
               ORDER BY j.seq
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS latest_before,
           lag(j.lane) OVER by_aggregate AS previous_lane,
           lag(j.first_received) OVER by_aggregate AS previous_received
    FROM joined j
    WINDOW by_aggregate AS (PARTITION BY j.aggregate ORDER BY j.seq)
),
judged AS (
    SELECT o.*,
           o.order_judged AND (
               o.first_position < o.latest_before
               OR (o.previous_lane <> o.lane AND o.first_received < o.previous_received)
           ) AS out_of_order,
           o.order_judged AND o.previous_lane <> o.lane AS moved
    FROM ordered o
)
SELECT
    count(*) FILTER (WHERE lost_judged) AS judged,
    coalesce(array_agg(id ORDER BY seq) FILTER (WHERE unreceived), '{}') AS unreceived,
    count(*) FILTER (WHERE duplicated) AS duplicated,
    count(*) FILTER (WHERE published_twice) AS published_twice,
    (array_agg(id ORDER BY seq) FILTER (WHERE duplicated))[1:3] AS duplicated_examples,
    count(*) FILTER (WHERE misrouted) AS misrouted,
    (array_agg(id ORDER BY seq) FILTER (WHERE misrouted))[1:3] AS misrouted_examples,
    count(*) FILTER (WHERE out_of_order) AS out_of_order,
    (array_agg(id ORDER BY seq) FILTER (WHERE out_of_order))[1:3] AS out_of_order_examples,
    count(*) FILTER (WHERE moved) AS moved,
    (array_agg(id ORDER BY seq) FILTER (WHERE moved))[1:3] AS moved_examples,
    count(*) FILTER (WHERE maybe_unexpected AND NOT EXISTS (
        SELECT 1 FROM {{outbox}} o WHERE o.id = judged.id)) AS unexpected,
    (array_agg(id) FILTER (WHERE maybe_unexpected AND NOT EXISTS (
        SELECT 1 FROM {{outbox}} o WHERE o.id = judged.id)))[1:3] AS unexpected_examples,
    count(latency) AS latency_samples,
    percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY latency)
        AS latency
FROM judged
