-- When each canary of a smoke run was first published to each sink (NULL: not yet), or parked.
-- $1 canary ids
SELECT o.id, o.created_at,
       (SELECT min(d.published_at) FROM {{outbox}}_deliveries AS d
        WHERE d.seq = o.seq AND d.sink = 'redis') AS redis_published_at,
       (SELECT min(d.published_at) FROM {{outbox}}_deliveries AS d
        WHERE d.seq = o.seq AND d.sink = 'kafka') AS kafka_published_at,
       (SELECT p.reason FROM {{outbox}}_parked AS p
        WHERE p.seq = o.seq AND p.sink = 'redis' AND p.state = 'parked') AS redis_parked_reason,
       (SELECT p.reason FROM {{outbox}}_parked AS p
        WHERE p.seq = o.seq AND p.sink = 'kafka' AND p.state = 'parked') AS kafka_parked_reason
FROM {{outbox}} AS o
WHERE o.id = ANY($1::uuid[])
