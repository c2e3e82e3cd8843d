-- Events of one sink neither published nor parked (see {{outbox}}_owed in migration 0050): how
-- many, how many waited longer than the grace period, and since when the oldest waits.
-- $1 created before (now - grace)
SELECT count(*) AS pending,
       count(*) FILTER (WHERE created_at < $1) AS overdue,
       min(created_at) AS oldest
FROM {{outbox}}_owed('{{sink}}')
