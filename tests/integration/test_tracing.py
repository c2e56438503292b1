"""Tracing end to end: a worker exporting to a real OTLP/HTTP receiver on loopback.

One message produced with an upstream ``traceparent`` is followed: its dispatch span continues
the upstream trace, its provider call is a child span with route and provider (and no number or
text anywhere), the accepted and correlation records carry the dispatch span's context, and a
receipt for it (produced with its own trace, as a callback would) is processed in a span linked
to the message's span, whose context the delivery event carries.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from connector import contract as topics
from connector.records import DeliveryReceipt, correlation_key
from connector.kafka import client_options
from connector.devtools.stack import Follower, LocalStack, produce
from tests.integration.helpers import outbound, phone
from tests.integration.test_correlation import read_all
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration

TEXT = "tracing must not see this text 4711"


def traceparent(trace_id: str, span_id: str, sampled: bool = True) -> bytes:
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}".encode()


def headers_of(record: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers or ()}


async def test_one_message_is_traced_from_its_producer_to_its_delivery_event(broker: LocalStack) -> None:
    await broker.start_simulator("smpp_rest")
    async with OtlpReceiver() as otlp:
        await broker.start_worker(env={"SMS_CONNECTOR_TRACING__ENABLED": "true",
                                       "SMS_CONNECTOR_TRACING__OTLP_URL": otlp.url},
                                  roles=("dispatch", "callbacks"))
        upstream_trace, upstream_span = secrets.token_hex(16), secrets.token_hex(8)
        number = phone(42)
        key, value, hdrs = outbound("traced-1", number, TEXT)
        hdrs.append(("traceparent", traceparent(upstream_trace, upstream_span)))
        async with Follower(broker.kafka) as f:
            f.tally.keep_records = True
            await produce(broker.kafka, [(key, value, hdrs)])
            assert await f.wait_for(["traced-1"], timeout=60)
        (accepted,) = f.tally.records["traced-1"]
        assert accepted["outcome"] == "accepted"

        # the dispatch span: a child of the producer's span, in the producer's trace
        (process,) = await otlp.wait_for(lambda s: s["name"] == "process sms.outbound"
                                         and s["trace_id"] == upstream_trace)
        assert process["kind"] == "CONSUMER" and process["parent_span_id"] == upstream_span
        attrs = process["attributes"]
        assert attrs["sms.outcome"] == "accepted" and attrs["messaging.message.id"] == "traced-1"
        assert attrs["sms.route"] == "smpp" and attrs["sms.provider"] == "smpp_rest"
        assert attrs["messaging.destination.name"] == "sms.outbound"
        assert process["resource"]["service.name"] == "sms-connector"
        assert accepted["headers"]["traceparent"] == traceparent(upstream_trace, process["span_id"]).decode()

        # the provider call: a CLIENT child span, HTTP semantic conventions, route and provider
        (call,) = await otlp.wait_for(lambda s: s["kind"] == "CLIENT" and s["parent_span_id"] == process["span_id"])
        assert call["name"] == "POST" and call["trace_id"] == upstream_trace
        assert call["attributes"]["http.request.method"] == "POST"
        assert call["attributes"]["http.response.status_code"] == 200
        assert call["attributes"]["server.address"] == "127.0.0.1"
        assert call["attributes"]["sms.route"] == "smpp" and call["attributes"]["sms.provider"] == "smpp_rest"

        # the correlation record carries the message span's context too
        provider_id = accepted["provider_message_id"]
        ck = correlation_key("smpp_rest", provider_id)
        (corr,) = [r for r in await read_all(broker, "correlation", expect=1) if r.key.decode() == ck]
        assert headers_of(corr)["traceparent"] == accepted["headers"]["traceparent"]

        # a receipt in its own trace (as a callback makes it) is joined in a span linked to the message
        receipt_trace, receipt_span = secrets.token_hex(16), secrets.token_hex(8)
        receipt = DeliveryReceipt(provider="smpp_rest", correlation_key=ck, kind="delivery-confirmation",
                                  state="delivered", received_at=time.time(), raw="{}", raw_format="json",
                                  provider_message_id=provider_id, provider_status="DELIVRD").encode()
        producer = AIOKafkaProducer(**client_options(broker.kafka), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topics.spec("receipts").name, receipt, key=ck.encode(),
                                         headers=[("traceparent", traceparent(receipt_trace, receipt_span))])
        finally:
            await producer.stop()
        (event,) = await read_all(broker, "delivery", expect=1, timeout=60)
        assert orjson.loads(event.value)["client_message_id"] == "traced-1"
        (joined,) = await otlp.wait_for(lambda s: s["name"] == "process sms.receipts" and s["trace_id"] == receipt_trace)
        assert joined["parent_span_id"] == receipt_span
        assert [(ln["trace_id"], ln["span_id"]) for ln in joined["links"]] == [(upstream_trace, process["span_id"])]
        assert headers_of(event)["traceparent"] == traceparent(receipt_trace, joined["span_id"]).decode()

        # never the number or the text, in any span
        await asyncio.sleep(1.5)   # one more export interval
        everything = orjson.dumps(otlp.spans).decode()
        digits = number.lstrip("+")
        assert digits not in everything and TEXT not in everything


async def test_tracing_off_adds_no_header_and_exports_nothing(broker: LocalStack) -> None:
    await broker.start_simulator("smpp_rest")
    async with OtlpReceiver() as otlp:
        await broker.start_worker(env={"SMS_CONNECTOR_TRACING__OTLP_URL": otlp.url})
        async with Follower(broker.kafka) as f:
            f.tally.keep_records = True
            await produce(broker.kafka, [outbound("untraced-1", phone(43))])
            assert await f.wait_for(["untraced-1"], timeout=60)
        (accepted,) = f.tally.records["untraced-1"]
        assert "traceparent" not in accepted["headers"]
        await asyncio.sleep(2)
        assert otlp.requests == 0
