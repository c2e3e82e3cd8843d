-- Why a delivery went to the dead-letter stream/topic instead of being handled; NULL when it was
-- handled. `reason` says why a message is invalid (valid = reason IS NULL) and an invalid message
-- is always dead-lettered with that reason; a valid one is dead-lettered too when its handler
-- kept failing (handler_error) or Redis delivered it too often (max_deliveries).
ALTER TABLE flowproof_receipts ADD COLUMN dead_letter_reason text;
