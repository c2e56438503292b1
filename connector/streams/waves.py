"""The dispatcher's vectorised path (#17): a fetched partition batch dispatched in waves.

A **wave** is a list of records of one input partition with at most one record per key: those
whose key has no record in progress when they are taken. It is decoded as a unit
(``records.decode_outbound_many``) and decided by ``Pipeline.outcomes`` (one ``send_many`` per
route for the messages whose first call decides them). Its messages are recorded in groups as they
are decided: those decided before any call, then the messages of each call as it returns (so a
message is no longer in doubt than on the per-record path). A group's records all go into the
``Batcher`` and one wait covers their distinct batch futures; then its ledger entries; then its
offsets are finished (with exactly-once: records, ledger entries and offsets join the partition's
open transaction in one ``add``). When every message of the wave has ended, the next record of each
key that ended starts the next wave, in the same task: one key's records still go out one after
the other, in offset order.

Per-record machinery is left to the records that need it: a message whose outcome needs more than
its first call (an in-place retry, a failover, a budget, an in-doubt intent, a circuit that is not
closed, a ledger entry in doubt) continues on the per-record path (``Dispatcher._run_chain``) with
the rest of its key's chain, and so do retry-topic and replayed records and, while tracing is on,
every record (its span is per message).

Guarantees, as on the per-record path:

- a record is finished only when its terminal record (and its correlation records) are
  acknowledged, then its ledger entry; with exactly-once, its records, its ledger entry and its
  offset join its partition's open transaction together, and its slot is released when that
  commits;
- a produce that fails is retried for the records of the batches that failed only;
- a revoked partition's wave stops before its call (the sender's gate, per call, sees the wave's
  partition through ``_OWNER``); the records of a refused call are abandoned to the next owner,
  unfinished;
- limits, budgets, opt-outs, destinations, quiet hours and scheduled sends are decided by the
  same pipeline code.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from connector import contract as topics
from connector import metrics
from connector.offsets import PartitionProgress
from connector.pipeline import Later, Verdict, WaveEnd
from connector.records import DONE, Ending, decode_outbound_many
from connector.streams.batcher import Batcher
from connector.streams.committer import Output
from connector.streams.membership import OwnershipLost

if TYPE_CHECKING:
    from connector.streams.dispatch import Dispatcher
    from connector.streams.ledger import PartitionLedger

log = logging.getLogger("sms_connector.dispatch")

Record = ConsumerRecord[bytes, bytes]


def chain_key(progress: PartitionProgress, rec: Record) -> tuple[PartitionProgress, Any]:
    """A record's key chain: one per (assignment of its partition, key); a record without a key is alone."""
    return progress, rec.key if rec.key is not None else ("offset", rec.offset)


async def produce_all(batcher: Batcher, outputs: Sequence[Output]) -> None:
    """Produce ``outputs`` until the broker acknowledges every one (acks=all): all appended first,
    then one wait over their distinct batch futures. Only the records of a batch that failed are
    sent again (a batch is written whole or not at all)."""
    delay = 0.1
    while outputs:
        batches: dict[asyncio.Future[None], list[Output]] = {}
        for o in outputs:
            fut = batcher.send(o.topic, o.partition, o.key, o.value, o.headers, o.timestamp_ms)
            same = batches.get(fut)
            if same is None:
                batches[fut] = [o]
            else:
                same.append(o)
        results = await asyncio.gather(*batches, return_exceptions=True)
        failed: list[Output] = []
        for (fut, outs), result in zip(batches.items(), results):
            if isinstance(result, KafkaError):
                failed += outs
            elif isinstance(result, BaseException):
                raise result
        outputs = failed
        if failed:
            metrics.PRODUCE_ERRORS.labels(failed[0].topic).inc()
            log.warning("produce failed; retrying", extra={"topic": failed[0].topic, "records": len(failed),
                                                           "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class Waves:
    """The wave path of one ``Dispatcher`` (it owns the chains, slots, progress and producers)."""

    def __init__(self, d: Dispatcher) -> None:
        self.d = d

    def eligible(self, rec: Record) -> bool:
        """An input record with nothing per-record about it: not from the retry topic, not replayed."""
        return rec.topic == self.d.topic_in and not any(k == topics.HEADER_REPLAYED_FROM for k, _ in rec.headers or ())

    def take(self, tp: TopicPartition, progress: PartitionProgress, records: Sequence[Record]) -> None:
        """Start the records fetched from ``tp``: a wave of those whose key is free, the others
        queued behind their key's record in progress."""
        d = self.d
        wave: list[Record] = []
        for rec in records:
            if not progress.take(rec.offset):   # already taken in this assignment (a re-delivered fetch)
                continue
            if not self.eligible(rec):
                d._start(tp, progress, rec)
            elif d._enqueue(progress, rec) is not None:   # its key is free: in this wave
                wave.append(rec)
        if wave:
            d._spawn(self.run(tp, progress, wave))

    async def run(self, tp: TopicPartition, progress: PartitionProgress, wave: list[Record]) -> None:
        from connector.streams.dispatch import _OWNER
        _OWNER.set(progress)      # this task's provider calls are for this assignment of tp
        while wave:
            wave = await self._one(tp, progress, wave)

    def _next(self, tp: TopicPartition, progress: PartitionProgress, ended: Sequence[Record]) -> list[Record]:
        """The next wave: the next record of each key whose record ended. A key whose next record
        is not for the wave path continues on the per-record path."""
        d = self.d
        wave: list[Record] = []
        for rec in ended:
            ck = chain_key(progress, rec)
            chain = d._chains[ck]
            if not chain:
                del d._chains[ck]
                continue
            nxt = chain.popleft()
            if self.eligible(nxt):
                wave.append(nxt)
            else:
                d._spawn(d._run_chain(ck, tp, progress, nxt))
        return wave

    async def _one(self, tp: TopicPartition, progress: PartitionProgress, wave: list[Record]) -> list[Record]:
        """Run one wave; returns the next. Its messages are recorded as they are decided (those
        decided before any call, then each call's as it returns: never more in doubt than on the
        per-record path), at-least-once by this task while the calls go on in another."""
        d = self.d
        ledger: PartitionLedger | None = None
        if not progress.revoked and not d._abandon and d.ledger is not None:
            ledger = d.ledger.partitions.get(tp.partition) or await d.ledger.ready(tp.partition)
        if progress.revoked or d._abandon or (d.ledger is not None and ledger is None):
            # given up (or the partition's ledger is gone with it): unfinished, for the next owner
            if progress.revoked and d.membership.lost_reason is not None:
                metrics.ABANDONED.inc(len(wave))
            d._release_slots(len(wave))
            return self._next(tp, progress, wave)
        loop = asyncio.get_running_loop()
        ended: list[Record] = []       # records whose key's chain continues in this task
        ready: list[_Group] = []       # at-least-once: decided, waiting for their produce
        seen = bytearray(len(wave))
        waiter: list[asyncio.Future[None] | None] = [None]

        def wake(_: object = None) -> None:
            w = waiter[0]
            if w is not None and not w.done():
                w.set_result(None)

        def on_ends(pairs: list[tuple[int, WaveEnd]]) -> None:
            group = self._group(tp, progress, wave, pairs, ledger, seen, ended)
            if group is None:
                return
            d._unrecorded += group.called
            if d.exactly_once:
                self._commit(tp, progress, group, ledger)
            else:
                ready.append(group)
                wake()

        task = loop.create_task(self._decide(wave, ledger, on_ends))
        task.add_done_callback(wake)
        while True:
            if ready:
                groups, ready[:] = list(ready), []
                await self._produce(progress, _Group.merge(groups), ledger)
                continue
            if task.done():
                exc = task.exception()
                if exc is not None and not all(seen):     # a bug must not skip records (faust's trap)
                    log.error("internal error; wave dead-lettered", exc_info=exc,
                              extra={"partition": tp.partition, "offsets": [r.offset for r in wave[:10]]})
                    on_ends([(i, exc) for i in range(len(wave)) if not seen[i]])
                    continue
                break
            waiter[0] = loop.create_future()
            await waiter[0]
            waiter[0] = None
        return self._next(tp, progress, ended)

    async def _decide(self, wave: list[Record], ledger: PartitionLedger | None,
                      on_ends: Callable[[list[tuple[int, WaveEnd]]], None]) -> None:
        msgs = decode_outbound_many([rec.value for rec in wave])
        await self.d.pipeline.outcomes(msgs, [rec.timestamp for rec in wave], ledger, on_ends)

    def _group(self, tp: TopicPartition, progress: PartitionProgress, wave: list[Record],
               pairs: list[tuple[int, WaveEnd]], ledger: PartitionLedger | None, seen: bytearray,
               ended: list[Record]) -> _Group | None:
        """The records that end some of the wave's messages (None: nothing to produce). A message
        that continues on its own starts its chain's task; one whose call was refused is given up."""
        d = self.d
        group = _Group()
        outputs, entries, finished = group.outputs, group.entries, group.finished
        given_up = 0
        for i, end in pairs:
            seen[i] = 1
            rec = wave[i]
            if type(end) is tuple:              # accepted: the common case
                value, correlations, cid = end
                outputs.append(Output(d.topic_accepted, rec.partition % d._partitions.get(d.topic_accepted, 1),
                                      rec.key, value, d._source(rec)))
                if correlations:
                    outputs += d._correlation_outputs(correlations)
                if cid is not None and d.ledger is not None:
                    entries.append((cid, d.ledger.entry(cid, DONE, outcome=Ending.ACCEPTED)))
                finished.append(rec)
                continue
            if isinstance(end, Later):
                d._spawn(d._run_chain(chain_key(progress, rec), tp, progress, rec, end))
                continue
            if isinstance(end, OwnershipLost):
                given_up += 1
                ended.append(rec)
                continue
            if not isinstance(end, Verdict):    # a bug met by this message alone
                log.error("internal error; record dead-lettered", exc_info=end,
                          extra={"partition": tp.partition, "offset": rec.offset})
                end = d.pipeline.internal_error(end)
            outputs += d._outputs(rec, end)
            entry = d._ledger_entry(end, ledger)
            if entry is not None:
                entries.append(entry)
            finished.append(rec)
        if given_up:
            progress.revoked = True             # not sent, not finished, not committed: the next owner sends them
            metrics.ABANDONED.inc(given_up)
            d._release_slots(given_up)
        if not finished:
            return None
        ended += finished
        group.called = len(entries)     # a provider call was made for each: in doubt until recorded
        return group

    def _ledger_outputs(self, group: _Group, ledger: PartitionLedger | None) -> list[Output]:
        led = self.d.ledger
        if led is None or ledger is None:
            return []
        return [Output(led.topic, ledger.partition, cid.encode(), entry.encode()) for cid, entry in group.entries]

    def _commit(self, tp: TopicPartition, progress: PartitionProgress, group: _Group,
                ledger: PartitionLedger | None) -> None:
        """Exactly-once: the group's records, ledger entries and offsets join the partition's open
        transaction at once; its slots are released when that commits (abandoned if it never does)."""
        d = self.d
        n, called = len(group.finished), group.called

        def ended(fut: asyncio.Future[None] | None) -> None:
            d._unrecorded -= called
            d._release_slots(n)
            if fut is None or fut.cancelled() or fut.exception() is not None:
                progress.revoked = True      # fenced: in doubt, for the next owner
                metrics.ABANDONED.inc(n)

        committer = d._committers.get(tp.partition)
        if committer is None:
            ended(None)
            return
        committed = committer.add(group.outputs + self._ledger_outputs(group, ledger), count=n)
        for rec in group.finished:          # right after add(): the transaction's offsets include them
            progress.finish(rec.offset)
        self._remember(group.entries, ledger)
        committed.add_done_callback(ended)

    async def _produce(self, progress: PartitionProgress, group: _Group, ledger: PartitionLedger | None) -> None:
        """At-least-once: the group's records until durable, then its ledger entries, then its offsets."""
        d = self.d
        batcher = d._batcher
        assert batcher is not None
        try:
            await produce_all(batcher, group.outputs)
            ledger_outputs = self._ledger_outputs(group, ledger)
            if ledger_outputs:
                await produce_all(batcher, ledger_outputs)    # only once the terminal records are durable
                self._remember(group.entries, ledger)
            for rec in group.finished:
                progress.finish(rec.offset)
        finally:
            d._unrecorded -= group.called
            d._release_slots(len(group.finished))

    def _remember(self, entries: list[tuple[str, Any]], ledger: PartitionLedger | None) -> None:
        led = self.d.ledger
        if led is not None and ledger is not None:
            for cid, entry in entries:
                led.remember(ledger, cid, entry)


class _Group:
    """Messages of a wave decided together: their records, ledger entries and input records."""

    __slots__ = ("outputs", "entries", "finished", "called")

    def __init__(self) -> None:
        self.outputs: list[Output] = []
        self.entries: list[tuple[str, Any]] = []     # (client_message_id, LedgerEntry)
        self.finished: list[Record] = []
        self.called = 0

    @staticmethod
    def merge(groups: list[_Group]) -> _Group:
        if len(groups) == 1:
            return groups[0]
        merged = _Group()
        for g in groups:
            merged.outputs += g.outputs
            merged.entries += g.entries
            merged.finished += g.finished
            merged.called += g.called
        return merged
