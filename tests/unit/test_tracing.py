"""connector.tracing without a broker: what is off costs nothing and adds nothing; what is on
makes the spans and headers the README describes (an in-memory exporter)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Iterator

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from connector import tracing
from connector.config import TracingSettings
from connector.errors import Timeout
from connector.http import HttpRequest, HttpResponse
from connector.pipeline import Verdict
from connector.records import SendFacts, OutboundSms, Recipient, encode_failed
from connector.streams.publish import GroupCommit, Writes
from tests.unit.test_inbound_transactions import FakeTxn


@dataclass
class Rec:
    topic: str = "sms.outbound"
    partition: int = 3
    offset: int = 17
    key: bytes | None = b"+14155550123"
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.configure(TracingSettings(enabled=True), exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


def finished(exporter: InMemorySpanExporter) -> list[Any]:
    tracing._provider.force_flush()   # noqa: SLF001 - the batch processor's buffer
    return list(exporter.get_finished_spans())


def parent_header(sampled: bool = True) -> tuple[str, str, tuple[str, bytes]]:
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, ("traceparent", f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}".encode())


def test_off_by_default_and_then_every_hook_is_a_no_op() -> None:
    assert not tracing.configure(TracingSettings())
    assert not tracing.active()
    headers = [("a", b"1")]
    assert tracing.inject(headers) is headers
    assert tracing.context_headers() == ()
    assert tracing.message(Rec()) is tracing.message(Rec())       # one shared null context
    tracing.outcome(Verdict("accepted", b"{}"))
    tracing.remember(b"k", [("traceparent", b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01")])
    assert tracing.consuming(Rec()) is tracing.message(Rec())


def test_a_message_span_continues_the_producers_trace_and_its_context_goes_on_the_output(
        spans: InMemorySpanExporter) -> None:
    trace_id, span_id, header = parent_header()
    rec = Rec(headers=[header, ("tracestate", b"vendor=x")])
    with tracing.message(rec):
        out = tracing.inject([("sms.source.topic", b"sms.outbound"), header])
    (span,) = finished(spans)
    assert span.name == "process sms.outbound" and span.kind is SpanKind.CONSUMER
    assert format(span.context.trace_id, "032x") == trace_id and format(span.parent.span_id, "016x") == span_id
    assert span.attributes["messaging.kafka.offset"] == 17
    assert span.attributes["messaging.destination.partition.id"] == "3"
    names = [k for k, _ in out]
    assert names.count("traceparent") == 1 and names[0] == "sms.source.topic"
    assert dict(out)["traceparent"] == f"00-{trace_id}-{format(span.context.span_id, '016x')}-01".encode()
    assert dict(out)["tracestate"] == b"vendor=x"


def test_the_outcome_goes_on_the_span_without_number_or_text(spans: InMemorySpanExporter) -> None:
    msg = OutboundSms(client_message_id="c-1", recipient=Recipient(phone="+14155550123"), text="very private")
    o = SendFacts(msg=msg, received_at=0.0, route="revio", provider="revio")
    with tracing.message(Rec()):
        tracing.outcome(Verdict("failed", encode_failed(o, "invalid-number", "bad number", 1.0), "invalid-number"))
    (span,) = finished(spans)
    assert span.attributes["sms.outcome"] == "failed" and span.attributes["sms.reason"] == "invalid-number"
    assert span.attributes["sms.route"] == "revio" and span.attributes["messaging.message.id"] == "c-1"
    assert span.status.status_code is StatusCode.ERROR
    assert "4155550123" not in str(dict(span.attributes)) and "private" not in str(dict(span.attributes))


def test_sampling_ratio_applies_to_new_traces_and_a_producers_decision_is_followed() -> None:
    exporter = InMemorySpanExporter()
    tracing.configure(TracingSettings(enabled=True, sample_ratio=0.0), exporter=exporter)
    try:
        with tracing.message(Rec()):
            unsampled = tracing.context_headers()
        _, _, header = parent_header(sampled=True)
        with tracing.message(Rec(headers=[header])):
            pass
        kept = finished(exporter)
    finally:
        tracing.shutdown()
    assert len(kept) == 1 and kept[0].parent is not None          # only the one whose producer sampled
    flags = int(dict(unsampled)["traceparent"].rsplit(b"-", 1)[1], 16)
    assert flags & 1 == 0                                          # context still propagated, not sampled


async def test_a_provider_call_is_a_client_span_with_route_and_provider_and_no_path(
        spans: InMemorySpanExporter) -> None:
    async def answer(request: HttpRequest) -> HttpResponse:
        return HttpResponse(503 if "fail" in request.url else 200)

    async def silent(request: HttpRequest) -> HttpResponse:
        raise Timeout("no answer")

    from connector.transport import HttpTransport

    ok = tracing.TracedTransport(HttpTransport(handler=answer), "gw", "smpp_rest")
    with tracing.message(Rec()):
        await ok.send(HttpRequest("POST", "https://api.example.com/sms/+14155550123/secret-key"))
        await ok.send(HttpRequest("GET", "http://api.example.com:8080/fail"))
        with pytest.raises(Timeout):
            await tracing.TracedTransport(HttpTransport(handler=silent), "gw", "smpp_rest").send(
                HttpRequest("POST", "https://api.example.com/"))
    first, second, third, parent = finished(spans)
    assert parent.name == "process sms.outbound"
    assert {s.parent.span_id for s in (first, second, third)} == {parent.context.span_id}
    assert first.kind is SpanKind.CLIENT and first.name == "POST"
    assert dict(first.attributes) == {"http.request.method": "POST", "server.address": "api.example.com",
                                      "server.port": 443, "url.scheme": "https", "sms.route": "gw",
                                      "sms.provider": "smpp_rest", "http.response.status_code": 200}
    assert second.attributes["server.port"] == 8080 and second.attributes["error.type"] == "503"
    assert second.status.status_code is StatusCode.ERROR
    assert third.attributes["error.type"] == "Timeout" and "http.response.status_code" not in third.attributes


async def test_the_inbound_producer_puts_the_current_context_on_records_or_makes_its_own_span(
        spans: InMemorySpanExporter) -> None:
    sent: list[tuple[str, list[tuple[str, bytes]]]] = []

    class Producer:
        async def send(self, topic: str, **kw: Any) -> str:
            sent.append((topic, kw["headers"]))
            return "future"

    producer = tracing.TracedProducer(Producer())
    await producer.send("sms.inbound", value=b"{}", key=b"k")                  # no span current: its own
    with tracing.message(Rec(topic="sms.receipts")):
        await producer.send("sms.delivery", value=b"{}", key=b"k", headers=[("x", b"1")])
    own, process = finished(spans)
    assert own.name == "send sms.inbound" and own.kind is SpanKind.PRODUCER
    assert dict(sent[0][1])["traceparent"].split(b"-")[2] == format(own.context.span_id, "016x").encode()
    assert dict(sent[1][1])["traceparent"].split(b"-")[2] == format(process.context.span_id, "016x").encode()
    assert dict(sent[1][1])["x"] == b"1"


async def test_transactional_writes_carry_the_context_of_the_span_that_planned_them(
        spans: InMemorySpanExporter) -> None:
    """Exactly-once: the records are written later, by a group commit's task outside any span
    (the correlator's batch commit likewise); they carry the same headers the at-least-once
    path's TracedProducer gives them."""
    sent: list[tuple[str, list[tuple[str, bytes]]]] = []

    class Txn(FakeTxn):
        async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                       headers: Any = None) -> Any:
            sent.append((topic, headers))
            return await super().send(topic, value=value, key=key)

    group = GroupCommit([Txn(commit_s=0)])  # type: ignore[list-item]
    await group.start()
    try:
        in_span, alone = Writes(), Writes()
        with tracing.consuming(Rec(topic="sms.receipts", key=b"smpp_rest:abc")):
            in_span.add("sms.delivery", b"k", b"{}", [("x", b"1"), ("traceparent", b"00-stale")])
        alone.add("sms.delivery.unmatched", b"k", b"{}")        # no span current: its own
        await group.write(in_span)
        await group.write(alone)
    finally:
        await group.stop()
    process, own = finished(spans)
    assert own.name == "send sms.delivery.unmatched" and own.kind is SpanKind.PRODUCER
    (delivery, headers), (unmatched, own_headers) = sent
    assert delivery == "sms.delivery" and dict(headers)["x"] == b"1"
    assert [k for k, _ in headers].count("traceparent") == 1
    assert dict(headers)["traceparent"].split(b"-")[2] == format(process.context.span_id, "016x").encode()
    assert dict(own_headers)["traceparent"].split(b"-")[2] == format(own.context.span_id, "016x").encode()


def test_a_receipt_span_links_to_the_message_span_its_correlation_carried(spans: InMemorySpanExporter) -> None:
    trace_id, span_id, header = parent_header()
    tracing.remember(b"smpp_rest:abc", [header])
    with tracing.consuming(Rec(topic="sms.receipts", key=b"smpp_rest:abc")):
        pass
    with tracing.consuming(Rec(topic="sms.receipts", key=b"smpp_rest:unknown")):
        pass
    linked, unlinked = finished(spans)
    (link,) = linked.links
    assert format(link.context.trace_id, "032x") == trace_id and format(link.context.span_id, "016x") == span_id
    assert not unlinked.links


async def test_callback_requests_get_a_server_span_continuing_the_callers_trace(
        spans: InMemorySpanExporter) -> None:
    async def callback(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/callbacks/{provider}", callback)
    app.router.add_get("/metrics", callback)
    tracing.instrument(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    trace_id, span_id, (_, value) = parent_header()
    try:
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as s:
            async with s.post(base + "/callbacks/thingspace", data=b"{}", headers={"traceparent": value.decode()}):
                pass
            async with s.get(base + "/metrics"):
                pass
    finally:
        await runner.cleanup()
    (span,) = finished(spans)
    assert span.name == "POST /callbacks/{provider}" and span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == trace_id and format(span.parent.span_id, "016x") == span_id
    assert span.attributes["http.route"] == "/callbacks/{provider}"
    assert span.attributes["http.response.status_code"] == 200


async def test_a_batched_provider_call_is_a_child_of_one_message_and_linked_to_the_others(
        spans: InMemorySpanExporter) -> None:
    from connector.providers import REGISTRY
    from connector.sender import RouteSender
    from connector.transport import HttpTransport

    async def gateway(request: HttpRequest) -> HttpResponse:
        import orjson

        n = len(orjson.loads(request.body)["Messages"])
        return HttpResponse(200, orjson.dumps({"messages": [{"accepted": True, "apiMessageId": f"m{i}"}
                                                            for i in range(n)]}), {"content-type": "application/json"})

    from connector.config import Secret

    config = REGISTRY["smpp_rest"].Config(base_url="https://gw.example.com", api_key=Secret("k"))
    provider = REGISTRY["smpp_rest"](config, route="gw")
    sender = RouteSender(provider, tracing.TracedTransport(HttpTransport(handler=gateway), "gw", "smpp_rest"),
                         batch_max=3, batch_linger_ms=50)

    async def one(i: int) -> None:
        msg = OutboundSms(client_message_id=f"c{i}", recipient=Recipient(phone=f"+1415555012{i}"), text="hi")
        with tracing.message(Rec(offset=i)):
            await sender.send(provider.prepare(msg))

    import asyncio

    await asyncio.gather(*(one(i) for i in range(3)))
    await sender.aclose()
    done = finished(spans)
    messages = {s.context.span_id: s for s in done if s.name == "process sms.outbound"}
    (call,) = [s for s in done if s.kind is SpanKind.CLIENT]
    assert len(messages) == 3 and call.attributes["sms.batch_size"] == 3
    assert call.parent.span_id in messages
    assert {ln.context.span_id for ln in call.links} | {call.parent.span_id} == set(messages)
