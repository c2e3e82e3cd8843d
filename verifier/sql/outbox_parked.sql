-- Events of one sink the relay parked, per reason.
SELECT reason, count(*) AS events, min(parked_at) AS since
FROM {{outbox}}_parked
WHERE sink = '{{sink}}' AND state = 'parked'
GROUP BY reason
ORDER BY events DESC, reason
