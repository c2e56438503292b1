"""Unit tests of the ThingSpace callback endpoint (``connector.streams.callbacks``).

The handler runs in a real aiohttp server on loopback (``aiohttp.test_utils``); the Kafka
producer is a fake whose ``send()`` returns a future the test controls, so "acknowledged",
"refused" and "still in flight" are each one line. Samples are seed 000's, verbatim, with the
registered username / password filled in where the seed has empty elements.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from typing import Any, AsyncIterator

import jsonschema
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError
from prometheus_client import REGISTRY

from connector import contract as topics
from connector.config import CallbacksSettings, InboundSettings, Secret, Settings
from connector.errors import InvalidRecord
from connector.records import correlation_key
from connector.keywords import Keywords
from connector.providers import thingspace as ts
from connector.providers.thingspace import mo_from_callback, receipt_from_callback, redact_password
from connector.streams.callbacks import THINGSPACE_PATH, CallbackReceiver
from connector.streams.publish import InboundPublisher
from tests.unit.test_thingspace import (
    SEED_000_CB_DELIVERED,
    SEED_000_CB_EXPIRED,
    SEED_000_CB_PER_DEVICE,
    SEED_000_CB_REQUEST_COMPLETE,
    SEED_000_CB_UNDELIVERABLE,
)

USERNAME = "ts-hook"
PASSWORD = "pa$$&w<rd"                  # XML-escaped in the body: exercises redaction of both forms
PASSWORD_XML = "pa$$&amp;w&lt;rd"
RECEIPTS = topics.spec("receipts").name
INBOUND = topics.spec("inbound").name
REQ_PROGRESS = "2ca8790f-7925-47e5-8367-dc5111ef92c4"
REQ_DELIVERY = "be1f03b8-64ec-4e59-a778-20536016beb5"
XML = {"Content-Type": "text/xml; charset=utf-8"}


def with_credentials(sample: str, username: str = USERNAME, password_xml: str = PASSWORD_XML) -> bytes:
    assert "<Username/> <Password/>" in sample
    return sample.replace("<Username/> <Password/>",
                          f"<Username>{username}</Username> <Password>{password_xml}</Password>").encode()


def resend(body: bytes, count: int) -> bytes:
    """The same callback as ThingSpace resends it: only CallbackCount changes."""
    return body.replace(b"<CallbackCount>1</CallbackCount>", f"<CallbackCount>{count}</CallbackCount>".encode())


# (sample, kind, state, device kind, device id, request id, provider_status)
SEED_CASES = [
    pytest.param(SEED_000_CB_PER_DEVICE, "progress", "in-flight", "MEID", "A100001F702731", REQ_PROGRESS,
                 "SendSmsMessage,Performed action on device.", id="per-device"),
    pytest.param(SEED_000_CB_REQUEST_COMPLETE, "request-complete", "completed", None, None, REQ_PROGRESS,
                 "SendSmsMessage,Request Completed Processing", id="request-complete"),
    pytest.param(SEED_000_CB_DELIVERED, "delivery-confirmation", "delivered", "MDN", "8589268379", REQ_DELIVERY,
                 "Delivered", id="delivered-truncated"),
    pytest.param(SEED_000_CB_UNDELIVERABLE, "delivery-confirmation", "undeliverable", "MDN", "8589268379",
                 REQ_DELIVERY, "Undeliverable", id="unceliverable"),
    pytest.param(SEED_000_CB_EXPIRED, "delivery-confirmation", "expired", "MDN", "8589268379", REQ_DELIVERY,
                 "Expired", id="expired"),
]


# --- fakes and fixtures ----------------------------------------------------------------------


class FakeProducer:
    """``send()`` returns a future: acknowledged at once (``mode="ack"``), failed
    (``mode="fail"``) or left pending for the test to settle (``mode="hold"``)."""

    def __init__(self) -> None:
        self.mode = "ack"
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.futures: list[asyncio.Future[Any]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None,
                   headers: Any = None) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, key, value))
        self.futures.append(fut)
        if self.mode == "ack":
            fut.set_result(None)
        elif self.mode == "fail":
            fut.set_exception(KafkaConnectionError("broker unreachable"))
        return fut

    def records(self, topic: str = RECEIPTS) -> list[dict[str, Any]]:
        return [orjson.loads(v) for t, _, v in self.sent if t == topic]


def settings(username: str = USERNAME, password: str | None = PASSWORD) -> Settings:
    return Settings(callbacks=CallbacksSettings(thingspace_username=username,
                                                thingspace_password=Secret(password) if password else None,
                                                max_body_bytes=4096, dedupe_window=100),
                    inbound=InboundSettings())


class Endpoint:
    def __init__(self, client: TestClient, producer: FakeProducer, receiver: CallbackReceiver) -> None:
        self.client = client
        self.producer = producer
        self.receiver = receiver

    async def post(self, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        async with self.client.post(THINGSPACE_PATH, data=body, headers=XML if headers is None else headers) as r:
            return r.status, orjson.loads(await r.read())


async def start(s: Settings, produce_timeout_s: float = 5.0) -> tuple[Endpoint, TestClient]:
    producer = FakeProducer()
    receiver = CallbackReceiver(s, producer, InboundPublisher(producer),  # type: ignore[arg-type]
                                produce_timeout_s=produce_timeout_s)
    app = web.Application()
    app.add_routes(receiver.routes())
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return Endpoint(client, producer, receiver), client


@pytest.fixture
async def ep() -> AsyncIterator[Endpoint]:
    endpoint, client = await start(settings())
    try:
        yield endpoint
    finally:
        await endpoint.receiver.aclose(1.0)
        await client.close()


def count(kind: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("sms_callbacks_received_total",
                                     {"provider": "thingspace", "kind": kind, "outcome": outcome}) or 0.0


# --- every seed 000 sample -------------------------------------------------------------------


@pytest.mark.parametrize("sample, kind, state, device_kind, device_id, request_id, status", SEED_CASES)
async def test_seed_callback_becomes_one_receipt(ep: Endpoint, sample: str, kind: str, state: str,
                                                 device_kind: str | None, device_id: str | None,
                                                 request_id: str, status: str) -> None:
    before = count(kind, "ok")
    assert await ep.post(with_credentials(sample)) == (200, {"status": "ok"})
    ((topic, key, value),) = ep.producer.sent
    rec = orjson.loads(value)
    jsonschema.validate(rec, topics.schema("delivery_receipt.json"))
    assert topic == RECEIPTS
    assert key == correlation_key("thingspace", request_id).encode() == rec["correlation_key"].encode()
    assert (rec["kind"], rec["state"], rec["provider_request_id"], rec["provider_status"]) == (
        kind, state, request_id, status)
    assert rec["device"] == ({"kind": device_kind, "id": device_id} if device_id else None)
    assert rec["final"] is (state != "in-flight")
    assert (rec["provider"], rec["raw_format"], rec["occurred_at"]) == ("thingspace", "xml", None)
    assert PASSWORD not in rec["raw"] and PASSWORD_XML not in rec["raw"]
    assert f"<Password>***</Password>" in rec["raw"] and f"<Username>{USERNAME}</Username>" in rec["raw"]
    assert count(kind, "ok") == before + 1


async def test_json_callback_camel_case(ep: Endpoint) -> None:
    body = orjson.dumps({"username": USERNAME, "password": PASSWORD, "requestId": "r-42",
                         "device": {"kind": "mdn", "id": "8589268379"},
                         "data": {"smsDelivery": {"confirmation": "Unceliverable"}, "callbackCount": 1,
                                  "maxCallbackThreshold": 4}})
    assert (await ep.post(body, {"Content-Type": "application/json"}))[0] == 200
    (rec,) = ep.producer.records()
    jsonschema.validate(rec, topics.schema("delivery_receipt.json"))
    assert (rec["kind"], rec["state"], rec["device"], rec["raw_format"]) == (
        "delivery-confirmation", "undeliverable", {"kind": "MDN", "id": "8589268379"}, "json")
    assert PASSWORD not in rec["raw"] and '"password":"***"' in rec["raw"]


# --- the progress comment rule (pure) --------------------------------------------------------


@pytest.mark.parametrize("comment, fault, state", [
    ("SendSmsMessage,Performed action on device.", None, "in-flight"),     # seed 000
    ("SendSmsMessage,Failed to perform action on device.", None, "undeliverable"),
    ("SendSmsMessage,Error: device not reachable", None, "undeliverable"),
    ("SendSmsMessage,Unable to send SMS to device", None, "undeliverable"),
    ("SendSmsMessage,Action not performed on device.", None, "undeliverable"),
    ("SendSmsMessage,Queued for device.", None, "in-flight"),               # unknown: never a failure
    (None, "Device is suspended", "undeliverable"),
    (None, None, "in-flight"),
])
def test_progress_comment_rule(comment: str | None, fault: str | None, state: str) -> None:
    cb = ts.ThingSpaceCallback(request_id="r-1", device_kind="MDN", device_id="8589268379",
                               comment=comment, fault=fault)
    rec = receipt_from_callback(cb, "raw", "xml")
    assert (rec.kind, rec.state, rec.provider_status) == ("progress", state, comment or fault)


def test_unknown_confirmation_is_in_flight_and_completion_without_summary() -> None:
    cb = ts.ThingSpaceCallback(request_id="r-1", device_kind="MDN", device_id="1", confirmation="Pending")
    assert receipt_from_callback(cb, "", "xml").state == "in-flight"
    done = ts.ThingSpaceCallback(request_id="r-1", device_kind=None, device_id=None,
                                 comment="SendSmsMessage,Request Completed Processing")
    assert (receipt_from_callback(done, "", "xml").kind, receipt_from_callback(done, "", "xml").state) == (
        "request-complete", "completed")


# --- duplicates ------------------------------------------------------------------------------


async def test_resends_produce_once(ep: Endpoint) -> None:
    body = with_credentials(SEED_000_CB_DELIVERED)
    before = count("delivery-confirmation", "duplicate")
    answers = [await ep.post(resend(body, n)) for n in (1, 2, 3, 4)]
    assert answers == [(200, {"status": "ok"})] + [(200, {"status": "duplicate"})] * 3
    assert len(ep.producer.sent) == 1
    assert count("delivery-confirmation", "duplicate") == before + 3


async def test_concurrent_resend_waits_for_the_first_produce(ep: Endpoint) -> None:
    ep.producer.mode = "hold"
    body = with_credentials(SEED_000_CB_EXPIRED)
    first = asyncio.create_task(ep.post(body))
    second = asyncio.create_task(ep.post(resend(body, 2)))
    while not ep.producer.futures:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)            # both requests are in the handler now
    assert not first.done() and not second.done()
    ep.producer.futures[0].set_result(None)
    statuses = sorted([(await first)[1]["status"], (await second)[1]["status"]])
    assert statuses == ["duplicate", "ok"] and (await first)[0] == (await second)[0] == 200
    assert len(ep.producer.sent) == 1


async def test_producer_failure_answers_503_and_a_resend_produces(ep: Endpoint) -> None:
    body = with_credentials(SEED_000_CB_UNDELIVERABLE)
    ep.producer.mode = "fail"
    status, answer = await ep.post(body)
    assert status == 503 and answer["detail"] == "KafkaConnectionError"
    ep.producer.mode = "ack"
    assert await ep.post(resend(body, 2)) == (200, {"status": "ok"})
    assert await ep.post(resend(body, 3)) == (200, {"status": "duplicate"})
    assert len(ep.producer.sent) == 2 and len(ep.producer.records()) == 2   # the failed one + the durable one


async def test_concurrent_resends_share_a_failure(ep: Endpoint) -> None:
    ep.producer.mode = "hold"
    body = with_credentials(SEED_000_CB_PER_DEVICE)
    posts = [asyncio.create_task(ep.post(resend(body, n))) for n in (1, 2)]
    while not ep.producer.futures:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    ep.producer.futures[0].set_exception(KafkaTimeoutError())
    assert [(await p)[0] for p in posts] == [503, 503]
    ep.producer.mode = "ack"
    assert (await ep.post(resend(body, 3)))[0] == 200
    assert len(ep.producer.sent) == 2


async def test_timeout_answers_503_and_a_resend_joins_the_produce_still_running() -> None:
    endpoint, client = await start(settings(), produce_timeout_s=0.2)
    try:
        endpoint.producer.mode = "hold"
        body = with_credentials(SEED_000_CB_DELIVERED)
        t0 = time.monotonic()
        status, answer = await endpoint.post(body)
        assert status == 503 and answer["detail"] == "TimeoutError" and time.monotonic() - t0 < 2
        endpoint.producer.futures[0].set_result(None)     # the broker acknowledges late
        await asyncio.sleep(0)
        assert await endpoint.post(resend(body, 2)) == (200, {"status": "ok"})
        assert await endpoint.post(resend(body, 3)) == (200, {"status": "duplicate"})
        assert len(endpoint.producer.sent) == 1
    finally:
        await endpoint.receiver.aclose(1.0)
        await client.close()


async def test_dedupe_window_is_bounded() -> None:
    endpoint, client = await start(settings())
    try:
        window = endpoint.receiver.window
        for i in range(window + 1):
            cb = SEED_000_CB_DELIVERED.replace(REQ_DELIVERY, f"req-{i}")
            assert (await endpoint.post(with_credentials(cb)))[0] == 200
        assert len(endpoint.receiver._seen) == window                   # noqa: SLF001
        first = with_credentials(SEED_000_CB_DELIVERED.replace(REQ_DELIVERY, "req-0"))
        assert (await endpoint.post(first))[1] == {"status": "ok"}       # forgotten: produced again
        assert len(endpoint.producer.sent) == window + 2
    finally:
        await client.close()


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("username, password_xml", [
    (USERNAME, "wrong"), ("someone", PASSWORD_XML), (USERNAME, ""), ("", ""),
])
async def test_wrong_credentials_401_nothing_produced(ep: Endpoint, username: str, password_xml: str) -> None:
    body = with_credentials(SEED_000_CB_DELIVERED, username, password_xml)
    before = count("delivery-confirmation", "unauthorized")
    status, answer = await ep.post(body)
    assert (status, answer) == (401, {"error": "unauthorized"})
    assert ep.producer.sent == []
    assert count("delivery-confirmation", "unauthorized") == before + 1


async def test_seed_sample_without_credentials_is_refused(ep: Endpoint) -> None:
    assert (await ep.post(SEED_000_CB_PER_DEVICE.encode()))[0] == 401
    assert ep.producer.sent == []


@pytest.mark.parametrize("username, password", [("", None), ("", PASSWORD), (USERNAME, None)])
async def test_no_configured_credentials_refuses_everything(username: str, password: str | None) -> None:
    endpoint, client = await start(settings(username, password))
    try:
        # the seed's own empty <Username/> <Password/> would "match" empty settings: still 401
        assert (await endpoint.post(SEED_000_CB_PER_DEVICE.encode()))[0] == 401
        assert (await endpoint.post(with_credentials(SEED_000_CB_PER_DEVICE)))[0] == 401
        assert endpoint.producer.sent == []
    finally:
        await client.close()


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
               for i in range(1, 10))
    + b']><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><CallbackRequest>'
      b'<Username>ts-hook</Username><Password>x</Password><RequestId>&lol9;</RequestId>'
      b'</CallbackRequest></s:Body></s:Envelope>'
)
XXE = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
       b'<CallbackRequest><Username>ts-hook</Username><RequestId>&xxe;</RequestId></CallbackRequest>')
XXE_PARAMETER = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % ext SYSTEM "http://127.0.0.1:9/evil.dtd"> %ext;]>'
                 b'<CallbackRequest><RequestId>x</RequestId></CallbackRequest>')
QUADRATIC = (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "' + b"A" * 2000 + b'">]>'
             b'<CallbackRequest><RequestId>' + b"&a;" * 500 + b'</RequestId></CallbackRequest>')


@pytest.mark.parametrize("body", [BILLION_LAUGHS, XXE, XXE_PARAMETER, QUADRATIC],
                         ids=["billion-laughs", "xxe", "xxe-parameter-entity", "quadratic-blowup"])
async def test_entity_payloads_refused_fast_without_expansion(ep: Endpoint, body: bytes) -> None:
    before = count("unknown", "invalid")
    t0 = time.monotonic()
    status, answer = await ep.post(body)
    assert time.monotonic() - t0 < 1.0
    assert status == 400 and answer["error"] == "invalid callback"
    assert "refused" in answer["detail"] and "Forbidden" in answer["detail"]   # defusedxml's DTDForbidden
    assert ep.producer.sent == []
    assert count("unknown", "invalid") == before + 1


@pytest.mark.parametrize("body, headers", [
    (b"<CallbackRequest><RequestId>x</Req", XML),                              # truncated inside
    (b"<s:Envelope xmlns:s='x'><s:Body/></s:Envelope>", XML),                  # no CallbackRequest
    (b"{not json", {"Content-Type": "application/json"}),
    (b"[1, 2]", {"Content-Type": "application/json"}),
    (b"plain text", {"Content-Type": "text/plain"}),
    (b"", XML),
    (b"\xff\xfe\x00<", {"Content-Type": "application/octet-stream"}),
    (b"[" * 2000 + b"]" * 2000, {"Content-Type": "application/json"}),         # nested too deep
    (b"<a>" * 1300 + b"</a>" * 10, XML),                                         # deep and truncated
])
async def test_malformed_bodies_400(ep: Endpoint, body: bytes, headers: dict[str, str]) -> None:
    status, answer = await ep.post(body, headers)
    assert status == 400 and answer["error"] == "invalid callback"
    assert ep.producer.sent == []


async def test_receipt_without_request_id_is_400(ep: Endpoint) -> None:
    body = with_credentials(SEED_000_CB_DELIVERED).replace(
        f"<RequestId>{REQ_DELIVERY}</RequestId>".encode(), b"")
    status, answer = await ep.post(body)
    assert (status, answer["detail"]) == (400, "callback has no RequestId")
    assert ep.producer.sent == []


async def test_oversized_body_413(ep: Endpoint) -> None:
    big = with_credentials(SEED_000_CB_PER_DEVICE).replace(b"<Status xsi:nil", b" " * 5000 + b"<Status xsi:nil")
    assert (await ep.post(big))[0] == 413                                  # Content-Length says so

    async def chunks() -> AsyncIterator[bytes]:                            # no Content-Length at all
        for i in range(0, len(big), 1000):
            yield big[i:i + 1000]

    before = count("unknown", "too_large")
    status, answer = await ep.post(chunks())
    assert status == 413 and answer["error"] == "body too large"
    # 100 KB of XML compressed to ~1 KB: the limit counts the bytes after decoding
    bomb = gzip.compress(big.replace(b" " * 5000, b" " * 100_000))
    assert len(bomb) < 4096
    assert (await ep.post(bomb, {**XML, "Content-Encoding": "gzip"}))[0] == 413
    assert ep.producer.sent == []
    assert count("unknown", "too_large") == before + 2


async def test_body_at_the_limit_is_read(ep: Endpoint) -> None:
    body = with_credentials(SEED_000_CB_PER_DEVICE)
    padded = body.replace(b"<Status xsi:nil", b" " * (4096 - len(body)) + b"<Status xsi:nil")
    assert len(padded) == 4096
    assert (await ep.post(padded))[0] == 200


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, password, expected", [
    ("<a><Password>s3&amp;cret</Password></a>", "s3&cret", "<a><Password>***</Password></a>"),
    ("<a><ns:Password a='1'><![CDATA[x</Password>y]]></ns:Password></a>", "x</Password>y",
     "<a><ns:Password a='1'>***</ns:Password></a>"),
    ('{"Password": "p\\"w", "x": {"password":"p\\"w"}}', 'p"w', '{"Password": "***", "x": {"password":"***"}}'),
    ("<Password>pw</Password> pw again", "pw", "<Password>***</Password> *** again"),   # left anywhere: gone
    ("<Password/>", None, "<Password/>"),
])
def test_redact_password(text: str, password: str | None, expected: str) -> None:
    assert redact_password(text, password) == expected


async def test_password_and_text_never_logged(ep: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    mo_text = "secret plans for tuesday"
    mo = with_credentials(SEED_000_CB_PER_DEVICE).replace(
        b"<Comment>", f"<SMSMessage>{mo_text}</SMSMessage> <Comment>".encode())
    await ep.post(mo)
    await ep.post(with_credentials(SEED_000_CB_DELIVERED, password_xml="wrong-" + PASSWORD_XML))
    ep.producer.mode = "fail"
    await ep.post(with_credentials(SEED_000_CB_EXPIRED))
    assert caplog.records                                   # the state changes were logged
    for secret in (PASSWORD, PASSWORD_XML, mo_text):
        assert secret not in caplog.text


async def test_state_changes_logged_once(ep: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sms_connector.callbacks")
    ep.producer.mode = "fail"
    body = with_credentials(SEED_000_CB_EXPIRED)
    for n in range(1, 4):
        assert (await ep.post(resend(body, n)))[0] == 503
    ep.producer.mode = "ack"
    for n in range(4, 7):
        assert (await ep.post(resend(body, n)))[0] == 200
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages     # failing, then recovered: not one line per callback


# --- MO --------------------------------------------------------------------------------------


async def test_mo_callback_is_published_once(ep: Endpoint) -> None:
    body = with_credentials(SEED_000_CB_PER_DEVICE).replace(b"<Comment>", b"<SMSMessage> Stop! </SMSMessage> <Comment>")
    assert await ep.post(body) == (200, {"status": "ok"})
    assert await ep.post(resend(body, 2)) == (200, {"status": "duplicate"})
    ((topic, key, value),) = ep.producer.sent               # a device cannot change the phone opt-out table
    rec = orjson.loads(value)
    jsonschema.validate(rec, topics.schema("inbound_sms.json"))
    assert (topic, key) == (INBOUND, b"MEID:A100001F702731")
    assert rec["sender"] == {"device": {"kind": "MEID", "id": "A100001F702731"}}
    assert (rec["text"], rec["keyword"], rec["optout"]) == ("Stop!", "STOP", "stop")
    assert PASSWORD not in rec["raw"] and "<Password>***</Password>" in rec["raw"]
    # the same key the MO poller gives this message (MoMessage.dedupe_key)
    polled = ts.MoMessage("MEID", "A100001F702731", "Stop!", None,
                          raw={"deviceIds": [{"kind": "meid", "id": "A100001F702731"}]})
    assert rec["dedupe_key"] == polled.dedupe_key


def test_mo_without_device_is_invalid() -> None:
    cb = ts.ThingSpaceCallback(request_id=None, device_kind=None, device_id=None, message="hi")
    with pytest.raises(InvalidRecord):
        mo_from_callback(cb, "", Keywords())


# --- what senders really send (issue 12) ------------------------------------------------------


@pytest.mark.parametrize("prefix", [b"\n", b"\r\n  ", b"\t \n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"])
@pytest.mark.parametrize("sample, kind, state, device_kind, device_id, request_id, status", SEED_CASES)
async def test_whitespace_before_the_xml_declaration_is_accepted(
        ep: Endpoint, prefix: bytes, sample: str, kind: str, state: str, device_kind: str | None,
        device_id: str | None, request_id: str, status: str) -> None:
    body = prefix + b'<?xml version="1.0" encoding="utf-8"?>' + with_credentials(sample)
    assert await ep.post(body) == (200, {"status": "ok"})
    (rec,) = ep.producer.records()
    assert (rec["kind"], rec["state"], rec["provider_request_id"], rec["raw_format"]) == (
        kind, state, request_id, "xml")


@pytest.mark.parametrize("content_type", ["text/xml; charset=utf-8", "text/plain", "application/octet-stream", ""])
async def test_json_is_recognised_by_its_content_whatever_the_content_type(ep: Endpoint, content_type: str) -> None:
    body = b"\n " + orjson.dumps({"username": USERNAME, "password": PASSWORD, "requestId": "r-43",
                                  "device": {"kind": "MDN", "id": "8589268379"},
                                  "data": {"smsDelivery": {"confirmation": "Delivered"}}})
    headers = {"Content-Type": content_type} if content_type else {}
    assert (await ep.post(body, headers))[0] == 200
    (rec,) = ep.producer.records()
    assert (rec["kind"], rec["state"], rec["raw_format"]) == ("delivery-confirmation", "delivered", "json")


def test_callback_format_reads_the_content_first() -> None:
    assert ts.callback_format(b"  <?xml version='1.0'?><a/>", "application/json") == "xml"
    assert ts.callback_format(b'{"a": 1}', "text/xml") == "json"
    assert ts.callback_format(b"", "text/xml") == "xml"
    assert ts.callback_format(b"plain", "text/plain") is None


async def test_a_stop_from_a_device_addressed_by_its_number_opts_the_number_out(ep: Endpoint) -> None:
    # ThingSpace's form of a number is the device's MDN (10 digits): its STOP blocks +1 and those
    # digits on every route (issue 12), as one from Ogangi's international digits does.
    body = with_credentials(SEED_000_CB_PER_DEVICE).replace(b"<Comment>", b"<SMSMessage>STOP</SMSMessage> <Comment>")
    body = body.replace(b"<Kind>meid</Kind> <Identifier>A100001F702731</Identifier>",
                        b"<Kind>MDN</Kind> <Identifier>8589268379</Identifier>")
    assert await ep.post(body) == (200, {"status": "ok"})
    sent = {topic: (key, orjson.loads(value)) for topic, key, value in ep.producer.sent}
    key, optout = sent[topics.spec("optout").name]
    jsonschema.validate(optout, topics.schema("optout.json"))
    assert (key, optout["phone"], optout["opted_out"]) == (b"+18589268379", "+18589268379", True)
    assert sent[INBOUND][0] == b"MDN:8589268379"
