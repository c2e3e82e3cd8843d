-- Why a row was parked, in words: the reason columns hold a short code (a metric label value),
-- this holds the message that names the field or the size, for `flowproof parked list`.
ALTER TABLE {{outbox}}
    ADD COLUMN redis_parked_error text,
    ADD COLUMN kafka_parked_error text;
