"""The Avro schemas, their registry and ids, the envelope and the Confluent wire framing."""
