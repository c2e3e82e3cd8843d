-- flow.lost, flow.duplicates, flow.order, latency.e2e and unexpected receipts of one sink and
-- consumer group, in one pass over the outbox window and the group's receipts.
-- $1 window start          $2 receipts received from (window start less a clock-skew margin)
-- $3 consumer group        $4 sampled ids are below this uuid (NULL: every event is sampled)
-- $5 lost: published before            $6 lost grace (interval; a later first receipt: recovered)
-- $7 duplicates: published before      $8 order: published before
-- $9 latency: created before           $10 unexpected: only events created after this horizon
--
-- Cost (bench/verify_eval.py): one hash of the window's events, probed by the receipts; one sort
-- of the joined rows by aggregate and seq, which serves both the grouping of each event's
-- receipts and the order window (run with enable_hashagg off, see verifier/flow.py). Hashing
-- the receipts by event id first, then joining and sorting again, cost a third more CPU.
WITH events AS (
    SELECT o.seq, o.id, o.created_at, o.{{sink}}_published_at AS published_at,
           -- One number per aggregate keeps the sort below cheap.
           hashtextextended(o.aggregatetype || '/' || o.aggregateid, 0) AS aggregate
    FROM {{outbox}} o
    WHERE o.created_at >= $1
      AND o.{{sink}}_published_at IS NOT NULL
      -- flowproof.sampling's choice (the id's first 32 bits below the threshold) as one uuid
      -- comparison instead of a text conversion per row.
      AND ($4::uuid IS NULL OR o.id < $4::uuid)
),
receipts AS (
    -- Every receipt is a delivery, valid or not: an invalid one arrived all the same.
    SELECT r.event_id, r.position_order, r.received_at
    FROM flowproof_receipts r
    WHERE r.sink = '{{sink}}' AND r.consumer_group = $3 AND r.received_at >= $2
      AND r.event_id IS NOT NULL
),
deliveries AS (
    -- One row per event of the window, and per event id received that is not in it (seq NULL).
    SELECT e.aggregate, e.seq, coalesce(e.id, r.event_id) AS id, e.published_at, e.created_at,
           count(r.received_at) AS receipts,
           min(r.position_order) AS first_position,
           max(r.position_order) AS last_position,
           min(r.received_at) AS first_received
    FROM events e
    FULL JOIN receipts r ON r.event_id = e.id
    GROUP BY e.aggregate, e.seq, coalesce(e.id, r.event_id), e.published_at, e.created_at
),
joined AS (
    SELECT d.id, d.seq, d.aggregate, d.first_position,
           -- Kafka orders only within a partition (the high bits of the position).
           CASE WHEN '{{sink}}' = 'kafka' THEN d.first_position >> 48 END AS lane,
           d.published_at < $5 AS lost_judged,
           d.published_at < $5 AND d.receipts = 0 AS lost,
           d.first_received > d.published_at + $6 AS recovered,
           d.published_at < $7 AND d.receipts > 1 AS duplicated,
           d.published_at < $7 AND d.last_position <> d.first_position AS published_twice,
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
    -- The latest first-delivery position among the earlier events of the same aggregate: an
    -- event first delivered before it was overtaken. Redeliveries do not move a first position.
    SELECT j.*,
           max(j.first_position) OVER (
               PARTITION BY j.aggregate, j.lane
               ORDER BY j.seq
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING
           ) AS latest_before
    FROM joined j
)
SELECT
    count(*) FILTER (WHERE lost_judged) AS judged,
    count(*) FILTER (WHERE lost) AS lost,
    (array_agg(id ORDER BY seq) FILTER (WHERE lost))[1:3] AS lost_examples,
    count(*) FILTER (WHERE recovered) AS recovered,
    count(*) FILTER (WHERE duplicated) AS duplicated,
    count(*) FILTER (WHERE published_twice) AS published_twice,
    (array_agg(id ORDER BY seq) FILTER (WHERE duplicated))[1:3] AS duplicated_examples,
    count(*) FILTER (WHERE order_judged AND first_position < latest_before) AS out_of_order,
    (array_agg(id ORDER BY seq) FILTER (WHERE order_judged AND first_position < latest_before))[1:3]
        AS out_of_order_examples,
    count(*) FILTER (WHERE maybe_unexpected AND NOT EXISTS (
        SELECT 1 FROM {{outbox}} o WHERE o.id = ordered.id)) AS unexpected,
    (array_agg(id) FILTER (WHERE maybe_unexpected AND NOT EXISTS (
        SELECT 1 FROM {{outbox}} o WHERE o.id = ordered.id)))[1:3] AS unexpected_examples,
    count(latency) AS latency_samples,
    percentile_cont(ARRAY[0.5, 0.95, 0.99]::float8[]) WITHIN GROUP (ORDER BY latency)
        AS latency
FROM ordered
