"""Integration fixtures: a real Kafka-protocol broker, simulators and workers as processes."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from connector.devtools.kafka_broker import KafkaCluster
from connector.devtools.stack import LocalStack
from tests.conftest import fresh_stack


@pytest.fixture
async def stack(broker: LocalStack) -> AsyncIterator[LocalStack]:
    await broker.start_simulator("smpp_rest")
    try:
        yield broker
    finally:
        await broker.stop()
        for w in broker.workers:   # show what the workers said when a test fails
            if w.log and w.log.exists():
                tail = w.log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {w.name} log tail ({w.log})", *tail, sep="\n")


@pytest.fixture
async def bench_cluster(kafka_cluster: KafkaCluster | None) -> AsyncIterator[KafkaCluster | None]:
    """For ``run_bench(cluster=...)``: the test session's Apache Kafka with every topic of the contract
    empty, shared by the bench's scenarios (a broker of their own costs each a JVM start and stop);
    None on Tansu, where the bench starts an embedded broker per scenario."""
    if kafka_cluster is not None:
        await (await fresh_stack(kafka_cluster)).stop()
    yield kafka_cluster
    assert kafka_cluster is None or all(n.alive for n in kafka_cluster.members), "the bench stopped the session's broker"
