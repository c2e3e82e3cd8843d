-- One smoke canary, written the way any application writes an outbox row.
-- $1 id   $2 aggregatetype   $3 aggregateid   $4 type   $5 payload (jsonb)
INSERT INTO {{outbox}} (id, aggregatetype, aggregateid, type, payload)
VALUES ($1, $2, $3, $4, $5::jsonb)
RETURNING created_at
