"""The provider callback endpoint: provider callbacks in, durable records on Kafka out.

This module owns ``POST <provider.callback_path>`` for each provider declaring
``Capability.CALLBACKS`` (today ThingSpace: ``/callbacks/thingspace``): reading the body within
a hard size limit, asking the provider to read it (credentials, records), producing each
``DeliveryReceipt`` on ``sms.receipts`` (keyed by its correlation key) or publishing each
``InboundSms`` with ``InboundPublisher.publish_mo``, and dropping the provider's resends.

HTTP contract (every answer is a small JSON object):

- ``200 {"status": "ok"}``: the record is acknowledged by the broker (acks=all); never earlier.
  With exactly-once (``transactions``, a ``publish.GroupCommit``): the record is committed, in a
  transaction shared with the callbacks that arrived meanwhile (``callback_transactions``).
- ``200 {"status": "duplicate"}``: a resend of a callback already made durable (nothing produced).
- ``400``: the body is not a readable callback (malformed XML / JSON, a DTD, an entity bomb or
  an external entity, no ``CallbackRequest``, a receipt without ``RequestId``, an MO without a
  device). ThingSpace's resends will not fix it.
- ``401``: the body's ``Username`` / ``Password`` differ from ``callbacks.thingspace_username`` /
  ``callbacks.thingspace_password`` (compared in constant time), or either is not configured.
  Nothing is produced.
- ``413``: the body is longer than ``callbacks.max_body_bytes`` (counted while reading, whatever
  ``Content-Length`` says, after any content decoding).
- ``503``: the broker did not acknowledge within ``produce_timeout_s`` (or refused; or the
  transaction did not commit): ThingSpace resends the callback until it gets a 2xx, so nothing
  is lost.
- ``500``: a bug while building or producing the record (logged with its traceback).

Duplicates: ThingSpace resends a callback until it gets a 2xx (``CallbackCount`` grows and is not
part of the event id). An LRU of the last ``callbacks.dedupe_window`` event ids (a receipt's
``event_id``, an MO's ``dedupe_key``) maps each to the produce task of its first delivery: a
resend of an acknowledged event answers 200 at once; a resend arriving while that produce is
still running (including one whose own request already answered 503 on the timeout: the
producer keeps trying) waits for the same task, so N copies give exactly one record; a resend
after the produce failed produces again. The window is per process: after a restart, or across
replicas, a resend can produce a second record with the same ``event_id`` / ``dedupe_key`` (after a
restart ``remember_recent`` seeds the window from the tail of sms.receipts, so a receipt's
resend to the same replica is a duplicate, not a second record), and
consumers drop it by that id (as they must for a producer retry anyway). The producer's own
request timeout (``kafka.request_timeout_s``, 30 s) must stay above ``produce_timeout_s`` (10 s):
a producer that gives up first reports a failure for a request a stalled broker may still
append, and the resend then writes a second copy (same ``event_id``).

The wire format, the state mapping, the redaction of the password in ``raw`` and the dedupe
ids are the provider's (``Capability.CALLBACKS``: ``read_callback``, one call per body: bytes
and headers in, typed events out); this module only reads, answers and produces.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Literal

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from connector import contract as topics
from connector import metrics
from connector.config import KafkaSettings, Settings
from connector.kafka import topic_partitions
from connector.records import DeliveryReceipt
from connector.keywords import Keywords
from connector.providers import (
    CallbackEvent,
    Capability,
    InvalidCallback,
    Provider,
    ThingSpace,
    UnauthorizedCallback,
    supporting,
)
from connector.streams.plumbing import close_reader, groupless_consumer, read_to_end
from connector.streams.publish import INBOUND_TXN_OPTIONS, GroupCommit, InboundPublisher, Writes, produce_durably
from connector.streams.transactions import TransactionalProducer, TransactionFailed, transactional_id

__all__ = ["CallbackReceiver", "PRODUCE_TIMEOUT_S", "THINGSPACE_PATH", "callback_transactions"]

log = logging.getLogger("sms_connector.callbacks")

THINGSPACE_PATH = ThingSpace.callback_path
PRODUCE_TIMEOUT_S = 10.0
READ_CHUNK = 16 * 1024

Answer = Literal["ok", "duplicate"]


class BodyTooLarge(Exception):
    pass


# --------------------------------------------------------------------------------------------
# The endpoint


@dataclass
class _Delivery:
    """The first produce of one event id, shared by its resends."""

    task: asyncio.Task[None]
    acknowledged: bool = False      # a 200 "ok" was answered for it


@dataclass
class _Endpoint:
    """One provider's callback path, its configured credentials and their last outcome."""

    provider: type[Provider]
    credentials: tuple[str, object] | None     # None: not configured, every callback refused
    authorized: bool | None = None              # last credentials outcome, for state-change logs

    @property
    def configured(self) -> bool:
        return self.credentials is not None


class CallbackReceiver:
    """``POST <callback_path>`` of each provider with callbacks: see the module docstring.

    ``producer`` must be started, with acks="all"; its owner stops it after ``aclose()``."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer, publisher: InboundPublisher, *,
                 produce_timeout_s: float = PRODUCE_TIMEOUT_S, transactions: GroupCommit | None = None) -> None:
        self.settings = settings
        self.producer = producer
        self.publisher = publisher
        self.transactions = transactions        # exactly-once: records committed in grouped transactions
        self.produce_timeout_s = produce_timeout_s
        cfg = settings.callbacks
        self.max_body_bytes = cfg.max_body_bytes
        self.window = cfg.dedupe_window
        self.keywords = Keywords.parse(settings.inbound.optout_stop_words, settings.inbound.optout_start_words)
        self.topic_receipts = topics.spec("receipts").name
        self._seen: OrderedDict[str, _Delivery] = OrderedDict()
        self._running: set[asyncio.Task[None]] = set()   # produces not finished (even if evicted)
        self._durable: bool | None = None        # last produce outcome, for state-change logs
        self.endpoints: list[_Endpoint] = []
        for provider in supporting(Capability.CALLBACKS):
            username, password = provider.callback_credentials(cfg)
            configured = bool(username) and password is not None and bool(password.value)
            endpoint = _Endpoint(provider, (username, password) if configured else None)
            self.endpoints.append(endpoint)
            if configured:
                log.info(f"{provider.title} callback endpoint ready", extra={"path": provider.callback_path})
            else:
                log.warning(f"{provider.title} callback credentials not configured: every callback is refused "
                            "with 401", extra={"path": provider.callback_path})

    async def remember_recent(self, kafka: KafkaSettings, timeout_s: float = 30.0) -> int:
        """Seed the dedupe window with the receipts already committed (the tail of each
        sms.receipts partition, read_committed), so a resend of a callback answered, or
        committed but not answered, before a restart is answered "duplicate" instead of written
        again. Returns how many event ids it remembered."""
        consumer = groupless_consumer(kafka)
        try:    # closed also when its start is cancelled (a stop during start-up)
            await consumer.start()
            tps = await topic_partitions(consumer, self.topic_receipts)
            begin, end = await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
            per_partition = max(100, 2 * self.window // max(1, len(tps)))
            start = {tp: max(begin[tp], end[tp] - per_partition) for tp in tps}
            ids: list[str] = []

            def remember(record: Any) -> None:
                try:
                    event_id = orjson.loads(record.value)["event_id"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    return
                ids.append("receipt:" + str(event_id))

            await read_to_end(consumer, start, remember, timeout_s=timeout_s)
        finally:
            await close_reader(consumer)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        for event_id in ids[-self.window:]:
            self._seen[event_id] = _Delivery(done, acknowledged=True)   # type: ignore[arg-type]
        while len(self._seen) > self.window:
            self._seen.popitem(last=False)
        return len(ids)

    def routes(self) -> list[web.RouteDef]:
        return [web.post(e.provider.callback_path, self._handler(e)) for e in self.endpoints]

    def _handler(self, endpoint: _Endpoint) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self.receive(endpoint, request)
        return handle

    async def aclose(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``) for produces still running, then cancel them. Call before
        stopping the producer."""
        if self._running:
            _, still = await asyncio.wait(set(self._running), timeout=timeout)
            for task in still:
                task.cancel()
            if still:
                await asyncio.wait(still)

    # -- request -----------------------------------------------------------------------------
    async def receive(self, endpoint: _Endpoint, request: web.Request) -> web.Response:
        provider = endpoint.provider.name
        try:
            body = await self._read(request)
        except BodyTooLarge:
            return self._answer(provider, 413, "unknown", "too_large", error="body too large",
                                detail=f"callbacks are limited to {self.max_body_bytes} bytes")
        try:
            read = endpoint.provider.read_callback(body, request.headers, keywords=self.keywords,
                                                   credentials=endpoint.credentials)
        except UnauthorizedCallback as exc:
            self._note_authorized(endpoint, False)
            return self._answer(provider, 401, exc.kind, "unauthorized", error="unauthorized")
        except InvalidCallback as exc:
            log.debug("callback refused as invalid", extra={"detail": exc.message})
            return self._answer(provider, 400, exc.kind, "invalid", error="invalid callback", detail=exc.message)
        self._note_authorized(endpoint, True)

        kind = read.kind
        try:
            outcomes = [await self._once(event.event_id, self._produce(event)) for event in read.events]
        except (KafkaError, TransactionFailed, asyncio.TimeoutError, OSError) as exc:
            self._note_durable(False, exc)
            return self._answer(provider, 503, kind, "error", error="not durable yet, send again",
                                detail=type(exc).__name__)
        except Exception:  # noqa: BLE001 - a bug: answer 500 (the provider resends), keep serving
            log.exception("callback could not be recorded", extra={"kind": kind})
            return self._answer(provider, 500, kind, "error", error="internal error")
        self._note_durable(True)
        outcome: Answer = "ok" if "ok" in outcomes or not outcomes else "duplicate"
        return self._answer(provider, 200, kind, outcome, status=outcome)

    def _produce(self, event: CallbackEvent) -> Callable[[], Awaitable[None]]:
        record = event.record
        if self.transactions is not None:
            writes = Writes()
            if isinstance(record, DeliveryReceipt):
                writes.add(self.topic_receipts, record.correlation_key.encode(), record.encode())
            else:
                self.publisher.plan_mo(record, writes)
            return lambda: self.transactions.write(writes)  # type: ignore[union-attr]
        if isinstance(record, DeliveryReceipt):
            key, value = record.correlation_key.encode(), record.encode()
            return lambda: produce_durably(self.producer, self.topic_receipts, key, value)
        return lambda: self.publisher.publish_mo(record)

    async def _read(self, request: web.Request) -> bytes:
        """The body, refused as soon as it passes the limit (Content-Length is only a hint)."""
        limit = self.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(READ_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)

    # -- exactly one record per event --------------------------------------------------------
    async def _once(self, event_id: str, produce: Callable[[], Awaitable[None]]) -> Answer:
        """Produce once per event id; resends share the first produce (see module docstring)."""
        entry = self._seen.get(event_id)
        if entry is not None and entry.task.done() and (entry.task.cancelled() or entry.task.exception()):
            entry = None        # the first produce failed: this resend tries again
        if entry is None:
            entry = _Delivery(asyncio.get_running_loop().create_task(_run(produce)))
            entry.task.add_done_callback(lambda task, eid=event_id, e=entry: self._settled(eid, e))
            self._running.add(entry.task)
            self._seen[event_id] = entry
            while len(self._seen) > self.window:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(event_id)
        await asyncio.wait_for(asyncio.shield(entry.task), self.produce_timeout_s)
        if entry.acknowledged:
            return "duplicate"
        entry.acknowledged = True
        return "ok"

    def _settled(self, event_id: str, entry: _Delivery) -> None:
        task = entry.task
        self._running.discard(task)
        failed = task.cancelled() or task.exception() is not None   # also marks the exception retrieved
        if failed and self._seen.get(event_id) is entry:
            del self._seen[event_id]

    # -- answers and state-change logs -------------------------------------------------------
    def _answer(self, provider: str, http_status: int, kind: str, outcome: str, **body: str) -> web.Response:
        metrics.CALLBACKS.labels(provider, kind, outcome).inc()
        return web.Response(status=http_status, body=orjson.dumps(body), content_type="application/json")

    def _note_durable(self, ok: bool, exc: BaseException | None = None) -> None:
        if ok == self._durable:
            return
        if ok and self._durable is False:
            log.info("callbacks are recorded again")
        elif not ok:
            log.warning("callbacks cannot be recorded: answering 503 until the broker acknowledges",
                        extra={"error": type(exc).__name__ if exc else None})
        self._durable = ok

    def _note_authorized(self, endpoint: _Endpoint, ok: bool) -> None:
        if ok == endpoint.authorized:
            return
        title = endpoint.provider.title
        if not ok:
            log.warning(f"{title} callbacks refused: credentials do not match (401)",
                        extra={"configured": endpoint.configured})
        elif endpoint.authorized is False:
            log.info(f"{title} callbacks accepted again")
        endpoint.authorized = ok


async def _run(produce: Callable[[], Awaitable[None]]) -> None:
    await produce()


CALLBACK_PRODUCERS = 4     # transactional producers per replica, taking turns (GroupCommit)


def callback_transactions(settings: Settings) -> GroupCommit:
    """Exactly-once callbacks: each replica's own transactional ids,
    ``<prefix>-<group_id>-callbacks-<host>-<http port>-<n>``. A callback server consumes no
    partition, so there is no input to fence on; what the id must give is (1) uniqueness among
    the live replicas (two processes sharing an id would fence each other at every start): a
    pod's hostname is its pod name, unique in the namespace, and two processes on one host
    cannot listen on one port; and (2) stability across a restart of the same replica, so that
    its first InitProducerId aborts the transaction a kill -9 left open at once, instead of
    read_committed readers of sms.receipts waiting at that transaction's last stable offset
    until ``kafka.transaction_timeout_s``. (A pod rescheduled under a new name cannot do that:
    the broker aborts its old transaction after the timeout.)"""
    k = settings.kafka
    where = f"{socket.gethostname()}-{settings.http.port}"
    return GroupCommit([TransactionalProducer(k, transactional_id(k, f"callbacks-{where}-{n}"), "callbacks",
                                              **INBOUND_TXN_OPTIONS) for n in range(CALLBACK_PRODUCERS)])

