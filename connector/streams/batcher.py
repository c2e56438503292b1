"""Produce many small records cheaply: per-partition batches we build, one future per batch.

aiokafka's ``send()`` costs a coroutine, a partition lookup, a ``TopicPartition`` and a future
per record. The dispatcher writes up to four records per message (result, correlation, two
ledger entries), so on the hot path that was a large share of the worker's CPU. ``Batcher``
appends records to a ``BatchBuilder`` per (topic, partition) and submits each batch with
``send_batch`` after ``linger_s`` (or when it is full); every record of a batch shares the
batch's future, which resolves when the broker acknowledges the batch (the producer's acks).

Semantics are those of ``send()`` + awaiting its future: ``await batcher.send(...)`` returns when
the record is durable and raises ``KafkaError`` when its batch failed (a batch is written whole or
not at all, so the caller resends just its own record). Records of one partition keep their
order: batches of a partition are queued in the producer in submission order.
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

from aiokafka import AIOKafkaProducer

Headers = Sequence[tuple[str, bytes]]


class _Pending:
    __slots__ = ("batch", "done", "count")

    def __init__(self, batch: Any, done: asyncio.Future[None]) -> None:
        self.batch = batch
        self.done = done
        self.count = 0


class Batcher:
    def __init__(self, producer: AIOKafkaProducer, linger_s: float = 0.002) -> None:
        self.producer = producer
        self.linger_s = linger_s
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, topic: str, partition: int, key: bytes | None, value: bytes, headers: Headers = (),
             timestamp_ms: int | None = None) -> asyncio.Future[None]:
        """Queue one record; the returned future (shared by its batch) resolves once it is durable."""
        tp = (topic, partition)
        pending = self._pending.get(tp)
        for _ in range(2):
            if pending is None:
                pending = self._pending[tp] = _Pending(self.producer.create_batch(),
                                                       asyncio.get_running_loop().create_future())
                if self._timer is None:
                    self._timer = asyncio.get_running_loop().call_later(self.linger_s, self.flush)
            if pending.batch.append(key=key, value=value, timestamp=timestamp_ms, headers=list(headers)) is not None:
                pending.count += 1
                return pending.done
            self._submit(tp, pending)      # full: submit it, start the next one
            pending = None
        raise ValueError(f"record too large for one batch ({len(value)} bytes)")

    def flush(self) -> None:
        """Submit every open batch now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        for tp, p in pending.items():
            if p.count:
                self._submit(tp, p)

    async def aclose(self) -> None:
        self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _submit(self, tp: tuple[str, int], p: _Pending) -> None:
        if self._pending.get(tp) is p:
            del self._pending[tp]
        p.batch.close()
        task = asyncio.get_running_loop().create_task(self._deliver(tp, p))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, tp: tuple[str, int], p: _Pending) -> None:
        try:
            acked = await self.producer.send_batch(p.batch, tp[0], partition=tp[1])
            await acked
        except asyncio.CancelledError:
            p.done.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every waiting record learns of it
            if not p.done.done():
                p.done.set_exception(exc)
                p.done.exception()   # retrieved: not reported as "never retrieved" if nobody waits
            return
        if not p.done.done():
            p.done.set_result(None)
