-- The relay stops copying each event's created_at into its delivery records, and the partial
-- index that was the column's only reader goes (`<outbox>_deliveries_published_late`, of the
-- records published more than a minute after their event was created). A catalog change: no
-- table is rewritten.
--
-- The flow query stopped reading that index when the outbox lost its publication state
-- (migration 0050): it finds an event's deliveries by `(sink, seq)` and takes created_at from the
-- outbox row. Yet the relay still sent every event's created_at back to PostgreSQL with its
-- position, and asyncpg encodes a timestamptz array element by element in Python: about 2 µs of
-- the relay's CPU per event and sink (a 500-row batch: about 1 ms of the 2 ms its record
-- statement's parameters cost), while PostgreSQL evaluated the index predicate on every record.
--
-- The column stays, NULL from now on: a relay of an earlier version still writes it, so relays
-- can be upgraded one at a time after this migration, and a relay of this version works on a
-- database not migrated yet.
DROP INDEX IF EXISTS {{outbox}}_deliveries_published_late;
COMMENT ON COLUMN {{outbox}}_deliveries.created_at IS
    'Not written since migration 0110 (NULL): kept for relays of earlier versions.';
