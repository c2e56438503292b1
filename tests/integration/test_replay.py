"""`dlq replay` on a real broker: dead-lettered and failed records back to sms.outbound."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from connector import contract as topics
from connector.config import KafkaSettings
from connector.devtools.demo import DEMO_HEADER
from connector.kafka import client_options, topic_partitions
from connector.ops.replay import HEADER_REPLAYED_FROM, parse_filters, replay
from connector.devtools.stack import Follower, LocalStack
from tests.integration.helpers import outbound, phone

pytestmark = pytest.mark.integration

OUTBOUND, DLQ, FAILED = (topics.spec(r).name for r in ("outbound", "dlq", "failed"))


async def put(kafka: KafkaSettings, topic: str, records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
              ) -> list[tuple[int, int]]:
    """Produce one by one (one record per batch); returns (partition, offset) of each."""
    producer = AIOKafkaProducer(**client_options(kafka), acks="all")
    await producer.start()
    try:
        out = []
        for key, value, headers in records:
            meta = await producer.send_and_wait(topic, value=value, key=key, headers=headers)
            out.append((meta.partition, meta.offset))
        return out
    finally:
        await producer.stop()


async def read_all(kafka: KafkaSettings, topic: str, quiet_s: float = 0.5) -> list[Any]:
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = await topic_partitions(consumer, topic)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        records: list[Any] = []
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            batch = await consumer.getmany(timeout_ms=200)
            for recs in batch.values():
                records += recs
                last = time.monotonic()
        return records
    finally:
        await consumer.stop()


def replayed(records: list[Any]) -> dict[str, Any]:
    """Records carrying sms.replayed-from, by that header's value."""
    out = {}
    for r in records:
        h = dict(r.headers)
        if HEADER_REPLAYED_FROM in h:
            out[h[HEADER_REPLAYED_FROM].decode()] = r
    return out


def dead_letter(key: bytes | None, value: bytes, reason: str, extra: list[tuple[str, bytes]]) -> tuple[
        bytes | None, bytes, list[tuple[str, bytes]]]:
    """A record as the dispatcher dead-letters it: original key, value, headers + added headers."""
    return key, value, [*extra, (topics.HEADER_SOURCE_TOPIC, OUTBOUND.encode()),
                        (topics.HEADER_SOURCE_PARTITION, b"0"), (topics.HEADER_SOURCE_OFFSET, b"9"),
                        (topics.HEADER_ERROR_REASON, reason.encode()),
                        (topics.HEADER_ERROR_MESSAGE, b"something"), (topics.HEADER_ERROR_AT, b"2024-01-01T00:00:00Z")]


def failed_record(key: bytes, cid: str, reason: str, where: tuple[int, int], route: str = "smpp") -> tuple[
        bytes, bytes, list[tuple[str, bytes]]]:
    value = orjson.dumps({"schema_version": 1, "outcome": "failed", "client_message_id": cid,
                          "recipient": {"phone": key.decode()}, "metadata": {"order": "42"}, "route": route,
                          "provider": "smpp_rest", "reason": reason, "error": "x"})
    return key, value, [(topics.HEADER_SOURCE_TOPIC, OUTBOUND.encode()),
                        (topics.HEADER_SOURCE_PARTITION, str(where[0]).encode()),
                        (topics.HEADER_SOURCE_OFFSET, str(where[1]).encode())]


async def test_dlq_replay_by_reason_restores_the_originals_and_dry_run_produces_nothing(broker: LocalStack) -> None:
    kafka = broker.kafka
    good_key, good_value, good_headers = outbound("fixed-later", phone(1))
    dlq = [
        dead_letter(b"k-json", b"{not json", "invalid-record", [(DEMO_HEADER, b"bad-json"), ("trace", b"t-1")]),
        dead_letter(good_key, good_value, "internal", good_headers),
        dead_letter(None, b'{"client_message_id":"y"}', "invalid-record", []),
        dead_letter(b"k-other", b"{}", "something-else", []),
    ]
    dlq_at = await put(kafka, DLQ, dlq)
    originals = [outbound("f-1", phone(2), "first"), outbound("f-2", phone(3), "second")]
    orig_at = await put(kafka, OUTBOUND, originals)
    await put(kafka, FAILED, [failed_record(originals[0][0], "f-1", "unavailable", orig_at[0]),
                              failed_record(originals[1][0], "f-2", "invalid-record", orig_at[1])])
    before = len(await read_all(kafka, OUTBOUND))

    seen: list[tuple[int, int, int]] = []
    dry = await replay(kafka, DLQ, parse_filters(["reason=invalid-record"]), dry_run=True, quiet_s=0.5,
                       progress=lambda *a: seen.append(a))
    assert (dry.scanned, dry.matched, dry.replayed) == (4, 2, 0) and dry.ok
    assert seen[-1][0] == 4 and seen[-1][2] == 2
    assert len(await read_all(kafka, OUTBOUND)) == before, "a dry run must produce nothing"

    summary = await replay(kafka, "dlq", parse_filters(["reason=invalid-record"]))
    assert (summary.scanned, summary.matched, summary.replayed) == (4, 2, 2)
    assert summary.by_reason == {"invalid-record": 2}
    back = replayed(await read_all(kafka, OUTBOUND))
    expected = {f"{DLQ}:{p}:{o}": rec for rec, (p, o) in zip(dlq, dlq_at) if rec[2][-3][1] == b"invalid-record"}
    assert set(back) == set(expected)
    for origin, (key, value, headers) in expected.items():
        r = back[origin]
        assert (r.key, r.value) == (key, value)
        original_headers = [h for h in headers if not h[0].startswith(("sms.source.", "sms.error."))]
        assert list(r.headers[:-1]) == original_headers and r.headers[-1] == (HEADER_REPLAYED_FROM, origin.encode())


async def test_failed_replay_reads_the_original_back_from_sms_outbound(broker: LocalStack) -> None:
    kafka = broker.kafka
    originals = [outbound("m-1", phone(1), "the text failed records do not carry", metadata={"order": "42"}),
                 outbound("m-2", phone(2), "rejected one")]
    orig_at = await put(kafka, OUTBOUND, originals)
    failed = [failed_record(originals[0][0], "m-1", "unavailable", orig_at[0]),
              failed_record(originals[1][0], "m-2", "rejected", orig_at[1]),
              failed_record(b"+14155550199", "m-3", "unavailable", (orig_at[0][0], 10_000)),   # gone
              failed_record(originals[1][0], "m-4", "unavailable", orig_at[1])]               # not that message
    failed_at = await put(kafka, FAILED, failed)

    summary = await replay(kafka, FAILED, parse_filters(["reason=unavailable", "route=smpp"]))
    assert (summary.matched, summary.replayed) == (3, 1)
    assert len(summary.missing) == 2 and not summary.ok
    assert any("is gone" in m for m in summary.missing) and any("'m-2', not 'm-4'" in m for m in summary.missing)
    back = replayed(await read_all(kafka, OUTBOUND))
    origin = f"{FAILED}:{failed_at[0][0]}:{failed_at[0][1]}"
    assert list(back) == [origin]
    key, value, headers = originals[0]
    r = back[origin]
    assert (r.key, r.value, list(r.headers)) == (key, value, [*headers, (HEADER_REPLAYED_FROM, origin.encode())])
    assert orjson.loads(r.value)["client_message_id"] == "m-1"

    limited = await replay(kafka, FAILED, {}, dry_run=True, limit=1)
    assert limited.limited and limited.matched == 1


async def test_replayed_records_go_through_the_worker_again(broker: LocalStack) -> None:
    """A real worker fails a message, replay sends it through again with the same client id."""
    await broker.start_simulator("smpp_rest")
    await broker.start_worker(routes={"smpp": {"provider": "smpp_rest"}})
    await broker.set_faults("smpp_rest", reject_rate=1.0)
    records = [outbound("again-1", phone(5))]
    async with Follower(broker.kafka) as f:
        f.tally.keep_records = True
        await put(broker.kafka, OUTBOUND, records)
        assert await f.wait_for(["again-1"], timeout=20)
        assert f.tally.records["again-1"][0]["reason"] == "rejected"
        await broker.set_faults("smpp_rest", reject_rate=0.0)
        summary = await replay(broker.kafka, FAILED, parse_filters(["reason=rejected", "id=again-1"]))
        assert summary.replayed == 1
        deadline = time.monotonic() + 20
        while len(f.tally.records["again-1"]) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    first, second = f.tally.records["again-1"]
    assert second["outcome"] == "accepted" and second["client_message_id"] == "again-1"
    assert second["metadata"] == first["metadata"]
