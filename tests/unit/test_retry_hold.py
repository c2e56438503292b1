"""The dispatcher's holding of retry records: start when due, pause the retry topic when too many
wait, forget a revoked partition's. (One function under test; the consumer is a stand-in.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from connector import contract as topics
from connector import metrics, retries
from connector.config import load
from connector.offsets import PartitionProgress
from connector.retries import RetryState
from connector.routing import Router
from connector.streams.dispatch import Dispatcher
from tests.fakes import PausingConsumer

RETRY = topics.spec("retry").name


Consumer = PausingConsumer


def record(partition: int, offset: int, due_in_s: float) -> ConsumerRecord[bytes, bytes]:
    headers = RetryState.new(4, 1, time.time() + due_in_s).headers([], [], "unavailable")
    return ConsumerRecord(RETRY, partition, offset, 0, 0, b"k%d" % offset, b"{}", None, 2, 2, headers)


def dispatcher(max_waiting: int) -> tuple[Dispatcher, list[tuple[int, int]], Consumer]:
    settings = load(environ={"SMS_CONNECTOR_DISPATCH__RETRY_TOPIC_MAX_WAITING": str(max_waiting)})
    d = Dispatcher(settings, {}, Router.from_settings(settings.routing, {}))
    started: list[tuple[int, int]] = []
    d._start = lambda tp, progress, rec: started.append((tp.partition, rec.offset))  # type: ignore[method-assign]
    consumer = Consumer()
    d._consumer = consumer  # type: ignore[assignment]
    return d, started, consumer


async def test_due_records_start_at_once_and_the_others_at_their_due_time() -> None:
    d, started, _ = dispatcher(100)
    tp = TopicPartition(RETRY, 3)
    d._progress[tp] = PartitionProgress()
    d._take(tp, [record(3, 10, -1), record(3, 11, 0.15), record(3, 12, 0.05)])
    assert started == [(3, 10)] and len(d._waiting) == 2
    await asyncio.sleep(0.1)
    assert started[-1] == (3, 12)
    await asyncio.sleep(0.1)
    assert [o for _, o in started] == [10, 12, 11] and not d._waiting
    assert d._progress[tp].in_flight == 3    # taken, unfinished: the commit stays behind them


async def test_too_many_waiting_pauses_the_retry_topic_until_half_are_sent() -> None:
    d, started, consumer = dispatcher(4)
    tps = [TopicPartition(RETRY, p) for p in (0, 1)]
    for tp in tps:
        d._progress[tp] = PartitionProgress()
    d._take(tps[0], [record(0, i, 0.05) for i in range(2)])
    assert not consumer.paused
    d._take(tps[1], [record(1, i, 3600) for i in range(2)])
    assert consumer.paused == set(tps)
    await asyncio.sleep(0.1)                  # two released: 2 left < 4 // 2 is false, 2 == 2: still paused
    assert len(d._waiting) == 2 and consumer.paused == set(tps)
    d._forget_waiting([tps[1]])               # revoked: the next owner re-reads them
    d._release()
    assert not d._waiting and not consumer.paused and len(started) == 2
    d._schedule_wake()
    assert d._wake is None


async def test_held_records_are_not_counted_as_stuck_input() -> None:
    d, _, _ = dispatcher(100)
    tp = TopicPartition(RETRY, 0)
    d._progress[tp] = PartitionProgress()
    d._take(tp, [record(0, 1, 3600)])
    await asyncio.sleep(0.05)
    # a retry record waits by design: the "oldest pending" alert and readiness look at sms.outbound only
    assert metrics.OLDEST_PENDING.collect()[0].samples[0].value == 0.0
    assert metrics.RETRY_WAITING.collect()[0].samples[0].value == 1.0
    assert d.assigned == 0
    d._forget_waiting([tp])


async def test_a_revoke_does_not_wait_for_the_held_records_it_leaves_to_the_next_owner() -> None:
    # A held record is taken but never finished here (its next owner re-reads it); it sits before a
    # record that finished. The revoke's drain used to count both as unfinished once the held one
    # was forgotten, and waited its whole deadline (25 s: longer than a session, so the worker was
    # expelled from the group) for records it had left to the next owner on purpose.
    d, started, consumer = dispatcher(100)
    committed: list[dict[TopicPartition, int]] = []
    consumer.commit = lambda offsets: committed.append(offsets) or asyncio.sleep(0)  # type: ignore[attr-defined]
    tp = TopicPartition(RETRY, 0)
    progress = d._progress[tp] = PartitionProgress()
    d._take(tp, [record(0, 1, 3600), record(0, 2, -1)])
    assert started == [(0, 2)] and d._waiting_by_tp[tp] == 1
    progress.finish(2)
    t0 = time.monotonic()
    await asyncio.wait_for(d.on_revoked([tp]), d.settings.dispatch.shutdown_timeout_s / 2)
    assert time.monotonic() - t0 < 1.0
    assert not d._waiting and progress.revoked
    assert committed in ([], [{tp: 1}])      # never past the held record: the next owner re-reads it


async def test_a_revoke_still_waits_for_records_that_were_started() -> None:
    d, started, consumer = dispatcher(100)
    consumer.commit = lambda offsets: asyncio.sleep(0)  # type: ignore[attr-defined]
    tp = TopicPartition(RETRY, 0)
    progress = d._progress[tp] = PartitionProgress()
    d._take(tp, [record(0, 1, 3600), record(0, 2, -1)])
    revoke = asyncio.ensure_future(d.on_revoked([tp]))
    await asyncio.sleep(0.2)
    assert not revoke.done()          # offset 2 was started and has not finished: the drain waits for it
    progress.finish(2)
    await asyncio.wait_for(revoke, 1.0)
