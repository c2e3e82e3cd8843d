-- flowproof's least-privilege PostgreSQL roles, step 2 of 2: what each role may do on the tables
-- `flowproof db migrate` made (flowproof/core/sql/migrations). Run it as flowproof_owner (or a
-- superuser) after every `flowproof db migrate`; it is idempotent:
--
--   psql "$OWNER_DSN" -X -v ON_ERROR_STOP=1 [-v outbox=flowproof_outbox] -f deploy/sql/grants.sql
--
-- `outbox` is FLOWPROOF_OUTBOX_TABLE when you changed it. Each grant is what the component's
-- statements need and no more (publisher/sql/queries.sql, consumers/receipts.py, verifier/sql/):
--
-- * flowproof_writer: INSERT of the event columns only. Applications cannot set created_at,
--   the relay's per-sink state (so cannot forge "published"), nor read, change or delete rows.
--   The identity column `seq` needs no sequence grant: an identity default is part of INSERT.
-- * flowproof_relay: SELECT (claims, gauges), UPDATE of the per-sink state columns only (mark
--   published, park; `flowproof parked retry` unparks), DELETE (pruning delivered rows); on
--   `<outbox>_deliveries` INSERT (COPY) of where each event went, SELECT and DELETE (pruning);
--   on `<outbox>_sinks` SELECT and INSERT (a relay registers its sinks; never removes one).
--   LISTEN/NOTIFY, advisory locks and pg_locks (relay membership) need no grant.
-- * flowproof_consumer: INSERT (COPY) of the receipt columns a consumer writes.
-- * flowproof_verifier: SELECT on the outbox, its deliveries and sinks, and the receipts.
-- * flowproof_smoke: flowproof_writer + flowproof_verifier (roles.sql), for `flowproof smoke`.

\set ON_ERROR_STOP on
\if :{?outbox}
\else
    \set outbox flowproof_outbox
\endif
\set deliveries :outbox '_deliveries'
\set sinks :outbox '_sinks'

BEGIN;

-- Start from nothing on every flowproof table, so that a re-run also takes back what an older
-- version of this file granted.
REVOKE ALL ON TABLE :"outbox", :"deliveries", :"sinks", flowproof_receipts,
                    flowproof_schema_migrations
    FROM PUBLIC, flowproof_writer, flowproof_relay, flowproof_consumer, flowproof_verifier,
         flowproof_smoke;

GRANT INSERT (id, aggregatetype, aggregateid, type, payload, headers)
    ON TABLE :"outbox" TO flowproof_writer;

GRANT SELECT, DELETE ON TABLE :"outbox" TO flowproof_relay;
GRANT UPDATE (redis_published_at, redis_parked_reason, redis_parked_at, redis_parked_error,
              kafka_published_at, kafka_parked_reason, kafka_parked_at, kafka_parked_error)
    ON TABLE :"outbox" TO flowproof_relay;
GRANT INSERT (seq, sink, destination, partition, position, created_at), SELECT, DELETE
    ON TABLE :"deliveries" TO flowproof_relay;
GRANT INSERT (sink), SELECT ON TABLE :"sinks" TO flowproof_relay;

GRANT INSERT (event_id, sink, consumer_group, consumer, source, position, event_type,
              aggregatetype, aggregateid, schema_id, created_at, received_at, valid, reason,
              error, delivery_count, dead_letter_reason, dead_letter_error)
    ON TABLE flowproof_receipts TO flowproof_consumer;

GRANT SELECT ON TABLE :"outbox", :"deliveries", :"sinks", flowproof_receipts
    TO flowproof_verifier;

COMMIT;
