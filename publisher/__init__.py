"""The outbox writer API and the relay to Redis Streams and Kafka."""
