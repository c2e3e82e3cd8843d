-- Receipts per sink, consumer group and reason (NULL: valid) received in the window, and how
-- many of their dead letters the dead-letter stream or topic would not take.
-- $1 received from   $2 received before
SELECT sink, consumer_group, reason, count(*) AS receipts,
       count(*) FILTER (WHERE dead_letter_error IS NOT NULL) AS unwritable
FROM flowproof_receipts
WHERE received_at >= $1 AND received_at < $2
GROUP BY sink, consumer_group, reason
ORDER BY sink, consumer_group, reason NULLS FIRST
