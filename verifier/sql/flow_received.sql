-- Which of these events (id, destination) have a receipt from their destination now: read again
-- after the sink's positions, so a receipt written while the sink was read still counts.
-- $1 event ids    $2 their destinations    $3 consumer group
SELECT DISTINCT c.id
FROM unnest($1::uuid[], $2::text[]) AS c (id, destination)
WHERE EXISTS (
    SELECT 1 FROM flowproof_receipts r
    WHERE r.event_id = c.id AND r.sink = '{{sink}}' AND r.consumer_group = $3
      AND r.source = c.destination)
