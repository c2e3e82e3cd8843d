-- flowproof's least-privilege PostgreSQL roles, step 2 of 2: what each role may do on the tables
-- `flowproof db migrate` made (flowproof/core/sql/migrations). Run it as flowproof_owner (or a
-- superuser) after every `flowproof db migrate`; it is idempotent:
--
--   psql "$OWNER_DSN" -X -v ON_ERROR_STOP=1 [-v outbox=flowproof_outbox] -f deploy/sql/grants.sql
--
-- `outbox` is FLOWPROOF_OUTBOX_TABLE when you changed it. Each grant is what the component's
-- statements need and no more (publisher/sql/queries.sql, consumers/receipts.py, verifier/sql/):
--
-- * flowproof_writer: INSERT of the event columns only. Applications cannot set created_at
--   nor txid (so cannot slip a row behind a relay's cursor), nor read, change or delete rows.
--   The identity column `seq` needs no sequence grant: an identity default is part of INSERT.
-- * flowproof_relay: SELECT (claims, gauges) on the outbox, never UPDATE (it is insert-only)
--   nor DELETE; on `<outbox>_deliveries` INSERT of where each event went and SELECT; on
--   `<outbox>_cursors` SELECT and UPDATE of the cursor columns (moved once per batch); on `<outbox>_parked` SELECT, INSERT, UPDATE and
--   DELETE (rows set aside; `flowproof parked retry` queues them); on `<outbox>_sinks` SELECT
--   and INSERT (a relay registers its sinks; never removes one).
--   LISTEN/NOTIFY, advisory locks and pg_locks (relay membership) need no grant. EXECUTE on
--   the claim function `<outbox>_claim` and on `<outbox>_owed` (they run with its rights), and
--   on `<outbox>_partitions_maintain`, which runs with its owner's rights: old time partitions
--   go by DROP, which only an owner may do, and the function decides what may go (migration
--   0070). Nobody else may execute it.
-- * flowproof_consumer: INSERT (COPY) of the receipt columns a consumer writes.
-- * flowproof_verifier: SELECT on the outbox, its deliveries, sinks, cursors, parked rows and
--   progress view, and the receipts.
-- * flowproof_smoke: flowproof_writer + flowproof_verifier (roles.sql), for `flowproof smoke`.

\set ON_ERROR_STOP on
\if :{?outbox}
\else
    \set outbox flowproof_outbox
\endif
\set deliveries :outbox '_deliveries'
\set sinks :outbox '_sinks'
\set cursors :outbox '_cursors'
\set parked :outbox '_parked'
\set progress :outbox '_progress'
\set claim :outbox '_claim'
\set owed :outbox '_owed'
\set maintain :outbox '_partitions_maintain'

BEGIN;

-- Start from nothing on every flowproof table, so that a re-run also takes back what an older
-- version of this file granted.
REVOKE ALL ON TABLE :"outbox", :"deliveries", :"sinks", :"cursors", :"parked", :"progress",
                    flowproof_receipts, flowproof_schema_migrations
    FROM PUBLIC, flowproof_writer, flowproof_relay, flowproof_consumer, flowproof_verifier,
         flowproof_smoke;

GRANT INSERT (id, aggregatetype, aggregateid, type, payload, headers)
    ON TABLE :"outbox" TO flowproof_writer;

GRANT SELECT ON TABLE :"outbox" TO flowproof_relay;
GRANT SELECT, UPDATE (snap, next_snap, next_seq, last_seq, moved_at)
    ON TABLE :"cursors" TO flowproof_relay;
GRANT SELECT, INSERT, UPDATE (state, reason, error, parked_at), DELETE
    ON TABLE :"parked" TO flowproof_relay;
GRANT INSERT (seq, sink, destination, partition, position, created_at), SELECT
    ON TABLE :"deliveries" TO flowproof_relay;
GRANT INSERT (sink), SELECT ON TABLE :"sinks" TO flowproof_relay;

GRANT INSERT (event_id, sink, consumer_group, consumer, source, position, event_type,
              aggregatetype, aggregateid, schema_id, created_at, received_at, valid, reason,
              error, delivery_count, dead_letter_reason, dead_letter_error)
    ON TABLE flowproof_receipts TO flowproof_consumer;

GRANT SELECT ON TABLE :"outbox", :"deliveries", :"sinks", :"cursors", :"parked", :"progress",
    flowproof_receipts TO flowproof_verifier;

-- The functions of migrations 0020, 0050, 0060 and 0070. EXECUTE is PUBLIC's by default; granted here
-- all the same, for databases whose default privileges take it from PUBLIC. They run with the
-- caller's rights: the table grants above still decide what each role may read and change.
GRANT EXECUTE ON FUNCTION :"claim"(text, smallint[], integer, bigint, bigint, boolean)
    TO flowproof_relay;
GRANT EXECUTE ON FUNCTION :"owed"(text) TO flowproof_relay, flowproof_verifier;
GRANT EXECUTE ON FUNCTION flowproof_cursor_passed(xid8, bigint, pg_snapshot, pg_snapshot, bigint)
    TO flowproof_relay, flowproof_verifier;
GRANT EXECUTE ON FUNCTION flowproof_position_order(text, text)
    TO flowproof_consumer, flowproof_verifier;
-- With its owner's rights: revoked from PUBLIC by the migration, granted to the relay only.
REVOKE ALL ON FUNCTION :"maintain"(text, text, float8, float8, integer)
    FROM PUBLIC, flowproof_writer, flowproof_consumer, flowproof_verifier, flowproof_smoke;
GRANT EXECUTE ON FUNCTION :"maintain"(text, text, float8, float8, integer) TO flowproof_relay;

COMMIT;
