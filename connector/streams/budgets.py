"""The spend budgets' Kafka-backed state (``connector.budget`` decides; this module stores).

Topic ``sms.budget`` (compacted, 2-day retention): one record per slot, key
``route|scope|window|partition``, value ``BudgetSlot`` (the segments charged so far), written to
the slot's partition number. The owner of ``sms.outbound`` partition p owns slot partition p (the
range assignment that gives it the ledger's partition p too): on assignment it reads that
partition to its end before any message is charged, and writes through. A charge is written
and acknowledged before the provider call it pays for, so a crash or a rebalance never loses
spending (at most the charges of calls that were about to be made are counted without a call).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterable, Mapping

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from connector import contract as topics
from connector import metrics
from connector.budget import BudgetBook, Charge, BudgetSpent, RouteBudget, SlotKey
from connector.config import KafkaSettings
from connector.records import Recipient
from connector.streams.batcher import Batcher
from connector.streams.plumbing import close_reader, groupless_consumer, read_to_end

log = logging.getLogger("sms_connector.budgets")
SCHEMA_VERSION = 1


def slot_key(key: SlotKey) -> bytes:
    route, scope, window, partition = key
    return f"{route}|{scope}|{window}|{partition}".encode()


def slot_value(key: SlotKey, spent: float) -> bytes:
    route, scope, window, partition = key
    return orjson.dumps({"schema_version": SCHEMA_VERSION, "route": route, "scope": scope, "window": window,
                         "partition": partition, "spent": spent, "at": time.time()})


def read_slot(value: bytes | None) -> tuple[SlotKey, float] | None:
    try:
        d = orjson.loads(value or b"")
        return (str(d["route"]), str(d["scope"]), str(d["window"]), int(d["partition"])), float(d["spent"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class Budgets:
    """This worker's side of every route's budgets: ``charge`` before a call, ``refund`` when the
    call surely did not reach the provider; ``assign``/``revoke`` follow the input partitions."""

    def __init__(self, kafka: KafkaSettings, batcher: Batcher, budgets: Mapping[str, RouteBudget],
                 partitions: int) -> None:
        self.kafka = kafka
        self.batcher = batcher
        self.book = BudgetBook(budgets, partitions)
        self.topic = topics.spec("budget").name
        self._loads: dict[int, asyncio.Task[None]] = {}
        self._regional = {name for name, b in budgets.items() if any(lim.scope for lim in b.limits)}
        for name, budget in budgets.items():
            for limit in budget.limits:
                metrics.BUDGET_LIMIT.labels(name, limit.scope, limit.window).set(limit.segments)
                metrics.BUDGET_SPENT.labels(name, limit.scope, limit.window).set_function(
                    lambda n=name, lim=limit: self.book.used(n, lim, time.time()))

    def applies(self, route: str) -> bool:
        return route in self.book.budgets

    # -- assignment --------------------------------------------------------------------------
    def assign(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            if p not in self._loads:
                self._loads[p] = asyncio.create_task(self._load(p))

    def revoke(self, partitions: Iterable[int]) -> None:
        gone = list(partitions)
        for p in gone:
            task = self._loads.pop(p, None)
            if task is not None and not task.done():
                task.cancel()
        self.book.release(gone)

    async def ready(self) -> None:
        """Every assigned partition's slots are loaded (a charge before that would see too little room)."""
        pending = [t for t in self._loads.values() if not t.done()]
        if pending:
            await asyncio.wait(pending)

    async def _load(self, partition: int) -> None:
        tp = TopicPartition(self.topic, partition)
        delay = 0.5
        found: dict[SlotKey, float] = {}

        def apply(record: object) -> None:
            slot = read_slot(getattr(record, "value", None))
            if slot is not None:
                found[slot[0]] = slot[1]      # the latest record of a key wins
        while True:
            consumer = groupless_consumer(self.kafka)
            try:
                await consumer.start()
                await read_to_end(consumer, {tp: None}, apply, fetch_timeout_ms=500)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying: charges wait for the slots
                log.warning("budget load failed; retrying", extra={"partition": partition,
                                                                    "error": f"{type(exc).__name__}: {exc}"})
                found.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                await close_reader(consumer)
        now = time.time()
        for key, spent in found.items():
            if key[3] == partition:
                self.book.load(key, spent, now)
        self.book.owned.add(partition)
        log.info("budget slots loaded", extra={"partition": partition, "slots": len(found)})

    # -- charging ----------------------------------------------------------------------------
    async def charge(self, route: str, recipient: Recipient, segments: int) -> Charge | BudgetSpent | None:
        """Charge a message's segments, durably, before its call; or say which budget is spent."""
        await self.ready()
        region = recipient.region if route in self._regional else None
        taken = self.book.take(route, region, segments, time.time())
        if isinstance(taken, Charge):
            await self._write(k for k, _ in taken.parts)
        return taken

    async def refund(self, charge: Charge) -> None:
        self.book.refund(charge)
        await self._write(k for k, _ in charge.parts)

    def prune(self) -> None:
        self.book.prune(time.time())

    async def _write(self, keys: Iterable[SlotKey]) -> None:
        """Write the slots' current figures (a retry writes the newest, never an older one)."""
        pending = list(keys)
        delay = 0.1
        while pending:
            futures = [self.batcher.send(self.topic, k[3], slot_key(k), slot_value(k, self.book.spent.get(k, 0.0)))
                       for k in pending]
            failed = []
            for k, fut in zip(pending, futures):
                try:
                    await fut
                except KafkaError as exc:
                    metrics.PRODUCE_ERRORS.labels(self.topic).inc()
                    log.warning("budget write failed; retrying", extra={"error": type(exc).__name__})
                    failed.append(k)
            pending = failed
            if pending:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
