"""Fault injection with real processes: provider chaos, a stalled broker, fuzzed input, and a
worker joining and leaving under load. Each scenario prints its figures so a reader sees the
margin. `make faults` runs the full sizes (FAULTS=full); CI a bounded version."""

from __future__ import annotations

import asyncio
import random
import time

import orjson
import pytest

from connector.devtools.demo import DEMO_HEADER
from connector.devtools.stack import Follower, LocalStack, produce
from tests.integration.helpers import Record, exactly_once, many, metric_sum, outbound, phone, size, until

pytestmark = pytest.mark.integration



def report(name: str, tally, expected: list[str], **figures: object) -> None:  # type: ignore[no-untyped-def]
    terminal = sum(tally.seen[c] for c in expected)
    extra = ", ".join(f"{k} {v}" for k, v in figures.items())
    print(f"\n{name}: inputs {len(expected)}, terminal {terminal}, missing {len(tally.missing(expected))}, "
          f"duplicates {tally.duplicates(expected)}" + (f", {extra}" if extra else ""))


async def test_provider_chaos_loses_nothing_and_respects_the_rate_limit(stack: LocalStack) -> None:
    n, rate = size(20000, 1500), 300
    await stack.set_faults("smpp_rest", error_rate=0.3, timeout_rate=0.1, hang_s=1.0, seed=5)
    worker = await stack.start_worker(env={"SMS_CONNECTOR_HTTP__PROVIDER_TIMEOUT_S": "0.5",
                                           "SMS_CONNECTOR_DISPATCH__RETRY_BASE_DELAY_S": "0.05",
                                           # ~2.6% of messages spend their 4 calls in place:
                                           # the retry topic takes them
                                           "SMS_CONNECTOR_DISPATCH__RETRY_TOPIC_DELAY_S": "1"},
                             # 40% of calls fail here by design: a breaker at its default ratio (0.5) may
                             # open on noise and pause the route; this scenario is about retries and the
                             # rate limit (tests/contract/test_route_guards.py covers the breaker)
                             routes={"smpp": {"provider": "smpp_rest", "rate_limit": str(rate), "concurrency": "64",
                                              "breaker_failure_ratio": "0.9"}})
    records = many(n, keys=500, prefix="chaos")
    expected = [f"chaos-{i}" for i in range(n)]
    async with Follower(stack.kafka) as f:
        t0 = time.monotonic()
        await produce(stack.kafka, records)
        # bursts of 429 with Retry-After while the 5xx and timeouts go on
        for _ in range(3):
            await asyncio.sleep(2)
            await stack.set_faults("smpp_rest", throttle_rate=0.5, retry_after_s=1)
            await asyncio.sleep(1)
            await stack.set_faults("smpp_rest", throttle_rate=0.0)
        assert await f.wait_for(expected, timeout=60 + n / 50, settle_s=1.0)
        elapsed = time.monotonic() - t0
    stats = await stack.sim_stats("smpp_rest")
    handoffs = await metric_sum(worker.url, "sms_outbound_retry_handoffs_total")
    report("provider chaos", f.tally, expected, outcomes=dict(f.tally.outcomes), provider_calls=stats["requests"],
           retry_topic_handoffs=int(handoffs),
           max_rate_seen=f"{stats['max_messages_per_s']}/s (limit {rate}/s)", seconds=round(elapsed, 1))
    assert f.tally.missing(expected) == [] and f.tally.duplicates(expected) == 0
    assert stats["max_messages_per_s"] <= rate


async def test_a_stalled_broker_recovers_without_a_restart(stack: LocalStack) -> None:
    n, stall_s = size(10000, 2000), size(20, 8)
    await stack.set_faults("smpp_rest", latency_ms=10)
    worker = await stack.start_worker(routes={"smpp": {"provider": "smpp_rest", "batch_max": "20"}})
    expected = [f"stall-{i}" for i in range(n)]
    async with Follower(stack.kafka) as f:
        await produce(stack.kafka, many(n, keys=300, prefix="stall"))
        await until(lambda: f.tally.done(expected) >= n // 4, 30)
        assert stack.broker is not None
        stack.broker.pause()            # SIGSTOP: the broker answers nothing
        await asyncio.sleep(stall_s)
        stack.broker.resume()           # SIGCONT
        assert await f.wait_for(expected, timeout=180, settle_s=1.0)
    report("broker stalled", f.tally, expected, stall_s=stall_s, worker_alive=worker.alive)
    assert worker.alive, "the worker must recover without a restart"
    assert f.tally.missing(expected) == []
    if exactly_once():
        # a result produced again after a produce timed out in the stall is in an aborted transaction
        assert f.tally.duplicates(expected) == 0


def fuzzed(i: int, rng: random.Random) -> tuple[Record, str]:
    """One malformed record and the outcome it must end in ("dlq" or "failed")."""
    cid = f"bad-{i}"
    headers = [(DEMO_HEADER, cid.encode())]
    good = {"client_message_id": cid, "recipient": {"phone": phone(i)}, "text": "hello"}
    kind = rng.randrange(8)
    if kind == 0:
        value = orjson.dumps(good)[: rng.randrange(1, 20)]                            # truncated JSON
    elif kind == 1:
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))        # random bytes
    elif kind == 2:
        value = orjson.dumps({**good, "text": rng.choice([1, None, [], {}, True])})   # wrong type
    elif kind == 3:
        value = orjson.dumps({**good, "text": "x" * 20000})                           # huge field
    elif kind == 4:
        value = orjson.dumps({**good, "recipient": {"phone": 5}})                      # wrong nested type
    elif kind == 5:
        value = b'{"client_message_id": "' + cid.encode() + b'", "text": "\xff\xfe"}'   # bad encoding
    elif kind == 6:
        return outbound(cid, rng.choice(["+1", "+12345", "14155550123", "+0000000000"])), "failed"  # invalid number
    else:
        value = orjson.dumps([good])                                                    # not an object
    return (phone(i).encode(), value, headers), "dlq"


async def test_fuzzed_input_is_dead_lettered_while_good_records_flow(stack: LocalStack) -> None:
    n_bad, n_good = size(10000, 1500), size(5000, 1000)
    worker = await stack.start_worker()
    rng = random.Random(42)
    bad = [fuzzed(i, rng) for i in range(n_bad)]
    good = many(n_good, keys=200, prefix="good")
    records = [r for r, _ in bad] + good
    rng.shuffle(records)
    expected = [h[0][1].decode() for _, _, h in records]
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        await produce(stack.kafka, records)
        assert await f.wait_for(expected, timeout=120 + (n_bad + n_good) / 50, settle_s=1.0)
    t = f.tally
    wrong = [(f"bad-{i}", want, t.records[f"bad-{i}"][0]["outcome"]) for i, (_, want) in enumerate(bad)
             if t.records[f"bad-{i}"][0]["outcome"] != {"dlq": "dead-lettered", "failed": "failed"}[want]]
    report("fuzzed input", t, expected, dead_lettered=sum(1 for _, w in bad if w == "dlq"),
           failed_invalid=sum(1 for _, w in bad if w == "failed"), worker_alive=worker.alive)
    assert wrong == []
    assert all(t.records[f"bad-{i}"][0]["reason"] for i in range(n_bad))
    assert all(t.records[f"good-{i}"][0]["outcome"] == "accepted" for i in range(n_good))
    assert t.duplicates(expected) == 0 and worker.alive


async def test_a_second_worker_joins_and_leaves_under_load(stack: LocalStack) -> None:
    n = size(20000, 4000)
    await stack.set_faults("smpp_rest", latency_ms=20)
    route = {"smpp": {"provider": "smpp_rest", "batch_max": "20", "concurrency": "16"}}
    await stack.start_worker(routes=route)
    expected = [f"join-{i}" for i in range(n)]
    async with Follower(stack.kafka) as f:
        await produce(stack.kafka, many(n, keys=400, prefix="join"))
        await until(lambda: f.tally.done(expected) >= n // 5, 30)
        second = await stack.start_worker(routes=route)
        await until(lambda: f.tally.done(expected) >= n * 3 // 5, 60)
        assert await second.stop(timeout=40) == 0      # leaves gracefully while the first goes on
        assert await f.wait_for(expected, timeout=180, settle_s=2.0)
    stats = await stack.sim_stats("smpp_rest")
    report("second worker joins and leaves", f.tally, expected, provider_sends=stats["messages"])
    assert f.tally.missing(expected) == [] and f.tally.duplicates(expected) == 0
    assert stats["messages"] == n
