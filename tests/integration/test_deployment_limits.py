"""Limits that hold for the deployment, not the process, on Apache Kafka with real worker
processes: a route's rate limit is the account's, however many workers share it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from connector.devtools.simulators.base import max_in_window
from connector.devtools.stack import Follower, LocalStack, produce
from tests.integration.helpers import many, metric_sum, size, until

pytestmark = pytest.mark.integration


async def sim_sends(stack: LocalStack, name: str = "smpp_rest") -> list[tuple[float, int]]:
    """Every send request's arrival time at the simulator (monotonic, the machine's clock) and
    its message count."""
    async with aiohttp.ClientSession() as s, s.get(stack.simulators[name].url + "/_sim/sends") as r:
        return [(t, n) for t, n in orjson.loads(await r.read())]


def sent_between(sends: list[tuple[float, int]], start: float, end: float) -> int:
    return sum(n for t, n in sends if start <= t <= end)


async def test_scaling_workers_under_load_keeps_the_route_under_its_account_limit(stack: LocalStack) -> None:
    # 1 -> 3 -> 1 workers sharing one route of 40 segments/s (12 partitions: each worker takes
    # 40 * owned/12). Before, each worker sent 40/s: three made 120/s.
    rate, margin_ms = 40, 250
    n = size(4000, 2000)
    # The margin covers the time from a grant to the arrival at the simulator. On this shared
    # 2-core machine a process is sometimes not scheduled for 100 ms and more (seen as several
    # requests arriving in the same millisecond), longer than the default 50 ms; the limit checked
    # at the simulator stays strict.
    route = {"smpp": {"provider": "smpp_rest", "rate_limit": str(rate), "concurrency": "8",
                      "rate_limit_margin_ms": str(margin_ms)}}
    # a rebalance lets every record taken finish at the old share first: keep that to ~2 s
    env = {"SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT": str(rate * 2)}
    expected = [f"scale-{i}" for i in range(n)]
    await stack.start_worker(env=env, routes=route)
    async with Follower(stack.kafka) as f:
        await produce(stack.kafka, many(n, keys=1200, prefix="scale"))
        await until(lambda: f.tally.done(expected) >= rate * 3, 60)
        more = [await stack.start_worker(env=env, routes=route) for _ in range(2)]
        workers = stack.workers

        async def spread() -> bool:   # every worker has its partitions (4 each)
            owned = [await metric_sum(w.url, "sms_kafka_partitions_assigned") for w in workers]
            return owned == [4, 4, 4]
        for _ in range(300):
            if await spread():
                break
            await asyncio.sleep(0.1)
        assert await spread()
        steady_from = time.monotonic() + 2     # past the fence (1 s + margin)
        await asyncio.sleep(2 + size(12, 6))
        steady_end = time.monotonic()
        for w in more:
            assert await w.stop(timeout=40) == 0
        assert await f.wait_for(expected, timeout=60 + n / rate * 2, settle_s=1.0)
    sends = await sim_sends(stack)
    busiest = max_in_window(sends, 1.0)
    # three workers at their shares, from the end of the last fence to the scale-down: most of
    # the account's rate is used (the margin takes margin / (1 s + margin) of it)
    steady_rate = sent_between(sends, steady_from, steady_end) / (steady_end - steady_from)
    total_s = sends[-1][0] - sends[0][0]
    print(f"\nscale 1->3->1 at {rate}/s: {sum(k for _, k in sends)} messages in {total_s:.1f} s "
          f"({sum(k for _, k in sends) / total_s:.1f}/s with three rebalances), busiest 1 s window {busiest}, "
          f"three workers steady {steady_rate:.1f}/s")
    assert f.tally.missing(expected) == [] and f.tally.duplicates(expected) == 0
    assert busiest <= rate
    assert steady_rate >= 0.9 * rate / (1 + margin_ms / 1000)
