"""streams.batcher against a fake producer that acknowledges when the test says so: one batch of
a partition in aiokafka at a time, what joins the open batch meanwhile, failures, flush, close."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from connector.streams.batcher import Batcher


class FakeBatch:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.values: list[bytes] = []
        self.closed = False

    def append(self, *, key: Any, value: bytes, timestamp: Any, headers: Any) -> object | None:
        assert not self.closed, "a record joined a batch already handed over"
        if len(self.values) >= self.capacity or len(value) > 100:
            return None
        self.values.append(value)
        return object()

    def close(self) -> None:
        self.closed = True


class FakeProducer:
    """``send_batch`` as aiokafka's: the returned future resolves at the broker's acknowledgement,
    which the test gives (``ack``). ``waits`` counts the hand-overs that found a batch of the same
    partition still unacknowledged (in aiokafka: a wait in ``MessageBatch.wait_drain``)."""

    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self.handed: list[tuple[str, int, list[bytes]]] = []
        self.unacked: dict[tuple[str, int], list[asyncio.Future[None]]] = {}
        self.waits = 0

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
        assert batch.closed
        if partition >= 100:
            raise KafkaConnectionError("no such partition")
        waiting = [f for f in self.unacked.get((topic, partition), []) if not f.done()]
        self.waits += bool(waiting)
        if waiting:
            await asyncio.wait(waiting)
        self.handed.append((topic, partition, list(batch.values)))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.unacked.setdefault((topic, partition), []).append(fut)
        return fut

    def ack(self, topic: str = "t", partition: int = 0, exc: BaseException | None = None) -> None:
        fut = next(f for f in self.unacked[(topic, partition)] if not f.done())
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)

    def ack_all(self) -> None:
        for futs in self.unacked.values():
            for f in futs:
                if not f.done():
                    f.set_result(None)


def batcher(linger_s: float = 0.001, capacity: int = 1000) -> tuple[FakeProducer, Batcher]:
    kafka = FakeProducer(capacity)
    return kafka, Batcher(kafka, linger_s=linger_s)  # type: ignore[arg-type]


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_records_join_the_open_batch_while_the_partitions_previous_batch_is_unacknowledged() -> None:
    kafka, b = batcher()
    first = b.send("t", 0, None, b"0")
    await asyncio.sleep(0.01)                      # lingered: handed over
    assert kafka.handed == [("t", 0, [b"0"])]
    later = [b.send("t", 0, None, b"%d" % i) for i in range(1, 4)]
    await asyncio.sleep(0.01)
    later += [b.send("t", 0, None, b"%d" % i) for i in range(4, 6)]
    await asyncio.sleep(0.01)                      # two lingers later: still waiting for the first ack
    assert len(kafka.handed) == 1 and not first.done() and not any(f.done() for f in later)
    kafka.ack()
    await turns()
    assert first.done() and kafka.handed[1] == ("t", 0, [b"1", b"2", b"3", b"4", b"5"])   # one batch
    assert not any(f.done() for f in later)        # resolved only at their own batch's ack
    kafka.ack()
    await turns()
    assert all(f.done() and f.exception() is None for f in later)
    assert kafka.waits == 0                       # never a second batch of a partition in aiokafka
    await b.aclose()


async def test_partitions_deliver_independently_and_in_order() -> None:
    kafka, b = batcher(capacity=3)
    futs = [b.send("t", i % 2, None, b"%d" % i) for i in range(20)]
    while not all(f.done() for f in futs):
        await asyncio.sleep(0.002)
        kafka.ack_all()
    for p in (0, 1):
        got = [v for topic, part, values in kafka.handed if part == p for v in values]
        assert got == [b"%d" % i for i in range(20) if i % 2 == p]
    assert all(len(values) <= 3 for _, _, values in kafka.handed)   # full batches closed at capacity
    assert kafka.waits == 0
    await b.aclose()


async def test_a_failed_batch_fails_its_own_records_only() -> None:
    kafka, b = batcher()
    bad = b.send("t", 0, None, b"a")
    await asyncio.sleep(0.01)
    good = b.send("t", 0, None, b"b")
    kafka.ack(exc=KafkaConnectionError("broker gone"))
    await turns()
    with pytest.raises(KafkaConnectionError):
        await bad
    assert not good.done()
    kafka.ack()
    await asyncio.wait_for(good, 1)
    refused = b.send("t", 100, None, b"c")        # send_batch itself raises
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(refused, 1)
    await b.aclose()


async def test_flush_closes_the_open_batch_but_its_future_waits_for_the_ack() -> None:
    kafka, b = batcher(linger_s=60)
    one = b.send("t", 0, None, b"1")
    b.flush()
    await turns()
    assert kafka.handed == [("t", 0, [b"1"])] and not one.done()
    two = b.send("t", 0, None, b"2")
    b.flush()                                      # closed while the first is in flight: no record joins it now
    three = b.send("t", 0, None, b"3")
    assert two is not three
    kafka.ack()
    await turns()
    assert one.done() and kafka.handed[1] == ("t", 0, [b"2"])
    closing = asyncio.ensure_future(b.aclose())   # aclose delivers everything, then returns
    for _ in range(3):
        await turns()
        kafka.ack_all()
    await asyncio.wait_for(closing, 1)
    assert two.done() and three.done() and kafka.handed[2] == ("t", 0, [b"3"])


async def test_a_record_too_large_is_refused_and_the_batch_goes_on() -> None:
    kafka, b = batcher()
    ok = b.send("t", 0, None, b"x")
    with pytest.raises(ValueError, match="too large"):
        b.send("t", 0, None, b"y" * 200)
    await asyncio.sleep(0.01)
    kafka.ack_all()
    await asyncio.wait_for(ok, 1)
    again = b.send("t", 0, None, b"z")            # the partition's leftover empty batch lingers too
    await asyncio.sleep(0.01)
    kafka.ack_all()
    await asyncio.wait_for(again, 1)
    assert [v for _, _, v in kafka.handed] == [[b"x"], [b"z"]]
    await b.aclose()


async def test_cancelled_delivery_cancels_the_waiting_records() -> None:
    kafka, b = batcher()
    first = b.send("t", 0, None, b"1")
    await asyncio.sleep(0.01)
    second = b.send("t", 0, None, b"2")
    b.flush()
    for task in list(b._tasks):
        task.cancel()
    await turns()
    assert first.cancelled() and second.cancelled()
    third = b.send("t", 0, None, b"3")            # a later record starts a new loop
    await asyncio.sleep(0.01)
    kafka.ack_all()
    await asyncio.wait_for(third, 1)
    await b.aclose()
