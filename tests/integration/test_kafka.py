"""connector.kafka against a real broker: topics of the contract and a clear error for a missing one."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer

import topics
from connector.kafka import TopicMissing, check_topics, client_options, topic_partitions
from connector.stack import LocalStack

pytestmark = pytest.mark.integration


async def test_topic_partitions_and_a_missing_topic(broker: LocalStack) -> None:
    consumer = AIOKafkaConsumer(**client_options(broker.kafka))
    await consumer.start()
    try:
        parts = await topic_partitions(consumer, topics.spec("outbound").name)
        assert len(parts) == topics.spec("outbound").partitions
        with pytest.raises(TopicMissing, match="sms-connector topics apply"):
            await topic_partitions(consumer, "sms.no-such-topic", attempts=3)
    finally:
        await consumer.stop()
    assert all(state.ok for state in await check_topics(broker.kafka))
