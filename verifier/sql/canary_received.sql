-- The first receipt of each canary of a smoke run per sink and group.   $1 canary ids
SELECT sink, consumer_group, event_id, min(received_at) AS received_at, bool_and(valid) AS valid
FROM flowproof_receipts
WHERE event_id = ANY($1::uuid[])
GROUP BY sink, consumer_group, event_id
