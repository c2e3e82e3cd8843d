-- flowproof's least-privilege PostgreSQL roles, step 1 of 2: the roles themselves.
--
-- Run once per server (and again to change a password; it is idempotent) by a superuser or a
-- role with CREATEROLE, connected to the flowproof database, with psql:
--
--   psql "$ADMIN_DSN" -X -v ON_ERROR_STOP=1 \
--        -v owner_password_file=/run/secrets/pg_owner \
--        -v relay_password_file=/run/secrets/pg_relay \
--        -v consumer_password_file=/run/secrets/pg_consumer \
--        -v verifier_password_file=/run/secrets/pg_verifier \
--        [-v writer_password_file=...] [-v smoke_password_file=...] [-v schema=public] \
--        -f deploy/sql/roles.sql
--
-- Each password is given as <role>_password_file (a file psql reads; a trailing newline is not
-- part of it) or <role>_password (the value itself, which then shows in the process list).
-- The server stores SCRAM-SHA-256 verifiers (password_encryption), but the statement that sets
-- a password carries it: do not run this with log_statement = 'ddl' or 'all'.
--
-- Then, as flowproof_owner: `flowproof db migrate`, then deploy/sql/grants.sql (step 2).
--
--   role                login     what it may do (grants.sql)
--   flowproof_owner     yes       owns flowproof's tables: runs `flowproof db migrate`
--   flowproof_writer    optional  INSERT the event columns of the outbox (applications)
--   flowproof_relay     yes       read the outbox, record deliveries, park rows, drop old
--                                 partitions (through the function made for it)
--   flowproof_consumer  yes       INSERT (COPY) receipts
--   flowproof_verifier  yes       SELECT the outbox and the receipts
--   flowproof_smoke     optional  flowproof_writer + flowproof_verifier: `flowproof smoke`
--
-- flowproof_writer and flowproof_smoke get a login only when their password is given; else
-- they are group roles: `GRANT flowproof_writer TO your_application_role;`.

\set ON_ERROR_STOP on
\if :{?schema}
\else
    \set schema public
\endif

-- Passwords: <role>_password_file wins over <role>_password.
\if :{?owner_password_file}
    \set owner_password `cat :'owner_password_file'`
\endif
\if :{?relay_password_file}
    \set relay_password `cat :'relay_password_file'`
\endif
\if :{?consumer_password_file}
    \set consumer_password `cat :'consumer_password_file'`
\endif
\if :{?verifier_password_file}
    \set verifier_password `cat :'verifier_password_file'`
\endif
\if :{?writer_password_file}
    \set writer_password `cat :'writer_password_file'`
\endif
\if :{?smoke_password_file}
    \set smoke_password `cat :'smoke_password_file'`
\endif
\if :{?owner_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'roles.sql: give -v owner_password_file=PATH (or owner_password)'; END $$;
\endif
\if :{?relay_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'roles.sql: give -v relay_password_file=PATH (or relay_password)'; END $$;
\endif
\if :{?consumer_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'roles.sql: give -v consumer_password_file=PATH (or consumer_password)'; END $$;
\endif
\if :{?verifier_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'roles.sql: give -v verifier_password_file=PATH (or verifier_password)'; END $$;
\endif

BEGIN;

SELECT format('CREATE ROLE %I', name)
FROM unnest(ARRAY['flowproof_owner', 'flowproof_writer', 'flowproof_relay', 'flowproof_consumer',
                  'flowproof_verifier', 'flowproof_smoke']) AS name
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name)
\gexec

-- No role may do more than its grants: no superuser, no role or database creation, no
-- replication, no bypassing row security.
ALTER ROLE flowproof_owner NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    LOGIN PASSWORD :'owner_password';
ALTER ROLE flowproof_relay NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    LOGIN PASSWORD :'relay_password';
ALTER ROLE flowproof_consumer NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    LOGIN PASSWORD :'consumer_password';
ALTER ROLE flowproof_verifier NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    LOGIN PASSWORD :'verifier_password';
ALTER ROLE flowproof_writer NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE flowproof_smoke NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
\if :{?writer_password}
    ALTER ROLE flowproof_writer LOGIN PASSWORD :'writer_password';
\else
    ALTER ROLE flowproof_writer NOLOGIN PASSWORD NULL;
\endif
\if :{?smoke_password}
    ALTER ROLE flowproof_smoke LOGIN PASSWORD :'smoke_password';
\else
    ALTER ROLE flowproof_smoke NOLOGIN PASSWORD NULL;
\endif
GRANT flowproof_writer, flowproof_verifier TO flowproof_smoke;

SELECT format('GRANT CONNECT ON DATABASE %I TO flowproof_owner, flowproof_writer, '
              'flowproof_relay, flowproof_consumer, flowproof_verifier, flowproof_smoke',
              current_database())
\gexec

-- The owner creates flowproof's tables in the schema; the others only look names up in it.
GRANT USAGE, CREATE ON SCHEMA :"schema" TO flowproof_owner;
GRANT USAGE ON SCHEMA :"schema"
    TO flowproof_writer, flowproof_relay, flowproof_consumer, flowproof_verifier;

COMMIT;
