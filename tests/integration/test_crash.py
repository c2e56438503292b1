"""No loss across crashes: kill -9 and SIGTERM a worker under load, then let another finish."""

from __future__ import annotations

import signal
import time

import pytest

from connector.devtools.stack import Follower, LocalStack, produce
from tests.integration.helpers import FULL, exactly_once, many, size, until

pytestmark = pytest.mark.integration

ROUTE = {"smpp": {"provider": "smpp_rest", "batch_max": "20", "concurrency": "16"}}




@pytest.mark.parametrize("kills, n", [(3, 20000)] if FULL else [(1, 4000)])
async def test_kill_9_loses_nothing(stack: LocalStack, kills: int, n: int) -> None:
    max_in_flight, commit_interval = 500, 0.25
    await stack.set_faults("smpp_rest", latency_ms=20)
    env = {"SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT": str(max_in_flight),
           "SMS_CONNECTOR_DISPATCH__COMMIT_INTERVAL_S": str(commit_interval)}
    worker = await stack.start_worker(env=env, routes=ROUTE)
    records = many(n, keys=300, prefix="k9")
    expected = [f"k9-{i}" for i in range(n)]
    async with Follower(stack.kafka) as f:
        await produce(stack.kafka, records)
        rates = []
        for k in range(kills):
            target = n * (k + 1) // (kills + 2)
            await until(lambda: f.tally.done(expected) > 0, 60)
            t0, d0 = time.monotonic(), f.tally.done(expected)
            await until(lambda: f.tally.done(expected) >= target, 60)
            rates.append((f.tally.done(expected) - d0) / max(time.monotonic() - t0, 0.05))
            worker.proc.send_signal(signal.SIGKILL)
            await worker.proc.wait()
            worker = await stack.start_worker(env=env, routes=ROUTE)
        assert await f.wait_for(expected, timeout=120 + n / 100, settle_s=2.0), \
            f"missing {len(f.tally.missing(expected))}"
    dups = f.tally.duplicates(expected)
    stats = await stack.sim_stats("smpp_rest")
    # A kill replays the records in flight plus those finished since the last commit; the ledger
    # turns the finished ones into no-ops, so only records in flight at a kill (in doubt: the
    # route's policy is resend) may reach the provider, or produce a terminal record, twice.
    bound = kills * max_in_flight
    print(f"\nkill -9 x{kills}: inputs {n}, terminal {sum(f.tally.seen[c] for c in expected)}, "
          f"duplicate terminal {dups}, provider sends {stats['messages']} (excess {stats['messages'] - n}), "
          f"rate at kill {', '.join(f'{r:,.0f}/s' for r in rates)}, bound (kills x in-flight cap) {bound:,}")
    assert f.tally.missing(expected) == []
    # exactly-once (Apache Kafka): terminal record, ledger entry and offset commit in one
    # transaction; a kill aborts the open one, whose messages are replayed and written once
    assert dups == 0 if exactly_once() else dups <= bound
    assert stats["messages"] - n <= bound


async def test_sigterm_drains_commits_and_exits_0(stack: LocalStack) -> None:
    n = 3000
    await stack.set_faults("smpp_rest", latency_ms=20)
    worker = await stack.start_worker(routes=ROUTE)
    records = many(n, keys=300, prefix="term")
    expected = [f"term-{i}" for i in range(n)]
    async with Follower(stack.kafka) as f:
        await produce(stack.kafka, records)
        await until(lambda: f.tally.done(expected) >= n // 3, 60)
        assert await worker.stop(timeout=40) == 0
        await stack.start_worker(routes=ROUTE)
        assert await f.wait_for(expected, timeout=120, settle_s=2.0)
    assert f.tally.duplicates(expected) == 0
    stats = await stack.sim_stats("smpp_rest")
    assert stats["messages"] == n


async def test_kill_9_on_an_at_most_once_route_never_calls_the_provider_twice(stack: LocalStack) -> None:
    n, max_in_flight = size(8000, 2000), 500   # make test: the kill at n // 3 leaves 1,333 to send, more than in flight
    await stack.set_faults("smpp_rest", latency_ms=20)
    route = {"smpp": {**ROUTE["smpp"], "in_doubt": "fail"}}
    env = {"SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT": str(max_in_flight)}
    worker = await stack.start_worker(env=env, routes=route)
    expected = [f"amo-{i}" for i in range(n)]
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        await produce(stack.kafka, many(n, keys=300, prefix="amo"))
        await until(lambda: f.tally.done(expected) >= n // 3, 60)
        worker.kill()
        await worker.proc.wait()
        await stack.start_worker(env=env, routes=route)
        assert await f.wait_for(expected, timeout=120 + n / 100, settle_s=2.0)
    stats = await stack.sim_stats("smpp_rest")
    in_doubt = sum(1 for c in expected if any(r.get("reason") == "in-doubt" for r in f.tally.records[c]))
    dups = f.tally.duplicates(expected)
    print(f"\nkill -9, in_doubt=fail: inputs {n}, provider sends {stats['messages']}, ids sent twice "
          f"{stats['duplicate_ids']}, failed in-doubt {in_doubt}, duplicate terminal {dups}")
    assert f.tally.missing(expected) == []
    assert stats["duplicate_ids"] == 0                 # at most once: no message reached the provider twice
    assert in_doubt <= max_in_flight
    # a message whose accepted record was durable but whose ledger entry was not yet gets a second
    # terminal record (failed, in-doubt): without transactions the two topics are not written atomically.
    # With them (Apache Kafka) an accepted record is never committed without its ledger entry.
    assert dups == 0 if exactly_once() else dups <= in_doubt
