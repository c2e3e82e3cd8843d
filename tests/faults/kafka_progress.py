"""Whether a Kafka consumer group has read everything its topics hold: what "done" means in a
scenario where Kafka may lose acknowledged records (those never arrive, so waiting for a receipt
of every event would never end)."""

from __future__ import annotations

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

DEAD_LETTER_SUFFIX = ".dlq"


async def group_caught_up(bootstrap: str, group: str, prefix: str) -> bool:
    """True when `group` has committed, on every partition of the topics under `prefix` (the
    dead-letter topics aside), the partition's end offset. False while not, and when Kafka did
    not answer (a node may be down: the caller asks again)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await admin.start()
        await consumer.start()
        topics = [
            t
            for t in await admin.list_topics()
            if t.startswith(prefix) and not t.endswith(DEAD_LETTER_SUFFIX)
        ]
        partitions = [
            TopicPartition(item["topic"], part["partition"])
            for item in await admin.describe_topics(topics)
            for part in item["partitions"]
        ]
        committed = await admin.list_consumer_group_offsets(group)
        ends = await consumer.end_offsets(partitions)
    except (KafkaError, OSError):
        return False
    finally:
        await consumer.stop()
        await admin.close()
    return bool(partitions) and all(
        end == 0 or (tp in committed and committed[tp].offset >= end) for tp, end in ends.items()
    )
