"""One partition's transactions (streams.committer) against a fake transactional producer (#16):
what a transaction holds, the offsets it commits, what an abort and a fence do."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from connector.streams.committer import Output, PartitionCommitter
from connector.streams.transactions import TransactionAborted, TransactionFenced

TP = TopicPartition("sms.outbound", 0)


class FakeBatch:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    def append(self, *, key: Any, value: bytes, timestamp: Any, headers: Any) -> object:
        self.values.append(value)
        return object()

    def close(self) -> None:
        pass


class FakeKafka:
    """The producer side Batcher uses, recording what each transaction wrote."""

    def __init__(self, txp: FakeTxp) -> None:
        self.txp = txp

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future[None]:
        self.txp.open_values += batch.values
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.txp.fail_batches:
            self.txp.fail_batches -= 1
            fut.set_exception(KafkaConnectionError("broker gone"))
        else:
            fut.set_result(None)
        return fut


class FakeTxp:
    transactional_id = "sms-g-0"

    def __init__(self) -> None:
        self.producer = FakeKafka(self)
        self.in_transaction = False
        self.open_values: list[bytes] = []
        self.committed: list[tuple[list[bytes], dict[TopicPartition, int]]] = []
        self.aborted: list[list[bytes]] = []
        self.fail_next: list[BaseException] = []
        self.commit_gate: asyncio.Event | None = None
        self.fail_batches = 0

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def begin(self) -> None:
        self.in_transaction = True
        self.open_values = []

    async def commit(self, offsets: dict[TopicPartition, int], group_id: str, sent: Any = (),
                     proceed: Any = None) -> bool:
        # as TransactionalProducer.commit: every batch settled before EndTxn; a failed one aborts
        done = await asyncio.gather(*sent, return_exceptions=True)
        if any(isinstance(r, BaseException) for r in done):
            await self.abort()
            raise TransactionAborted("a batch failed")
        if proceed is not None and not proceed():
            return False
        if self.commit_gate is not None:
            await self.commit_gate.wait()
        self.in_transaction = False
        if self.fail_next:
            exc = self.fail_next.pop(0)
            if isinstance(exc, TransactionAborted):
                self.aborted.append(self.open_values)
            raise exc
        self.committed.append((self.open_values, dict(offsets)))
        return True

    async def abort(self) -> None:
        self.in_transaction = False
        self.aborted.append(self.open_values)


def out(v: bytes) -> list[Output]:
    return [Output("sms.outbound.accepted", 0, None, v)]


async def committer(txp: FakeTxp, finished: list[int], **kw: Any) -> tuple[PartitionCommitter, list[str]]:
    fenced: list[str] = []
    c = PartitionCommitter(txp, "g", offsets=lambda: {TP: max(finished) + 1} if finished else {},  # type: ignore[arg-type]
                           committed=lambda o: None, on_fenced=fenced.append,
                           max_records=kw.get("max_records", 3), max_s=kw.get("max_s", 0.05), linger_s=0.001)
    await c.start()
    return c, fenced


async def test_records_and_the_offsets_they_finish_commit_together_closing_at_max_records() -> None:
    txp, finished = FakeTxp(), []
    c, _ = await committer(txp, finished)
    futs = [c.add(out(b"0"))]
    finished.append(0)
    await asyncio.sleep(0.01)        # the transaction began with the first message
    for i in range(1, 5):
        futs.append(c.add(out(b"%d" % i)))
        finished.append(i)
        await asyncio.sleep(0)       # messages finish one by one
    await asyncio.wait_for(asyncio.gather(*futs), 5)
    assert len(txp.committed) >= 1 and len(txp.committed[0][0]) >= 3   # closed at max_records (or beyond: a
    # message finished before the loop's next turn joins the closing transaction, it was counted finished)
    assert sorted(v for vals, _ in txp.committed for v in vals) == [b"0", b"1", b"2", b"3", b"4"]
    # each transaction's offset covers exactly the messages in it and before it
    for vals, offsets in txp.committed:
        assert offsets[TP] == int(vals[-1]) + 1
    await c.close(commit=True)


async def test_a_message_finished_while_a_commit_is_under_way_goes_to_the_next_transaction() -> None:
    txp, finished = FakeTxp(), []
    c, _ = await committer(txp, finished, max_records=1)
    txp.commit_gate = asyncio.Event()
    first = c.add(out(b"a"))
    finished.append(0)
    await asyncio.sleep(0.02)            # closed (max_records=1), its commit waiting
    second = c.add(out(b"b"))
    finished.append(1)
    txp.commit_gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert txp.committed == [([b"a"], {TP: 1}), ([b"b"], {TP: 2})]
    await c.close(commit=True)


async def test_a_failed_batch_aborts_the_transaction_offsets_included_and_writes_it_again() -> None:
    txp, finished = FakeTxp(), [0, 1]
    c, fenced = await committer(txp, finished, max_records=2)
    txp.fail_batches = 1
    futs = [c.add(out(b"x")), c.add(out(b"y"))]
    await asyncio.wait_for(asyncio.gather(*futs), 5)
    assert txp.aborted == [[b"x", b"y"]]
    assert txp.committed == [([b"x", b"y"], {TP: 2})] and not fenced
    await c.close(commit=True)


async def two_messages_whose_commit_fails_once(exc: Exception) -> tuple[FakeTxp, PartitionCommitter, list[str],
                                                                         list[asyncio.Future[None]]]:
    txp, finished = FakeTxp(), [0, 1]
    c, fenced = await committer(txp, finished, max_records=2)
    txp.fail_next = [exc]
    return txp, c, fenced, [c.add(out(b"x")), c.add(out(b"y"))]


async def test_an_aborted_transaction_is_written_again() -> None:
    txp, c, fenced, futs = await two_messages_whose_commit_fails_once(TransactionAborted("coordinator moved"))
    await asyncio.wait_for(asyncio.gather(*futs), 5)
    assert txp.aborted == [[b"x", b"y"]]
    assert txp.committed == [([b"x", b"y"], {TP: 2})] and not fenced
    await c.close(commit=True)


async def test_a_fenced_producer_fails_every_waiting_message_and_says_so_once() -> None:
    txp, c, fenced, futs = await two_messages_whose_commit_fails_once(TransactionFenced("sms-g-0: ProducerFenced"))
    results = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), 5)
    assert all(isinstance(r, TransactionFenced) for r in results)
    assert len(fenced) == 1 and txp.committed == []
    later = c.add(out(b"z"))             # nothing more is accepted: the partition is given up
    with pytest.raises(TransactionFenced):
        await later
    await c.close(commit=False)


async def test_close_with_commit_commits_what_was_added_and_without_aborts_it() -> None:
    txp, finished = FakeTxp(), []
    c, fenced = await committer(txp, finished, max_records=100, max_s=10)
    fut = c.add(out(b"last"))
    finished.append(0)
    await asyncio.sleep(0.01)
    await c.close(commit=True)
    assert fut.done() and fut.exception() is None
    assert txp.committed == [([b"last"], {TP: 1})] and not fenced

    txp2 = FakeTxp()
    c2, fenced2 = await committer(txp2, [0], max_records=100, max_s=10)
    fut2 = c2.add(out(b"dropped"))
    await asyncio.sleep(0.01)
    await c2.close(commit=False)
    assert isinstance(fut2.exception(), TransactionFenced)
    assert txp2.committed == [] and txp2.aborted == [[b"dropped"]] and not fenced2


def test_connection_errors_are_not_fatal() -> None:
    from connector.streams.transactions import needs_new_producer
    assert not needs_new_producer(KafkaConnectionError())
