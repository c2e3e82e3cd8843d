-- When each canary of a smoke run was published to each sink (NULL: not yet), or parked.
-- $1 canary ids
SELECT id, created_at, redis_published_at, kafka_published_at, redis_parked_reason,
       kafka_parked_reason
FROM {{outbox}}
WHERE id = ANY($1::uuid[])
