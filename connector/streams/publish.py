"""Durable publishing of inbound records, shared by the callback endpoint, pollers and correlator.

``produce_durably`` returns only when the broker has acknowledged the record (acks=all) and
raises ``KafkaError`` otherwise, so a caller can answer 503 (callbacks) or keep a provider's
queue unacknowledged (pollers): the provider then sends again and nothing is lost.
``InboundPublisher.publish_mo`` writes an MO to ``sms.inbound`` and, when its text is an opt-out
or opt-in keyword from a phone number, updates the opt-out table (``sms.optout``, one record per
batch so the table reads back exactly on any broker) and mirrors it to Rev.io.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable, Sequence

from aiokafka import AIOKafkaProducer

from connector import contract as topics
from connector import metrics
from connector.records import InboundSms, OptOutChange
from connector.streams.plumbing import Headers, produce_acknowledged

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
        # The sender's canonical number (a phone, or a device addressed by its MDN / MSISDN): the
        # table is by E.164, so this STOP blocks the person on every route, in every form.
        if mo.optout and mo.sender.e164:
            change = OptOutChange(phone=mo.sender.e164, opted_out=mo.optout == "stop", at=time.time(),
                                  source=f"{mo.provider} MO", keyword=(mo.text or "").strip().upper()[:32])
            await self.record_optout(change)

    async def record_optout(self, change: OptOutChange) -> None:
        await produce_durably(self.producer, self.topic_optout, change.phone.encode(), change.encode())
        metrics.OPTOUT_CHANGES.labels("out" if change.opted_out else "in", change.source).inc()
        log.info("opt-out table changed", extra={"opted_out": change.opted_out, "source": change.source})
        for sync in self.optout_sync:
            try:
                await sync(change)
            except Exception as exc:  # noqa: BLE001 - the table is the truth; a mirror may lag
                log.warning("opt-out sync failed", extra={"error": f"{type(exc).__name__}: {exc}"})
