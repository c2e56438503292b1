"""connector.kafka against a real broker: topics of the contract and a clear error for a missing one."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connector import contract as topics
from connector.kafka import TopicMissing, check_topics, client_options, topic_partitions
from connector.devtools.stack import LocalStack
from connector.streams.batcher import Batcher

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


async def test_the_batcher_delivers_every_record_in_order_and_reports_failures(broker: LocalStack) -> None:
    topic = topics.spec("inbound").name
    producer = AIOKafkaProducer(**client_options(broker.kafka), acks="all")
    await producer.start()
    try:
        batcher = Batcher(producer, linger_s=0.002)
        n = 3000
        done = [batcher.send(topic, i % 4, b"k%d" % i, b"v%d" % i, [("h", b"%d" % i)], 1_700_000_000_000 + i)
                for i in range(n)]
        assert len(set(map(id, done))) < n / 10            # records share their batch's future
        await asyncio.gather(*done)
        bad = [batcher.send(topic, 999, b"k", b"v"), batcher.send(topic, 999, b"k2", b"v2")]
        for fut in bad:                                    # a batch that fails fails each of its records
            with pytest.raises(AssertionError, match="Unrecognized partition"):
                await fut
        await batcher.aclose()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**client_options(broker.kafka), auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(4)]
        consumer.assign(parts)
        seen: dict[int, list[int]] = {p: [] for p in range(4)}
        while sum(map(len, seen.values())) < n:
            for tp, recs in (await consumer.getmany(timeout_ms=1000)).items():
                for r in recs:
                    i = int(r.value[1:])
                    assert r.key == b"k%d" % i and r.headers == (("h", b"%d" % i),)
                    assert r.timestamp == 1_700_000_000_000 + i
                    seen[tp.partition].append(i)
    finally:
        await consumer.stop()
    for p, got in seen.items():
        assert got == [i for i in range(n) if i % 4 == p]   # nothing lost, nothing repeated, in order
