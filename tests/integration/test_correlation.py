"""Correlation on a real broker: receipts joined to their outbound message, early, late, twice."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jsonschema
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from connector import contract as topics
from connector.config import load
from connector.records import DeliveryReceipt, correlation_key
from connector.kafka import client_options, topic_partitions
from connector.devtools.stack import Follower, LocalStack, kafka_env, produce
from connector.streams.correlator import Correlator
from tests.integration.helpers import outbound, phone

pytestmark = pytest.mark.integration


def receipt(ck: str, state: str = "delivered", kind: str = "delivery-confirmation", at: str = "t1") -> bytes:
    return DeliveryReceipt(provider=ck.split(":")[0], correlation_key=ck, kind=kind, state=state,
                           received_at=time.time(), raw="<x/>", provider_request_id=ck.split(":")[1],
                           device_kind="IMEI", device_id="990000862471854", occurred_at=at,
                           provider_status=state.title()).encode()


def correlation(cid: str) -> bytes:
    return orjson.dumps({"schema_version": 1, "client_message_id": cid, "provider": "thingspace", "route": "ts",
                         "recipient": {"device": {"kind": "IMEI", "id": "990000862471854"}},
                         "metadata": {"campaign": "c"}, "provider_message_id": None, "provider_request_id": "r",
                         "submitted_at": "2026-01-01T00:00:00.000Z", "expires_at": None,
                         "final_state": None, "last_state": None})


async def read_all(stack: LocalStack, role: str, expect: int, timeout: float = 30) -> list[Any]:
    consumer = AIOKafkaConsumer(**client_options(stack.kafka), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        name = topics.spec(role).name
        tps = await topic_partitions(consumer, name)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(out) < expect:
            for recs in (await consumer.getmany(timeout_ms=300)).values():
                out += recs
        await asyncio.sleep(0.5)   # anything more than expected?
        for recs in (await consumer.getmany(timeout_ms=300)).values():
            out += recs
        return out
    finally:
        await consumer.stop()


async def test_receipts_are_joined_early_late_and_once(broker: LocalStack) -> None:
    settings = load(environ={**kafka_env(broker.kafka),
                             "SMS_CONNECTOR_INBOUND__CORRELATION_TTL_S": "3"})
    producer = AIOKafkaProducer(**client_options(broker.kafka), acks="all")
    await producer.start()
    corr_t, rec_t = topics.spec("correlation").name, topics.spec("receipts").name
    a, b, c = (correlation_key("thingspace", x) for x in ("req-a", "req-b", "req-c"))
    # a: correlation first; b: receipt first (held); c: never correlated (unmatched after the TTL)
    await producer.send_and_wait(corr_t, correlation("cid-a"), key=a.encode())
    for key, value in [(a, receipt(a)), (a, receipt(a)), (b, receipt(b)), (c, receipt(c)),
                       (a, receipt(a, "in-flight", "progress", "t0"))]:
        await producer.send_and_wait(rec_t, value, key=key.encode())
    stop = asyncio.Event()
    correlator = Correlator(settings, producer)
    task = asyncio.create_task(correlator.run(stop))
    try:
        await asyncio.sleep(3)
        await producer.send_and_wait(corr_t, correlation("cid-b"), key=b.encode())
        events = await read_all(broker, "delivery", expect=3)
        unmatched = await read_all(broker, "delivery_unmatched", expect=1, timeout=15)
    finally:
        stop.set()
        await task
        await producer.stop()
    by_cid: dict[str, list[dict[str, Any]]] = {}
    for r in events:
        e = orjson.loads(r.value)
        jsonschema.validate(e, topics.schema("delivery_event.json"))
        assert r.key.decode() == e["client_message_id"]
        by_cid.setdefault(e["client_message_id"], []).append(e)
    assert sorted((k, len(v)) for k, v in by_cid.items()) == [("cid-a", 2), ("cid-b", 1)]   # duplicate dropped
    assert {e["state"] for e in by_cid["cid-a"]} == {"delivered", "in-flight"}
    assert by_cid["cid-b"][0]["metadata"] == {"campaign": "c"} and by_cid["cid-b"][0]["device"]["kind"] == "IMEI"
    assert [orjson.loads(r.value)["correlation_key"] for r in unmatched] == [c]


async def test_a_sent_message_can_be_followed_to_its_delivery(broker: LocalStack) -> None:
    await broker.start_simulator("smpp_rest")
    await broker.start_worker()
    async with Follower(broker.kafka) as f:
        f.tally.keep_records = True
        await produce(broker.kafka, [outbound("follow-me", phone(7))])
        assert await f.wait_for(["follow-me"], timeout=60)
    api_id = f.tally.records["follow-me"][0]["provider_message_id"]
    corr = await read_all(broker, "correlation", expect=1)
    assert [r.key.decode() for r in corr] == [correlation_key("smpp_rest", api_id)]
    assert orjson.loads(corr[0].value)["client_message_id"] == "follow-me"
    jsonschema.validate(orjson.loads(corr[0].value), topics.schema("correlation.json"))
