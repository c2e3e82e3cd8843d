-- Events of one sink neither published nor parked: the rows its cursors have not passed, and
-- those set aside behind a parked or queued row of their aggregate (publisher/sql/queries.sql);
-- how many, how many waited longer than the grace period, and since when the oldest waits.
-- $1 created before (now - grace)
WITH c AS MATERIALIZED (SELECT * FROM {{outbox}}_cursors WHERE sink = '{{sink}}'),
pending AS (
    SELECT o.created_at FROM {{outbox}} AS o JOIN c ON c.slot = o.slot
    WHERE o.txid >= (SELECT min(pg_snapshot_xmin(snap)) FROM c)
      AND NOT flowproof_cursor_passed(o.txid, o.seq, c.snap, c.next_snap, c.next_seq)
    UNION ALL
    SELECT o.created_at FROM {{outbox}}_parked AS p JOIN {{outbox}} AS o ON o.seq = p.seq
    WHERE p.sink = '{{sink}}' AND p.state <> 'parked'
)
SELECT count(*) AS pending,
       count(*) FILTER (WHERE created_at < $1) AS overdue,
       min(created_at) AS oldest
FROM pending
