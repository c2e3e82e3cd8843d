-- The relay's claim (publisher/sql/queries.sql) reads pending rows in seq order, through either
-- the sink's pending index or the primary key. With most of the table pending (a large backlog,
-- a table filled before the relay first ran) the statistics rate both as equally selective, and
-- the pending index, made larger by INCLUDE (slot) (24-byte entries against the key's 16), lost:
-- every claim then walked the primary key from the start through each row already published
-- (over 1M rows with 200k published: 212 ms per 500-row claim instead of 3 ms). Without the
-- INCLUDE both indexes have the same size and the pending one, whose predicate is the claim's
-- filter, costs less. The slot is read from the heap row, which the claim fetches anyway.
-- Rebuilding takes a lock that blocks writes to the outbox while it runs (seconds per million
-- rows); on a large table, run it in a quiet moment.
DROP INDEX {{outbox}}_redis_pending;
CREATE INDEX {{outbox}}_redis_pending ON {{outbox}} (seq)
    WHERE redis_published_at IS NULL AND redis_parked_reason IS NULL;
DROP INDEX {{outbox}}_kafka_pending;
CREATE INDEX {{outbox}}_kafka_pending ON {{outbox}} (seq)
    WHERE kafka_published_at IS NULL AND kafka_parked_reason IS NULL;
