"""Exactly-once inbound (#16) without a broker: callbacks grouped into transactions and answered
only after their commit; a failed commit answers 503 and nothing is counted done."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaConnectionError, ProducerFenced

from connector.streams.callbacks import THINGSPACE_PATH, CallbackReceiver
from connector.streams.publish import GroupCommit, InboundPublisher, Writes, commit_writes
from connector.streams.transactions import TransactionAborted, TransactionFailed, TransactionFenced, needs_new_producer
from tests.unit.test_callbacks import XML, FakeProducer, resend, settings, with_credentials
from tests.unit.test_thingspace import SEED_000_CB_DELIVERED


class FakeTxn:
    """A ``TransactionalProducer``: records sent between begin and commit become visible
    (``committed``) only at commit, which takes ``commit_s``; ``fail`` makes the next commit fail."""

    def __init__(self, commit_s: float = 0.025) -> None:
        self.transactional_id = "t"
        self.commit_s = commit_s
        self.open: list[tuple[str, bytes | None, bytes | None]] | None = None
        self.committed: list[tuple[str, bytes | None, bytes | None]] = []
        self.transactions = 0
        self.fail: BaseException | None = None
        self.replaced = 0
        self.producer = self

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def replace(self) -> None:
        self.replaced += 1

    async def begin(self) -> None:
        assert self.open is None, "two transactions at once on one producer"
        self.open = []

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   headers: Any = None) -> asyncio.Future[None]:
        assert self.open is not None, "a send outside a transaction"
        self.open.append((topic, key, value))
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def commit(self, offsets: Any = None, group_id: str | None = None) -> None:
        await asyncio.sleep(self.commit_s)
        records, self.open = self.open, None
        if self.fail is not None:       # as TransactionalProducer.commit classifies it
            exc, self.fail = self.fail, None
            raise (TransactionFenced if needs_new_producer(exc) else TransactionAborted)(str(exc)) from exc
        assert records is not None
        self.committed += records
        self.transactions += 1

    async def abort(self) -> None:
        self.open = None


async def test_concurrent_writers_share_transactions_and_return_after_the_commit() -> None:
    txn = FakeTxn()
    group = GroupCommit([txn])  # type: ignore[list-item]
    await group.start()
    try:
        async def one(i: int) -> None:
            w = Writes()
            w.add("t", str(i).encode(), b"v")
            await group.write(w)
            assert ("t", str(i).encode(), b"v") in txn.committed     # never answered before its commit

        await asyncio.gather(*(one(i) for i in range(200)))
    finally:
        await group.stop()
    assert len(txn.committed) == 200
    assert txn.transactions <= 10, f"{txn.transactions} transactions for 200 concurrent writers"


async def test_a_failed_commit_fails_every_writer_of_its_group_and_the_next_group_commits() -> None:
    txn = FakeTxn()
    group = GroupCommit([txn])  # type: ignore[list-item]
    await group.start()
    try:
        txn.fail = KafkaConnectionError("broker away")
        w = Writes()
        w.add("t", b"k", b"1")
        with pytest.raises(TransactionFailed):
            await group.write(w)
        assert txn.committed == []
        await group.write(w)
        assert txn.committed == [("t", b"k", b"1")]
    finally:
        await group.stop()


async def test_a_fenced_producer_is_replaced_and_effects_wait_for_a_commit() -> None:
    txn = FakeTxn(commit_s=0)
    ran: list[str] = []
    w = Writes()
    w.add("t", b"k", b"1")

    async def effect() -> None:
        ran.append("effect")
    w.then(effect)
    txn.fail = ProducerFenced()
    with pytest.raises(TransactionFenced):
        await commit_writes(txn, w)  # type: ignore[arg-type]
    assert txn.replaced == 1 and ran == []
    await commit_writes(txn, w)  # type: ignore[arg-type]
    assert ran == ["effect"]


async def start_receiver(txn: FakeTxn) -> tuple[TestClient, CallbackReceiver, GroupCommit]:
    producer = FakeProducer()
    group = GroupCommit([txn])  # type: ignore[list-item]
    await group.start()
    receiver = CallbackReceiver(settings(), producer, InboundPublisher(producer),  # type: ignore[arg-type]
                                transactions=group)
    app = web.Application()
    app.add_routes(receiver.routes())
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client, receiver, group


async def test_callback_in_a_transaction_is_answered_after_its_commit_and_503_when_it_fails() -> None:
    txn = FakeTxn()
    client, receiver, group = await start_receiver(txn)
    body = with_credentials(SEED_000_CB_DELIVERED)
    try:
        txn.fail = KafkaConnectionError("broker away")
        async with client.post(THINGSPACE_PATH, data=body, headers=XML) as r:
            assert r.status == 503
        assert txn.committed == []
        async with client.post(THINGSPACE_PATH, data=resend(body, 2), headers=XML) as r:
            assert (r.status, orjson.loads(await r.read())) == (200, {"status": "ok"})
        async with client.post(THINGSPACE_PATH, data=resend(body, 3), headers=XML) as r:
            assert (r.status, orjson.loads(await r.read())) == (200, {"status": "duplicate"})
        assert len(txn.committed) == 1 and receiver.producer.sent == []   # type: ignore[attr-defined]
    finally:
        await receiver.aclose(1.0)
        await group.stop()
        await client.close()
