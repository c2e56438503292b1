"""One input partition's transactions (exactly-once dispatch, #16).

``PartitionCommitter`` owns the transactional producer of one input partition p (transactional
id ``<prefix>-<group>-<p>``, see ``streams.transactions``) and commits, in one Kafka
transaction, the outputs of the messages of p that finished (terminal, hand-off, correlation and
ledger records) with the input offsets they finish (sms.outbound p and sms.outbound.retry p, the
first unfinished offset of each).

A finished message calls ``add(outputs)`` (synchronous: its records join the open transaction at
once, or the next one while a commit is under way) and then, still synchronously, marks its
offset finished; the offsets are read when the transaction closes, in the same step that stops
it taking records, so a committed offset never covers a message whose outputs are not in that
transaction or an earlier one. ``add`` returns a future that resolves when the transaction
committed. A transaction closes once it holds ``max_records`` messages (at the next turn of the
event loop: messages added before that join it too) or ``max_s`` after it began. Its batches'
acks and the offsets' round trips (AddOffsetsToTxn, TxnOffsetCommit) overlap; EndTxn follows.

Failures: a produce error or a commit that fails without fencing aborts the transaction and its
messages' records are written again in the next one (they are kept until committed). A fenced or
broken producer (``TransactionFenced``) means another worker may own p now: every waiting
message's future fails with it and ``on_fenced`` is told; the producer is not replaced here (that
would fence the rightful owner in turn), only on a later assignment of p.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Mapping, NamedTuple, Sequence

from aiokafka import TopicPartition

from connector.streams.batcher import Batcher
from connector.streams.transactions import TransactionAborted, TransactionalProducer, TransactionFenced

log = logging.getLogger("sms_connector.dispatch")


class Output(NamedTuple):
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None


class _Item:
    __slots__ = ("outputs", "done", "count")

    def __init__(self, outputs: Sequence[Output], done: asyncio.Future[None], count: int = 1) -> None:
        self.outputs = outputs
        self.done = done
        self.count = count     # messages it finishes (a wave's item finishes many)


class PartitionCommitter:
    def __init__(self, producer: TransactionalProducer, group_id: str,
                 offsets: Callable[[], Mapping[TopicPartition, int]],
                 committed: Callable[[Mapping[TopicPartition, int]], None],
                 on_fenced: Callable[[str], None], *, max_records: int, max_s: float, linger_s: float) -> None:
        self.txp = producer
        self.group_id = group_id
        self._offsets = offsets
        self._committed = committed
        self._on_fenced = on_fenced
        self.max_records = max_records
        self.max_s = max_s
        self.linger_s = linger_s
        self._batcher: Batcher | None = None
        self._queued: list[_Item] = []        # waiting for the next transaction
        self._current: list[_Item] = []       # in the open transaction
        self._count = 0                       # messages in the open transaction
        self._sent: set[asyncio.Future[None]] = set()   # the open transaction's batches
        self._open = False
        self._wake = asyncio.Event()
        self._closing = False
        self._discard = False                 # closing without commit: never commit again
        self._task: asyncio.Task[None] | None = None
        self.fenced: str | None = None

    async def start(self) -> None:
        """Initialise the partition's transactional id (fences a zombie holding it and aborts its
        open transaction), then start committing."""
        await self.txp.start()
        self._batcher = Batcher(self.txp.producer, linger_s=self.linger_s)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def add(self, outputs: Sequence[Output], count: int = 1) -> asyncio.Future[None]:
        """Put a finished message's records (or the records of ``count`` messages finished
        together) in the open (or next) transaction; the future resolves when it committed,
        fails with TransactionFenced when it never will."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fenced is not None:
            done.set_exception(TransactionFenced(self.fenced))
            return done
        item = _Item(outputs, done, count)
        if self._open:
            self._send(item)
            self._current.append(item)
            self._count += count
            if self._count >= self.max_records:
                self._wake.set()
        else:
            self._queued.append(item)
            self._wake.set()
        return done

    @property
    def pending(self) -> int:
        return len(self._queued) + len(self._current)

    def _send(self, item: _Item) -> None:
        assert self._batcher is not None
        for o in item.outputs:
            self._sent.add(self._batcher.send(o.topic, o.partition, o.key, o.value, o.headers, o.timestamp_ms))

    async def _run(self) -> None:
        try:
            while True:
                while not self._queued or self._discard:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                await self._one()
        except TransactionFenced as exc:
            self._fence(str(exc))
        except asyncio.CancelledError:
            self._fence("the partition's transactions were stopped", notify=not self._closing)
            raise
        except Exception as exc:  # noqa: BLE001 - nothing may leave messages waiting forever
            log.exception("transaction loop failed")
            self._fence(f"{type(exc).__name__}: {exc}")

    async def _one(self) -> None:
        """One transaction: begin, take what is queued and what arrives until closed, commit."""
        await self.txp.begin()
        started = time.monotonic()
        self._open = True
        # everything queued, however many: the offsets read at close count them as finished
        items, self._queued = self._queued, []
        for item in items:
            self._send(item)
        self._current = items
        self._count = sum(item.count for item in items)
        try:
            while self._count < self.max_records and not self._closing:
                left = started + self.max_s - time.monotonic()
                if left <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
        finally:
            self._open = False
        if self._discard:
            return      # close(commit=False): the open transaction is aborted there
        # closed: no record joins it any more; the offsets now cover exactly its messages and earlier ones
        offsets = dict(self._offsets())
        items = self._current
        assert self._batcher is not None
        self._batcher.flush()
        sent, self._sent = self._sent, set()
        try:    # the batches' acks and the offsets' round trips overlap; EndTxn only after all of them
            if not await self.txp.commit(offsets, self.group_id, sent=sent, proceed=lambda: not self._discard):
                return      # close(commit=False) meanwhile: the open transaction is aborted there
        except TransactionAborted:      # a batch or the offsets failed: aborted, write them again
            self._retry(items)
            return
        self._current, self._count = [], 0
        self._committed(offsets)
        for item in items:
            if not item.done.done():
                item.done.set_result(None)

    def _retry(self, items: list[_Item]) -> None:
        for fut in self._sent:
            if fut.done() and not fut.cancelled():
                fut.exception()     # retrieved
        self._current, self._sent, self._count = [], set(), 0
        self._queued = items + self._queued
        self._batcher = Batcher(self.txp.producer, linger_s=self.linger_s)

    def _fence(self, reason: str, notify: bool = True) -> None:
        first = self.fenced is None
        if first:
            self.fenced = reason
            if notify:
                log.error("partition's transactional producer fenced: its messages are left to the partition's "
                          "next owner", extra={"transactional_id": self.txp.transactional_id, "reason": reason})
        waiting, self._current, self._queued = self._current + self._queued, [], []
        self._count = 0
        for item in waiting:
            if not item.done.done():
                item.done.set_exception(TransactionFenced(reason))
                item.done.exception()
        self._open = False
        if first and notify:
            self._on_fenced(reason)

    async def close(self, commit: bool, timeout: float = 30.0) -> None:
        """Stop: with ``commit``, commit what was added first (up to ``timeout``); otherwise abort
        the open transaction. Then close the producer."""
        self._closing = True
        self._discard = not commit
        self._wake.set()
        task = self._task
        if task is not None:
            try:     # without commit it returns at once (before committing: _discard)
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001
                pass
            if not task.done():
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: BLE001
                    pass
        if self.fenced is None:
            self._fence("the partition was handed back", notify=False)
        if self.txp.in_transaction:
            try:
                await self.txp.abort()
            except Exception:  # noqa: BLE001 - fenced or broken: nothing of it is visible anyway
                pass
        if self._batcher is not None:
            self._batcher.flush()
        await self.txp.stop()

