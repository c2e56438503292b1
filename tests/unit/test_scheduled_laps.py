"""ScheduledLaps, the reader of sms.outbound.scheduled, with a fake consumer: it waits only for a
partition's head, never takes (so never commits past) a record before forwarding it, and sends
each record to the retry topic or for another lap by its due time."""

from __future__ import annotations

import asyncio
import time

from aiokafka import ConsumerRecord, TopicPartition

from connector import contract as topics
from connector.offsets import PartitionProgress
from connector.streams.scheduled import HEADER_CHECK_AT, ScheduledLaps, is_deferral
from tests.fakes import PausingConsumer

TP = TopicPartition("sms.outbound.scheduled", 3)


def record(offset: int, check_at: float, due_at: float) -> ConsumerRecord[bytes, bytes]:
    headers = [(topics.HEADER_RETRY_DUE_AT, str(int(due_at * 1000)).encode()),
               (topics.HEADER_RETRY_REASON, b"scheduled"), (HEADER_CHECK_AT, str(int(check_at * 1000)).encode())]
    return ConsumerRecord(TP.topic, TP.partition, offset, 0, 0, b"k", b"v", None, 1, 1, headers)


def test_destination_by_due_time() -> None:
    laps = ScheduledLaps("sms.outbound.scheduled", "sms.outbound.retry", 60, forward=None)  # type: ignore[arg-type]
    headers = [("a", b"1"), (HEADER_CHECK_AT, b"5")]
    assert laps.destination(headers, due_at=1060, now=1000) == ("sms.outbound.retry", [("a", b"1")])
    topic, out = laps.destination(headers, due_at=1061, now=1000)
    assert topic == "sms.outbound.scheduled" and out == [("a", b"1"), (HEADER_CHECK_AT, b"1060000")]
    assert is_deferral([(topics.HEADER_RETRY_REASON, b"quiet-hours")])
    assert not is_deferral([(topics.HEADER_RETRY_REASON, b"unavailable")])


async def test_only_the_head_is_waited_for_and_nothing_is_taken_before_its_check() -> None:
    forwarded: list[int] = []

    async def forward(rec: ConsumerRecord[bytes, bytes]) -> None:
        forwarded.append(rec.offset)

    laps = ScheduledLaps("sms.outbound.scheduled", "sms.outbound.retry", 60, forward)
    consumer, progress = PausingConsumer(TP), PartitionProgress()
    now = time.time()
    # written one lap apart in order: 10 and 11 are due for a check, 12 in 0.3 s, 13 in an hour
    laps.take(TP, progress, [record(10, now - 5, now + 3600), record(11, now - 1, now + 20),
                             record(12, now + 0.3, now + 30), record(13, now + 3600, now + 86400)], consumer)
    await asyncio.sleep(0.05)
    assert forwarded == [10, 11] and TP in consumer.paused and laps.waiting == 2
    assert progress.committable() == 12          # never past a record not yet forwarded
    await asyncio.sleep(0.4)
    assert forwarded == [10, 11, 12] and TP in consumer.paused and progress.committable() == 13
    laps.forget([TP])                            # revoked: what was read is left to the next owner
    assert laps.waiting == 0 and progress.committable() == 13


async def test_an_empty_queue_resumes_the_partition() -> None:
    laps = ScheduledLaps("sms.outbound.scheduled", "sms.outbound.retry", 60, lambda rec: asyncio.sleep(0))
    consumer, progress = PausingConsumer(TP), PartitionProgress()
    consumer.paused.add(TP)
    laps.take(TP, progress, [record(0, 0, 0)], consumer)
    await asyncio.sleep(0.01)
    assert TP not in consumer.paused and progress.committable() == 1
