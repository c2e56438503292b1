"""``connector.streams.transactions`` on Apache Kafka: commit, abort, fencing, the broker probe (#16)."""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from aiokafka import TopicPartition

from connector.devtools.kafka_broker import KafkaCluster
from connector.streams.transactions import (TransactionalProducer, TransactionFenced, broker_supports_transactions,
                                            transactional_id)
from tests.integration.test_kafka_transactions import committed, new_topics, read_all

pytestmark = [pytest.mark.integration, pytest.mark.kafka]


async def test_commit_abort_and_a_newer_holder_fences_the_older(kafka_cluster: KafkaCluster | None) -> None:
    if kafka_cluster is None:
        pytest.skip("transactions need Apache Kafka")
    from connector.config import KafkaSettings
    tag = uuid.uuid4().hex[:8]
    src, out, group = f"h-in-{tag}", f"h-out-{tag}", f"h-g-{tag}"
    k = dataclasses.replace(KafkaSettings(), bootstrap_servers=kafka_cluster.bootstrap_servers, group_id=group)
    await new_topics(k.bootstrap_servers, src, out)
    assert await broker_supports_transactions(k)
    old = TransactionalProducer(k, transactional_id(k, 0), role="test")
    await old.start()
    try:
        await old.begin()
        await old.producer.send(out, b"aborted", partition=0)
        await old.abort()
        await old.begin()
        await old.producer.send(out, b"one", partition=0)
        await old.commit({TopicPartition(src, 0): 1})
        await old.begin()
        await old.producer.send_and_wait(out, b"zombie", partition=0)
        new = TransactionalProducer(k, transactional_id(k, 0), role="test")
        await new.start()           # fences `old`, aborts its open transaction
        try:
            with pytest.raises(TransactionFenced):
                await old.producer.send(out, b"late", partition=0)
                await old.commit({TopicPartition(src, 0): 5})
            await new.begin()
            await new.producer.send(out, b"two", partition=0)
            await new.commit({TopicPartition(src, 0): 2})
        finally:
            await new.stop()
    finally:
        await old.stop()
    assert await read_all(k.bootstrap_servers, out, "read_committed") == [b"one", b"two"]
    assert await committed(k.bootstrap_servers, group, TopicPartition(src, 0)) == 2
