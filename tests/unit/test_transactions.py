"""The transactional producer helper: ids, what a failure means, the order of a commit's steps (#16)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (ConcurrentTransactions, InvalidProducerEpoch, KafkaConnectionError, ProducerFenced,
                             RequestTimedOutError, UnknownProducerId)

from connector.config import KafkaSettings
from connector.streams.transactions import (TransactionAborted, TransactionalProducer, TransactionFenced,
                                            needs_new_producer, transactional_id)


def test_one_transactional_id_per_group_and_partition() -> None:
    k = KafkaSettings(group_id="g1", transactional_id_prefix="sms")
    assert transactional_id(k, 3) == "sms-g1-3"
    assert transactional_id(k, "poll-revio", group="inbound") == "sms-inbound-poll-revio"
    assert transactional_id(k, 3) != transactional_id(KafkaSettings(group_id="g2", transactional_id_prefix="sms"), 3)


def test_fenced_epoch_and_aiokafkas_state_assertion_need_a_new_producer() -> None:
    for exc in (ProducerFenced(), InvalidProducerEpoch(), UnknownProducerId(),
                AssertionError("Invalid state transition TransactionState.FATAL_ERROR -> IN_TRANSACTION")):
        assert needs_new_producer(exc), exc
    for exc in (ConcurrentTransactions(), KafkaConnectionError(), RequestTimedOutError(), ValueError()):
        assert not needs_new_producer(exc), exc


def test_exactly_once_settings_default_on() -> None:
    k = KafkaSettings()
    assert k.exactly_once and k.transactional_id_prefix and k.transaction_timeout_s == 60.0


class FakeProducer:
    """aiokafka's transactional calls, logged in order; ``send_offsets_to_transaction`` may fail."""

    def __init__(self, log: list[str], offsets_error: BaseException | None = None) -> None:
        self.log = log
        self.offsets_error = offsets_error

    async def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], group_id: str) -> None:
        self.log.append("offsets sent")
        await asyncio.sleep(0.01)
        if self.offsets_error is not None:
            raise self.offsets_error
        self.log.append("offsets added")

    async def commit_transaction(self) -> None:
        self.log.append("EndTxn commit")

    async def abort_transaction(self) -> None:
        self.log.append("EndTxn abort")


def producer_with(log: list[str], **kw: Any) -> TransactionalProducer:
    txp = TransactionalProducer(KafkaSettings(), "sms-g-0", role="test")
    txp._producer = FakeProducer(log, **kw)  # type: ignore[assignment]
    txp.in_transaction = True
    return txp


async def acked_later(log: list[str], error: BaseException | None = None) -> None:
    await asyncio.sleep(0.05)
    log.append("batch failed" if error else "batch acked")
    if error is not None:
        raise error


OFFSETS = {TopicPartition("sms.outbound", 0): 7}


async def test_offsets_are_added_while_batches_are_acknowledged_and_endtxn_waits_for_all() -> None:
    log: list[str] = []
    txp = producer_with(log)
    batch = asyncio.ensure_future(acked_later(log))
    assert await txp.commit(OFFSETS, "g", sent=[batch])
    assert log == ["offsets sent", "offsets added", "batch acked", "EndTxn commit"]
    assert not txp.in_transaction


async def test_a_failed_batch_aborts_after_the_offsets_settled_and_never_commits() -> None:
    log: list[str] = []
    txp = producer_with(log)
    batch = asyncio.ensure_future(acked_later(log, KafkaConnectionError()))
    with pytest.raises(TransactionAborted):
        await txp.commit(OFFSETS, "g", sent=[batch])
    assert log == ["offsets sent", "offsets added", "batch failed", "EndTxn abort"]


async def test_a_fenced_offsets_commit_fences_even_when_the_batches_are_fine() -> None:
    log: list[str] = []
    txp = producer_with(log, offsets_error=ProducerFenced())
    with pytest.raises(TransactionFenced):
        await txp.commit(OFFSETS, "g", sent=[asyncio.ensure_future(acked_later(log))])
    assert "EndTxn commit" not in log and "EndTxn abort" not in log


async def test_commit_stops_before_endtxn_when_told_and_leaves_the_transaction_to_abort() -> None:
    log: list[str] = []
    txp = producer_with(log)
    assert not await txp.commit(OFFSETS, "g", sent=[asyncio.ensure_future(acked_later(log))], proceed=lambda: False)
    assert "EndTxn commit" not in log and txp.in_transaction
    await txp.abort()
    assert log[-1] == "EndTxn abort" and not txp.in_transaction
