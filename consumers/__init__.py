"""Schema-validated Redis and Kafka consumers that record every delivery as a receipt.

`app.Consumer` (handlers per event type) and `event.Event` are what a user writes against;
`run.consume` runs them on a sink. Inside: `processing` (decode, validate, handle), `receipts`
(COPY to flowproof_receipts), `deadletter` (the `.dlq` copy), `commit` (dead letters, receipts,
then the ack), `redis` and `kafka` (the two sinks' loops).
"""
