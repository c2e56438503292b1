"""The ThingSpace callback endpoint over real HTTP, on a real broker (Tansu, acks=all).

Each test serves ``CallbackReceiver`` with ``aiohttp.web`` on loopback, posts seed 000's callback
samples (with the registered username / password filled in) and reads ``sms.receipts`` back from
the beginning with a real consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from connector import contract as topics
from connector.config import CallbacksSettings, InboundSettings, Secret, Settings
from connector.kafka import client_options, topic_partitions
from connector.devtools.stack import LocalStack
from connector.streams.callbacks import THINGSPACE_PATH, CallbackReceiver
from connector.streams.publish import InboundPublisher
from tests.unit.test_callbacks import PASSWORD, PASSWORD_XML, SEED_CASES, USERNAME, XML, resend, with_credentials
from tests.unit.test_thingspace import SEED_000_CB_DELIVERED, SEED_000_CB_EXPIRED

pytestmark = pytest.mark.integration

RECEIPTS = topics.spec("receipts").name
SETTINGS = Settings(callbacks=CallbacksSettings(thingspace_username=USERNAME, thingspace_password=Secret(PASSWORD)),
                    inbound=InboundSettings())


@pytest.fixture
def stack(broker: LocalStack) -> LocalStack:
    """Only the broker: these tests serve the receiver in-process (no simulators, no worker)."""
    return broker


class Served:
    """A receiver with its own producer, served over HTTP on 127.0.0.1."""

    def __init__(self, stack: LocalStack, request_timeout_ms: int = 30000, produce_timeout_s: float = 10.0) -> None:
        self.stack = stack
        self.request_timeout_ms = request_timeout_ms
        self.produce_timeout_s = produce_timeout_s

    async def __aenter__(self) -> Served:
        self.producer = AIOKafkaProducer(**client_options(self.stack.kafka), acks="all", enable_idempotence=self.stack.kafka.idempotent_producer,
                                         request_timeout_ms=self.request_timeout_ms, linger_ms=0)
        await self.producer.start()
        self.receiver = CallbackReceiver(SETTINGS, self.producer, InboundPublisher(self.producer),
                                         produce_timeout_s=self.produce_timeout_s)
        app = web.Application()
        app.add_routes(self.receiver.routes())
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{THINGSPACE_PATH}"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()
        await self.runner.cleanup()
        await self.receiver.aclose(5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.producer.stop(), 10)

    async def post(self, body: bytes) -> tuple[int, dict[str, Any]]:
        async with self.session.post(self.url, data=body, headers=XML) as r:
            return r.status, orjson.loads(await r.read())


async def read_receipts(stack: LocalStack, expected: int, timeout: float = 20.0,
                        settle_s: float = 1.5) -> list[dict[str, Any]]:
    """Every record of sms.receipts from the beginning: waits for ``expected``, then ``settle_s``
    more for any extra (duplicate) record."""
    consumer = AIOKafkaConsumer(**client_options(stack.kafka), enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        parts = await topic_partitions(consumer, RECEIPTS)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + timeout
        settle_until: float | None = None
        while True:
            now = time.monotonic()
            if len(out) >= expected and settle_until is None:
                settle_until = now + settle_s
            if (settle_until is not None and now >= settle_until) or now >= deadline:
                break
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                for r in recs:
                    rec = orjson.loads(r.value)
                    assert r.key == rec["correlation_key"].encode()
                    out.append(rec)
    finally:
        await consumer.stop()
    return out


async def test_every_seed_callback_gives_one_valid_receipt(stack: LocalStack) -> None:
    schema = topics.schema("delivery_receipt.json")
    async with Served(stack) as srv:
        for case in SEED_CASES:
            assert await srv.post(with_credentials(case.values[0])) == (200, {"status": "ok"})
    records = await read_receipts(stack, expected=len(SEED_CASES))
    assert len(records) == len(SEED_CASES)
    got = sorted((r["kind"], r["state"], r["provider_request_id"], (r["device"] or {}).get("id")) for r in records)
    want = sorted((c.values[1], c.values[2], c.values[5], c.values[4]) for c in SEED_CASES)
    assert got == want
    for rec in records:
        jsonschema.validate(rec, schema)
        assert PASSWORD not in rec["raw"] and PASSWORD_XML not in rec["raw"]
        assert rec["correlation_key"] == "thingspace:" + rec["provider_request_id"]


async def test_resends_and_wrong_credentials(stack: LocalStack) -> None:
    body = with_credentials(SEED_000_CB_DELIVERED)
    async with Served(stack) as srv:
        answers = [await srv.post(resend(body, n)) for n in (1, 2, 3)]
        refused = await srv.post(with_credentials(SEED_000_CB_EXPIRED, password_xml="not-the-password"))
    assert [a[1]["status"] for a in answers] == ["ok", "duplicate", "duplicate"]
    assert refused == (401, {"error": "unauthorized"})
    records = await read_receipts(stack, expected=1)
    assert [(r["kind"], r["state"]) for r in records] == [("delivery-confirmation", "delivered")]


async def stall(stack: LocalStack, srv: Served, body: bytes) -> tuple[int, dict[str, Any]]:
    """Post ``body`` while the broker is SIGSTOPped (expect 503), resume it, then resend as
    ThingSpace does until a 2xx; the resend's answer."""
    assert stack.broker is not None
    assert await srv.post(with_credentials(SEED_000_CB_DELIVERED)) == (200, {"status": "ok"})  # warm up
    stack.broker.pause()
    try:
        t0 = time.monotonic()
        status, answer = await srv.post(body)
        assert status == 503 and answer["error"] == "not durable yet, send again", answer
        assert time.monotonic() - t0 < srv.produce_timeout_s + 2
    finally:
        stack.broker.resume()
    for n in range(2, 12):
        status, answer = await srv.post(resend(body, n))
        if status == 200:
            return status, answer
        await asyncio.sleep(0.5)
    return status, answer


async def test_stalled_broker_503_then_a_resend_gives_exactly_one_record(stack: LocalStack) -> None:
    # As deployed: the endpoint gives up (503) before the producer does (kafka.request_timeout_s,
    # 30 s by default, > 10 s), so the produce request already sent is still awaited when the
    # broker comes back, and the resend joins it instead of sending a second copy.
    body = with_credentials(SEED_000_CB_EXPIRED)
    async with Served(stack, request_timeout_ms=20000, produce_timeout_s=1.5) as srv:
        assert await stall(stack, srv, body) == (200, {"status": "ok"})
        assert await srv.post(resend(body, 20)) == (200, {"status": "duplicate"})
    records = await read_receipts(stack, expected=2)
    assert sorted(r["state"] for r in records) == ["delivered", "expired"]


async def test_producer_giving_up_first_can_only_duplicate_with_the_same_event_id(stack: LocalStack) -> None:
    # A producer whose own request timeout is shorter reports the produce as failed although the
    # stalled broker may still append it when it resumes: the resend then writes a second copy.
    # Without an idempotent producer that cannot be told apart here; both copies carry the same
    # event_id, by which consumers drop it. Nothing is lost either way.
    body = with_credentials(SEED_000_CB_EXPIRED)
    async with Served(stack, request_timeout_ms=1500, produce_timeout_s=4.0) as srv:
        status, _ = await stall(stack, srv, body)
        assert status == 200
    records = await read_receipts(stack, expected=2)
    expired = [r for r in records if r["state"] == "expired"]
    assert 1 <= len(expired) <= 2 and len({r["event_id"] for r in expired}) == 1
