"""Kafka plumbing written once: group-less consumers, reading topics to their end, producing
until the broker acknowledges, and the rebalance listener of the consumer-group streams.

Reading to the end: each partition is read from its start offset until the consumer's position
reaches the end offset taken when reading began. A fetch returns whole batches, so this is
complete even where a broker's end offset is its last batch's base offset + 1 (Tansu), and it
ends even when compaction removed the last records (a record-offset rule would wait for them).
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Awaitable, Callable, Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from connector.config import KafkaSettings
from connector.kafka import client_options

__all__ = ["Headers", "RebalanceListener", "groupless_consumer", "produce_acknowledged", "read_to_end"]

Headers = list[tuple[str, bytes]]


def groupless_consumer(kafka: KafkaSettings, **options: Any) -> AIOKafkaConsumer:
    """A consumer outside any group (assign, never subscribe; nothing committed), reading from
    the earliest offset when it seeks nowhere. ``options`` add or override aiokafka's."""
    return AIOKafkaConsumer(**{**client_options(kafka), "group_id": None, "enable_auto_commit": False,
                               "auto_offset_reset": "earliest", **options})


async def read_to_end(consumer: AIOKafkaConsumer, start: Mapping[TopicPartition, int | None],
                      on_record: Callable[[Any], None], *, timeout_s: float | None = None,
                      on_batch: Callable[[], None] | None = None, fetch_timeout_ms: int = 200,
                      max_records: int = 10000) -> None:
    """Assign ``start``'s partitions and read each from its offset (None: its beginning) to the
    end offset taken now (module docstring), calling ``on_record`` per record and ``on_batch``
    after each fetch. Raises TimeoutError after ``timeout_s`` (None: no limit)."""
    tps = list(start)
    consumer.assign(tps)
    for tp, offset in start.items():
        if offset is None:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, offset)
    if not tps:
        return
    end = await consumer.end_offsets(tps)
    remaining = {tp for tp in tps if await consumer.position(tp) < end[tp]}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while remaining:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"reading {sorted({tp.topic for tp in tps})} to its end took over {timeout_s:.0f}s")
        batch = await consumer.getmany(*remaining, timeout_ms=fetch_timeout_ms, max_records=max_records)
        for records in batch.values():
            for r in records:
                on_record(r)
        if on_batch is not None and batch:
            on_batch()
        remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}


async def produce_acknowledged(producer: AIOKafkaProducer, topic: str, key: bytes | None, value: bytes | None,
                               headers: Headers | None = None) -> Any:
    """Send one record and return once the broker acknowledged it (its metadata); raises the
    producer's error otherwise. With ``acks="all"`` this is durable."""
    fut = await producer.send(topic, value=value, key=key, headers=headers or [])
    return await fut


class RebalanceListener(ConsumerRebalanceListener):
    """Hands a group stream's assignments and revocations to its owner (plain or async callables)."""

    def __init__(self, on_assigned: Callable[[list[TopicPartition]], Any],
                 on_revoked: Callable[[list[TopicPartition]], Awaitable[Any]]) -> None:
        self._assigned = on_assigned
        self._revoked = on_revoked

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        result = self._assigned(list(assigned))
        if inspect.isawaitable(result):
            await result
