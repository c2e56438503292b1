"""The dispatch worker on a real broker with the SMPP simulator over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import aiohttp
import pytest

from connector import contract as topics
from connector.devtools.demo import DEMO_HEADER
from connector.devtools.stack import Follower, LocalStack, produce
from tests.integration.helpers import many, outbound, phone

pytestmark = pytest.mark.integration


async def test_5000_messages_each_get_exactly_one_terminal_record_in_key_order(stack: LocalStack) -> None:
    await stack.start_worker(routes={"smpp": {"provider": "smpp_rest", "batch_max": "50", "concurrency": "16"}})
    records = many(5000, keys=400)
    expected = [r[2][0][1].decode() for r in records]
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        t0 = time.monotonic()
        await produce(stack.kafka, records)
        assert await f.wait_for(expected, timeout=120, settle_s=1.0), f"missing {len(f.tally.missing(expected))}"
        elapsed = time.monotonic() - t0
    tally = f.tally
    assert tally.duplicates(expected) == 0
    assert tally.outcomes == {("accepted", "", "smpp_rest"): 5000}
    # Same key, same order: the simulator numbers messages as it accepts them.
    by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for i, cid in enumerate(expected):
        rec = tally.records[cid][0]
        by_key[rec["recipient"]["phone"]].append((i, int(rec["provider_message_id"].split("-")[1])))
    for key, seq in by_key.items():
        api_order = [api for _, api in sorted(seq)]
        assert api_order == sorted(api_order), f"messages to {key} were sent out of order"
    first = tally.records[expected[0]][0]
    assert first["encoding"] == "gsm7" and first["segments"] == 1 and first["attempts"] == 1
    assert first["headers"][topics.HEADER_SOURCE_TOPIC] == "sms.outbound"
    print(f"\n5000 messages, 400 keys: {5000 / elapsed:,.0f} terminal records/s end to end")


async def test_bad_records_are_dead_lettered_untouched_while_good_ones_flow(stack: LocalStack) -> None:
    await stack.start_worker()
    bad = [
        (b"k-json", b"{not json", [(DEMO_HEADER, b"bad-json"), ("trace", b"t-1")]),
        (b"k-type", b'{"client_message_id":"x","recipient":{"phone":"+14155550100"},"text":7}', [(DEMO_HEADER, b"bad-type")]),
        (None, b'{"client_message_id":"y"}', [(DEMO_HEADER, b"bad-missing")]),
        (b"k-bytes", b"\xff\xfe\x00garbage", [(DEMO_HEADER, b"bad-bytes")]),
    ]
    good = many(200, keys=50, prefix="good")
    invalid = [outbound("invalid-number", "+1415"), outbound("too-long", phone(1), "x" * 1700, route="smpp"),
               outbound("unknown-route", phone(2), route="nowhere"), outbound("rejected", "+14155550666"),
               outbound("expired", phone(3), expires_at=time.time() - 5)]
    records = good[:100] + bad + invalid + good[100:]
    expected = [h[0][1].decode() for _, _, h in records]
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        await produce(stack.kafka, records)
        assert await f.wait_for(expected, timeout=60, settle_s=0.5)
    t = f.tally
    assert t.duplicates(expected) == 0
    for key, value, headers in bad:
        [dl] = t.records[headers[0][1].decode()]
        assert dl["outcome"] == "dead-lettered" and dl["reason"] == "invalid-record"
        assert dl["value"] == value and dl["key"] == key
        for name, v in headers:
            assert dl["headers"][name] == v.decode()
        assert dl["headers"][topics.HEADER_ERROR_MESSAGE] and dl["headers"][topics.HEADER_SOURCE_OFFSET]
    assert t.records["bad-type"][0]["headers"][topics.HEADER_ERROR_FIELD] == "text"
    reasons = {cid: t.records[cid][0]["reason"] for cid in
               ("invalid-number", "too-long", "unknown-route", "rejected", "expired")}
    assert reasons == {"invalid-number": "invalid", "too-long": "invalid", "unknown-route": "invalid",
                       "rejected": "rejected", "expired": "expired"}
    assert t.records["rejected"][0]["provider_text"].startswith("Destination rejected")
    assert t.records["expired"][0]["attempts"] == 0
    assert sum(1 for cid in expected if cid.startswith("good") and t.records[cid][0]["outcome"] == "accepted") == 200


async def test_provider_faults_end_in_the_right_records(stack: LocalStack) -> None:
    # 3 calls in place, then the retry topic: a second pass ends at the cap of 5
    await stack.start_worker(env={"SMS_CONNECTOR_DISPATCH__RETRY_MAX_ATTEMPTS": "3",
                                  "SMS_CONNECTOR_DISPATCH__RETRY_BASE_DELAY_S": "0.01",
                                  "SMS_CONNECTOR_DISPATCH__MAX_ATTEMPTS": "5",
                                  "SMS_CONNECTOR_DISPATCH__RETRY_TOPIC_DELAY_S": "0.2",
                                  "SMS_CONNECTOR_HTTP__PROVIDER_TIMEOUT_S": "0.5"},
                             # this test is about retry classification: a breaker that never opens
                             # (tests/integration/test_breaker.py covers pausing a failing route)
                             routes={"smpp": {"provider": "smpp_rest", "batch_max": "1",
                                              "breaker_min_calls": "1000000"}})
    phases = [("5xx", {"error_rate": 1.0}, "unavailable"),
              ("429", {"throttle_rate": 1.0, "retry_after_s": 0}, "throttled"),
              ("timeout", {"timeout_rate": 1.0, "hang_s": 2.0}, "unavailable"),
              ("flaky", {"error_rate": 0.3, "throttle_rate": 0.1, "retry_after_s": 0, "seed": 3}, None)]
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        for name, faults, reason in phases:
            await stack.set_faults("smpp_rest", **{"error_rate": 0, "throttle_rate": 0, "timeout_rate": 0, **faults})
            records = [outbound(f"{name}-{i}", phone(i)) for i in range(20)]
            ids = [f"{name}-{i}" for i in range(20)]
            await produce(stack.kafka, records)
            assert await f.wait_for(ids, timeout=60), f"phase {name}: missing {f.tally.missing(ids)}"
            results = [f.tally.records[i][0] for i in ids]
            if reason:
                assert {(r["outcome"], r["reason"], r["attempts"]) for r in results} == {("failed", reason, 5)}, name
            else:
                assert all(r["outcome"] in ("accepted", "failed") for r in results)
                assert any(r["attempts"] > 1 for r in results if r["outcome"] == "accepted"), \
                    [(r["outcome"], r.get("reason"), r["attempts"]) for r in results]
        assert f.tally.duplicates([f"{p}-{i}" for p, *_ in phases for i in range(20)]) == 0
    stats = await stack.sim_stats("smpp_rest")
    assert stats["injected"]["error"] >= 100 and stats["injected"]["throttle"] >= 100


async def test_metrics_and_health(stack: LocalStack) -> None:
    w = await stack.start_worker()
    await produce(stack.kafka, [outbound("m-health", phone(1)), (b"k", b"nope", [])])
    async with aiohttp.ClientSession() as s:
        for _ in range(100):
            async with s.get(w.url + "/readyz") as r:
                ready = (r.status, await r.json())
            if ready[0] == 200:
                break
            await asyncio.sleep(0.2)
        assert ready == (200, {"ready": True, "broker_reachable": True, "partitions_assigned": 12})
        async with s.get(w.url + "/healthz") as r:
            assert r.status == 200
        for _ in range(100):
            async with s.get(w.url + "/metrics") as r:
                text = await r.text()
            # in flight until its terminal record is durable (with exactly-once: its transaction
            # committed, up to dispatch.transaction_max_s after the provider accepted it)
            if ('sms_outbound_accepted_total{provider="smpp_rest",route="smpp"} 1.0' in text
                    and 'sms_outbound_in_flight 0.0' in text):
                break
            await asyncio.sleep(0.2)
    for line in ('sms_outbound_consumed_total 2.0', 'sms_outbound_dead_lettered_total{reason="invalid-record"} 1.0',
                 'sms_outbound_accepted_total{provider="smpp_rest",route="smpp"} 1.0',
                 'sms_provider_request_duration_seconds_count{outcome="ok",provider="smpp_rest"} 1.0',
                 'sms_outbound_in_flight 0.0'):
        assert line in text, line
