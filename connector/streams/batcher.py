"""Produce many small records cheaply: per-partition batches we build, one future per batch.

aiokafka's ``send()`` costs a coroutine, a partition lookup, a ``TopicPartition`` and a future
per record. The dispatcher writes up to four records per message (result, correlation, two
ledger entries), so on the hot path that was a large share of the worker's CPU. ``Batcher``
appends records to a ``BatchBuilder`` per (topic, partition) and hands each batch to aiokafka
with ``send_batch``; every record of a batch shares the batch's future, which resolves when the
broker acknowledges the batch (the producer's acks).

Delivery: one loop per topic-partition (a task that lives while the partition has batches to
deliver) hands a batch over, awaits its acknowledgement, then hands over the next. While a batch
of the partition is unacknowledged, new records keep joining the partition's open batch (up to
its size limit) instead of being closed into batches of their own after ``linger_s``: aiokafka
sends one produce request per broker at a time and one batch per partition in it, so a batch
handed over earlier would only wait in aiokafka's queue, and each one waiting there cost a
task and an ``asyncio.wait`` per wake-up (``MessageBatch.wait_drain``; ~9% of the worker's CPU
in ``bench --scenario single`` when every batch had a task of its own). A partition with nothing
in flight hands its open batch over ``linger_s`` after its first record, or when it is full.

Semantics are those of ``send()`` + awaiting its future: ``await batcher.send(...)`` returns when
the record is durable and raises ``KafkaError`` when its batch failed (a batch is written whole or
not at all, so the caller resends just its own record; a failed batch does not fail the batches
after it). Records of one partition keep their order: a partition's batches are handed over one
at a time, in order. ``flush()`` closes every open batch (no record joins it any more); its
future still resolves only when it is acknowledged, which in a transaction (``streams.committer``)
is what the commit waits for before EndTxn.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Sequence

from aiokafka import AIOKafkaProducer

Headers = Sequence[tuple[str, bytes]]


class _Pending:
    __slots__ = ("batch", "done", "count")

    def __init__(self, batch: Any, done: asyncio.Future[None]) -> None:
        self.batch = batch
        self.done = done
        self.count = 0


class _Partition:
    """One topic-partition: the batch records join, the closed ones waiting for their turn, and
    the delivery loop while it runs."""

    __slots__ = ("topic", "partition", "open", "ready", "task")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.open: _Pending | None = None
        self.ready: deque[_Pending] = deque()
        self.task: asyncio.Task[None] | None = None


class Batcher:
    def __init__(self, producer: AIOKafkaProducer, linger_s: float = 0.002) -> None:
        self.producer = producer
        self.linger_s = linger_s
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, topic: str, partition: int, key: bytes | None, value: bytes, headers: Headers = (),
             timestamp_ms: int | None = None) -> asyncio.Future[None]:
        """Queue one record; the returned future (shared by its batch) resolves once it is durable."""
        part = self._parts.get((topic, partition))
        if part is None:
            part = self._parts[(topic, partition)] = _Partition(topic, partition)
        pending = part.open
        for _ in range(2):
            if pending is None:
                pending = part.open = _Pending(self.producer.create_batch(),
                                               asyncio.get_running_loop().create_future())
            if pending.batch.append(key=key, value=value, timestamp=timestamp_ms, headers=list(headers)) is not None:
                pending.count += 1
                if pending.count == 1 and part.task is None and self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._lingered)
                return pending.done
            if pending.count:
                self._close(part)      # full: it waits for its turn, the record starts the next one
            pending = None
        raise ValueError(f"record too large for one batch ({len(value)} bytes)")

    def flush(self) -> None:
        """Close every open batch now (each is handed over as soon as its partition's previous
        batch is acknowledged)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for part in self._parts.values():
            if part.open is not None and part.open.count:
                self._close(part)

    async def aclose(self) -> None:
        self.flush()
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _lingered(self) -> None:
        # a partition with a batch in flight keeps its open batch open: its loop takes it next
        self._timer = None
        for part in self._parts.values():
            if part.task is None and part.open is not None and part.open.count:
                self._close(part)

    def _close(self, part: _Partition) -> None:
        assert part.open is not None
        part.ready.append(part.open)
        part.open = None
        if part.task is None:
            task = part.task = asyncio.get_running_loop().create_task(self._deliver(part))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, part: _Partition) -> None:
        """The partition's loop: hand its batches over one at a time, each once the previous one
        is acknowledged; the open batch goes next when nothing closed is waiting."""
        producer, ready = self.producer, part.ready
        p: _Pending | None = None
        try:
            while True:
                if ready:
                    p = ready.popleft()
                elif part.open is not None and part.open.count:
                    p, part.open = part.open, None
                else:
                    return
                p.batch.close()
                try:
                    acked = await producer.send_batch(p.batch, part.topic, partition=part.partition)
                    await acked
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every waiting record learns of it
                    if not p.done.done():
                        p.done.set_exception(exc)
                        p.done.exception()   # retrieved: not reported as "never retrieved" if nobody waits
                    continue
                if not p.done.done():
                    p.done.set_result(None)
                p = None
        except asyncio.CancelledError:
            for q in (p, *ready):
                if q is not None:
                    q.done.cancel()
            ready.clear()
            raise
        finally:
            part.task = None
