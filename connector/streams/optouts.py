"""The opt-out table as the dispatcher sees it, and its mirror to providers' opt-out lists.

``OptOutTable`` reads the compacted ``sms.optout`` topic (every partition, no consumer group)
up to its end before dispatch starts, then follows it, so a number that texted STOP is refused
(reason opted-out, no provider call) by every worker. Opt-out records are produced one per batch
(see ``streams.publish``), so end offsets are exact even on the embedded dev broker.

``optout_sync(sender)`` mirrors a change to the opt-out list of a route whose provider keeps
one (``Capability.OPTOUT_SYNC``: Rev.io's ``SMSOptOut_Create`` / ``_Delete``), for the numbers
the provider says its list can hold; "already in the list" / "not in the list" count as success.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from connector import contract as topics
from connector import numbers
from connector.config import KafkaSettings
from connector.records import OptOutChange
from connector.kafka import topic_partitions
from connector.streams.plumbing import close_reader, groupless_consumer, read_to_end
from connector.sender import RouteSender

log = logging.getLogger("sms_connector.optouts")


class OptOutTable:
    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.numbers: set[str] = set()
        self.loaded = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    def __contains__(self, phone: object) -> bool:
        return phone in self.numbers

    @staticmethod
    def canonical(key: bytes) -> str:
        """The table's key for a record key: its canonical E.164 (``connector.numbers``), so a
        key written with formatting, or by an older version, still blocks the number."""
        text = key.decode(errors="replace")
        return numbers.canonical(text) or text

    async def start(self, timeout: float = 60.0) -> None:
        """Load the table up to its current end, then keep following it in the background."""
        topic = topics.spec("optout").name
        self._consumer = groupless_consumer(self.kafka)
        await self._consumer.start()
        tps = await topic_partitions(self._consumer, topic)
        await read_to_end(self._consumer, {tp: None for tp in tps}, lambda r: self.apply(r.key, r.value),
                          timeout_s=timeout, fetch_timeout_ms=500, max_records=5000)
        self.loaded.set()
        self._task = asyncio.create_task(self._follow())
        log.info("opt-out table loaded", extra={"numbers": len(self.numbers)})

    async def _follow(self) -> None:
        assert self._consumer is not None
        while True:
            batch = await self._consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for r in records:
                    self.apply(r.key, r.value)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        phone = self.canonical(key)
        try:
            record: dict[str, Any] | None = orjson.loads(value) if value else None
        except orjson.JSONDecodeError:
            return
        if record is None or not record.get("opted_out"):
            self.numbers.discard(phone)
        else:
            self.numbers.add(phone)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
        if self._consumer:
            await close_reader(self._consumer)


def optout_sync(sender: RouteSender):  # type: ignore[no-untyped-def]
    """An opt-out mirror for one route whose provider keeps an opt-out list
    (``Capability.OPTOUT_SYNC``, e.g. Rev.io), for ``InboundPublisher``."""
    provider: Any = sender.provider

    async def sync(change: OptOutChange) -> None:
        tns = provider.optout_numbers(change.phone)
        if not tns:
            return  # a number the provider's list cannot hold
        op = "create" if change.opted_out else "delete"
        for _ in range(3):
            result = await sender.call(lambda: provider.build_optout(op, tns),
                                       lambda resp: provider.parse_optout(op, resp, tns))
            tns = list(getattr(result, "pending", ()) or ())
            if not tns:
                return

    return sync
