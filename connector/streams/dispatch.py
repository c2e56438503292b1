"""The dispatch processor: ``sms.outbound`` in, exactly one terminal record out per input.

Built on aiokafka directly rather than a faust agent, because the guarantees live in offset
management and faust 0.15 gets that wrong for concurrent work (``concurrency>1`` commits past
in-flight events; an agent acks an event when it asks for the next one). Here:

- **Ordering:** records are chained by (partition, key); a key's next record starts only when the
  previous one has finished, so one recipient's messages go out in order. Different keys run
  concurrently; records taken but unfinished are bounded by ``dispatch.max_in_flight`` (fetching
  pauses at the bound).
- **Commits:** each partition's ``PartitionProgress`` knows the first unfinished offset; only that
  is committed (every ``dispatch.commit_interval_s``, on revocation and on shutdown). A record is
  finished only when its terminal record is acknowledged by the broker (acks=all), so a crash at
  any point replays unfinished records instead of losing them (at-least-once).
- **Failures never escape:** undecodable / schema-invalid input goes to the DLQ with its original
  key, value and headers plus ``sms.error.*`` headers; a message that cannot be sent ends as a
  failed record; a failed produce is retried until the broker takes it; even a bug in the
  pipeline dead-letters the record (reason ``internal``) instead of skipping it.
- **Idempotency:** with the ledger (``streams.ledger``), a record whose client_message_id is known
  as done is a no-op, and one in doubt follows its route's ``in_doubt`` policy; each partition's
  records wait until that partition's ledger is loaded.
- **Rebalance / shutdown:** revoked partitions take no new records and let every record already
  taken finish (up to ``dispatch.shutdown_timeout_s``), then commit: nothing is replayed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Container, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError

import topics
from connector import metrics
from connector.config import Settings
from connector.kafka import client_options
from connector.offsets import PartitionProgress
from connector.pipeline import Pipeline, Terminal
from connector.records import iso
from connector.streams.ledger import Ledger, PartitionLedger
from connector.routing import Router
from connector.sender import RouteSender

log = logging.getLogger("sms_connector.dispatch")

Headers = list[tuple[str, bytes]]


class Dispatcher:
    def __init__(self, settings: Settings, senders: Mapping[str, RouteSender], router: Router,
                 optouts: Container[str] = frozenset()) -> None:
        self.settings = settings
        self.pipeline = Pipeline(senders, router, optouts)
        self.topic_correlation = topics.spec("correlation").name
        self.topic_in = topics.spec("outbound").name
        self.topic_accepted = topics.spec("accepted").name
        self.topic_failed = topics.spec("failed").name
        self.topic_dlq = topics.spec("dlq").name
        d = settings.dispatch
        self.max_in_flight = d.max_in_flight
        self.in_flight = 0
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._active: dict[TopicPartition, int] = {}     # records of a partition being processed
        self._chains: dict[tuple[int, Any], deque[ConsumerRecord[bytes, bytes]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._partitions: dict[str, int] = {}
        self.ledger: Ledger | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.started = asyncio.Event()
        metrics.IN_FLIGHT.set_function(lambda: self.in_flight)
        metrics.OLDEST_PENDING.set_function(
            lambda: max((p.oldest_age() for p in list(self._progress.values())), default=0.0))

    # -- health ------------------------------------------------------------------------------
    @property
    def assigned(self) -> int:
        return len(self._progress)

    async def broker_reachable(self, timeout: float = 3.0) -> bool:
        if self._producer is None:
            return False
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout)
            return True
        except (KafkaError, asyncio.TimeoutError, OSError):
            return False

    # -- main loop ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        k = self.settings.kafka
        common = client_options(k)
        self._producer = AIOKafkaProducer(
            **common, acks="all", enable_idempotence=k.idempotent_producer, linger_ms=k.linger_ms,
            request_timeout_ms=int(k.request_timeout_s * 1000), max_batch_size=256 * 1024)
        self._consumer = AIOKafkaConsumer(
            **common, group_id=k.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(k.session_timeout_s * 1000),
            heartbeat_interval_ms=max(1000, int(k.session_timeout_s * 1000 / 5)),
            request_timeout_ms=int(k.request_timeout_s * 1000) + int(k.session_timeout_s * 1000),
            max_poll_interval_ms=300_000, max_partition_fetch_bytes=1024 * 1024,
            fetch_max_wait_ms=k.fetch_max_wait_ms)
        await self._producer.start()
        if self.settings.dispatch.idempotency_window_s > 0:
            self.ledger = Ledger(k, self._producer, self.settings.dispatch.idempotency_window_s)
        for topic in (self.topic_accepted, self.topic_failed, self.topic_dlq):
            self._partitions[topic] = len(await self._producer.partitions_for(topic))
        try:
            self._consumer.subscribe([self.topic_in], listener=_Listener(self))
            await self._consumer.start()
            self.started.set()
            log.info("dispatch started", extra={"topic": self.topic_in, "group": k.group_id})
            commits = asyncio.create_task(self._commit_loop())
            try:
                await self._fetch_loop(stop)
            finally:
                commits.cancel()
                await self._drain(self.settings.dispatch.shutdown_timeout_s)
                await self._commit()
        finally:
            if self._consumer is not None:
                await self._consumer.stop()
            await self._producer.stop()
            log.info("dispatch stopped", extra={"in_flight_abandoned": self.in_flight})

    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                room = self.max_in_flight - self.in_flight
                if room <= 0:
                    self._capacity.clear()
                    cap = asyncio.ensure_future(self._capacity.wait())
                    await asyncio.wait({cap, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                    cap.cancel()
                    continue
                batch = await consumer.getmany(timeout_ms=200, max_records=min(room, 1000))
                for tp, records in batch.items():
                    self._take(tp, records)
        finally:
            stop_wait.cancel()

    def _take(self, tp: TopicPartition, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        progress = self._progress.get(tp)
        if progress is None or progress.closing or progress.revoked:
            return
        metrics.CONSUMED.inc(len(records))
        chains = self._chains
        for rec in records:
            if not progress.take(rec.offset):
                continue  # already taken in this assignment (a re-delivered fetch)
            self.in_flight += 1
            ck = (tp.partition, rec.key if rec.key is not None else ("offset", rec.offset))
            chain = chains.get(ck)
            if chain is not None:
                chain.append(rec)
                continue
            chains[ck] = deque()
            task = asyncio.get_running_loop().create_task(self._run_chain(ck, tp, progress, rec))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_chain(self, ck: tuple[int, Any], tp: TopicPartition, progress: PartitionProgress,
                         rec: ConsumerRecord[bytes, bytes]) -> None:
        chain = self._chains[ck]
        while True:
            if not progress.revoked and not self._abandon:
                self._active[tp] = self._active.get(tp, 0) + 1
                try:
                    ledger = await self.ledger.ready(tp.partition) if self.ledger is not None else None
                    if not progress.revoked and (self.ledger is None or ledger is not None):
                        terminal = await self._handle(tp, rec, ledger)
                        await self._produce(rec, terminal)
                        if terminal.ledger_cid is not None and ledger is not None:
                            await self._record_done(ledger, terminal)
                        progress.finish(rec.offset)
                finally:
                    self._active[tp] -= 1
            self.in_flight -= 1
            if not self._capacity.is_set() and self.in_flight < self.max_in_flight:
                self._capacity.set()
            if not chain:
                del self._chains[ck]
                return
            rec = chain.popleft()

    _abandon = False  # set when the shutdown deadline passed: what is left is replayed

    # -- one record --------------------------------------------------------------------------
    async def _handle(self, tp: TopicPartition, rec: ConsumerRecord[bytes, bytes],
                      ledger: PartitionLedger | None) -> Terminal:
        try:
            replayed = any(k == topics.HEADER_REPLAYED_FROM for k, _ in rec.headers or ())
            return await self.pipeline.outcome(rec.value, rec.timestamp, ledger, replayed)
        except Exception as exc:  # noqa: BLE001 - a bug must not skip a record (faust's trap)
            log.exception("internal error; record dead-lettered",
                          extra={"partition": tp.partition, "offset": rec.offset})
            return self.pipeline.internal_error(exc)

    def _record(self, rec: ConsumerRecord[bytes, bytes], t: Terminal) -> tuple[str, bytes, Headers]:
        """The Kafka record that ends ``rec``: topic, value, headers."""
        source = _source(rec)
        if t.kind == "accepted":
            return self.topic_accepted, t.value or b"", source
        if t.kind == "failed":
            return self.topic_failed, t.value or b"", source
        headers: Headers = list(rec.headers or ())
        headers += source
        headers += [(topics.HEADER_ERROR_REASON, (t.reason or "").encode()),
                    (topics.HEADER_ERROR_MESSAGE, (t.error or "")[:1000].encode()),
                    (topics.HEADER_ERROR_AT, iso(time.time()).encode())]
        if t.field:
            headers.append((topics.HEADER_ERROR_FIELD, t.field.encode()))
        return self.topic_dlq, rec.value if rec.value is not None else b"", headers

    async def _produce(self, rec: ConsumerRecord[bytes, bytes], t: Terminal) -> None:
        """Produce until the broker acknowledges (acks=all). faust's send() only logs a failure;
        here the input is not finished until its terminal record is durable."""
        assert self._producer is not None
        if t.kind == "skip":
            return   # a replay whose terminal record already exists
        topic, value, headers = self._record(rec, t)
        # The input's partition number (modulo the output's count): the same key stays on one
        # partition, in order, and the pure-Python key hash is skipped on the hot path.
        partition = rec.partition % self._partitions.get(topic, 1)
        delay = 0.1
        while True:
            try:
                fut = await self._producer.send(topic, value=value, key=rec.key, headers=headers,
                                                partition=partition)
                if t.correlations:
                    # keyed by correlation key with the default partitioner: co-partitioned with receipts
                    futures = [fut] + [await self._producer.send(self.topic_correlation, value=corr, key=key)
                                       for key, corr in t.correlations]
                    await asyncio.gather(*futures)
                else:
                    await fut
                return
            except KafkaError as exc:
                metrics.PRODUCE_ERRORS.labels(topic).inc()
                log.warning("produce failed; retrying", extra={"topic": topic, "error": type(exc).__name__,
                                                               "retry_in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _record_done(self, ledger: PartitionLedger, t: Terminal) -> None:
        """The terminal record is durable: a replay of this message must not call the provider."""
        delay = 0.1
        while True:
            try:
                await ledger.done(t.ledger_cid or "", t.kind)
                return
            except KafkaError as exc:
                metrics.PRODUCE_ERRORS.labels(ledger.ledger.topic).inc()
                log.warning("ledger write failed; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- offsets -----------------------------------------------------------------------------
    async def _commit_loop(self) -> None:
        interval = self.settings.dispatch.commit_interval_s
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            await self._commit()
            if self.ledger is not None and time.monotonic() - last_prune > 60:
                self.ledger.prune()
                last_prune = time.monotonic()

    async def _commit(self, only: Sequence[TopicPartition] | None = None) -> None:
        if self._consumer is None:
            return
        offsets: dict[TopicPartition, int] = {}
        for tp in (only if only is not None else list(self._progress)):
            progress = self._progress.get(tp)
            position = progress.committable() if progress else None
            if position is not None:
                offsets[tp] = position
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            metrics.COMMITS.labels("error").inc()
            log.warning("commit failed; will retry", extra={"error": type(exc).__name__})
            return
        metrics.COMMITS.labels("ok").inc()
        for tp, position in offsets.items():
            if tp in self._progress:
                self._progress[tp].committed = position

    async def _drain(self, timeout: float, only: Sequence[TopicPartition] | None = None) -> None:
        """Let every record already taken (of ``only``, or all) finish, up to ``timeout``.

        Queued records are finished too, not just those in progress: abandoning a queued record
        while later offsets of other keys complete would leave a gap below them, and the next
        owner would replay (resend) everything after the gap. After the deadline, what is left is
        abandoned: not committed, so replayed."""
        deadline = time.monotonic() + timeout

        def busy() -> bool:
            if only is None:
                return self.in_flight > 0
            return any(self._progress[tp].in_flight for tp in only if tp in self._progress)

        while busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if busy():
            log.warning("records still unfinished at the deadline; they will be replayed",
                        extra={"timeout_s": timeout})
            if only is None:
                self._abandon = True
            else:
                for tp in only:
                    if tp in self._progress:
                        self._progress[tp].revoked = True

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        mine = [tp for tp in revoked if tp in self._progress]
        for tp in mine:
            self._progress[tp].closing = True
        if mine:
            await self._drain(self.settings.dispatch.shutdown_timeout_s, mine)
            await self._commit(mine)
        for tp in mine:
            progress = self._progress.pop(tp, None)
            if progress is not None:
                progress.revoked = True   # anything left is replayed by the next owner
            if self.ledger is not None:
                self.ledger.revoke(tp.partition)
        metrics.PARTITIONS_ASSIGNED.set(len(self._progress))
        if mine:
            log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in mine)})

    def on_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self._progress:
                self._progress[tp] = PartitionProgress()
            if self.ledger is not None:
                self.ledger.assign(tp.partition)   # its records wait for it (see _run_chain)
        metrics.PARTITIONS_ASSIGNED.set(len(self._progress))
        log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned)})


def _source(rec: ConsumerRecord[bytes, bytes]) -> Headers:
    return [(topics.HEADER_SOURCE_TOPIC, rec.topic.encode()),
            (topics.HEADER_SOURCE_PARTITION, str(rec.partition).encode()),
            (topics.HEADER_SOURCE_OFFSET, str(rec.offset).encode())]


class _Listener(ConsumerRebalanceListener):
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.dispatcher.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.dispatcher.on_assigned(list(assigned))
