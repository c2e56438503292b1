"""The idempotency ledger: what the dispatcher knows of each client_message_id, durably.

Before a provider call on an at-most-once route (``in_doubt = fail``) the dispatcher records an
*intent*; once the message's terminal record is acknowledged it records *done*. (On a ``resend``
route the intent is not written: a message with an intent and one without would both be sent
again on replay, so it would only cost a produce awaited before every call.) A message read
again (a crash or rebalance replays everything after the last commit, or upstream produced it
twice) then:

- ``done``: no provider call and nothing republished (its terminal record already exists),
  except a record re-injected by ``sms-connector dlq replay`` (header ``sms.replayed-from``)
  whose recorded outcome was *failed*: replaying after a fix is the point of that command. A
  replay of a message already *accepted* stays a no-op;
- ``intent`` without done (*in doubt*: the call may or may not have happened): the route's
  ``in_doubt`` policy decides: ``resend`` (at-least-once; the SMPP API gets the same
  ``clientMessageId``) or ``fail`` (at-most-once: a failed record, reason in-doubt).
- ``retrying`` (handed off to the retry topic; its retry record is durable): the entry holds
  that hand-off's token. Only the retry record carrying it is sent; the original input read
  again, a duplicate, or an older retry record of the same message is a no-op.

Storage: the compacted topic ``sms.ledger`` (key = client_message_id), written to the *same
partition number as the input record*, so the worker that owns ``sms.outbound`` partition p also
owns ledger partition p: on assignment it reads that partition to its end (before any record of
p is processed), then keeps it in memory and writes through. A duplicate produced by upstream
under a different key (another partition) is not recognised.

Memory is bounded too: at most ``dispatch.idempotency_max_entries`` per worker, shared evenly by
its partitions; beyond it the oldest entries are forgotten early (a rewritten entry counts as
new) and ``sms_ledger_evicted_total`` counts them, so an operator sees the window shrink.

In memory an entry costs about 110 bytes (a soak's tracemalloc diff: nothing else of the worker
grows with the number of messages): a *done* entry of an accepted or failed message, nearly all of
them, is kept as its time alone (``_pack``: positive for accepted, negative for failed), other
states as (state, time, detail) with the state and outcome strings shared, also when loaded.

Entries expire after ``dispatch.idempotency_window_s``: faust tables have no key TTL and
compaction keeps the latest record forever, so each entry stores its time and an older entry is
ignored on read; memory is pruned periodically, and the topic is
``compact,delete`` with a 7-day retention (the longest window allowed), which bounds the log.

Reading to the end: each partition is read until its position reaches the end offset. On the
embedded dev broker (Tansu) the end offset of a multi-record batch is its base offset + 1 (too
low, never too high); a fetch returns whole batches, so reading to that offset still returns
every record.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Union

from aiokafka import TopicPartition

from connector import contract as topics
from connector import metrics
from connector.config import KafkaSettings
from connector.errors import InvalidRecord
from connector.records import DONE, INTENT, RETRYING, Ending, LedgerEntry
from connector.streams.batcher import Batcher
from connector.streams.plumbing import close_reader, groupless_consumer, read_to_end

log = logging.getLogger("sms_connector.ledger")

# What one client_message_id maps to in memory: see _pack.
Stored = Union[float, tuple[str, float, "str | None"]]
_SHARED = {s: s for s in (DONE, INTENT, RETRYING, *Ending)}


def _pack(state: str, at: float, detail: str | None) -> Stored:
    """A done entry of an accepted (failed) message as its time ``at`` (``-at``): a float instead
    of a tuple, 64 bytes less for nearly every entry; any other as (state, at, detail), state and
    outcome shared rather than one string per entry (a retrying entry's detail is its own token)."""
    if state == DONE and at > 0:
        if detail == Ending.ACCEPTED:
            return at
        if detail == Ending.FAILED:
            return -at
    shared = _SHARED.get(detail) if detail is not None else None
    return (_SHARED.get(state, state), at, shared if shared is not None else detail)


def _unpack(stored: Stored) -> tuple[str, float, str | None]:
    """(state, at, detail) of a stored entry."""
    if type(stored) is float:
        return (DONE, stored, Ending.ACCEPTED) if stored > 0 else (DONE, -stored, Ending.FAILED)
    return stored  # type: ignore[return-value]


class PartitionLedger:
    """The ledger of one partition, as the pipeline sees it."""

    __slots__ = ("ledger", "partition", "entries")

    def __init__(self, ledger: Ledger, partition: int) -> None:
        self.ledger = ledger
        self.partition = partition
        # cid -> _pack(state, at, detail): detail is the outcome of a done entry, the token of a retrying one
        self.entries: dict[str, Stored] = {}

    def get(self, cid: str) -> tuple[str, float, str | None] | None:
        """(state, at, detail) of ``cid``'s entry, however old; None when there is none."""
        stored = self.entries.get(cid)
        return None if stored is None else _unpack(stored)

    def state(self, cid: str) -> str | None:
        entry = self.get(cid)
        if entry is None or time.time() - entry[1] > self.ledger.window_s:
            return None
        return entry[0]

    def outcome(self, cid: str) -> str | None:
        """``accepted`` or ``failed`` for a done entry (else None)."""
        entry = self.get(cid)
        return entry[2] if entry is not None and entry[0] == DONE else None

    def token(self, cid: str) -> str | None:
        """The current hand-off's token for a retrying entry (else None)."""
        entry = self.get(cid)
        return entry[2] if entry is not None and entry[0] == RETRYING else None

    async def intent(self, cid: str, route: str | None) -> None:
        await self.ledger.write(self, cid, INTENT, route=route)

    async def done(self, cid: str, outcome: str) -> None:
        await self.ledger.write(self, cid, DONE, outcome=outcome)

    async def retrying(self, cid: str, token: str) -> None:
        await self.ledger.write(self, cid, RETRYING, token=token)


class Ledger:
    def __init__(self, kafka: KafkaSettings, batcher: Batcher, window_s: float, max_entries: int = 250_000,
                 isolation_level: str = "read_uncommitted") -> None:
        self.kafka = kafka
        # read_committed with exactly-once: entries of aborted transactions are not loaded (intent
        # entries, written outside transactions, are visible to it all the same)
        self.isolation_level = isolation_level
        self.batcher = batcher
        self.window_s = window_s
        self.max_entries = max_entries
        self.topic = topics.spec("ledger").name
        self.partitions: dict[int, PartitionLedger] = {}
        self._loaded: dict[int, asyncio.Event] = {}
        self._loads: dict[int, asyncio.Task[None]] = {}

    # -- assignment --------------------------------------------------------------------------
    def assign(self, partition: int) -> None:
        """Start loading ``partition``; ``ready(partition)`` completes when it is loaded."""
        if partition in self._loaded:
            return
        self._loaded[partition] = asyncio.Event()
        self._loads[partition] = asyncio.create_task(self._load(partition))

    def revoke(self, partition: int) -> None:
        task = self._loads.pop(partition, None)
        if task is not None and not task.done():
            task.cancel()
        self.partitions.pop(partition, None)
        loaded = self._loaded.pop(partition, None)
        if loaded is not None:
            loaded.set()   # release records waiting for it: they see no ledger and are not processed

    async def ready(self, partition: int) -> PartitionLedger | None:
        """The partition's ledger once loaded; None if the partition is not (or no longer) ours."""
        loaded = self._loaded.get(partition)
        if loaded is None:
            return None
        await loaded.wait()
        return self.partitions.get(partition)

    async def _load(self, partition: int) -> None:
        pl = PartitionLedger(self, partition)
        tp = TopicPartition(self.topic, partition)
        t0 = time.monotonic()
        delay = 0.5
        while True:
            consumer = groupless_consumer(self.kafka, isolation_level=self.isolation_level)
            try:
                await consumer.start()
                now = time.time()
                await read_to_end(consumer, {tp: None},
                                  lambda r: _apply(pl.entries, r.key, r.value, now, self.window_s),
                                  on_batch=lambda: _evict(pl.entries, self.partition_cap(extra=1)),
                                  fetch_timeout_ms=500)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying: the partition waits for its ledger
                log.warning("ledger load failed; retrying", extra={"partition": partition,
                                                                    "error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                await close_reader(consumer)
        self.partitions[partition] = pl
        self._loaded[partition].set()
        metrics.LEDGER_ENTRIES.set(sum(len(p.entries) for p in self.partitions.values()))
        log.info("ledger partition loaded", extra={"partition": partition, "entries": len(pl.entries),
                                                   "seconds": round(time.monotonic() - t0, 2)})

    # -- writes ------------------------------------------------------------------------------
    async def write(self, pl: PartitionLedger, cid: str, state: str, *, route: str | None = None,
                    outcome: str | None = None, token: str | None = None) -> None:
        entry = LedgerEntry(state, time.time(), route, outcome, token)
        await self.batcher.send(self.topic, pl.partition, cid.encode(), entry.encode())
        self.remember(pl, cid, entry)

    def entry(self, cid: str, state: str, *, outcome: str | None = None, token: str | None = None) -> LedgerEntry:
        """A ledger entry to write by other means (exactly-once: in the partition's transaction,
        ``encode()`` it to ``self.topic``, partition ``pl.partition``, key ``cid``); ``remember``
        it once it is handed over."""
        return LedgerEntry(state, time.time(), None, outcome, token)

    def remember(self, pl: PartitionLedger, cid: str, entry: LedgerEntry) -> None:
        entries = pl.entries
        entries.pop(cid, None)     # re-inserted at the end: the dict stays in order of last write
        entries[cid] = _pack(entry.state, entry.at, entry.detail)
        if len(entries) > self.partition_cap():
            _evict(entries, self.partition_cap())

    def partition_cap(self, extra: int = 0) -> int:
        """Entries one partition may keep: the worker's cap shared by its partitions."""
        return max(1, self.max_entries // max(1, len(self.partitions) + extra))

    def prune(self) -> int:
        """Forget entries older than the window; returns how many are left."""
        horizon = time.time() - self.window_s
        left = 0
        for pl in self.partitions.values():
            old = [cid for cid, stored in pl.entries.items() if _unpack(stored)[1] < horizon]
            for cid in old:
                del pl.entries[cid]
            left += len(pl.entries)
        metrics.LEDGER_ENTRIES.set(left)
        return left


def _evict(entries: dict[str, Stored], cap: int) -> None:
    """Forget the oldest entries beyond ``cap`` (the dict is in order of last write)."""
    excess = len(entries) - cap
    if excess <= 0:
        return
    for cid in list(itertools.islice(entries, excess)):
        del entries[cid]
    metrics.LEDGER_EVICTED.inc(excess)


def _apply(entries: dict[str, Stored], key: bytes | None, value: bytes | None, now: float,
           window_s: float) -> None:
    if key is None:
        return
    cid = key.decode(errors="replace")
    if value is None:
        entries.pop(cid, None)
        return
    try:
        entry = LedgerEntry.decode(value)
    except InvalidRecord:
        return
    if now - entry.at <= window_s:
        entries.pop(cid, None)
        entries[cid] = _pack(entry.state, entry.at, entry.detail)
    else:
        entries.pop(cid, None)
