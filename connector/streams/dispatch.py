"""The dispatch processor: ``sms.outbound`` in, exactly one terminal record out per input.

Built on aiokafka directly rather than a faust agent, because the guarantees live in offset
management and faust 0.15 gets that wrong for concurrent work (``concurrency>1`` commits past
in-flight events; an agent acks an event when it asks for the next one). Here:

- **Ordering:** records are chained by (partition, key); a key's next record starts only when the
  previous one has finished, so one recipient's messages go out in order. Different keys run
  concurrently; records taken but unfinished are bounded by ``dispatch.max_in_flight`` (fetching
  pauses at the bound). The records of a fetched partition batch whose keys are free run together
  as a wave (``streams.waves``); a message that needs more than its first call continues here, on
  its own (``_run_chain``).
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
- **Retry topic:** a message whose in-place retries are spent is handed off to
  ``sms.outbound.retry`` (same key, same partition number, original bytes; ``connector.retries``)
  and its input is finished, so the partition moves on. The same consumer reads the retry topic
  (range assignment: partition p of both topics, and of the ledger, has one owner). A retry
  record is held in memory until its due time, then sent like any record (its own key chain);
  held records do not count against ``max_in_flight``, are bounded by
  ``retry_topic_max_waiting`` (beyond it, the retry partitions are paused) and keep their
  partition's commit behind them, so a crash re-reads and re-holds them.
- **Rebalance / shutdown:** revoked partitions take no new records and let every record already
  taken finish (up to ``dispatch.shutdown_timeout_s``), then commit: nothing is replayed.
  Retry records still waiting for their due time are not waited for: the next owner re-reads them.
- **Lost membership** (``streams.membership``): every provider call first asks whether the worker
  may still own its partitions. When it may not (expelled, generation reset, a session without
  a successful heartbeat: a frozen worker waking up), nothing more starts: records taken but not
  sent are abandoned uncommitted for the new owner, the revocation that follows waits only for
  calls already in progress (no drain, no commit), and the worker rejoins with a new member id.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import logging
import time
from collections import deque
from typing import Any, Awaitable, Container, Coroutine, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError

from connector import contract as topics
from connector import metrics, retries, tracing
from connector.config import Settings
from connector.kafka import client_options, key_partition
from connector.offsets import PartitionProgress
from connector.pipeline import Later, Pipeline, Verdict
from connector.records import Ending
from connector.policy import handoff_policy
from connector.records import DONE, RETRYING, LedgerEntry, iso
from connector.streams.batcher import Batcher
from connector.budget import route_budget_of
from connector.streams.budgets import Budgets
from connector.streams.committer import Output, PartitionCommitter
from connector.streams.ledger import Ledger, PartitionLedger
from connector.streams.membership import Membership, OwnershipLost
from connector.streams.plumbing import RebalanceListener, stop_client, unless_stopped
from connector.streams.scheduled import ScheduledLaps, is_deferral
from connector.schedule import SchedulePolicy
from connector.streams.transactions import TransactionalProducer, transactional_id
from connector.streams.waves import Waves, chain_key, produce_all
from connector.routing import Router
from connector.sender import RouteSender

log = logging.getLogger("sms_connector.dispatch")

# the assignment (PartitionProgress) a chain task works for: its provider calls check it
_OWNER: contextvars.ContextVar[PartitionProgress | None] = contextvars.ContextVar("sms_dispatch_owner", default=None)

Headers = list[tuple[str, bytes]]


class Dispatcher:
    def __init__(self, settings: Settings, senders: Mapping[str, RouteSender], router: Router,
                 optouts: Container[str] = frozenset(), exactly_once: bool = False) -> None:
        """``exactly_once``: the worker's decision (``app.exactly_once``: kafka.exactly_once and a
        broker that runs transactions, probed once for every role)."""
        self.settings = settings
        d = settings.dispatch
        self.pipeline = Pipeline(senders, router, optouts, handoff_policy(d), SchedulePolicy.from_settings(settings))
        self.topic_correlation = topics.spec("correlation").name
        self.topic_in = topics.spec("outbound").name
        self.topic_retry = topics.spec("retry").name
        self.topic_accepted = topics.spec("accepted").name
        self.topic_failed = topics.spec("failed").name
        self.topic_dlq = topics.spec("dlq").name
        self.max_in_flight = d.max_in_flight
        self.in_flight = 0
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._active: dict[TopicPartition, int] = {}     # records of a partition being processed
        # chains by (progress, key): a chain belongs to one assignment of its partition, so
        # records of a later assignment never run in a chain left over from an earlier one
        self._chains: dict[tuple[PartitionProgress, Any], deque[ConsumerRecord[bytes, bytes]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._partitions: dict[str, int] = {}
        # retry records held until due: (due, seq, tp, record) with a count per partition
        self._waiting: list[tuple[float, int, TopicPartition, ConsumerRecord[bytes, bytes]]] = []
        self._waiting_by_tp: dict[TopicPartition, int] = {}
        self._waiting_seq = 0
        self._max_waiting = d.retry_topic_max_waiting
        self._retry_paused = False
        self._wake: asyncio.TimerHandle | None = None
        self.ledger: Ledger | None = None
        self.budgets: Budgets | None = None   # the routes' spend budgets (streams.budgets), if any route has one
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        k = settings.kafka
        self.heartbeat_interval_s = max(1.0, k.session_timeout_s / 5)
        self.membership = Membership(k.session_timeout_s, self.heartbeat_interval_s)
        self.membership.on_lost = self._on_lost
        for sender in senders.values():
            sender.gate = self._may_call
        self._batcher: Batcher | None = None
        # exactly-once (app.exactly_once): a committer per input partition number
        self.exactly_once = exactly_once
        self._committers: dict[int, PartitionCommitter] = {}
        # the worker's stop (run's): a partition assigned once it is set (the rebalance a SIGTERM
        # lands in completes while the consumer closes) starts no committer, ledger or budget load
        self._stop: asyncio.Event | None = None
        self._stopped = False
        self.started = asyncio.Event()
        metrics.IN_FLIGHT.set_function(lambda: self.in_flight)
        metrics.OLDEST_PENDING.set_function(
            lambda: max((p.oldest_age() for tp, p in list(self._progress.items()) if tp.topic == self.topic_in),
                        default=0.0))
        # [scheduled sends] deferred messages wait in the retry hold too: counted apart (streams.scheduled)
        self.topic_scheduled = topics.spec("scheduled").name
        self.laps = ScheduledLaps(self.topic_scheduled, self.topic_retry, d.schedule_lap_s, self._forward_scheduled)
        metrics.RETRY_WAITING.set_function(lambda: len(self._waiting) - self._deferred_held())
        metrics.DEFERRED_WAITING.labels(self.topic_retry).set_function(self._deferred_held)
        metrics.DEFERRED_WAITING.labels(self.topic_scheduled).set_function(lambda: self.laps.waiting)
        # [/scheduled sends]
        self._unrecorded = 0   # messages sent whose outcome is not durable yet (in doubt if the worker dies)
        metrics.UNRECORDED.set_function(lambda: self._unrecorded)
        self._heads: dict[tuple[str, int], tuple[tuple[str, bytes], tuple[str, bytes]]] = {}   # see _source
        self.waves = Waves(self) if d.waves else None   # the vectorised path (streams.waves)

    # -- health ------------------------------------------------------------------------------
    @property
    def assigned(self) -> int:
        """Input partitions (of sms.outbound) assigned."""
        return sum(1 for tp in self._progress if tp.topic == self.topic_in)

    async def broker_reachable(self, timeout: float = 3.0) -> bool:
        if self._producer is None:
            return False
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout)
            return True
        except (KafkaError, asyncio.TimeoutError, OSError):
            return False

    @property
    def stopping(self) -> bool:
        return self._stopped or (self._stop is not None and self._stop.is_set())

    # -- main loop ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        k = self.settings.kafka
        common = client_options(k)
        self._producer = AIOKafkaProducer(
            **common, acks="all", enable_idempotence=k.idempotent_producer, linger_ms=k.linger_ms,
            request_timeout_ms=int(k.request_timeout_s * 1000), max_batch_size=256 * 1024)
        self._consumer = AIOKafkaConsumer(
            **common, group_id=k.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=int(k.session_timeout_s * 1000),
            heartbeat_interval_ms=int(self.heartbeat_interval_s * 1000),
            request_timeout_ms=int(k.request_timeout_s * 1000) + int(k.session_timeout_s * 1000),
            max_poll_interval_ms=300_000, max_partition_fetch_bytes=1024 * 1024,
            fetch_max_wait_ms=k.fetch_max_wait_ms,
            # exactly-once: retry records of an aborted transaction are never read
            isolation_level="read_committed" if self.exactly_once else "read_uncommitted",
            # Range, not aiokafka's default round-robin: partition p of sms.outbound and of the
            # retry topic must have one owner, the owner of ledger partition p
            partition_assignment_strategy=(RangePartitionAssignor,))
        try:
            # a stop during start-up cancels it: the clients are closed below, nothing was taken
            started, _ = await unless_stopped(stop, self._start_clients())
            if not started:
                return
            log.info("dispatch started", extra={"topic": self.topic_in, "group": k.group_id})
            commits = asyncio.create_task(self._commit_loop())
            try:
                await self._fetch_loop(stop)
            finally:
                self._stopped = True    # an assignment from now on starts nothing (on_assigned)
                commits.cancel()
                if self._wake is not None:
                    self._wake.cancel()
                self.laps.close()   # [scheduled sends] records read, not yet checked: re-read after a restart
                await self._drain(self.settings.dispatch.shutdown_timeout_s)
                await self._commit()
                await self._close_committers(list(self._committers), commit=self.membership.lost_reason is None)
        finally:
            self._stopped = True
            await self._close_committers(list(self._committers), commit=False)
            if self._consumer is not None:
                # offsets committed above; LeaveGroup sent. Its close lets a rebalance under way
                # finish first, assignment callback included: committers that callback was
                # starting when the stop began are closed here, after it (none starts once stopping)
                await stop_client(self._consumer)
                await self._close_committers(list(self._committers), commit=False)
            if self._batcher is not None:
                await self._batcher.aclose()
            await stop_client(self._producer)     # flushed: records acknowledged
            log.info("dispatch stopped", extra={"in_flight_abandoned": self.in_flight})

    async def _start_clients(self) -> None:
        """The producer, the topics' sizes (checked), the budgets, then the consumer in its group."""
        assert self._producer is not None and self._consumer is not None
        k = self.settings.kafka
        await self._producer.start()
        self._batcher = Batcher(self._producer, linger_s=k.linger_ms / 1000)
        if self.settings.dispatch.idempotency_window_s > 0:
            self.ledger = Ledger(k, self._batcher, self.settings.dispatch.idempotency_window_s,
                                 self.settings.dispatch.idempotency_max_entries,
                                 isolation_level="read_committed" if self.exactly_once else "read_uncommitted")
        topic_ledger = topics.spec("ledger").name
        for topic in (self.topic_accepted, self.topic_failed, self.topic_dlq, self.topic_in, self.topic_retry,
                      self.topic_correlation, topic_ledger, self.topic_scheduled):
            self._partitions[topic] = len(await self._producer.partitions_for(topic))
        await self._start_budgets()
        for topic in (self.topic_retry, topic_ledger, self.topic_scheduled,
                      *([self.budgets.topic] if self.budgets else [])):
            if self._partitions[topic] != self._partitions[self.topic_in]:
                raise RuntimeError(
                    f"topic {topic} has {self._partitions[topic]} partitions and {self.topic_in} has "
                    f"{self._partitions[self.topic_in]}: they must be equal (both are written to the input's "
                    f"partition number, whose owner reads them)")
        self._consumer.subscribe([self.topic_in, self.topic_retry, self.topic_scheduled], listener=RebalanceListener(self.on_assigned, self.on_revoked))
        await self._consumer.start()
        self.membership.attach(self._consumer)
        self.started.set()

    async def _start_committers(self, partitions: Sequence[int]) -> None:
        """Exactly-once: initialise each newly assigned partition's transactional id (fences a
        zombie holding it, aborts its open transaction), then read the offsets committed up to now
        and start there. Its records are paused meanwhile."""
        consumer = self._consumer
        assert consumer is not None
        k, d = self.settings.kafka, self.settings.dispatch
        tps = [TopicPartition(t, p) for p in partitions for t in (self.topic_in, self.topic_retry, self.topic_scheduled)]
        consumer.pause(*tps)

        async def start(p: int) -> None:
            committer = PartitionCommitter(
                TransactionalProducer(k, transactional_id(k, p), role="dispatch"), k.group_id,
                offsets=lambda: self._finished_offsets(p), committed=self._offsets_committed,
                on_fenced=self.membership.lose, max_records=d.transaction_max_records, max_s=d.transaction_max_s,
                linger_s=k.linger_ms / 1000)
            delay = 0.5
            while not self.stopping:
                try:
                    await committer.start()
                    break
                except KafkaError as exc:
                    log.warning("transactional producer did not start; retrying",
                                extra={"partition": p, "error": f"{type(exc).__name__}: {exc}"})
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            if committer.txp.started:
                self._committers[p] = committer

        await asyncio.gather(*[start(p) for p in partitions])
        if self.stopping:   # the worker began to stop meanwhile: the partitions are left to their next owner
            await self._close_committers(partitions, commit=False)
            return
        for tp in tps:   # after the fence: the offsets the last owner committed, none of its open transaction
            offset = await consumer.committed(tp)
            if offset is not None and offset >= 0:
                consumer.seek(tp, offset)
            if tp in self._progress and offset is not None and offset >= 0:
                self._progress[tp].committed = offset
        consumer.resume(*tps)

    async def _close_committers(self, partitions: Sequence[int], commit: bool) -> None:
        committers = [c for c in (self._committers.pop(p, None) for p in partitions) if c is not None]
        await asyncio.gather(*[c.close(commit=commit, timeout=self.settings.kafka.transaction_timeout_s)
                               for c in committers])

    def _finished_offsets(self, partition: int) -> dict[TopicPartition, int]:
        """Offsets to commit for input partition number ``partition`` (sms.outbound, its retry
        topic and the scheduled topic): each one's first unfinished record, where it moved. Also for a partition given up
        (revoked after a drain deadline, or a lost membership): the offsets commit atomically with
        the records of the messages they finish, or not at all (a fenced producer), so they are
        never ahead of those records; leaving them out would make the next owner replay finished
        messages, and republish those the ledger does not know (failed before any provider call)."""
        out = {}
        for topic in (self.topic_in, self.topic_retry, self.topic_scheduled):
            tp = TopicPartition(topic, partition)
            progress = self._progress.get(tp)
            position = progress.committable() if progress is not None else None
            if position is not None:
                out[tp] = position
        return out

    def _offsets_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        metrics.COMMITS.labels("ok").inc()
        for tp, position in offsets.items():
            if tp in self._progress:
                self._progress[tp].committed = position

    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        consumer = self._consumer
        assert consumer is not None
        stop_wait = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self.membership.state()    # notices a lost session even when no call is waiting
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
        if progress is None or progress.closing or progress.revoked or self.membership.lost:
            return
        if tp.topic == self.topic_retry:
            self._hold(tp, progress, records)
            return
        if tp.topic == self.topic_scheduled:   # [scheduled sends]
            self.laps.take(tp, progress, records, self._consumer)
            return
        metrics.CONSUMED.inc(len(records))
        if self.waves is not None and not tracing.active():
            self.waves.take(tp, progress, records)
            return
        for rec in records:
            if progress.take(rec.offset):   # False: already taken in this assignment (a re-delivered fetch)
                self._start(tp, progress, rec)

    def _start(self, tp: TopicPartition, progress: PartitionProgress, rec: ConsumerRecord[bytes, bytes]) -> None:
        """Run ``rec`` after the records of its key taken before it in the same topic-partition."""
        ck = self._enqueue(progress, rec)
        if ck is not None:
            self._spawn(self._run_chain(ck, tp, progress, rec))

    def _enqueue(self, progress: PartitionProgress, rec: ConsumerRecord[bytes, bytes]) -> tuple[PartitionProgress, Any] | None:
        """Count ``rec`` in flight; queue it behind its key's record in progress (None), or open
        its key's chain: its chain key, for the caller to run it now."""
        self.in_flight += 1
        ck = chain_key(progress, rec)
        chain = self._chains.get(ck)
        if chain is not None:
            chain.append(rec)
            return None
        self._chains[ck] = deque()
        return ck

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the retry topic ---------------------------------------------------------------------
    def _hold(self, tp: TopicPartition, progress: PartitionProgress,
              records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        """Retry records: start those due, hold the others until their due time."""
        now = time.time()
        for rec in records:
            if not progress.take(rec.offset):
                continue
            state = retries.RetryState.from_headers(rec.headers)
            due = state.due_at if state is not None else 0.0   # unreadable: at once
            if due <= now:
                self._start(tp, progress, rec)
                continue
            self._waiting_seq += 1
            heapq.heappush(self._waiting, (due, self._waiting_seq, tp, rec))
            self._waiting_by_tp[tp] = self._waiting_by_tp.get(tp, 0) + 1
        self._schedule_wake()
        if len(self._waiting) >= self._max_waiting and not self._retry_paused and self._consumer is not None:
            self._retry_paused = True
            self._consumer.pause(*[t for t in self._progress if t.topic == self.topic_retry])
            log.info("retry topic paused: too many records waiting", extra={"waiting": len(self._waiting)})

    def _schedule_wake(self) -> None:
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if self._waiting:
            delay = max(0.0, self._waiting[0][0] - time.time())
            self._wake = asyncio.get_running_loop().call_later(delay, self._release)

    def _release(self) -> None:
        """Start every held retry record that is due."""
        self._wake = None
        now = time.time()
        while self._waiting and self._waiting[0][0] <= now:
            _, _, tp, rec = heapq.heappop(self._waiting)
            self._waiting_by_tp[tp] -= 1
            progress = self._progress.get(tp)
            if progress is not None and not progress.revoked and not progress.closing:
                self._start(tp, progress, rec)
        self._schedule_wake()
        if self._retry_paused and len(self._waiting) < self._max_waiting // 2 and self._consumer is not None:
            self._retry_paused = False
            self._consumer.resume(*[t for t in self._progress if t.topic == self.topic_retry])

    # [scheduled sends] (streams.scheduled)
    def _deferred_held(self) -> int:
        """Held retry-topic records that wait for a send time, not for a retry."""
        return sum(1 for w in self._waiting if is_deferral(w[3].headers))

    async def _forward_scheduled(self, rec: ConsumerRecord[bytes, bytes]) -> None:
        """A scheduled record whose check time came: handed on as the same deferral (its token,
        due time and reason), to the retry topic or for another lap (``ScheduledLaps.destination``)."""
        state = retries.RetryState.from_headers(rec.headers) or retries.RetryState.new(0, 0, 0.0)
        reason = next((v.decode(errors="replace") for k, v in rec.headers or () if k == topics.HEADER_RETRY_REASON),
                      None) or "scheduled"
        verdict = Verdict(Ending.HANDED_OFF, None, reason, handoff=state, deferral=reason)
        committer = self._committers.get(rec.partition) if self.exactly_once else None
        if committer is not None:
            # exactly-once: the forward joins the partition's transaction and the caller marks the
            # record finished in this same step (no await), so the scheduled topic's offset commits
            # with the forward or not at all (a fenced producer: the next owner forwards it)
            committer.add(self._outputs(rec, verdict))
            return
        await self._produce(rec, verdict)
    # [/scheduled sends]

    def _forget_waiting(self, revoked: Sequence[TopicPartition]) -> None:
        """Drop held retry records of revoked partitions: uncommitted, the next owner re-reads them."""
        gone = set(revoked)
        if any(tp in gone for _, _, tp, _ in self._waiting):
            self._waiting = [w for w in self._waiting if w[2] not in gone]
            heapq.heapify(self._waiting)
            self._schedule_wake()
        for tp in gone:
            self._waiting_by_tp.pop(tp, None)

    async def _run_chain(self, ck: tuple[PartitionProgress, Any], tp: TopicPartition, progress: PartitionProgress,
                         rec: ConsumerRecord[bytes, bytes], later: Later | None = None) -> None:
        """Run ``rec``, then the rest of its key's chain, one record at a time. ``later``: the rest
        of ``rec``'s outcome, begun in a wave (``streams.waves``)."""
        chain = self._chains[ck]
        _OWNER.set(progress)     # this task's provider calls are for this assignment of tp (see _may_call)
        while True:
            deferred = False     # exactly-once: the slot is released when the record's transaction ends
            if not progress.revoked and not self._abandon:
                self._active[tp] = self._active.get(tp, 0) + 1
                try:
                    ledger = None
                    if self.ledger is not None:   # loaded: no await (the common case)
                        ledger = self.ledger.partitions.get(tp.partition) or await self.ledger.ready(tp.partition)
                    if not progress.revoked and (self.ledger is None or ledger is not None):
                        with tracing.message(rec):
                            try:
                                terminal: Verdict | None = await self._handle(tp, rec, ledger, later)
                            except OwnershipLost:
                                # not sent, not finished, not committed: the partition's next owner
                                # sends it (and the rest of this chain)
                                terminal = None
                                progress.revoked = True
                                metrics.ABANDONED.inc()
                            if terminal is not None:
                                tracing.outcome(terminal)
                                called = terminal.ledger_cid is not None   # a provider call was made
                                self._unrecorded += called
                                if self.exactly_once:
                                    # the key's next record may start now (this one's provider call is
                                    # over); this one stays in flight and in doubt until its transaction ends
                                    self._commit_outcome(tp, progress, rec, terminal, ledger, called)
                                    deferred = True
                                else:
                                    try:
                                        await self._produce(rec, terminal)
                                        if terminal.ledger_cid is not None and ledger is not None:
                                            await self._record_done(ledger, terminal)
                                        progress.finish(rec.offset)
                                    finally:
                                        self._unrecorded -= called
                finally:
                    self._active[tp] -= 1
            elif progress.revoked and self.membership.lost_reason is not None:
                metrics.ABANDONED.inc()
            if not deferred:
                self._release_slots(1)
            if not chain:
                del self._chains[ck]
                return
            rec, later = chain.popleft(), None

    _abandon = False  # set when the shutdown deadline passed: what is left is replayed

    def _release_slots(self, n: int) -> None:
        """Records taken are finished (or given up): room for the next ones."""
        self.in_flight -= n
        if not self._capacity.is_set() and self.in_flight < self.max_in_flight:
            self._capacity.set()

    # -- one record --------------------------------------------------------------------------
    async def _handle(self, tp: TopicPartition, rec: ConsumerRecord[bytes, bytes],
                      ledger: PartitionLedger | None, later: Later | None = None) -> Verdict:
        try:
            if later is not None:
                return await later()
            replayed = any(k == topics.HEADER_REPLAYED_FROM for k, _ in rec.headers or ())
            retry = retries.RetryState.from_headers(rec.headers) if tp.topic == self.topic_retry else None
            return await self.pipeline.outcome(rec.value, rec.timestamp, ledger, replayed, retry)
        except Exception as exc:  # noqa: BLE001 - a bug must not skip a record (faust's trap)
            log.exception("internal error; record dead-lettered",
                          extra={"partition": tp.partition, "offset": rec.offset})
            return self.pipeline.internal_error(exc)

    def _record(self, rec: ConsumerRecord[bytes, bytes], t: Verdict) -> tuple[str, bytes, Headers]:
        """The Kafka record that ends ``rec`` (or hands it off): topic, value, headers."""
        source = self._source(rec)
        if t.ending is Ending.ACCEPTED:
            return self.topic_accepted, t.value or b"", source
        if t.ending is Ending.FAILED:
            return self.topic_failed, t.value or b"", source
        if t.ending is Ending.HANDED_OFF and t.handoff is not None:
            headers = t.handoff.headers(rec.headers, source, t.reason or "")
            topic = self.topic_retry
            if t.deferral is not None:   # [scheduled sends] far ahead: the scheduled topic
                topic, headers = self.laps.destination(headers, t.handoff.due_at)
            return topic, rec.value if rec.value is not None else b"", headers
        headers: Headers = [h for h in rec.headers or () if h[0] not in retries.SOURCE_HEADERS]
        headers += source
        headers += [(topics.HEADER_ERROR_REASON, (t.reason or "").encode()),
                    (topics.HEADER_ERROR_MESSAGE, (t.error or "")[:1000].encode()),
                    (topics.HEADER_ERROR_AT, iso(time.time()).encode())]
        if t.field:
            headers.append((topics.HEADER_ERROR_FIELD, t.field.encode()))
        return self.topic_dlq, rec.value if rec.value is not None else b"", headers

    def _outputs(self, rec: ConsumerRecord[bytes, bytes], t: Verdict) -> list[Output]:
        """The records that end ``rec``: its terminal record (or hand-off, or dead letter) and its
        correlation records; none for a replay whose terminal record already exists."""
        if t.ending is Ending.SKIPPED:
            return []
        topic, value, headers = self._record(rec, t)
        headers = tracing.inject(headers)
        # The input's partition number (modulo the output's count): the same key stays on one
        # partition, in order, and the pure-Python key hash is skipped on the hot path.
        partition = rec.partition % self._partitions.get(topic, 1)
        # a hand-off keeps the original timestamp: the message's age (expiry, latency) carries over
        timestamp = rec.timestamp if t.ending is Ending.HANDED_OFF else None
        out = [Output(topic, partition, rec.key, value, headers, timestamp)]
        if t.correlations:
            out += self._correlation_outputs(t.correlations)
        return out

    def _correlation_outputs(self, correlations: Sequence[tuple[bytes, bytes]]) -> list[Output]:
        # partitioned by correlation key as Kafka's default partitioner does:
        # co-partitioned with sms.receipts, which the callbacks produce with send()
        n = self._partitions[self.topic_correlation]
        trace = tracing.context_headers()
        return [Output(self.topic_correlation, key_partition(key, n), key, corr, trace) for key, corr in correlations]

    async def _produce(self, rec: ConsumerRecord[bytes, bytes], t: Verdict) -> None:
        """Produce until the broker acknowledges (acks=all). faust's send() only logs a failure;
        here the input is not finished until its terminal record is durable."""
        assert self._batcher is not None
        await produce_all(self._batcher, self._outputs(rec, t))

    def _commit_outcome(self, tp: TopicPartition, progress: PartitionProgress, rec: ConsumerRecord[bytes, bytes],
                        t: Verdict, ledger: PartitionLedger | None, called: bool) -> None:
        """Exactly-once: ``rec``'s records, its ledger entry and its offset join its partition's
        transaction (``streams.committer``). When that ends, the record's slot is released (and its
        in-doubt count); if it never commits (the partition's producer was fenced), the record is
        abandoned to the partition's next owner, which replays it."""
        def ended(fut: asyncio.Future[None] | None) -> None:
            self._unrecorded -= called
            self._release_slots(1)
            if fut is None or fut.cancelled() or fut.exception() is not None:
                progress.revoked = True      # fenced: in doubt, for the next owner
                metrics.ABANDONED.inc()

        committer = self._committers.get(tp.partition)
        if committer is None:
            ended(None)
            return
        outputs = self._outputs(rec, t)
        entry = self._ledger_entry(t, ledger)
        if entry is not None and ledger is not None and self.ledger is not None:
            outputs.append(Output(self.ledger.topic, ledger.partition, entry[0].encode(), entry[1].encode()))
        committed = committer.add(outputs)
        progress.finish(rec.offset)      # right after add(): the transaction's offsets include it
        if entry is not None and ledger is not None and self.ledger is not None:
            self.ledger.remember(ledger, *entry)
        committed.add_done_callback(ended)

    def _ledger_entry(self, t: Verdict, ledger: PartitionLedger | None) -> tuple[str, LedgerEntry] | None:
        """The ledger entry ``t`` leaves once its records are durable: retrying (a hand-off, with
        its token) or done (with its outcome); None without a ledger entry to write."""
        if t.ledger_cid is None or ledger is None or self.ledger is None:
            return None
        if t.ending is Ending.HANDED_OFF and t.handoff is not None:
            return t.ledger_cid, self.ledger.entry(t.ledger_cid, RETRYING, token=t.handoff.token)
        return t.ledger_cid, self.ledger.entry(t.ledger_cid, DONE, outcome=t.ending)

    def _source(self, rec: ConsumerRecord[bytes, bytes]) -> Headers:
        """Where the message was read first: a retry record carries its original input's."""
        if rec.topic in (self.topic_retry, self.topic_scheduled):
            carried = retries.carried_source(rec.headers)
            if carried:
                return carried
        head = self._heads.get((rec.topic, rec.partition))
        if head is None:   # built once per partition: only the offset differs
            head = self._heads[(rec.topic, rec.partition)] = (
                (topics.HEADER_SOURCE_TOPIC, rec.topic.encode()),
                (topics.HEADER_SOURCE_PARTITION, str(rec.partition).encode()))
        return [head[0], head[1], (topics.HEADER_SOURCE_OFFSET, str(rec.offset).encode())]

    async def _record_done(self, ledger: PartitionLedger, t: Verdict) -> None:
        """The terminal record (or the hand-off) is durable: a replay of this message must not
        call the provider (or only through the retry record just written)."""
        delay = 0.1
        while True:
            try:
                if t.ending is Ending.HANDED_OFF and t.handoff is not None:
                    await ledger.retrying(t.ledger_cid or "", t.handoff.token)
                else:
                    await ledger.done(t.ledger_cid or "", t.ending)
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
        if self._consumer is None or self.membership.lost_reason is not None:
            return   # an expelled member's commit is refused (or, on a lax broker, stale)
        if self.exactly_once:
            return   # offsets are committed in the partitions' transactions
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

    async def _drain(self, timeout: float, only: Sequence[TopicPartition] | None = None,
                     held: Mapping[TopicPartition, int] | None = None) -> None:
        """Let every record already taken (of ``only``, or all) finish, up to ``timeout``, except
        the ``held`` retry records of each partition (forgotten: they never finish here).

        Queued records are finished too, not just those in progress: abandoning a queued record
        while later offsets of other keys complete would leave a gap below them, and the next
        owner would replay (resend) everything after the gap. After the deadline, what is left is
        abandoned: not committed, so replayed."""
        deadline = time.monotonic() + timeout

        def busy() -> bool:   # held retry records are not waited for (not due; re-read by the next owner)
            if only is None:
                return self.in_flight > 0
            if self.membership.lost_reason is not None:
                return self._calls_in_progress() > 0      # given up: calls in progress only
            return any(self._progress[tp].unfinished > (held or self._waiting_by_tp).get(tp, 0)
                       for tp in only if tp in self._progress)

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

    # -- ownership ---------------------------------------------------------------------------
    async def _may_call(self) -> None:
        """The senders' gate, awaited right before each provider call: raises OwnershipLost when
        the record's assignment was given up (revoked, or the worker's membership lost), waits
        while a heartbeat is late."""
        owner = _OWNER.get()
        if owner is not None and owner.revoked:
            raise OwnershipLost("the record's partition was given up")
        await self.membership.check()
        if owner is not None and owner.revoked:
            raise OwnershipLost("the record's partition was given up")

    def _calls_in_progress(self) -> int:
        return sum(s.in_calls for s in self.pipeline.senders.values())

    def _on_lost(self, reason: str) -> None:
        """The worker may no longer own its partitions (``Membership``): start nothing more.
        Records taken but not started are dropped uncommitted, for the new owner; calls in
        progress finish (in doubt, as after a crash); retry records held are forgotten."""
        for progress in self._progress.values():
            progress.revoked = True
        self._forget_waiting(list(self._progress))
        self.laps.forget(list(self._progress))   # [scheduled sends]
        log.warning("partitions given up: records not yet sent are left to their next owner",
                    extra={"in_flight": self.in_flight, "reason": reason})

    async def _settle_lost(self, timeout: float) -> None:
        """After a loss: wait only for the provider calls already in progress (they record their
        outcome), not for records waiting before their call (an open circuit, a backoff, the
        rate limit): those are refused by the gate when they get there."""
        deadline = time.monotonic() + timeout
        while self._calls_in_progress() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def on_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        mine = [tp for tp in revoked if tp in self._progress]
        lost = self.membership.lost_reason is not None
        for tp in mine:
            self._progress[tp].closing = True
            if lost:
                self._progress[tp].revoked = True
        held = {tp: self._waiting_by_tp.get(tp, 0) for tp in mine}   # left to the next owner: not drained
        self._forget_waiting(mine)
        self.laps.forget(mine)   # [scheduled sends]
        if mine and lost:
            await self._settle_lost(self.settings.dispatch.shutdown_timeout_s)
        elif mine:
            await self._drain(self.settings.dispatch.shutdown_timeout_s, mine, held)
            if self.membership.lost_reason is None:
                await self._commit(mine)
        if self.exactly_once:
            # what finished is committed (a lost worker's open transactions are aborted instead)
            gone = {tp.partition for tp in mine} - {tp.partition for tp in self._progress if tp not in mine}
            await self._close_committers(sorted(gone), commit=not lost and self.membership.lost_reason is None)
        for tp in mine:
            progress = self._progress.pop(tp, None)
            if progress is not None:
                progress.revoked = True   # anything left is replayed by the next owner
        if self.ledger is not None:
            for partition in {tp.partition for tp in mine} - {tp.partition for tp in self._progress}:
                self.ledger.revoke(partition)
        metrics.PARTITIONS_ASSIGNED.set(self.assigned)
        self._share_limits(fence=False)   # after the drain: the records finished at the old share
        if self.budgets is not None:
            self.budgets.revoke(tp.partition for tp in mine if tp.topic == self.topic_in)
        if not any(tp.topic == self.topic_in for tp in self._progress):
            self.membership.revoked()
        if mine:
            log.info("partitions revoked", extra={"partitions": sorted(tp.partition for tp in mine
                                                                       if tp.topic == self.topic_in),
                                                  "given_up": lost})

    def on_assigned(self, assigned: Sequence[TopicPartition]) -> Awaitable[None] | None:
        """Track the new partitions; exactly-once returns what the rebalance awaits (the fence)."""
        if self.stopping:
            log.info("partitions assigned while stopping: left to their next owner",
                     extra={"partitions": sorted({tp.partition for tp in assigned})})
            return None
        if self._consumer is not None:
            self.membership.attach(self._consumer)
        self.membership.assigned()
        for tp in assigned:
            if tp not in self._progress:
                self._progress[tp] = PartitionProgress()
        if self.exactly_once:
            return self._assign_transactional(assigned)
        self._assigned(assigned)
        return None

    async def _assign_transactional(self, assigned: Sequence[TopicPartition]) -> None:
        # before the ledger is read: the fence aborts a zombie's open transaction, which would
        # otherwise hold read_committed readers of the ledger at its first offset
        await self._start_committers(sorted({tp.partition for tp in assigned} - set(self._committers)))
        if not self.stopping:
            self._assigned(assigned)

    def _assigned(self, assigned: Sequence[TopicPartition]) -> None:
        for tp in assigned:
            if self.ledger is not None:
                self.ledger.assign(tp.partition)   # its records wait for it (see _run_chain)
        metrics.PARTITIONS_ASSIGNED.set(self.assigned)
        self._share_limits(fence=True)
        if self.budgets is not None:
            self.budgets.assign(tp.partition for tp in assigned if tp.topic == self.topic_in)
        log.info("partitions assigned", extra={"partitions": sorted(tp.partition for tp in assigned
                                                                    if tp.topic == self.topic_in)})

    def _share_limits(self, *, fence: bool) -> None:
        """Each route's rate limit is the deployment's: this worker takes the share of it that its
        input partitions are of all (``connector.ratelimit``, "Deployment share")."""
        total = self._partitions.get(self.topic_in, 0)
        share = self.assigned / total if total else 0.0
        for sender in self.pipeline.senders.values():
            sender.limiter.set_share(min(1.0, share), fence=fence)

    async def _start_budgets(self) -> None:
        """The routes' spend budgets, shared with the pipeline (after the topics' sizes are known)."""
        budgets = {name: b for name, route in self.settings.routes.items()
                   if (b := route_budget_of(name, route.common)) is not None}
        if budgets and self._batcher is not None and self._producer is not None:
            topic = topics.spec("budget").name
            self._partitions[topic] = len(await self._producer.partitions_for(topic))
            self.budgets = Budgets(self.settings.kafka, self._batcher, budgets, self._partitions[self.topic_in])
            self.pipeline.budgets = self.budgets
