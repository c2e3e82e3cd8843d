-- Events of one sink the relay parked, per reason.
SELECT {{sink}}_parked_reason AS reason, count(*) AS events, min({{sink}}_parked_at) AS since
FROM {{outbox}}
WHERE {{sink}}_parked_reason IS NOT NULL
GROUP BY {{sink}}_parked_reason
ORDER BY events DESC, reason
