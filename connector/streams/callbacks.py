"""The provider callback endpoint: ThingSpace callbacks in, durable records on Kafka out.

This module owns ``POST /callbacks/thingspace``: reading the body within a hard size limit,
checking the credentials ThingSpace sends in it, turning each callback into a ``DeliveryReceipt``
on ``sms.receipts`` (keyed by its correlation key ``thingspace:<requestId>``) or, when it carries
an MO text, into an ``InboundSms`` published with ``InboundPublisher.publish_mo``, and dropping
ThingSpace's resends. The wire format (SOAP XML as in seed 000, or JSON) is parsed by
``connector.providers.thingspace.parse_callback`` (defusedxml, no DTD, no entity expansion).

HTTP contract (every answer is a small JSON object):

- ``200 {"status": "ok"}``: the record is acknowledged by the broker (acks=all); never earlier.
- ``200 {"status": "duplicate"}``: a resend of a callback already made durable (nothing produced).
- ``400``: the body is not a readable callback (malformed XML / JSON, a DTD, an entity bomb or
  an external entity, no ``CallbackRequest``, a receipt without ``RequestId``, an MO without a
  device). ThingSpace's resends will not fix it.
- ``401``: the body's ``Username`` / ``Password`` differ from ``callbacks.thingspace_username`` /
  ``callbacks.thingspace_password`` (compared in constant time), or either is not configured.
  Nothing is produced.
- ``413``: the body is longer than ``callbacks.max_body_bytes`` (counted while reading, whatever
  ``Content-Length`` says, after any content decoding).
- ``503``: the broker did not acknowledge within ``produce_timeout_s`` (or refused): ThingSpace
  resends the callback until it gets a 2xx, so nothing is lost.
- ``500``: a bug while building or producing the record (logged with its traceback).

Duplicates: ThingSpace resends a callback until it gets a 2xx (``CallbackCount`` grows and is not
part of the event id). An LRU of the last ``callbacks.dedupe_window`` event ids (a receipt's
``event_id``, an MO's ``dedupe_key``) maps each to the produce task of its first delivery: a
resend of an acknowledged event answers 200 at once; a resend arriving while that produce is
still running (including one whose own request already answered 503 on the timeout: the
producer keeps trying) waits for the same task, so N copies give exactly one record; a resend
after the produce failed produces again. The window is per process: after a restart, or across
replicas, a resend can produce a second record with the same ``event_id`` / ``dedupe_key``, and
consumers drop it by that id (as they must for a producer retry anyway). The producer's own
request timeout (``kafka.request_timeout_s``, 30 s) must stay above ``produce_timeout_s`` (10 s):
a producer that gives up first reports a failure for a request a stalled broker may still
append, and the resend then writes a second copy (same ``event_id``).

State mapping (``DeliveryReceipt.kind`` / ``state``):

- ``SMSDelivery/Confirmation`` -> ``delivery-confirmation``; ``Delivered`` -> ``delivered``,
  ``Undeliverable`` (also the seed's ``Unceliverable``) -> ``undeliverable``, ``Expired`` ->
  ``expired``; any other value -> ``in-flight`` (an unknown status is never a failure).
- ``Summary/NumDevicesRequested`` present (or no device and a comment saying "Request Completed")
  -> ``request-complete`` / ``completed``.
- Otherwise a per-device ``progress`` callback -> ``in-flight``. Seed 000 shows only the success
  comment ``SendSmsMessage,Performed action on device.``; the send to that device is taken as
  failed (``undeliverable``) only when the callback carries a SOAP ``Fault`` or its comment says
  so in words: fail / failed / failure / error / unable / could not / cannot / not performed /
  rejected / denied (``FAILED_COMMENT``). Anything else stays ``in-flight``.

``provider_status`` is the confirmation, else the comment (else the fault text); ``raw`` is the
body as text with the password's value replaced by ``***``.

Assumptions: JSON callbacks use the camelCase names of the SOAP ones (PROVIDERS.md §1); a
callback carrying a message text (``Data/SMSMessage`` or ``Message``) is an MO from its device
(EnhancedConnectivityService), published with the device as sender (an MDN is not turned into a
phone number, so a device's "STOP" is recorded with ``optout="stop"`` but does not change the
phone opt-out table); the MO ``dedupe_key`` hashes ``KIND:id``, the timestamp and the text exactly
as ``MoMessage.dedupe_key`` does, so an MO seen by both the poller and a callback has one key
(callbacks carry no timestamp today, so the callback's ``requestId`` is added to the in-memory
dedupe id, not to the key). ``occurred_at`` is null: the SOAP callback has no event time.
"""

from __future__ import annotations

import asyncio
import html
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal
from xml.etree.ElementTree import ParseError

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from defusedxml import DefusedXmlException

from connector import contract as topics
from connector import metrics
from connector.config import Settings
from connector.errors import InvalidRecord
from connector.inbound import DeliveryReceipt, InboundSms, Keywords, correlation_key, first_word, stable_id
from connector.providers import thingspace
from connector.providers.thingspace import ThingSpaceCallback
from connector.records import Recipient
from connector.streams.publish import InboundPublisher, produce_durably

__all__ = ["CallbackReceiver", "FAILED_COMMENT", "PRODUCE_TIMEOUT_S", "THINGSPACE_PATH",
           "mo_from_callback", "receipt_from_callback", "redact_password"]

log = logging.getLogger("sms_connector.callbacks")

PROVIDER = "thingspace"
THINGSPACE_PATH = "/callbacks/thingspace"
PRODUCE_TIMEOUT_S = 10.0
READ_CHUNK = 16 * 1024
MAX_REQUEST_ID = 256

# A progress comment that clearly says the send to the device failed (see the module docstring).
FAILED_COMMENT = re.compile(
    r"\b(fail|failed|failure|error|unable|could\s*not|cannot|not\s+performed|rejected|denied)\b", re.I)
_COMPLETED_COMMENT = re.compile(r"\brequest\s+complete", re.I)
_STATES = {"Delivered": "delivered", "Undeliverable": "undeliverable", "Expired": "expired"}

# The password's value in either wire form: <Password>…</Password> (any prefix, CDATA, comments)
# and "password": "…" (any case, any depth).
_XML_PASSWORD = re.compile(
    r"(<(?:[\w.-]+:)?Password(?:\s[^>]*)?>)((?:<!\[CDATA\[.*?\]\]>|<!--.*?-->|[^<])*)(</(?:[\w.-]+:)?Password\s*>)",
    re.S)
_JSON_PASSWORD = re.compile(r'("password"\s*:\s*)"(?:[^"\\]|\\.)*"', re.I)
REDACTED = "***"

Outcome = Literal["ok", "duplicate"]


class BodyTooLarge(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Mapping (pure)


def redact_password(text: str, password: str | None = None) -> str:
    """``text`` with every password value replaced by ``***``. ``password`` (the value the body
    carried) is also removed literally wherever it is left, in its plain, XML- and JSON-escaped
    forms: a secret must never reach a record, even if that mangles the raw text."""
    text = _XML_PASSWORD.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)
    text = _JSON_PASSWORD.sub(lambda m: m.group(1) + '"' + REDACTED + '"', text)
    if password:
        for form in {password, html.escape(password, quote=False), html.escape(password),
                     orjson.dumps(password).decode()[1:-1]}:
            if form:
                text = text.replace(form, REDACTED)
    return text


def _raw_format(body: bytes, content_type: str) -> str:
    # The same choice parse_callback makes (by content first).
    return thingspace.callback_format(body, content_type) or "json"


def _receipt_kind_state(cb: ThingSpaceCallback) -> tuple[str, str, str | None]:
    """(kind, state, provider_status) of a callback that carries no MO text."""
    if cb.confirmation is not None:
        return "delivery-confirmation", _STATES.get(cb.confirmation, "in-flight"), cb.confirmation
    if cb.kind == "completed" or (cb.device_id is None and cb.comment and _COMPLETED_COMMENT.search(cb.comment)):
        return "request-complete", "completed", cb.comment or cb.fault
    failed = cb.fault is not None or bool(cb.comment and FAILED_COMMENT.search(cb.comment))
    return "progress", "undeliverable" if failed else "in-flight", cb.comment or cb.fault


def receipt_from_callback(cb: ThingSpaceCallback, raw: str, raw_format: str,
                          received_at: float | None = None) -> DeliveryReceipt:
    """The ``sms.receipts`` record of one callback; ``raw`` must already be redacted."""
    if not cb.request_id:
        raise InvalidRecord("callback has no RequestId")
    if len(cb.request_id) > MAX_REQUEST_ID or not cb.request_id.isprintable():
        raise InvalidRecord("callback RequestId is not a request id")
    kind, state, status = _receipt_kind_state(cb)
    return DeliveryReceipt(
        provider=PROVIDER, correlation_key=correlation_key(PROVIDER, cb.request_id), kind=kind, state=state,
        received_at=time.time() if received_at is None else received_at, raw=raw, raw_format=raw_format,
        provider_request_id=cb.request_id, device_kind=cb.device_kind if cb.device_id else None,
        device_id=cb.device_id, provider_status=status, occurred_at=None)


def mo_from_callback(cb: ThingSpaceCallback, raw: str, keywords: Keywords,
                     received_at: float | None = None) -> InboundSms:
    """The ``sms.inbound`` record of a callback carrying an MO text; ``raw`` must be redacted."""
    if not cb.device_id or not cb.device_kind:
        raise InvalidRecord("MO callback has no device")
    text = cb.message or ""
    occurred_at = None      # not in ThingSpace callbacks (see the module docstring)
    return InboundSms(
        provider=PROVIDER, sender=Recipient(device_kind=cb.device_kind, device_id=cb.device_id), text=text,
        received_at=time.time() if received_at is None else received_at, raw=raw,
        # == MoMessage.dedupe_key for a message from one device: poller and callback agree.
        dedupe_key=stable_id(f"{cb.device_kind}:{cb.device_id}", occurred_at, text),
        keyword=first_word(text), occurred_at=occurred_at, optout=keywords.classify(text))


# --------------------------------------------------------------------------------------------
# The endpoint


@dataclass
class _Delivery:
    """The first produce of one event id, shared by its resends."""

    task: asyncio.Task[None]
    acknowledged: bool = False      # a 200 "ok" was answered for it


class CallbackReceiver:
    """``POST /callbacks/thingspace``: see the module docstring for the contract.

    ``producer`` must be started, with acks="all"; its owner stops it after ``aclose()``."""

    def __init__(self, settings: Settings, producer: AIOKafkaProducer, publisher: InboundPublisher, *,
                 produce_timeout_s: float = PRODUCE_TIMEOUT_S) -> None:
        self.settings = settings
        self.producer = producer
        self.publisher = publisher
        self.produce_timeout_s = produce_timeout_s
        cfg = settings.callbacks
        self.max_body_bytes = cfg.max_body_bytes
        self.window = cfg.dedupe_window
        self.username = cfg.thingspace_username
        self.password = cfg.thingspace_password
        self.configured = bool(self.username) and self.password is not None and bool(self.password.value)
        self.keywords = Keywords.parse(settings.inbound.optout_stop_words, settings.inbound.optout_start_words)
        self.topic_receipts = topics.spec("receipts").name
        self._seen: OrderedDict[str, _Delivery] = OrderedDict()
        self._running: set[asyncio.Task[None]] = set()   # produces not finished (even if evicted)
        self._durable: bool | None = None        # last produce outcome, for state-change logs
        self._authorized: bool | None = None     # last credentials outcome, for state-change logs
        if self.configured:
            log.info("ThingSpace callback endpoint ready", extra={"path": THINGSPACE_PATH})
        else:
            log.warning("ThingSpace callback credentials not configured: every callback is refused with 401",
                        extra={"path": THINGSPACE_PATH})

    def routes(self) -> list[web.RouteDef]:
        return [web.post(THINGSPACE_PATH, self.thingspace)]

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
    async def thingspace(self, request: web.Request) -> web.Response:
        kind = "unknown"
        try:
            body = await self._read(request)
        except BodyTooLarge:
            return self._answer(413, kind, "too_large", error="body too large",
                                detail=f"callbacks are limited to {self.max_body_bytes} bytes")
        content_type = request.headers.get("Content-Type", "")
        try:
            cb = thingspace.parse_callback(body, content_type)
        except (InvalidRecord, DefusedXmlException, ParseError, ValueError, RecursionError) as exc:
            detail = exc.message if isinstance(exc, InvalidRecord) else f"unreadable callback ({type(exc).__name__})"
            log.debug("callback refused as invalid", extra={"detail": detail})
            return self._answer(400, kind, "invalid", error="invalid callback", detail=detail)
        kind = "mo" if cb.message is not None else _receipt_kind_state(cb)[0]

        if not (self.configured and thingspace.callback_credentials_match(cb, self.username, self.password)):
            self._note_authorized(False)
            return self._answer(401, kind, "unauthorized", error="unauthorized")
        self._note_authorized(True)

        raw = redact_password(_decode(body, request.charset), cb.password)
        try:
            if cb.message is not None:
                mo = mo_from_callback(cb, raw, self.keywords)
                event_id = "mo:" + stable_id(mo.dedupe_key, cb.request_id)
                produce: Callable[[], Awaitable[None]] = lambda: self.publisher.publish_mo(mo)  # noqa: E731
            else:
                receipt = receipt_from_callback(cb, raw, _raw_format(body, content_type))
                event_id = "receipt:" + receipt.event_id
                key = receipt.correlation_key.encode()
                value = receipt.encode()
                produce = lambda: produce_durably(self.producer, self.topic_receipts, key, value)  # noqa: E731
        except InvalidRecord as exc:
            return self._answer(400, kind, "invalid", error="invalid callback", detail=exc.message)

        try:
            outcome = await self._once(event_id, produce)
        except (KafkaError, asyncio.TimeoutError, OSError) as exc:
            self._note_durable(False, exc)
            return self._answer(503, kind, "error", error="not durable yet, send again",
                                detail=type(exc).__name__)
        except Exception:  # noqa: BLE001 - a bug: answer 500 (ThingSpace resends), keep serving
            log.exception("callback could not be recorded", extra={"kind": kind})
            return self._answer(500, kind, "error", error="internal error")
        self._note_durable(True)
        return self._answer(200, kind, outcome, status=outcome)

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
    async def _once(self, event_id: str, produce: Callable[[], Awaitable[None]]) -> Outcome:
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
    def _answer(self, http_status: int, kind: str, outcome: str, **body: str) -> web.Response:
        metrics.CALLBACKS.labels(PROVIDER, kind, outcome).inc()
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

    def _note_authorized(self, ok: bool) -> None:
        if ok == self._authorized:
            return
        if not ok:
            log.warning("ThingSpace callbacks refused: credentials do not match (401)",
                        extra={"configured": self.configured})
        elif self._authorized is False:
            log.info("ThingSpace callbacks accepted again")
        self._authorized = ok


async def _run(produce: Callable[[], Awaitable[None]]) -> None:
    await produce()


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")
