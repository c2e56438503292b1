"""Kafka plumbing written once: group-less consumers, reading topics to their end, producing
until the broker acknowledges, and the rebalance listener of the consumer-group streams.

Reading to the end: each partition is read from its start offset until the consumer's position
reaches the end offset taken when reading began. A fetch returns whole batches, so this is
complete even where a broker's end offset is its last batch's base offset + 1 (Tansu), and it
ends even when compaction removed the last records (a record-offset rule would wait for them).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Coroutine, Mapping, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener

from connector.config import KafkaSettings
from connector.kafka import client_options

__all__ = ["Headers", "IdleTimeout", "READ_COMMITTED", "RebalanceListener", "batches_to_end", "close_reader",
           "groupless_consumer", "produce_acknowledged", "read_to_end", "stop_client", "unless_stopped"]

Headers = list[tuple[str, bytes]]

# Every reader inside the connector reads committed records only (#16): with exactly-once on, a
# crashed or fenced writer leaves aborted records behind, and only a read_committed reader skips
# them. On a broker without transactions (Tansu) every record is committed, so nothing changes.
# The end offsets such a reader gets are last stable offsets: reading "to the end" stops before
# an open transaction instead of waiting for it.
READ_COMMITTED = {"isolation_level": "read_committed"}


class IdleTimeout(TimeoutError):
    """No record arrived for the reader's ``idle_timeout_s`` before the end was reached."""


def groupless_consumer(kafka: KafkaSettings, **options: Any) -> AIOKafkaConsumer:
    """A consumer outside any group (assign, never subscribe; nothing committed), reading from
    the earliest offset when it seeks nowhere, committed records only (``READ_COMMITTED``).
    ``options`` add or override aiokafka's."""
    return AIOKafkaConsumer(**{**client_options(kafka), "group_id": None, "enable_auto_commit": False,
                               "auto_offset_reset": "earliest", **READ_COMMITTED, **options})


# Closing a client over TLS waits for each connection's close_notify exchange, and the event loop
# waits up to 30 s for it (ssl_shutdown_timeout, Python 3.11's asyncio and uvloop alike; aiokafka
# cannot set it). The broker does not always answer at once: a reader stopped on a start-up path
# held a worker's start for 30 s (the SASL_SSL suite, 2 runs in 5 under load), and a worker stops
# a dozen clients one after the other within Kubernetes' grace period. By the time a client closes
# its connections its work is done: aiokafka's stop() flushes a producer's records until they are
# acknowledged, ends a consumer's group membership (LeaveGroup) and only then closes the
# connections. Only that last wait is bounded here; it goes on in the background.
log = logging.getLogger("sms_connector.kafka")
_CLOSING: set[asyncio.Task[None]] = set()
CLOSE_WAIT_S = 2.0


async def stop_client(client: Any, wait_s: float = CLOSE_WAIT_S) -> None:
    """``client.stop()`` of a producer or consumer (``close()`` of an admin client; aiokafka's, or
    one wrapping it): its Kafka work waited for in full, the close of its connections at most
    ``wait_s`` (note above). A transaction is ended and offsets committed by the caller, before."""
    kafka = getattr(client, "_client", None) or client.client    # consumer and admin's, producer's
    stop = client.stop if hasattr(client, "stop") else client.close
    closing = asyncio.Event()
    close_connections = kafka.close

    async def connections_closing() -> None:
        closing.set()
        await close_connections()

    kafka.close = connections_closing
    task = asyncio.ensure_future(stop())
    began = asyncio.ensure_future(closing.wait())
    try:
        await asyncio.wait([task, began], return_when=asyncio.FIRST_COMPLETED)
    finally:
        began.cancel()
    done, _ = await asyncio.wait([task], timeout=wait_s)
    if done:
        task.result()
        return
    log.info("connections still closing: in the background", extra={"client": type(client).__name__,
                                                                      "waited_s": wait_s})
    _CLOSING.add(task)
    task.add_done_callback(_closed_in_background)


async def close_reader(consumer: AIOKafkaConsumer, wait_s: float = CLOSE_WAIT_S) -> None:
    """Stop a groupless reader (its records are all read and it commits nothing): ``stop_client``."""
    await stop_client(consumer, wait_s)


def _closed_in_background(task: asyncio.Task[None]) -> None:
    _CLOSING.discard(task)
    if not task.cancelled():
        task.exception()      # retrieved: a late close failure is of no consequence


async def batches_to_end(consumer: AIOKafkaConsumer, start: Mapping[TopicPartition, int | None], *,
                         timeout_s: float | None = None, idle_timeout_s: float | None = None,
                         fetch_timeout_ms: int = 200, max_records: int = 10000) -> AsyncIterator[list[Any]]:
    """Assign ``start``'s partitions and read each from its offset (None: its beginning) to the
    end offset taken now (module docstring), yielding the records of each non-empty fetch.
    Raises TimeoutError after ``timeout_s`` in all, or ``idle_timeout_s`` without a record
    (None: no limit)."""
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
    now = time.monotonic()
    deadline = None if timeout_s is None else now + timeout_s
    last_record = now
    while remaining:
        now = time.monotonic()
        if deadline is not None and now > deadline:
            raise TimeoutError(f"reading {sorted({tp.topic for tp in tps})} to its end took over {timeout_s:.0f}s")
        if idle_timeout_s is not None and now - last_record > idle_timeout_s:
            raise IdleTimeout(f"no record of {sorted({tp.topic for tp in tps})} for {idle_timeout_s:.0f}s")
        batch = await consumer.getmany(*remaining, timeout_ms=fetch_timeout_ms, max_records=max_records)
        records = [r for part in batch.values() for r in part]
        if records:
            last_record = time.monotonic()
            yield records
        remaining = {tp for tp in remaining if await consumer.position(tp) < end[tp]}


async def read_to_end(consumer: AIOKafkaConsumer, start: Mapping[TopicPartition, int | None],
                      on_record: Callable[[Any], None], *, on_batch: Callable[[], None] | None = None,
                      **options: Any) -> None:
    """``batches_to_end`` calling ``on_record`` per record and ``on_batch`` after each fetch."""
    async for records in batches_to_end(consumer, start, **options):
        for r in records:
            on_record(r)
        if on_batch is not None:
            on_batch()


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


T = TypeVar("T")


async def unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, T]) -> tuple[bool, T | None]:
    """Run ``work`` (a start-up step) until it is done or ``stop`` is set, whichever comes first:
    (True, its result), or (False, None) when stopped first. A SIGTERM during start-up stops the
    worker at once instead of after start-up: ``work`` is cancelled and awaited, and closes what
    it opened on its way out (each step's ``finally``). Its own exception is raised."""
    if stop.is_set():
        work.close()
        return False, None
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
    if task.cancelled():
        return False, None
    return True, task.result()

