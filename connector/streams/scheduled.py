"""Messages waiting for their send time (``send_at``, quiet hours) without holding up a partition.

A deferred message (``pipeline.Verdict.deferral``) is handed off like a retry: same key, same
partition number, original bytes, the retry headers (``connector.retries``: its due time in
``sms.retry.due-at``, a hand-off token the ledger records) and its input is finished. Where it
goes depends on how far its due time is:

- due within one lap (``dispatch.schedule_lap_s``): ``sms.outbound.retry``, whose reader holds
  it in memory until due (``streams.dispatch``, bounded by ``retry_topic_max_waiting``);
- further: ``sms.outbound.scheduled``, with ``sms.schedule.check-at`` = now + one lap.

Every record of the scheduled topic is written with the same lap, so in each partition the
check times grow with the offsets (up to clock differences between successive owners). Its
reader (``ScheduledLaps``, in the dispatch worker: partition p of every topic has one owner)
therefore only ever waits for the head of a partition: it pauses the partition until the head's
check time, and then forwards it, to the retry topic when it is due within the next lap, else
to the end of the scheduled topic for another lap. Nothing due sooner can be stuck behind it:
everything behind it was written later and is checked later. Memory: at most one fetch per
scheduled partition, plus the retry topic's bounded hold. Cost: a message scheduled d ahead is
written about d / lap times.

Durability: a scheduled record is taken (``PartitionProgress.take``) only when its check time
comes, and finished only once its forward is acknowledged, so the committed offset never passes
an unforwarded record: a crash or a rebalance re-reads it (a forward may then be written twice;
both copies carry one token, and the ledger's ``done`` entry makes the second a no-op). Never
early: the retry hold waits for ``due-at``, and the pipeline checks ``send_at`` and quiet hours
again before it sends.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Awaitable, Callable, Sequence

from aiokafka import ConsumerRecord, TopicPartition

from connector import contract as topics
from connector import metrics
from connector.offsets import PartitionProgress
from connector.schedule import QUIET_HOURS, SCHEDULED

Headers = list[tuple[str, bytes]]
HEADER_CHECK_AT = topics.HEADER_SCHEDULE_CHECK_AT
DEFERRAL_REASONS = frozenset({SCHEDULED.encode(), QUIET_HOURS.encode()})
# hands a scheduled record on (``destination`` decides where) and returns once it is acknowledged
Forward = Callable[[ConsumerRecord[bytes, bytes]], Awaitable[None]]


def _header_ms(headers: Sequence[tuple[str, bytes]] | None, name: str) -> float | None:
    for k, v in headers or ():
        if k == name:
            try:
                return int(v) / 1000
            except ValueError:
                return None
    return None


def is_deferral(headers: Sequence[tuple[str, bytes]] | None) -> bool:
    """A hand-off that waits for a send time (not a retry after an error)."""
    return any(k == topics.HEADER_RETRY_REASON and v in DEFERRAL_REASONS for k, v in headers or ())


class ScheduledLaps:
    """The reader of ``sms.outbound.scheduled`` in one dispatch worker (see the module docstring)."""

    def __init__(self, topic: str, retry_topic: str, lap_s: float, forward: Forward) -> None:
        self.topic = topic
        self.retry_topic = retry_topic
        self.lap_s = lap_s
        self._hand_on = forward
        self._pending: dict[TopicPartition, deque[ConsumerRecord[bytes, bytes]]] = {}
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._timers: dict[TopicPartition, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer: Any = None

    @property
    def waiting(self) -> int:
        """Records read and not yet forwarded."""
        return sum(len(q) for q in self._pending.values())

    def destination(self, headers: Headers, due_at: float, now: float | None = None) -> tuple[str, Headers]:
        """Where a deferred message (its hand-off ``headers``) goes now: the retry topic when due
        within one lap, else the scheduled topic with its next check time."""
        now = time.time() if now is None else now
        kept = [(k, v) for k, v in headers if k != HEADER_CHECK_AT]
        if due_at - now <= self.lap_s:
            return self.retry_topic, kept
        return self.topic, kept + [(HEADER_CHECK_AT, str(int((now + self.lap_s) * 1000)).encode())]

    # -- reading ---------------------------------------------------------------------------------
    def take(self, tp: TopicPartition, progress: PartitionProgress, records: Sequence[ConsumerRecord[bytes, bytes]],
             consumer: Any) -> None:
        self._consumer = consumer
        if self._progress.get(tp) is not progress:
            self._forget(tp)
            self._progress[tp] = progress
        self._pending.setdefault(tp, deque()).extend(records)
        self._advance(tp)

    def _advance(self, tp: TopicPartition) -> None:
        """Forward the records of ``tp`` whose check time has come; wait for the next one."""
        self._timers.pop(tp, None)
        queue, progress = self._pending.get(tp), self._progress.get(tp)
        if queue is None or progress is None:
            return
        now = time.time()
        while queue and not (progress.revoked or progress.closing):
            check_at = _header_ms(queue[0].headers, HEADER_CHECK_AT) or 0.0
            if check_at > now:
                break
            rec = queue.popleft()
            if progress.take(rec.offset):     # False: re-delivered by a fetch already taken
                task = asyncio.get_running_loop().create_task(self._forward(tp, progress, rec))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self._consumer is None:
            return
        if queue and not (progress.revoked or progress.closing):
            # the head is checked later, and everything behind it later still: stop fetching
            self._consumer.pause(tp)
            delay = max(0.0, (_header_ms(queue[0].headers, HEADER_CHECK_AT) or 0.0) - now)
            self._timers[tp] = asyncio.get_running_loop().call_later(delay, self._advance, tp)
        elif not queue and tp in self._consumer.assignment():
            self._consumer.resume(tp)

    async def _forward(self, tp: TopicPartition, progress: PartitionProgress, rec: ConsumerRecord[bytes, bytes]) -> None:
        if progress.revoked:
            return       # not finished: the partition's next owner forwards it
        due_at = _header_ms(rec.headers, topics.HEADER_RETRY_DUE_AT) or 0.0
        await self._hand_on(rec)
        metrics.DEFERRED_FORWARDED.labels("retry" if due_at - time.time() <= self.lap_s else "scheduled").inc()
        progress.finish(rec.offset)

    # -- ownership -------------------------------------------------------------------------------
    def forget(self, revoked: Sequence[TopicPartition]) -> None:
        """Drop what was read from revoked partitions: not taken, not committed, re-read by the next owner."""
        for tp in revoked:
            self._forget(tp)

    def _forget(self, tp: TopicPartition) -> None:
        timer = self._timers.pop(tp, None)
        if timer is not None:
            timer.cancel()
        self._pending.pop(tp, None)
        self._progress.pop(tp, None)

    def close(self) -> None:
        """Shutdown: forwards in progress are dropped unfinished (re-read after the restart, as after a crash)."""
        self.forget(list(self._pending))
        for task in list(self._tasks):
            task.cancel()

