"""Schema-validated Redis and Kafka consumers that record every delivery as a receipt."""
