"""Correlation: every delivery receipt joined to its outbound message, published on sms.delivery.

Inputs, co-partitioned by correlation key ``<provider>:<provider id>`` (same partition counts):
``sms.correlation`` (one record per accepted message, written by the dispatcher with the accepted
record) and ``sms.receipts`` (reports from the callback endpoint and the status poller). With
the range assignor, partition *p* of both topics goes to the same worker, so the join is local.

- A receipt whose correlation is known becomes a ``DeliveryEvent`` on ``sms.delivery`` (key =
  client_message_id, so one message's events stay in order), carrying the outbound message's
  client_message_id, metadata and route.
- A receipt that arrives before its accepted record (a fast callback) is held; when the
  correlation record arrives it is matched. After ``inbound.correlation_ttl_s`` it goes to
  ``sms.delivery.unmatched`` instead (nothing is dropped silently).
- Duplicates (same ``event_id``) are dropped while the worker runs.
- Offsets: ``sms.receipts`` commits only the first unfinished receipt (held receipts block the
  commit, so a crash replays them); ``sms.correlation`` is never committed, so every assignment
  reads it again from the beginning (a compacted topic) to rebuild the state, up to where it
  ended at assignment before any receipt of the partition is handled (``_loaded``): a receipt
  is held only when its correlation record was not written yet.
- Status polling (Ogangi has no receipt push): each known Ogangi message without a final state
  is polled with ``getMessage`` every ``inbound.status_poll_interval_s`` at most
  ``inbound.status_poll_rate`` calls/s per route, until final or ``status_poll_max_age_s``
  (then expired). A changed status is produced as a receipt, so it takes the same path. When a
  final event is published the correlation record is rewritten with ``final_state``, so polling
  does not restart after a rebalance.

At-least-once (``transactional=False``; Tansu): after a crash, receipts after the last commit
are processed again; their events carry the same ``event_id``, so consumers can drop repeats.

Exactly-once (``transactional=True``, #16): consume-transform-produce per partition. Outputs
join the partition's open batch (``_send``), and the batch, with the sms.receipts offset it
finishes, is committed in one transaction of the partition's own transactional id
(``<prefix>-<group_id>-correlator-<p>``, initialised on assignment: the previous owner, a zombie
included, is fenced and its open transaction aborted). Held receipts are carried across a
restart by the offset's metadata (``_offset_metadata``), which a new owner reads before it
handles any receipt of the partition (``PartitionState.ready``). A failed transaction makes the
partition be read again from its committed offset (``_reset``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import IllegalStateError, KafkaError

from connector import contract as topics
from connector import metrics, tracing
from connector.config import Settings
from connector.errors import InvalidRecord, SmsError
from connector.kafka import client_options
from connector.offsets import PartitionProgress
from connector.providers import Capability, has
from connector.records import Correlation, DeliveryEvent, correlation_key, iso
from connector.sender import RouteSender
from connector.streams.plumbing import (READ_COMMITTED, Headers, RebalanceListener, produce_acknowledged, stop_client,
                                        unless_stopped)
from connector.streams.publish import INBOUND_TXN_OPTIONS, Writes, commit_writes
from connector.streams.transactions import TransactionalProducer, TransactionFailed, transactional_id

log = logging.getLogger("sms_connector.correlator")

METADATA_MAX = 3500      # bytes of offset metadata we write (brokers keep 4096 by default)


@dataclass
class Held:
    offset: int
    value: bytes
    since: float


@dataclass
class PartitionState:
    """The join state of one partition number (both topics)."""

    correlations: dict[str, Correlation] = field(default_factory=dict)
    held: dict[str, list[Held]] = field(default_factory=dict)
    held_order: deque[tuple[str, Held]] = field(default_factory=deque)   # arrival order, for the TTL
    seen: dict[str, set[str]] = field(default_factory=dict)        # key -> event ids published
    progress: PartitionProgress = field(default_factory=PartitionProgress)
    last_poll: dict[str, float] = field(default_factory=dict)
    # exactly-once: this partition's transactional producer, the writes of its open batch, and
    # a lock so the main loop and the housekeeping never run two of its transactions at once
    txn: TransactionalProducer | None = None
    writes: Writes = field(default_factory=Writes)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    through: int | None = None          # one past the last receipt read (its outputs are in ``writes``)
    skip_below: int = 0                 # after a restart: receipts below this were finished before it...
    replay_held: set[int] = field(default_factory=set)    # ...but these, which were held then
    committed_at: tuple[int, str] | None = None           # the offset and metadata last committed
    # Set once the partition's records may be handled. aiokafka hands out a new assignment's
    # records while the rebalance callback (``on_assigned``) is still running; with exactly-once
    # that callback starts the transactional producer and reads the committed offset's metadata
    # (``skip_below``, ``replay_held``), and a receipt handled before that would be published
    # again although a committed transaction of the previous owner published it.
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    correlations_end: int | None = None   # where sms.correlation ended when the partition was (re)assigned
    loaded: bool = False                  # sms.correlation read up to there: receipts may be handled


def join(receipt: dict[str, Any], corr: Correlation) -> DeliveryEvent:
    """A receipt joined to its correlation record: the DeliveryEvent of sms.delivery."""
    return DeliveryEvent.join(receipt, corr)


class Correlator:
    def __init__(self, settings: Settings, producer: AIOKafkaProducer,
                 senders: Mapping[str, RouteSender] | None = None, *, transactional: bool = False) -> None:
        self.settings = settings
        self.producer = producer
        self.transactional = transactional
        self.group = f"{settings.kafka.group_id}-correlator"
        self._resets: set[int] = set()     # partitions whose transaction failed: state rebuilt from Kafka
        self.senders = senders or {}
        self.topic_corr = topics.spec("correlation").name
        self.topic_receipts = topics.spec("receipts").name
        self.topic_delivery = topics.spec("delivery").name
        self.topic_unmatched = topics.spec("delivery_unmatched").name
        self.state: dict[int, PartitionState] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._stop: asyncio.Event | None = None   # run's: an assignment once it is set starts no producer

    @property
    def assigned(self) -> int:
        return len(self.state)

    # -- main loop ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        k = self.settings.kafka
        self._consumer = AIOKafkaConsumer(
            **client_options(k), group_id=self.group, enable_auto_commit=False,
            # Range, not aiokafka's default round-robin: partition p of both topics must land on
            # the same worker for the join to be local.
            partition_assignment_strategy=(RangePartitionAssignor,),
            auto_offset_reset="earliest", session_timeout_ms=int(k.session_timeout_s * 1000), **READ_COMMITTED,
            heartbeat_interval_ms=max(1000, int(k.session_timeout_s * 1000 / 5)))
        self._consumer.subscribe([self.topic_corr, self.topic_receipts], listener=RebalanceListener(self.on_assigned, self.on_revoked))
        tasks: list[asyncio.Task[None]] = []
        started = False
        try:
            # a stop during start-up (the group join) cancels it; the consumer is closed below
            started, _ = await unless_stopped(stop, self._consumer.start())
            if not started:
                return
            log.info("correlator started")
            tasks.append(asyncio.create_task(self._housekeeping(stop)))
            if self._status_polled:
                tasks.append(asyncio.create_task(self._poll_statuses(stop)))
            while not stop.is_set():
                for partition in sorted(self._resets):
                    await self._reset(partition)
                await self._resume_loaded()
                batch = await self._consumer.getmany(timeout_ms=200, max_records=2000)
                pending: list[tuple[asyncio.Future[Any], PartitionState | None, int | None]] = []
                # correlation records first: a receipt of the same batch finds its record
                for tp, records in sorted(batch.items(), key=lambda item: item[0].topic != self.topic_corr):
                    st = await self._ready(tp.partition)
                    if st is None:
                        continue
                    if tp.topic == self.topic_receipts and not await self._loaded(st, tp.partition):
                        self._hand_back(tp, records[0].offset)
                        continue
                    for r in records:
                        if tp.topic == self.topic_corr:
                            tracing.remember(r.key, r.headers)
                            pending += await self._on_correlation(st, r.key, r.value)
                        else:
                            if r.offset < st.skip_below and r.offset not in st.replay_held:
                                st.through = max(st.through or 0, r.offset + 1)
                                continue        # finished and committed before a restart (_offset_metadata)
                            st.progress.take(r.offset)
                            with tracing.consuming(r):
                                pending += await self._on_receipt(st, r.key, r.value, r.offset)
                            st.through = max(st.through or 0, r.offset + 1)
                await self._settle(pending)
                if self.transactional and batch:
                    await self._commit(sorted({tp.partition for tp in batch}))
        finally:
            for t in tasks:
                t.cancel()
            if started:
                await self._commit()
            await self._stop_transactions()
            # committed above; LeaveGroup sent. Its close lets a rebalance under way finish, whose
            # callback may have been starting producers meanwhile: stopped after it
            await stop_client(self._consumer)
            await self._stop_transactions()
            log.info("correlator stopped")

    async def _stop_transactions(self) -> None:
        for st in list(self.state.values()):
            if st.txn is not None:
                await st.txn.stop()

    async def _ready(self, partition: int) -> PartitionState | None:
        """The partition's state once its records may be handled (``PartitionState.ready``), or
        None: not assigned (revoked meanwhile), or to be read again from its committed offset
        (``_resets``: the records fetched are dropped, ``_reset`` seeks back to them)."""
        st = self.state.get(partition)
        if st is not None and not st.ready.is_set():
            await st.ready.wait()
        if st is None or self.state.get(partition) is not st or partition in self._resets:
            return None
        return st

    async def _loaded(self, st: PartitionState, partition: int) -> bool:
        """Whether sms.correlation ``partition`` has been read up to where it ended when the
        partition was assigned (or reset): until then its receipts are not handled, else each one
        whose record is simply not read yet would be held (and listed in the offset metadata)."""
        if st.loaded:
            return True
        assert self._consumer is not None
        corr = TopicPartition(self.topic_corr, partition)
        try:
            if st.correlations_end is None:
                st.correlations_end = (await self._consumer.end_offsets([corr]))[corr]
            st.loaded = await self._consumer.position(corr) >= st.correlations_end
        except KafkaError as exc:   # revoked meanwhile (IllegalStateError), or the broker away: ask again
            log.debug("sms.correlation position unknown", extra={"partition": partition, "error": type(exc).__name__})
        return st.loaded

    def _hand_back(self, receipts: TopicPartition, offset: int) -> None:
        """Receipts fetched before sms.correlation was loaded (``_loaded``): read them again from
        ``offset`` once it is (``_resume_loaded``); meanwhile their partition is not fetched."""
        assert self._consumer is not None
        with contextlib.suppress(IllegalStateError):    # revoked meanwhile: its next owner reads them
            self._consumer.seek(receipts, offset)
            self._consumer.pause(receipts)

    async def _resume_loaded(self) -> None:
        """Fetch the receipts of every partition whose sms.correlation is now loaded."""
        assert self._consumer is not None
        for partition, st in list(self.state.items()):
            if st.loaded or not st.ready.is_set() or partition in self._resets:
                continue
            if await self._loaded(st, partition) and self.state.get(partition) is st:
                with contextlib.suppress(IllegalStateError):     # revoked meanwhile
                    self._consumer.resume(TopicPartition(self.topic_receipts, partition))

    async def _settle(self, pending: list[tuple[asyncio.Future[Any], PartitionState | None, int | None]]) -> None:
        """Await every produce of this batch; finish the receipts whose records are durable."""
        if not pending:
            return
        results = await asyncio.gather(*(f for f, _, _ in pending), return_exceptions=True)
        failed = False
        for (_, st, offset), result in zip(pending, results):
            if isinstance(result, BaseException):
                failed = True
                continue
            if st is not None and offset is not None:
                st.progress.finish(offset)
        if failed:
            # Not finished, not committed: replayed after a restart. Slow down instead of spinning.
            log.warning("producing delivery events failed; will be retried after restart or rebalance")
            await asyncio.sleep(1)

    # -- the join ----------------------------------------------------------------------------
    async def _on_correlation(self, st: PartitionState, key: bytes | None, value: bytes | None):  # type: ignore[no-untyped-def]
        if key is None:
            return []
        ck = key.decode()
        if value is None:
            st.correlations.pop(ck, None)
            return []
        try:
            corr = Correlation.decode(value)
        except InvalidRecord:
            return []
        st.correlations[ck] = corr
        out = []
        for held in st.held.pop(ck, []):
            out += await self._publish(st, ck, corr, held.value, held.offset)
            held.value = b""   # its entry in held_order ages out with the TTL; keep no bytes alive
        return out

    async def _on_receipt(self, st: PartitionState, key: bytes | None, value: bytes | None, offset: int):  # type: ignore[no-untyped-def]
        ck = key.decode() if key else ""
        corr = st.correlations.get(ck)
        if corr is None:
            held = Held(offset, value or b"", time.monotonic())
            st.held.setdefault(ck, []).append(held)
            st.held_order.append((ck, held))
            return []
        return await self._publish(st, ck, corr, value or b"", offset)

    async def _publish(self, st: PartitionState, ck: str, corr: Correlation, value: bytes, offset: int):  # type: ignore[no-untyped-def]
        try:
            receipt = orjson.loads(value)
            event_id = receipt["event_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            fut = await self._send(st, self.topic_unmatched, ck.encode(), value,
                                   [(topics.HEADER_ERROR_REASON, b"invalid-receipt")])
            return [(fut, st, offset)]
        provider = str(receipt.get("provider", ""))
        seen = st.seen.setdefault(ck, set())
        if event_id in seen:
            metrics.CORRELATION.labels(provider, "duplicate").inc()
            st.progress.finish(offset)
            return []
        seen.add(event_id)
        event = join(receipt, corr)
        out = [(await self._send(st, self.topic_delivery, event.key, event.encode()), st, offset)]
        metrics.CORRELATION.labels(provider, "matched").inc()
        if receipt.get("final") and receipt.get("kind") != "progress":
            if event.latency_s is not None:
                metrics.DELIVERY_LATENCY.labels(provider, receipt.get("state", "")).observe(event.latency_s)
            if not corr.final_state:
                corr = replace(corr, final_state=receipt.get("state"))
                st.correlations[ck] = corr
                out.append((await self._send(st, self.topic_corr, ck.encode(), corr.encode()), None, None))
        elif receipt.get("kind") == "status-poll" and corr.last_state != receipt.get("state"):
            corr = replace(corr, last_state=receipt.get("state"))
            st.correlations[ck] = corr
        return out

    # -- time-based work ---------------------------------------------------------------------
    async def _housekeeping(self, stop: asyncio.Event) -> None:
        ttl = self.settings.inbound.correlation_ttl_s
        interval = self.settings.dispatch.commit_interval_s
        while not stop.is_set():
            await asyncio.sleep(min(interval, 1.0))
            now = time.monotonic()
            pending = []
            for st in list(self.state.values()):
                # oldest first; stops at the first receipt younger than the TTL (no full scan)
                while st.held_order and now - st.held_order[0][1].since >= ttl:
                    ck, h = st.held_order.popleft()
                    waiting = st.held.get(ck)
                    if not waiting or not any(x is h for x in waiting):
                        continue   # matched meanwhile
                    waiting[:] = [x for x in waiting if x is not h]
                    if not waiting:
                        del st.held[ck]
                    fut = await self._send(st, self.topic_unmatched, ck.encode(), h.value)
                    pending.append((fut, st, h.offset))
                    metrics.CORRELATION.labels(ck.split(":", 1)[0], "unmatched").inc()
            try:
                await self._settle(pending)
            except KafkaError:
                pass
            await self._commit()

    async def _send(self, st: PartitionState, topic: str, key: bytes | None, value: bytes | None,
                    headers: Headers | None = None) -> asyncio.Future[Any]:
        """Produce one output record; with exactly-once it joins the partition's next transaction
        (a future already done: the transaction's commit is what makes it durable)."""
        if not self.transactional:
            return await self.producer.send(topic, value=value, key=key, headers=headers or [])
        st.writes.add(topic, key, value, headers)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def _commit(self, partitions: list[int] | None = None) -> None:
        if self.transactional:
            await asyncio.gather(*(self._commit_partition(p) for p in (partitions or list(self.state))))
            return
        if self._consumer is None:
            return
        offsets = {}
        for partition, st in self.state.items():
            position = st.progress.committable()
            if position is not None:
                offsets[TopicPartition(self.topic_receipts, partition)] = position
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("correlator commit failed; will retry", extra={"error": type(exc).__name__})
            return
        for tp, position in offsets.items():
            if tp.partition in self.state:
                self.state[tp.partition].progress.committed = position

    async def _commit_partition(self, partition: int) -> None:
        """Exactly-once: the partition's outputs since its last transaction (delivery events,
        unmatched receipts, correlation state) and the sms.receipts offset they finish, in one
        transaction. A failed one leaves the partition to ``_reset``."""
        st = self.state.get(partition)
        if st is None or st.txn is None:
            return
        async with st.lock:
            target = self._offset_metadata(st)
            if not st.writes.records and (target is None or target == st.committed_at):
                return
            writes, st.writes = st.writes, Writes()
            offsets = {TopicPartition(self.topic_receipts, partition): target} if target is not None else None
            try:
                await commit_writes(st.txn, writes, offsets, self.group)  # type: ignore[arg-type]
            except TransactionFailed as exc:
                log.warning("correlator transaction failed; the partition is read again from its committed offset",
                            extra={"partition": partition, "error": str(exc)})
                self._resets.add(partition)
                return
            if target is not None:
                st.committed_at = target
                st.progress.committed = target[0]

    def _offset_metadata(self, st: PartitionState) -> tuple[int, str] | None:
        """Exactly-once: the sms.receipts offset to commit with the partition's outputs, and its
        metadata. Receipts held for their correlation record are not finished; committing only up
        to the first of them (as at-least-once does) would make a restart publish again every
        receipt read after it. So the offset is the first held receipt, and the metadata says how
        far the partition was read (``through``) and which offsets in between are still held
        (``held``, relative to the offset): a restart (``_restore_offsets``) holds those again
        and skips the rest, whose outputs this same transaction (or an earlier one) committed.
        Kafka keeps up to ``offset.metadata.max.bytes`` (4 KB by default) of metadata: with more
        receipts held than fit, the offset alone is committed (at-least-once for that stretch)."""
        read = st.through or 0
        held = {h.offset for waiting in st.held.values() for h in waiting}
        held |= {o for o in st.replay_held if o >= read}       # held before a restart, not read again yet
        through = max(read, st.skip_below)
        if st.through is None and not held:
            return None
        position = min(held) if held else through
        if position >= through:
            return position, ""
        metadata = orjson.dumps({"through": through - position, "held": sorted(o - position for o in held)}).decode()
        if len(metadata) > METADATA_MAX:
            log.warning("too many receipts held to record them with the offset: a restart now may publish "
                        "some delivery events again", extra={"held": len(held)})
            return position, ""
        return position, metadata

    async def _restore_offsets(self, partitions: list[int]) -> None:
        """Exactly-once, on assignment: read the committed offsets' metadata (``_offset_metadata``).
        Everything below the committed offset is finished, metadata or not: aiokafka may have
        fetched an older committed offset to start from (before ``_start_transactions`` let the
        previous owner's last commit complete), and the receipts in between must be skipped too."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**client_options(self.settings.kafka))
        await admin.start()
        try:
            tps = [TopicPartition(self.topic_receipts, p) for p in partitions]
            committed = await admin.list_consumer_group_offsets(self.group, partitions=tps)
        finally:
            await admin.close()
        for tp, meta in committed.items():
            st = self.state.get(tp.partition)
            if st is None or meta is None or meta.offset < 0:
                continue
            st.committed_at = (meta.offset, meta.metadata or "")
            st.skip_below, st.replay_held = meta.offset, set()
            if not meta.metadata:
                continue
            try:
                saved = orjson.loads(meta.metadata)
                st.skip_below = meta.offset + int(saved["through"])
                st.replay_held = {meta.offset + int(d) for d in saved["held"]}
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning("unreadable offset metadata ignored", extra={"partition": tp.partition})

    async def _reset(self, partition: int) -> None:
        """After a failed transaction: forget what the partition did since its last commit and
        read it again, as a new owner would (sms.correlation from its beginning, sms.receipts
        from the committed offset: the producer was replaced first, so no transaction of this
        id is pending and the committed offset is final)."""
        self._resets.discard(partition)
        old = self.state.get(partition)
        if old is None or self._consumer is None:
            return
        # ready at once: this runs in the main loop, which handles no record before it returns
        st = self.state[partition] = PartitionState(txn=old.txn)
        st.ready.set()
        try:
            if st.txn is not None and not st.txn.started:
                await st.txn.start()        # its start on assignment failed
            await self._restore_offsets([partition])
        except Exception as exc:  # noqa: BLE001 - broker away: try again, handling none of its records meanwhile
            log.warning("correlator partition not restored yet; will retry",
                        extra={"partition": partition, "error": f"{type(exc).__name__}: {exc}"})
            self._resets.add(partition)
            await asyncio.sleep(1)
            return
        corr, receipts = TopicPartition(self.topic_corr, partition), TopicPartition(self.topic_receipts, partition)
        await self._consumer.seek_to_beginning(corr)
        # the offset read with the metadata (one read), not a second fetch of the committed offset
        if st.committed_at is None:
            await self._consumer.seek_to_beginning(receipts)
        else:
            self._consumer.seek(receipts, st.committed_at[0])

    @property
    def _status_polled(self) -> set[str]:
        """The providers (by record label) whose routes poll message statuses."""
        return {s.provider.name for s in self.senders.values() if has(s.provider, Capability.STATUS_POLL)}

    async def _poll_statuses(self, stop: asyncio.Event) -> None:
        """Status polling (``Capability.STATUS_POLL``, e.g. Ogangi getMessage): bounded rate per
        route, until final or too old."""
        inb = self.settings.inbound
        budget_s = 1.0 / inb.status_poll_rate
        while not stop.is_set():
            due = self._due_polls(inb.status_poll_interval_s)
            if not due:
                await asyncio.sleep(1.0)
                continue
            for ck, corr, st in due:
                sender = self.senders.get(corr.route or "")
                if sender is None or not has(sender.provider, Capability.STATUS_POLL):
                    st.last_poll[ck] = time.monotonic()
                    continue
                st.last_poll[ck] = time.monotonic()
                message_id = corr.provider_message_id or ""
                provider: Any = sender.provider
                try:
                    status = await sender.call(lambda: provider.build_status_poll(message_id),
                                               provider.parse_status_poll)
                except SmsError as exc:
                    metrics.STATUS_POLLS.labels(provider.name, exc.reason).inc()
                    await asyncio.sleep(budget_s)
                    continue
                metrics.STATUS_POLLS.labels(provider.name, "ok").inc()
                state = status.state
                too_old = corr.age_s(time.time()) > inb.status_poll_max_age_s
                if state == "in-flight" and too_old:
                    state = "expired"
                if state != corr.last_state or state != "in-flight":
                    receipt = provider.status_receipt(ck, message_id, status, state, time.time())
                    try:
                        await produce_acknowledged(self.producer, self.topic_receipts, ck.encode(), receipt.encode())
                    except KafkaError:
                        pass
                    if st.correlations.get(ck) is corr:   # not replaced or deleted meanwhile
                        st.correlations[ck] = replace(corr, last_state=state)
                await asyncio.sleep(budget_s)

    def _due_polls(self, interval: float) -> list[tuple[str, Correlation, PartitionState]]:
        now = time.monotonic()
        due = []
        polled = self._status_polled
        for st in self.state.values():
            for ck, corr in st.correlations.items():
                if corr.provider not in polled or corr.final_state:
                    continue
                if corr.last_state not in (None, "in-flight"):
                    continue
                if now - st.last_poll.get(ck, 0.0) >= interval:
                    due.append((ck, corr, st))
        return due

    # -- rebalance ---------------------------------------------------------------------------
    async def on_assigned(self, assigned: list[TopicPartition]) -> None:
        # No seeks here (seeking inside the rebalance callback stalled aiokafka's fetcher). None is
        # needed: aiokafka starts each new assignment at the committed offset, else the earliest;
        # sms.correlation is never committed, so it is always read from the beginning, and
        # sms.receipts resumes at the first unfinished receipt.
        # The main loop may already hold records of these partitions (aiokafka resumes fetching
        # before this callback returns): it waits for ``ready`` before handling them. A failure
        # here would only be logged by aiokafka: the partitions are read again (``_reset``) instead.
        partitions = sorted({tp.partition for tp in assigned})
        if self._stop is not None and self._stop.is_set():    # a rebalance the stop landed in
            log.info("correlator partitions assigned while stopping: left to their next owner",
                     extra={"partitions": partitions})
            return
        for p in partitions:
            self.state.setdefault(p, PartitionState())
        try:
            if self.transactional:
                await self._start_transactions(partitions)
        except Exception as exc:  # noqa: BLE001 - broker away: _reset tries again
            log.warning("correlator partitions not restored on assignment; will retry",
                        extra={"partitions": partitions, "error": f"{type(exc).__name__}: {exc}"})
            self._resets.update(partitions)
        finally:
            for p in partitions:
                self.state[p].ready.set()
        log.info("correlator partitions assigned", extra={"partitions": partitions})

    async def _start_transactions(self, partitions: list[int]) -> None:
        """Exactly-once, on assignment: one transactional id per partition number,
        "<prefix>-<group_id>-correlator-<p>": initialising it fences the previous owner (a zombie
        past its session timeout) and aborts its open transaction, or waits for the commit it
        left in progress; only then is the committed offset's metadata final, and read."""
        k = self.settings.kafka
        starting = []
        for p in partitions:
            st = self.state[p]
            if st.txn is None:
                st.txn = TransactionalProducer(k, transactional_id(k, f"correlator-{p}"), "correlator",
                                               **INBOUND_TXN_OPTIONS)
                starting.append(st.txn.start())
        await asyncio.gather(*starting)
        await self._restore_offsets(partitions)

    async def on_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._commit()
        for tp in revoked:
            st = self.state.pop(tp.partition, None)
            if st is not None and st.txn is not None:
                await st.txn.stop()
        if revoked:
            log.info("correlator partitions revoked", extra={"partitions": sorted({tp.partition for tp in revoked})})


__all__ = ["Correlator", "join", "correlation_key", "iso"]
