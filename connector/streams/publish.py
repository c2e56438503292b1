"""Durable publishing of inbound records, shared by the callback endpoint, pollers and correlator.

``produce_durably`` returns only when the broker has acknowledged the record (acks=all) and
raises ``KafkaError`` otherwise, so a caller can answer 503 (callbacks) or keep a provider's
queue unacknowledged (pollers): the provider then sends again and nothing is lost.
``InboundPublisher.publish_mo`` writes an MO to ``sms.inbound`` and, when its text is an opt-out
or opt-in keyword from a phone number, updates the opt-out table (``sms.optout``, one record per
batch so the table reads back exactly on any broker) and mirrors it to Rev.io.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence

from aiokafka import AIOKafkaProducer, TopicPartition

from connector import contract as topics
from connector import metrics, tracing
from connector.records import InboundSms, OptOutChange
from connector.streams.plumbing import Headers, produce_acknowledged
from connector.streams.transactions import TransactionalProducer, TransactionFailed, TransactionFenced, needs_new_producer

log = logging.getLogger("sms_connector.inbound")

OptOutSync = Callable[[OptOutChange], Awaitable[None]]


produce_durably = produce_acknowledged     # the name the inbound streams know it by


class InboundPublisher:
    def __init__(self, producer: AIOKafkaProducer, optout_sync: Sequence[OptOutSync] = ()) -> None:
        self.producer = producer
        self.optout_sync = list(optout_sync)
        self.topic_inbound = topics.spec("inbound").name
        self.topic_optout = topics.spec("optout").name

    async def publish_mo(self, mo: InboundSms) -> None:
        """sms.inbound, then the opt-out table when the MO is a keyword. Raises KafkaError."""
        await produce_durably(self.producer, self.topic_inbound, mo.key, mo.encode())
        metrics.MO_RECEIVED.labels(mo.provider).inc()
        await self.derive_optout(mo)

    async def derive_optout(self, mo: InboundSms) -> None:
        """The opt-out table change an MO makes, if any (also what a poller's recovery writes
        again for an MO it finds already in sms.inbound). Raises KafkaError."""
        change = optout_change(mo)
        if change is not None:
            await self.record_optout(change)

    async def record_optout(self, change: OptOutChange) -> None:
        await produce_durably(self.producer, self.topic_optout, change.phone.encode(), change.encode())
        await self.optout_changed(change)

    async def optout_changed(self, change: OptOutChange) -> None:
        """What follows a durable opt-out change: its metric, a log line, the providers' mirrors."""
        metrics.OPTOUT_CHANGES.labels("out" if change.opted_out else "in", change.source).inc()
        log.info("opt-out table changed", extra={"opted_out": change.opted_out, "source": change.source})
        for sync in self.optout_sync:
            try:
                await sync(change)
            except Exception as exc:  # noqa: BLE001 - the table is the truth; a mirror may lag
                log.warning("opt-out sync failed", extra={"error": f"{type(exc).__name__}: {exc}"})

    # -- exactly-once: the same records, written in a transaction (``Writes``) -------------------
    def plan_mo(self, mo: InboundSms, writes: Writes, *, published: bool = False) -> None:
        """``publish_mo`` as writes of one transaction: the sms.inbound record (unless ``published``:
        already there, only its opt-out change is written again) and the opt-out change; the
        metrics and mirrors run once the transaction is committed."""
        if not published:
            writes.add(self.topic_inbound, mo.key, mo.encode())
            writes.then(_count_mo(mo.provider))
        change = optout_change(mo)
        if change is not None:
            writes.add(self.topic_optout, change.phone.encode(), change.encode())
            writes.then(lambda: self.optout_changed(change))


def optout_change(mo: InboundSms) -> OptOutChange | None:
    """The opt-out table change an MO makes: a STOP / START keyword from a number."""
    # The sender's canonical number (a phone, or a device addressed by its MDN / MSISDN): the
    # table is by E.164, so this STOP blocks the person on every route, in every form.
    if not (mo.optout and mo.sender.e164):
        return None
    return OptOutChange(phone=mo.sender.e164, opted_out=mo.optout == "stop", at=time.time(),
                        source=f"{mo.provider} MO", keyword=(mo.text or "").strip().upper()[:32])


def _count_mo(provider: str) -> Callable[[], Awaitable[None]]:
    async def count() -> None:
        metrics.MO_RECEIVED.labels(provider).inc()
    return count


# --------------------------------------------------------------------------------------------
# Exactly-once inbound (#16): records written in one transaction, effects after its commit


@dataclass
class Writes:
    """The records of one transaction, in order (one key's records keep their order), and what
    to do once it is committed (metrics, logs, opt-out mirrors: never before)."""

    records: list[tuple[str, bytes | None, bytes | None, Headers | None]] = field(default_factory=list)
    effects: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def add(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers | None = None) -> None:
        # The trace context is taken now, inside the span that made the record: the transaction
        # writes it later, outside that span (a group commit's task, the correlator's batch
        # commit), with a producer that adds none (the at-least-once path's TracedProducer did).
        self.records.append((topic, key, value, tracing.outgoing(topic, headers)))

    def then(self, effect: Callable[[], Awaitable[None]]) -> None:
        self.effects.append(effect)

    def extend(self, other: Writes) -> None:
        self.records += other.records
        self.effects += other.effects

    async def settled(self) -> None:
        """Run the effects (after the commit); one failing never stops the others."""
        for effect in self.effects:
            try:
                await effect()
            except Exception:  # noqa: BLE001 - the records are committed; an effect is best effort
                log.exception("an effect after a committed transaction failed")


# The inbound streams' transactional producers: no linger (a callback waits for its commit), and a
# short retry backoff: right after a commit the coordinator answers the next transaction's
# AddPartitionsToTxn with CONCURRENT_TRANSACTIONS until its markers are written, and aiokafka waits
# retry_backoff_ms (100 ms by default) before asking again. Measured on Apache Kafka 4.1 (one
# broker, idle machine): begin + one send + commit took 34 ms with the default, 20 ms with 5 ms.
INBOUND_TXN_OPTIONS = {"linger_ms": 1, "retry_backoff_ms": 5}


async def commit_writes(txn: TransactionalProducer, writes: Writes,
                        offsets: Mapping[TopicPartition, int] | None = None, group_id: str | None = None, *,
                        before_commit: Callable[[], Awaitable[None]] | None = None, run_effects: bool = True) -> None:
    """Write ``writes`` and commit them (with ``offsets`` for ``group_id``, if any) in one
    transaction; then run their effects. Raises ``TransactionFailed`` when it did not commit:
    nothing of it is visible to read_committed readers. A producer that is fenced or broken is
    replaced first (``TransactionFenced`` still raised: the caller decides whether what it
    wrote may have been committed by someone else meanwhile, e.g. by reading its state again)."""
    try:
        await txn.begin()
        try:
            sent = [await txn.producer.send(topic, value=value, key=key, headers=headers or [])
                    for topic, key, value, headers in writes.records]
            if sent:
                await asyncio.gather(*sent)
        except Exception as exc:  # noqa: BLE001 - a send refused (KafkaError, or aiokafka's AssertionError)
            if needs_new_producer(exc, txn.producer):
                raise TransactionFenced(f"{txn.transactional_id}: {type(exc).__name__}: {exc}") from exc
            await txn.abort()
            raise TransactionFailed(f"{txn.transactional_id}: {type(exc).__name__}: {exc}") from exc
        if before_commit is not None:
            await before_commit()           # tests: a kill here leaves an open transaction
        await txn.commit(offsets, group_id)
    except TransactionFenced:
        try:
            await txn.replace()
        except Exception as exc:  # noqa: BLE001 - broker away: the next begin fails and replaces it again
            log.warning("transactional producer could not be replaced yet",
                        extra={"transactional_id": txn.transactional_id, "error": f"{type(exc).__name__}: {exc}"})
        raise
    if run_effects:
        await writes.settled()


class GroupCommit:
    """Concurrent writers' records committed together: each ``write`` returns once its records
    are committed, and every writer waiting while a transaction commits goes into the next one.
    A transaction costs a few broker round trips (~25 ms) whatever it holds, so one transaction
    per writer would cap throughput at ~40/s per producer; grouped, it grows with the load.
    ``producers`` transactional producers take turns, so one group can be written while the
    previous one commits (lower latency under load)."""

    def __init__(self, producers: Sequence[TransactionalProducer], *, max_records: int = 2000) -> None:
        self.producers = list(producers)
        self.max_records = max_records
        self._queue: list[tuple[Writes, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for txn in self.producers:
            await txn.start()
        self._tasks = [asyncio.create_task(self._run(txn)) for txn in self.producers]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(TransactionFailed("stopped"))
        self._queue.clear()
        for txn in self.producers:
            await txn.stop()

    async def write(self, writes: Writes) -> None:
        """Returns once ``writes`` are committed (effects run); raises TransactionFailed otherwise."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((writes, fut))
        self._wake.set()
        await fut

    def _take(self) -> list[tuple[Writes, asyncio.Future[None]]]:
        taken, n = [], 0
        while self._queue and (not taken or n + len(self._queue[0][0].records) <= self.max_records):
            item = self._queue.pop(0)
            if item[1].done():          # its writer gave up (cancelled): nothing to write
                continue
            taken.append(item)
            n += len(item[0].records)
        if not self._queue:
            self._wake.clear()
        return taken

    async def _run(self, txn: TransactionalProducer) -> None:
        while True:
            await self._wake.wait()
            group = self._take()
            if not group:
                continue
            writes = Writes()
            for w, _ in group:
                writes.records += w.records
            try:
                await commit_writes(txn, writes, run_effects=False)
            except Exception as exc:  # noqa: BLE001 - every writer of the group hears why
                failed = exc if isinstance(exc, TransactionFailed) else TransactionFailed(f"{type(exc).__name__}: {exc}")
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(failed)
                continue
            for w, fut in group:
                if not fut.done():
                    fut.set_result(None)
                await w.settled()
