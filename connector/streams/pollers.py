"""MO polling: ThingSpace's acknowledged queue and Ogangi's growing list, into ``sms.inbound``
exactly once per dedupe key, across crashes and restarts.

This module owns the MO pollers and their durable state. ``Pollers`` runs one poller per
ThingSpace account (``GET …/sms/{account}/history``) and per Ogangi instance (``getMOMessages``),
each in its own task; provider or broker outages are logged once per state change and retried
with backoff, never fatal. ``PollerState`` keeps each poller's state in the compacted
``sms.poller.state`` topic (key = poller name, value JSON), written one record per batch (so end
offsets are exact, even on the embedded dev broker) and read back up to its end at start.

Exactly-once with Kafka transactions (``Pollers(transactional=True)``: ``kafka.exactly_once`` on a
broker that has them, #16): a block's records, their opt-out changes and the state past the
block are one transaction of the poller's own transactional id (``<prefix>-<group_id>-poller-
<name>``); nothing else below (intent, read-back) is needed. The marker and the open-window
detection are the same. Without transactions (Tansu, or ``kafka.exactly_once=false``):

Exactly once per dedupe key. A block of MO messages goes through three steps, and a crash at any
point leaves a state from which a restart converges to "every key once" in ``sms.inbound``:

1. *Intent* (a write-ahead record): the block's not-yet-seen messages, as the ``InboundSms``
   records to publish, with the end offsets of every ``sms.inbound`` partition taken just before,
   and the position to move to once they are out (ThingSpace: the block's ``next`` token; Ogangi:
   the cursor after the page). Saved durably *before* anything is produced.
2. *Publish* with ``InboundPublisher.publish_mo`` (acks=all): one sender's messages in order
   (sorted by the provider's timestamp, so a STOP then START from one number lands in that order),
   different senders concurrently; every produce is awaited.
3. *Commit*: the new position, the block's keys added to a bounded window of recently seen keys
   (``seen_window``, default 500), the intent cleared. Only then is the next page requested
   (for ThingSpace: with the token, which acknowledges the block).

Nothing new is asked of the provider while a fetched block is not durable: if the intent (or,
with nothing new in the block, the commit) cannot be written, the block stays in memory
(``MoPoller.fetched``) and ``settle`` writes it again before any request, however long the
broker is away; the end offsets the intent needs are taken *before* the request, so the intent
follows the provider's answer with no other round trip.

A poller that starts (or recovers from a failed publish) with an intent in its state does not
guess: it reads ``sms.inbound`` from the intent's offsets to the current end and collects the
intent's keys already there (the crash came after their produce), publishes the others from the
intent itself, and writes again the opt-out change of every keyword MO it found already
published (a crash between an MO's record and its opt-out record must not lose the STOP;
rewriting a change is harmless, and one sender's changes are rewritten in their order), then
commits. Reading from offsets taken *before* the first produce is complete
whatever the broker batched; stopping once each partition's position reaches its end offset is
exact on Kafka and also on Tansu, whose ListOffsets answer for multi-record batches is the base
offset of the last batch + 1 (too low, never too high) and a fetch returns whole batches. The
seen-key window then drops the block when the provider sends it again (ThingSpace: the
unacknowledged block; Ogangi: the overlap re-read), and drops a provider's own duplicates (seed
002: messages may come twice, out of order) as long as they are within the window. Why not the
simpler "publish, then record the keys": a crash between the two re-publishes the block; why
not "record, then publish": a crash between them loses it. The write-ahead intent plus the
read-back is the only order without either gap that works with a non-transactional producer
(transactions need the idempotent producer, which the dev broker lacks) and with
``sms.inbound`` keyed by sender (so the dedupe key cannot be the record key).

ThingSpace specifics (PROVIDERS.md §1): a block stays queued until a request carries its token;
the last block (200, no token) is acknowledged by the next poll, whatever it carries. The token
to send next is part of the committed state, so after a restart the first request re-sends it:
if it was already used, the provider answers the current block again (the simulator's rule for a
retried request) and the dedupe window drops what was published; a refused token (400) is
dropped and the poll repeated without one. The one window the API leaves open: a last page
(200, no token) answered to a request *without* a token exists only in this process until its
intent is durable (one produce round trip); if the process dies in between, or the answer is
lost (a timeout, a connection broken after the request was sent), the next token-less poll
acknowledges the page unseen and nothing can fetch it again. It is detected, never silent: a
durable ``polling`` marker is written before every token-less request and cleared by the
block's intent or commit; a restart that finds it, or a token-less request whose answer may be
lost, counts ``sms_mo_pages_at_risk_total`` and logs "MO page may be acknowledged unseen" (a
conservative signal: the answer may as well have been a 202 block, served again, or empty).

Ogangi specifics (PROVIDERS.md §4): ``getMOMessages`` is a list, not a queue: messages stay, new
ones appear. It is read with ``ORDER=ASC`` (oldest first, ``page`` from 1), where new messages
only append, so a page number and index are stable; the cursor is the number of list entries
consumed. Each poll re-reads from ``cursor - overlap`` (default 20), so a message that lands just
before the cursor (two messages with the same ``sendDate`` ordered differently, a late insert)
is still found; the window drops what was already published. If the list shrinks below the
cursor (the provider dropped old messages), the cursor moves back to ``total - seen_window`` and
the window again decides. The dedupe key is ``stable_id(from, to, sendDate, text)``.

Both: an MO whose text is an opt-out or opt-in keyword alone (``inbound.optout_*_words``) is
marked ``optout`` and ``publish_mo`` updates ``sms.optout`` when the sender is a phone number
(Ogangi; a ``from`` that is not 7-15 digits is kept as given and never opts out). ThingSpace
senders are devices (``<kind>:<id>``, so a reply is routed to the device): the record says
``optout`` but the opt-out table, keyed by phone number, is left alone. ``keyword`` is the first word, upper-cased
(Ogangi's own ``keyword`` field is a matching rule such as ``^STOP.*``; it stays in ``raw``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Container, Iterable, Mapping, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connector import contract as topics
from connector import metrics, numbers, tracing
from connector.config import KafkaSettings, Settings
from connector.errors import ProviderError, Rejected, Retriable, Throttled, Timeout
from connector.kafka import topic_partitions
from connector.keywords import Keywords
from connector.policy import RetryPolicy, backoff
from connector.providers import Capability, has
from connector.records import InboundSms, Recipient
from connector.sender import RouteSender
from connector.streams.plumbing import (close_reader, groupless_consumer, produce_acknowledged, read_to_end,
                                        unless_stopped)
from connector.streams.publish import INBOUND_TXN_OPTIONS, InboundPublisher, Writes, commit_writes
from connector.streams.transactions import TransactionAborted, TransactionalProducer, transactional_id

__all__ = [
    "InboundLog", "Intent", "ListMoPoller", "MoPoller", "PollerState", "Pollers", "QueueMoPoller", "SeenKeys",
    "decode_mo", "encode_mo", "fresh_records", "publish_groups", "retry_delay", "start_callbacks",
]

log = logging.getLogger("sms_connector.pollers")

STATE_VERSION = 1
DEFAULT_SEEN_WINDOW = 500
LIST_PAGE_SIZE = 100
LIST_OVERLAP = 20
RETRY = RetryPolicy(base_delay_s=1.0, max_delay_s=60.0, max_retry_after_s=300.0)
SCAN_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------------------------
# Pure parts: records, dedupe, ordering, cursors, backoff


def encode_mo(mo: InboundSms) -> dict[str, Any]:
    """An ``InboundSms`` as JSON for the write-ahead intent (``decode_mo`` reverses it exactly)."""
    return {"provider": mo.provider, "sender": mo.sender.as_json(), "text": mo.text, "received_at": mo.received_at,
            "raw": mo.raw, "dedupe_key": mo.dedupe_key, "to": mo.to, "keyword": mo.keyword,
            "occurred_at": mo.occurred_at, "optout": mo.optout}


def decode_mo(d: Mapping[str, Any]) -> InboundSms:
    sender = d["sender"]
    device = sender.get("device") or {}
    recipient = (Recipient(phone=sender["phone"]) if "phone" in sender
                 else Recipient(device_kind=device.get("kind"), device_id=device.get("id")))
    return InboundSms(provider=d["provider"], sender=recipient, text=d["text"], received_at=float(d["received_at"]),
                      raw=d["raw"], dedupe_key=d["dedupe_key"], to=d.get("to"), keyword=d.get("keyword"),
                      occurred_at=d.get("occurred_at"), optout=d.get("optout"))


class SeenKeys:
    """The dedupe keys seen most recently, oldest first, at most ``capacity``. Seeing a key
    again refreshes it, so a key that keeps coming back is never forgotten."""

    def __init__(self, capacity: int = DEFAULT_SEEN_WINDOW, keys: Iterable[str] = ()) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()
        self.add(keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, keys: Iterable[str]) -> None:
        for k in keys:
            self._keys[k] = None
            self._keys.move_to_end(k)
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)

    def to_list(self) -> list[str]:
        return list(self._keys)


def fresh_records(records: Iterable[InboundSms], seen: SeenKeys | Iterable[str]) -> list[InboundSms]:
    """The records to publish: key not seen, first occurrence in ``records`` only."""
    out: list[InboundSms] = []
    taken: set[str] = set()
    for r in records:
        if r.dedupe_key in seen or r.dedupe_key in taken:
            continue
        taken.add(r.dedupe_key)
        out.append(r)
    return out


def publish_groups(records: Iterable[InboundSms]) -> list[list[InboundSms]]:
    """Records grouped by sender (the ``sms.inbound`` key), each group in the provider's time order
    (stable for equal or missing timestamps); groups in order of first appearance."""
    groups: dict[bytes, list[InboundSms]] = {}
    for r in records:
        groups.setdefault(r.key, []).append(r)
    return [sorted(g, key=lambda r: r.occurred_at or "") for g in groups.values()]


def retry_delay(error: BaseException, attempt: int, policy: RetryPolicy = RETRY,
                rand: Callable[[], float] = random.random) -> float:
    """Seconds before polling again after ``attempt`` consecutive failures (>= 1): jittered
    exponential backoff, at least ``base_delay_s``, at least a provider's ``Retry-After``."""
    delay = max(policy.base_delay_s, backoff(attempt, policy, rand))
    if isinstance(error, Throttled) and error.retry_after is not None:
        delay = max(delay, min(error.retry_after, policy.max_retry_after_s))
    return delay


@dataclass
class Intent:
    """The write-ahead record of a block being published."""

    records: list[InboundSms]
    offsets: dict[int, int]            # sms.inbound partition -> end offset before the first produce
    after: dict[str, Any]              # the position once every record is out

    def as_json(self) -> dict[str, Any]:
        return {"records": [encode_mo(r) for r in self.records],
                "offsets": {str(p): o for p, o in self.offsets.items()}, "after": self.after}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Intent:
        return cls([decode_mo(r) for r in d["records"]], {int(p): int(o) for p, o in d["offsets"].items()},
                   dict(d["after"]))


@dataclass
class MoState:
    """One poller's state: where it is, what it saw recently, and a block in progress."""

    position: dict[str, Any] = field(default_factory=dict)
    seen: list[str] = field(default_factory=list)
    intent: Intent | None = None
    polling: float | None = None      # a token-less ThingSpace poll was sent at this time, answer not yet safe

    def as_json(self) -> dict[str, Any]:
        d = {"v": STATE_VERSION, "position": self.position, "seen": self.seen,
             "intent": self.intent.as_json() if self.intent else None, "updated_at": time.time()}
        if self.polling is not None:
            d["polling"] = self.polling
        return d

    @classmethod
    def from_json(cls, d: Any) -> MoState:
        """The state in a stored value; ValueError when it cannot be read."""
        if not isinstance(d, Mapping) or d.get("v") != STATE_VERSION:
            raise ValueError(f"not a version {STATE_VERSION} poller state")
        try:
            intent = Intent.from_json(d["intent"]) if d.get("intent") else None
            polling = float(d["polling"]) if d.get("polling") is not None else None
            return cls(dict(d.get("position") or {}), [str(k) for k in d.get("seen") or ()], intent, polling)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"unreadable poller state: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Kafka: the state topic and the read-back of sms.inbound


class PollerState:
    """The pollers' durable state: compacted ``sms.poller.state``, key = poller name, value JSON.

    ``load`` reads the topic up to its end and keeps the latest value per key. ``save`` writes one
    record and returns once the broker has it (acks=all); saves never run concurrently, so each
    record is a batch of its own and end offsets stay exact on any broker."""

    def __init__(self, producer: AIOKafkaProducer, kafka: KafkaSettings, topic: str | None = None) -> None:
        self.producer = producer
        self.kafka = kafka
        self.topic = topic or topics.spec("poller_state").name
        self.values: dict[str, Any] = {}
        self.loaded = False
        self._lock = asyncio.Lock()

    async def load(self) -> dict[str, Any]:
        values: dict[str, Any] = {}

        def apply(record: Any) -> None:
            if record.key is None:
                return
            name = record.key.decode(errors="replace")
            if record.value is None:
                values.pop(name, None)
                return
            try:
                values[name] = orjson.loads(record.value)
            except orjson.JSONDecodeError:
                log.warning("unreadable poller state record ignored", extra={"poller": name, "offset": record.offset})

        consumer = groupless_consumer(self.kafka)
        try:    # closed also when its start is cancelled (a stop during start-up)
            await consumer.start()
            tps = await topic_partitions(consumer, self.topic)
            await read_to_end(consumer, {tp: None for tp in tps}, apply, timeout_s=SCAN_TIMEOUT_S)
        finally:
            await close_reader(consumer)
        self.values = values
        self.loaded = True
        return dict(values)

    def get(self, name: str) -> Any:
        return self.values.get(name)

    async def save(self, name: str, value: Any) -> None:
        data = orjson.dumps(value)
        async with self._lock:
            await produce_acknowledged(self.producer, self.topic, name.encode(), data)
            self.values[name] = orjson.loads(data)

    def write(self, writes: Writes, name: str, value: Any) -> None:
        """The state record as one write of a transaction (exactly-once); ``adopt`` it once committed."""
        writes.add(self.topic, name.encode(), orjson.dumps(value))

    def adopt(self, name: str, value: Any) -> None:
        self.values[name] = orjson.loads(orjson.dumps(value))

    async def reload(self, name: str) -> Any:
        """The poller's latest committed state, read again (after a transaction whose outcome is
        unknown: fenced or timed out at its commit)."""
        values = await self.load()
        return values.get(name)


class InboundLog:
    """``sms.inbound`` as the pollers need it: end offsets before a block, and which of a
    block's dedupe keys are already in it after a crash."""

    def __init__(self, kafka: KafkaSettings, topic: str | None = None) -> None:
        self.kafka = kafka
        self.topic = topic or topics.spec("inbound").name
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []

    async def start(self) -> None:
        if self._consumer is None:
            consumer = groupless_consumer(self.kafka)
            try:    # closed also when its start is cancelled
                await consumer.start()
                self._tps = await topic_partitions(consumer, self.topic)
            except BaseException:
                await close_reader(consumer)
                raise
            self._consumer = consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_reader(consumer)

    async def end_offsets(self) -> dict[int, int]:
        await self.start()
        assert self._consumer is not None
        ends = await self._consumer.end_offsets(self._tps)
        return {tp.partition: off for tp, off in ends.items()}

    async def find(self, provider: str, keys: Iterable[str], since: Mapping[int, int]) -> set[str]:
        """Which of ``keys`` (MO records of ``provider``) were written at or after ``since``."""
        wanted = set(keys)
        found: set[str] = set()

        def check(record: Any) -> None:
            try:
                value = orjson.loads(record.value) if record.value else None
            except orjson.JSONDecodeError:
                return
            if isinstance(value, dict) and value.get("provider") == provider and value.get("dedupe_key") in wanted:
                found.add(value["dedupe_key"])

        consumer = groupless_consumer(self.kafka)
        await consumer.start()
        try:
            tps = await topic_partitions(consumer, self.topic)
            await read_to_end(consumer, {tp: since.get(tp.partition, 0) for tp in tps}, check,
                              timeout_s=SCAN_TIMEOUT_S)
        finally:
            await close_reader(consumer)
        return found


# --------------------------------------------------------------------------------------------
# Pollers


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), max(0.0, seconds))
    except asyncio.TimeoutError:
        pass


@dataclass
class Fetched:
    """A block as fetched: its records, the position to move to once they are out, and the end
    offsets of ``sms.inbound`` taken before the request (so the intent needs no other round trip)."""

    records: list[InboundSms]
    after: dict[str, Any]
    offsets: dict[int, int] | None = None


def answer_may_be_lost(exc: BaseException) -> bool:
    """Whether a failed request may still have been served by the provider: no answer in time,
    or the connection broke after it was sent (never a refused connection or an HTTP answer)."""
    if isinstance(exc, Timeout):
        return True
    text = str(exc)
    return isinstance(exc, Retriable) and any(s in text for s in _BROKEN_AFTER_SEND)


_BROKEN_AFTER_SEND = ("ServerDisconnected", "ClientOSError", "ClientPayloadError", "Connection reset")


class MoPoller:
    """One provider's MO source: ``poll_once`` fetches and hands blocks to ``deliver``, which
    runs the intent / publish / commit steps; ``recover`` finishes an interrupted block.

    Invariant: no new request goes to the provider while a fetched block is not durable (its
    intent or its commit saved): ``settle`` finishes it first, however long the broker is away.
    ``on_step`` (tests only) is awaited at each step: fetched, acknowledged, intent, published,
    committed."""

    def __init__(self, name: str, sender: RouteSender, state: PollerState, inbound: InboundLog,
                 publisher: InboundPublisher, *, interval_s: float, keywords: Keywords,
                 seen_window: int = DEFAULT_SEEN_WINDOW, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.sender = sender
        self.state = state
        self.inbound = inbound
        self.publisher = publisher
        self.interval_s = interval_s
        self.keywords = keywords
        self.clock = clock
        self.position: dict[str, Any] = {}
        self.seen = SeenKeys(seen_window)
        self.intent: Intent | None = None
        self.polling: float | None = None     # durable marker: a token-less poll's answer is not yet safe
        self.fetched: Fetched | None = None   # a block fetched whose intent / commit is not durable yet
        self.failing: str | None = None       # the current error, for one log line per change
        self.published = 0
        self.on_step: Callable[[str], Awaitable[None]] | None = None
        self.provider = sender.provider.name      # a label: metrics and the intent's records
        # Exactly-once (``Pollers(transactional=True)``): a block's records and the state that
        # moves past it are committed in one transaction of this poller's own transactional id
        # (a restarted poller fences its previous instance). No intent, no read-back.
        self.txn: TransactionalProducer | None = None
        self._unsure = False       # a transaction failed at its commit: committed or not, read the state again
        self._m_polled = metrics.MO_POLLED.labels(self.provider)

    # -- state ----------------------------------------------------------------------------------
    def restore(self, quiet: bool = False) -> None:
        raw = self.state.get(self.name)
        if raw is None:
            return
        try:
            st = MoState.from_json(raw)
        except ValueError as exc:
            log.error("poller state unreadable; starting from scratch", extra={"poller": self.name, "error": str(exc)})
            return
        self.position, self.intent, self.polling = st.position, st.intent, st.polling
        self.seen = SeenKeys(self.seen.capacity, st.seen)
        if st.polling is not None and st.intent is None and not quiet:
            self.at_risk("crash", "the poller stopped while a poll without a token was in flight")

    def at_risk(self, reason: str, what: str) -> None:
        """The provider's open window (ThingSpace, PROVIDERS.md §1): a last page (200, no token)
        served to a token-less poll whose answer we never kept is acknowledged by our next poll."""
        metrics.MO_PAGES_AT_RISK.labels(self.provider, reason).inc()
        log.error("MO page may be acknowledged unseen: " + what + "; if the provider answered it with a last "
                  "page, the next poll acknowledges that page and its messages are lost",
                  extra={"poller": self.name, "reason": reason})

    async def save(self, position: dict[str, Any] | None = None, intent: Intent | None = None,
                   polling: float | None = None, seen: SeenKeys | None = None, *,
                   writes: Writes | None = None) -> None:
        """Write the state durably, then adopt it (memory never runs ahead of the topic). With a
        transactional producer the state is committed in one transaction with ``writes`` (a
        block's records), else written alone (``writes`` must then be None)."""
        position = self.position if position is None else position
        seen = seen or self.seen
        value = MoState(position, seen.to_list(), intent, polling).as_json()
        published = (lambda: self._step("published")) if writes is not None else None
        if self.txn is None:
            assert writes is None, "records and state in one write need a transactional producer"
            await self.state.save(self.name, value)
        else:
            writes = writes or Writes()
            self.state.write(writes, self.name, value)
            self._unsure = True
            try:
                await commit_writes(self.txn, writes, before_commit=published)
            except TransactionAborted:
                self._unsure = False      # certainly not committed
                raise
            self._unsure = False
            self.state.adopt(self.name, value)
        self.position, self.intent, self.polling, self.seen = position, intent, polling, seen

    async def _reload(self) -> None:
        """After a transaction that may or may not have committed: the state as committed."""
        self.state.values[self.name] = await self.state.reload(self.name)
        self.restore(quiet=True)
        self._unsure = False

    async def _step(self, name: str) -> None:
        if self.on_step is not None:
            await self.on_step(name)

    # -- the loop -------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self.restore()
        log.info("MO poller started", extra={"poller": self.name, "route": self.sender.route,
                                             "interrupted_block": self.intent is not None})
        attempt = 0
        while not stop.is_set():
            try:
                await self.settle()
                more = await tracing.traced(f"poll {self.name}", self.poll_once, self.provider)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an outage must not end the poller
                attempt += 1
                self._failed(exc)
                await _sleep_unless(stop, retry_delay(exc, attempt))
                continue
            if attempt:
                attempt = 0
                self._recovered()
            if not more:
                await _sleep_unless(stop, self.interval_s)

    async def settle(self) -> None:
        """Finish what is in progress before anything new is asked of the provider: an
        interrupted block (its intent), then a block fetched but not yet durable."""
        if self._unsure:
            await self._reload()
        if self.intent is not None:
            await self.recover()
        if self.fetched is not None:
            await self.deliver(self.fetched)

    def _failed(self, exc: Exception) -> None:
        what = f"{type(exc).__name__}: {exc}"
        if what != self.failing:
            log.warning("MO polling failed; retrying with backoff",
                        extra={"poller": self.name, "error": what, "block_held": self.fetched is not None
                               or self.intent is not None})
        self.failing = what

    def _recovered(self) -> None:
        if self.failing is not None:
            log.info("MO polling recovered", extra={"poller": self.name})
        self.failing = None

    @property
    def healthy(self) -> bool:
        return self.failing is None

    async def poll_once(self) -> bool:
        """Fetch and deliver; True when more is waiting (poll again at once)."""
        raise NotImplementedError

    # -- exactly once ---------------------------------------------------------------------------
    async def deliver(self, block: Fetched) -> int:
        """Publish the block's unseen records, then move to its position; returns how many were
        published. Until its intent (or, with nothing new, its commit) is durable the block stays
        in ``fetched``, and ``settle`` delivers it again before any new request."""
        self.fetched = block
        await self._step("fetched")
        fresh = fresh_records(block.records, self.seen)
        if self.txn is not None:
            return await self._deliver_in_transaction(block, fresh)
        if fresh:
            offsets = block.offsets if block.offsets is not None else await self.inbound.end_offsets()
            await self.save(intent=Intent(fresh, offsets, dict(block.after)))    # 1. intent, before any produce
            self.fetched = None
            await self._step("intent")
            await self._publish(fresh)                                          # 2. publish (raises on failure)
            await self._step("published")
        seen = SeenKeys(self.seen.capacity, self.seen.to_list())
        seen.add(r.dedupe_key for r in block.records)
        if fresh or block.after != self.position or self.polling is not None:
            await self.save(dict(block.after), seen=seen)                       # 3. commit
        else:
            self.seen = seen
        self.fetched = None
        await self._step("committed")
        return len(fresh)

    async def _deliver_in_transaction(self, block: Fetched, fresh: list[InboundSms]) -> int:
        """``deliver`` with exactly-once: the block's records and the state past it in one
        transaction. If it fails the block stays in ``fetched`` for ``settle``; if its outcome is
        unknown, ``settle`` reads the state again first, and the seen window drops what the
        transaction did commit."""
        seen = SeenKeys(self.seen.capacity, self.seen.to_list())
        seen.add(r.dedupe_key for r in block.records)
        if fresh or block.after != self.position or self.polling is not None:
            writes = Writes()
            for group in publish_groups(fresh):
                for r in group:
                    self.publisher.plan_mo(r, writes)
            await self.save(dict(block.after), seen=seen, writes=writes)
            self.published += len(fresh)
        else:
            self.seen = seen
        self.fetched = None
        await self._step("committed")
        return len(fresh)

    async def recover(self) -> None:
        """Finish the block of a saved intent: publish what ``sms.inbound`` does not have yet,
        and derive again the opt-out changes of what it has (a crash may have come between an
        MO's record and its opt-out record: the table must never miss a STOP that is in
        ``sms.inbound``; writing a change twice is harmless, and each sender's changes are
        written again in their order)."""
        intent = self.intent
        assert intent is not None
        keys = [r.dedupe_key for r in intent.records]
        found = await self.inbound.find(self.provider, keys, intent.offsets)
        seen = SeenKeys(self.seen.capacity, self.seen.to_list())
        seen.add(keys)
        if self.txn is not None:      # an intent of an at-least-once run, finished in one transaction
            writes = Writes()
            for group in publish_groups(intent.records):
                for r in group:
                    self.publisher.plan_mo(r, writes, published=r.dedupe_key in found)
            await self.save(dict(intent.after), seen=seen, writes=writes)
        else:
            await self._publish(intent.records, already=found)
            await self.save(dict(intent.after), seen=seen)
        log.info("interrupted MO block finished", extra={"poller": self.name, "already_published": len(found),
                                                         "published_now": len(keys) - len(found)})

    async def _publish(self, records: Sequence[InboundSms], already: Container[str] = frozenset()) -> None:
        async def in_order(group: list[InboundSms]) -> None:
            for r in group:
                if r.dedupe_key in already:
                    await self.publisher.derive_optout(r)
                    continue
                await self.publisher.publish_mo(r)
                self.published += 1

        results = await asyncio.gather(*(in_order(g) for g in publish_groups(records)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result


class QueueMoPoller(MoPoller):
    """An acknowledged queue (``Capability.MO_QUEUE``, ThingSpace's ``GET …/sms/{account}/history``):
    a block is acknowledged by the next request that carries its token, sent only after the block
    is committed; the last page (200, no token) by the next request without one. Before a
    token-less request the state is marked ``polling`` (durably): its answer may be a last page
    that only this process has seen, which a restart's first poll would acknowledge; the marker is
    cleared by the block's intent or commit, and a restart that finds it reports the page as at
    risk. Position: ``{"token": ...}``."""

    _no_token = False     # "more data" without a token: warned once, until it changes

    async def poll_once(self) -> bool:
        token = self.position.get("token")
        offsets = await self.inbound.end_offsets()   # taken first: the intent follows the answer at once
        if token is None and self.polling is None:
            await self.save(polling=self.clock())
        try:
            provider: Any = self.sender.provider
            page = await self.sender.call(lambda: provider.build_mo_poll(token), provider.parse_mo_poll)
        except Rejected as exc:
            if token is None:
                raise
            log.warning(f"{self.sender.provider.title} refused the acknowledgement token; polling without it",
                        extra={"poller": self.name, "error": str(exc)})
            await self.save({"token": None})
            return True
        except ProviderError as exc:
            if token is None and answer_may_be_lost(exc):
                self.at_risk("no-answer", f"a poll without a token got no answer ({type(exc).__name__})")
            raise
        if token is not None:
            await self._step("acknowledged")
        self._m_polled.inc(len(page.messages))
        now = self.clock()
        records = provider.mo_records(page.messages, self.keywords, now)
        more = page.has_more and page.next_token is not None
        if (page.has_more and page.next_token is None) != self._no_token:
            self._no_token = not self._no_token
            if self._no_token:
                log.warning(f"{provider.title} says more MO data but gives no next token; polling at the interval",
                            extra={"poller": self.name})
        await self.deliver(Fetched(records, {"token": page.next_token if more else None}, offsets))
        return more


class ListMoPoller(MoPoller):
    """A growing list (``Capability.MO_LIST``, Ogangi's ``getMOMessages`` with ``ORDER=ASC``): a
    cursor (entries consumed, the provider's arithmetic) and an overlap re-read.
    Position: ``{"cursor": n}``."""

    def __init__(self, *args: Any, per_page: int = LIST_PAGE_SIZE, overlap: int = LIST_OVERLAP,
                 **kw: Any) -> None:
        super().__init__(*args, **kw)
        if per_page < 1:
            raise ValueError("per_page must be at least 1")
        self.per_page = per_page
        self.overlap = min(overlap, self.seen.capacity // 2)

    async def poll_once(self) -> bool:
        provider: Any = self.sender.provider
        cursor = int(self.position.get("cursor") or 0)
        page_no, skip = provider.mo_read_plan(cursor, self.per_page, self.overlap)
        while True:
            n = page_no
            page = await self.sender.call(lambda: provider.build_mo_poll(n, self.per_page), provider.parse_mo_poll)
            self._m_polled.inc(len(page.messages))
            reset = provider.mo_reset_cursor(cursor, page.total, self.seen.capacity)
            if reset is not None:
                log.warning(f"{provider.title} MO list is shorter than the cursor; reading its tail again",
                            extra={"poller": self.name, "cursor": cursor, "total": page.total, "new_cursor": reset})
                await self.save({"cursor": reset})
                return True
            now = self.clock()
            records = provider.mo_records(page.messages[skip:], self.keywords, now)
            cursor = provider.mo_cursor_after(cursor, page_no, self.per_page, len(page.messages))
            await self.deliver(Fetched(records, {"cursor": cursor}))
            if not page.messages or not page.more_after(page_no, self.per_page):
                return False
            page_no, skip = page_no + 1, 0


async def start_callbacks(sender: RouteSender) -> bool:
    """Queued MO of a queue route go to its callback instead (ThingSpace's ``startCallbacks``)."""
    provider: Any = sender.provider
    return await sender.call(provider.build_mo_release, provider.parse_mo_release)


class Pollers:
    """Every MO poller of the configured routes: one per ThingSpace account, one per Ogangi
    instance (routes sharing one get a single poller), each in its own task."""

    def __init__(self, settings: Settings, senders: Mapping[str, RouteSender], producer: AIOKafkaProducer,
                 publisher: InboundPublisher, *, seen_window: int = DEFAULT_SEEN_WINDOW,
                 transactional: bool = False) -> None:
        self.settings = settings
        self.transactional = transactional     # exactly-once: each poller commits in its own transactions
        self.state = PollerState(producer, settings.kafka)
        self.inbound = InboundLog(settings.kafka)
        inbound = settings.inbound
        keywords = Keywords.parse(inbound.optout_stop_words, inbound.optout_start_words)
        self.pollers: list[MoPoller] = []
        names: set[str] = set()
        for route, sender in senders.items():
            kind: type[MoPoller]
            if has(sender.provider, Capability.MO_QUEUE):
                kind = QueueMoPoller
            elif has(sender.provider, Capability.MO_LIST):
                kind = ListMoPoller
            else:
                continue
            name = sender.provider.mo_source()  # type: ignore[attr-defined]
            if name in names:
                log.info("route shares an MO source with another route; not polled twice",
                         extra={"route": route, "poller": name})
                continue
            names.add(name)
            self.pollers.append(kind(name, sender, self.state, self.inbound, publisher,
                                     interval_s=inbound.mo_poll_interval_s, keywords=keywords,
                                     seen_window=seen_window))
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    @property
    def ready(self) -> bool:
        """State loaded and every poller running (a failing provider is retried, still running)."""
        return self._started and all(not t.done() for t in self._tasks)

    def health(self) -> dict[str, Any]:
        return {p.name: {"healthy": p.healthy, "error": p.failing, "published": p.published} for p in self.pollers}

    async def run(self, stop: asyncio.Event) -> None:
        if not self.pollers:
            log.info("no ThingSpace or Ogangi route: no MO poller")
            self._started = True
            await stop.wait()
            return
        try:
            # a stop during start-up cancels it (the readers and producers it opened are closed below)
            started, _ = await unless_stopped(stop, self._start(stop))
            if not started or stop.is_set():
                return
            self._tasks = [asyncio.create_task(p.run(stop), name=p.name) for p in self.pollers]
            self._started = True
            log.info("MO pollers running", extra={"pollers": [p.name for p in self.pollers]})
            await stop.wait()
        finally:
            # A poll in flight is let finish (each poller's loop ends at its next stop check): its
            # answer may be a last page only this process has seen, and abandoning it would leave
            # the `polling` marker for the next start to report as a page at risk. Only what
            # outlasts one provider call plus the dispatchers' shutdown allowance is cancelled.
            if self._tasks:
                grace = self.settings.http.provider_timeout_s + self.settings.dispatch.shutdown_timeout_s
                _, pending = await asyncio.wait(self._tasks, timeout=grace)
                for t in pending:
                    t.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.inbound.stop()
            for p in self.pollers:
                if p.txn is not None:
                    await p.txn.stop()

    async def _start(self, stop: asyncio.Event) -> None:
        """The pollers' state read, the inbound log's reader and (exactly-once) their
        transactional ids, retried until the broker answers."""
        attempt, failing = 0, None
        while not stop.is_set():
            try:
                await self.state.load()
                await self.inbound.start()
                await self._start_transactions()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker may come up later
                attempt += 1
                what = f"{type(exc).__name__}: {exc}"
                if what != failing:
                    log.warning("poller state could not be loaded; retrying", extra={"error": what})
                failing = what
                await _sleep_unless(stop, retry_delay(exc, attempt))

    async def _start_transactions(self) -> None:
        """Exactly-once: one transactional id per poller, ``<prefix>-<group_id>-poller-<name>``:
        a poller's restart (or a second instance of it) fences the previous one, whose open
        transaction is aborted, so two instances never both move one cursor."""
        if not self.transactional:
            return
        k = self.settings.kafka
        for p in self.pollers:
            if p.txn is None:
                txn = TransactionalProducer(k, transactional_id(k, f"poller-{p.name}"), "pollers", **INBOUND_TXN_OPTIONS)
                await txn.start()
                p.txn = txn
