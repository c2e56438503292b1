"""OpenTelemetry tracing: off by default, and then nothing here costs more than a function call.

When ``tracing.enabled`` is set, ``configure`` installs a tracer (sampled with
``ParentBased(TraceIdRatioBased(sample_ratio))``, exported in batches over OTLP/HTTP) and the
worker's hook points do this:

- dispatch (``message``): a CONSUMER span ``process sms.outbound`` per record, child of the
  producer's ``traceparent`` header (W3C trace context), with the outcome and reason
  (``outcome``); a retry record's span is the child of the pass before it.
- every provider call (``TracedTransport``, one per route): a CLIENT span named by the HTTP method
  with ``http.request.method``, ``server.address``/``server.port``, ``http.response.status_code``
  or ``error.type``, and ``sms.route``/``sms.provider``; never the URL path or body (numbers, text,
  signatures and keys live there). A batched call (``collect`` / ``batch`` in the sender) is the
  child of its first recorded message and linked to the others.
- every output record gets the current span's ``traceparent`` (and ``tracestate``) header,
  replacing the input's: accepted, failed, dead-lettered, retry and correlation records
  (``inject``, ``context_headers``), and whatever the callbacks, pollers and correlator produce
  (``TracedProducer``, which starts a PRODUCER span when no span is current; with exactly-once
  their records are written later, in a transaction outside the span, so ``outgoing`` puts the
  same headers on them when they are planned: ``streams.publish.Writes.add``).
- callbacks (``instrument``): a SERVER span per ``POST /callbacks/<provider>``, continuing the
  caller's ``traceparent`` if any; pollers (``traced``): a span per poll.
- correlator: each receipt is processed in a CONSUMER span (``consuming``), child of the
  receipt's own trace (its callback or poll) and linked to the outbound message's span, whose
  context the correlation record carries (``remember``): the delivery event it publishes
  carries that span's context.

Nothing about a message's recipient or text goes into a span: ids, routes, providers, outcomes.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence, TypeVar
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from aiohttp import web
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from connector.config import TracingSettings
    from connector.http import HttpRequest, HttpResponse
    from connector.pipeline import Verdict

T = TypeVar("T")
Headers = list[tuple[str, bytes]]
TRACE_HEADERS = ("traceparent", "tracestate")
# correlation key -> the message's traceparent, for delivery-event links: the most recent ones
# (about 200 bytes each, so at most ~20 MB; only while tracing is on)
REMEMBERED_MAX = 100_000

_tracer: Tracer | None = None     # None: tracing is off
_provider: TracerProvider | None = None
_remembered: OrderedDict[bytes, bytes] = OrderedDict()
_NOOP = contextlib.nullcontext()
_batched: ContextVar[tuple[int, tuple[Any, ...]]] = ContextVar("sms_batched_spans", default=(0, ()))


def active() -> bool:
    return _tracer is not None


def configure(settings: TracingSettings, exporter: Any = None) -> bool:
    """Install the tracer when ``settings.enabled`` (``exporter``: tests inject one). Returns
    whether tracing is on."""
    global _tracer, _provider
    if not settings.enabled:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from connector import __version__

    _bind()
    provider = TracerProvider(
        resource=Resource.create({"service.name": settings.service_name, "service.version": __version__}),
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter(endpoint=settings.otlp_url),
                                                   schedule_delay_millis=1000))
    _provider, _tracer = provider, provider.get_tracer("sms-connector", __version__)
    return True


class _Api:
    """The OpenTelemetry API names the hooks use, imported once by ``configure`` (never when off)."""

    SpanKind: Any
    Status: Any
    StatusCode: Any
    Link: Any
    get_current_span: Any
    propagator: Any


def _bind() -> None:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _Api.SpanKind, _Api.Status, _Api.StatusCode, _Api.Link = trace.SpanKind, trace.Status, trace.StatusCode, trace.Link
    _Api.get_current_span = trace.get_current_span
    _Api.propagator = TraceContextTextMapPropagator()


def shutdown() -> None:
    """Export what is buffered and turn tracing off."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    _remembered.clear()
    if provider is not None:
        provider.shutdown()


# -- trace context in Kafka headers --------------------------------------------------------------

def _carrier(headers: Sequence[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("latin-1") for k, v in headers or () if k in TRACE_HEADERS and v is not None}


def _extract(headers: Sequence[tuple[str, bytes]] | None) -> Context | None:
    carrier = _carrier(headers)
    if not carrier:
        return None
    return _Api.propagator.extract(carrier)


def _current_headers() -> Headers:
    carrier: dict[str, str] = {}
    _Api.propagator.inject(carrier)
    return [(k, v.encode()) for k, v in carrier.items()]


def inject(headers: Headers) -> Headers:
    """``headers`` with the current span's trace context instead of any it had (a new list)."""
    if _tracer is None:
        return headers
    return [h for h in headers if h[0] not in TRACE_HEADERS] + _current_headers()


def context_headers() -> Headers | tuple[()]:
    """The current span's trace context as headers (``()`` when off)."""
    if _tracer is None:
        return ()
    return _current_headers()


# -- dispatch ---------------------------------------------------------------------------------------

def message(rec: Any) -> contextlib.AbstractContextManager[Any]:
    """The span of one consumed outbound record (a ``ConsumerRecord``), current inside."""
    if _tracer is None:
        return _NOOP
    return _consumer_span(rec)


def _consumer_span(rec: Any, links: Sequence[Any] = ()) -> contextlib.AbstractContextManager[Span]:
    assert _tracer is not None
    return _tracer.start_as_current_span(
        f"process {rec.topic}", context=_extract(rec.headers), kind=_Api.SpanKind.CONSUMER, links=links,
        record_exception=False,
        attributes={"messaging.system": "kafka", "messaging.operation.type": "process",
                    "messaging.destination.name": rec.topic, "messaging.destination.partition.id": str(rec.partition),
                    "messaging.kafka.offset": rec.offset})


def outcome(t: Verdict) -> None:
    """Record how the current message ended on its span (outcome, reason; route and provider
    of an accepted or failed record)."""
    if _tracer is None:
        return
    span = _Api.get_current_span()
    if not span.is_recording():
        return
    span.set_attribute("sms.outcome", t.ending)
    if t.reason:
        span.set_attribute("sms.reason", t.reason)
    if t.value and t.ending in ("accepted", "failed"):
        record = orjson.loads(t.value)
        span.set_attribute("messaging.message.id", record.get("client_message_id") or "")
        for name in ("route", "provider"):
            if record.get(name):
                span.set_attribute(f"sms.{name}", record[name])
    if t.ending in ("failed", "dlq"):
        span.set_status(_Api.Status(_Api.StatusCode.ERROR, t.reason or t.ending))


# -- provider calls ---------------------------------------------------------------------------------

def collect(into: list[Any]) -> None:
    """A message joins a batch: keep its span's context (when recorded) for the batch call's links."""
    if _tracer is None:
        return
    context = _Api.get_current_span().get_span_context()
    if context.is_valid and context.trace_flags.sampled:
        into.append(context)


def batch(spans: Sequence[Any], size: int) -> contextlib.AbstractContextManager[Any]:
    """Inside: provider calls carry one batch of ``size`` messages, whose recorded spans
    ``collect`` kept."""
    if _tracer is None or not spans:
        return _NOOP
    return _batch(size, tuple(spans))


@contextlib.contextmanager
def _batch(size: int, spans: tuple[Any, ...]) -> Any:
    token = _batched.set((size, spans))
    try:
        yield
    finally:
        _batched.reset(token)


class TracedTransport:
    """A route's transport with a CLIENT span per provider call (sends, logins, polls). A call
    carrying a batch is the child of the batch's first recorded message and linked to the other
    messages' spans (``sms.batch_size``: how many messages the call carries)."""

    def __init__(self, inner: Any, route: str, provider: str) -> None:
        self.inner = inner
        self.route = route
        self.provider = provider

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def send(self, request: HttpRequest) -> HttpResponse:
        if _tracer is None:
            return await self.inner.send(request)
        size, batched = _batched.get()
        parent = _Api.get_current_span().get_span_context()
        if not batched and parent.is_valid and not parent.trace_flags.sampled:
            # its span would not be recorded, and nothing carries its context: skip it (the cost)
            return await self.inner.send(request)
        url = urlsplit(request.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        attributes = {"http.request.method": request.method, "server.address": url.hostname or "",
                      "server.port": port, "url.scheme": url.scheme, "sms.route": self.route,
                      "sms.provider": self.provider}
        links: list[Any] = []
        context = None
        if batched:
            # the child of the first recorded message in the batch (so it is recorded whenever one
            # of them is), linked to the others
            from opentelemetry.trace import NonRecordingSpan, set_span_in_context

            context = set_span_in_context(NonRecordingSpan(batched[0]))
            links = [_Api.Link(b, {"sms.link": "batched message"}) for b in batched[1:]]
            attributes["sms.batch_size"] = size
        with _tracer.start_as_current_span(
                request.method, context=context, kind=_Api.SpanKind.CLIENT, links=links, record_exception=False,
                set_status_on_exception=False, attributes=attributes) as span:
            try:
                response = await self.inner.send(request)
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(_Api.Status(_Api.StatusCode.ERROR))
                raise
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 400:
                span.set_attribute("error.type", str(response.status))
                span.set_status(_Api.Status(_Api.StatusCode.ERROR))
            return response


# -- inbound: callbacks, pollers, correlator --------------------------------------------------------

class TracedProducer:
    """The inbound producer (callbacks, pollers, correlator): every record it sends carries the
    current span's context; with no current span, a PRODUCER span of its own."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def send(self, topic: str, value: Any = None, key: Any = None, partition: Any = None,
                   timestamp_ms: Any = None, headers: Headers | None = None) -> Any:
        if _tracer is None:
            return await self.inner.send(topic, value=value, key=key, partition=partition,
                                         timestamp_ms=timestamp_ms, headers=headers or [])
        with _sending(topic):
            return await self.inner.send(topic, value=value, key=key, partition=partition,
                                         timestamp_ms=timestamp_ms, headers=inject(list(headers or [])))

    async def send_and_wait(self, topic: str, value: Any = None, key: Any = None, partition: Any = None,
                            timestamp_ms: Any = None, headers: Headers | None = None) -> Any:
        return await (await self.send(topic, value, key, partition, timestamp_ms, headers))


def outgoing(topic: str, headers: Headers | None) -> Headers | None:
    """The headers of a record produced later (in a transaction, after its span has ended), with
    the trace context ``TracedProducer`` would give it now: the current span's, or with none
    current, a PRODUCER span's of its own."""
    if _tracer is None:
        return headers
    with _sending(topic):
        return inject(list(headers or []))


def _sending(topic: str) -> contextlib.AbstractContextManager[Any]:
    """Nothing when a span is current; else a PRODUCER span for a record sent to ``topic``."""
    assert _tracer is not None
    if _Api.get_current_span().get_span_context().is_valid:
        return _NOOP
    return _tracer.start_as_current_span(f"send {topic}", kind=_Api.SpanKind.PRODUCER,
                                         attributes={"messaging.system": "kafka", "messaging.operation.type": "send",
                                                     "messaging.destination.name": topic})


def instrument(app: web.Application) -> None:
    """A SERVER span per callback request (``/callbacks/...``), continuing the caller's trace."""
    if _tracer is None:
        return
    from aiohttp import web as aioweb

    @aioweb.middleware
    async def server_span(request: aioweb.Request, handler: Callable[[aioweb.Request], Awaitable[Any]]) -> Any:
        if _tracer is None or not request.path.startswith("/callbacks/"):
            return await handler(request)
        info = request.match_info.route.resource
        route = info.canonical if info is not None else "/callbacks/{provider}"
        parent = _Api.propagator.extract({k.lower(): v for k, v in request.headers.items()
                                          if k.lower() in TRACE_HEADERS})
        with _tracer.start_as_current_span(
                f"{request.method} {route}", context=parent, kind=_Api.SpanKind.SERVER, record_exception=False,
                attributes={"http.request.method": request.method, "http.route": route,
                            "url.scheme": request.scheme, "sms.provider": route.rsplit("/", 1)[-1]}) as span:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(_Api.Status(_Api.StatusCode.ERROR))
            return response

    app.middlewares.append(server_span)


async def traced(name: str, call: Callable[[], Awaitable[T]], provider: str) -> T:
    """``await call()`` inside a span named ``name`` (a poll of ``provider``)."""
    if _tracer is None:
        return await call()
    with _tracer.start_as_current_span(name, attributes={"sms.provider": provider}):
        return await call()


def remember(key: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> None:
    """A correlation record was read: keep its message's span context for the receipts' links."""
    if _tracer is None or key is None:
        return
    parent = next((v for k, v in headers or () if k == "traceparent" and v), None)
    if parent is None:
        return
    _remembered[key] = parent
    _remembered.move_to_end(key)
    if len(_remembered) > REMEMBERED_MAX:
        _remembered.popitem(last=False)


def consuming(rec: Any) -> contextlib.AbstractContextManager[Any]:
    """The span of one consumed receipt, linked to its outbound message's span when known."""
    if _tracer is None:
        return _NOOP
    parent = _remembered.get(rec.key) if rec.key is not None else None
    links = []
    if parent is not None:
        known = _Api.get_current_span(_extract([("traceparent", parent)])).get_span_context()
        if known.is_valid:
            links.append(_Api.Link(known, {"sms.link": "outbound message"}))
    return _consumer_span(rec, links)

