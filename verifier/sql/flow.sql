-- flow.lost, flow.duplicates, flow.order, latency.e2e and unexpected receipts of one sink and
-- consumer group, in one pass over the outbox window and the group's receipts.
-- $1 window start          $2 receipts received from (window start less a clock-skew margin)
-- $3 consumer group        $4 sampling threshold (flowproof.sampling)
-- $5 lost: published before            $6 lost grace (interval; a later first receipt: recovered)
-- $7 duplicates: published before      $8 order: published before
-- $9 latency: created before           $10 unexpected: only events created after this horizon
WITH events AS (
    SELECT o.seq, o.id, o.created_at, o.{{sink}}_published_at AS published_at,
           -- One number per aggregate keeps the sort below cheap.
           hashtextextended(o.aggregatetype || '/' || o.aggregateid, 0) AS aggregate
    FROM {{outbox}} o
    WHERE o.created_at >= $1
      AND o.{{sink}}_published_at IS NOT NULL
      AND ($4 >= 4294967296 OR {{sampled}})  -- every event is sampled at ratio 1
),
deliveries AS (
    -- Every receipt is a delivery, valid or not: an invalid one arrived all the same.
    SELECT r.event_id,
           count(*) AS receipts,
           min(r.position_order) AS first_position,
           max(r.position_order) AS last_position,
           min(r.received_at) AS first_received,
           bool_or(r.valid) AS any_valid,
           min(r.created_at) AS event_created
    FROM flowproof_receipts r
    WHERE r.sink = '{{sink}}' AND r.consumer_group = $3 AND r.received_at >= $2
      AND r.event_id IS NOT NULL
    GROUP BY r.event_id
),
joined AS (
    SELECT coalesce(e.id, d.event_id) AS id, e.seq, e.aggregate, d.first_position,
           -- Kafka orders only within a partition (the high bits of the position).
           CASE WHEN '{{sink}}' = 'kafka' THEN d.first_position >> 48 END AS lane,
           e.published_at < $5 AS lost_judged,
           e.published_at < $5 AND d.event_id IS NULL AS lost,
           d.first_received > e.published_at + $6 AS recovered,
           e.published_at < $7 AND d.receipts > 1 AS duplicated,
           e.published_at < $7 AND d.last_position <> d.first_position AS published_twice,
           e.published_at < $8 AS order_judged,
           CASE WHEN e.created_at < $9
                THEN extract(epoch FROM d.first_received - e.created_at)::float8 END AS latency,
           -- Pruned rows are gone from the outbox: only events created after its oldest row
           -- still there (and after the horizon) can be judged unexpected.
           e.id IS NULL AND d.any_valid AND d.event_created >= $10
               AND d.event_created >= (SELECT coalesce(min(created_at), 'infinity')
                                       FROM {{outbox}}) AS maybe_unexpected
    FROM events e
    FULL JOIN deliveries d ON d.event_id = e.id
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
