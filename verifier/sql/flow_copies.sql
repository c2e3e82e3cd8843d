-- Where the sink put each event that has no receipt from its destination yet (every copy, when
-- it was published more than once): verifier/loss.py decides from these whether it is lost.
-- $1 event ids
SELECT o.id, d.destination, d.partition, d.position,
       extract(epoch FROM clock_timestamp() - d.published_at)::float8 AS age
FROM {{outbox}} o
JOIN {{outbox}}_deliveries d ON d.seq = o.seq AND d.sink = '{{sink}}'
WHERE o.id = ANY($1::uuid[])
ORDER BY d.destination, d.partition, flowproof_position_order(d.sink, d.position)
