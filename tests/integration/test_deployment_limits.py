"""Limits that hold for the deployment, not the process, on Apache Kafka with real worker
processes: a route's rate limit is the account's, however many workers share it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from connector import contract as topics
from connector.devtools.simulators.base import max_in_window
from connector.kafka import topic_partitions
from connector.streams.plumbing import groupless_consumer, read_to_end
from connector.devtools.stack import Follower, LocalStack, produce
from tests.integration.helpers import Phases, many, metric_sum, size, until

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
    n = size(4000, 800)    # make test: enough backlog for the 3-worker steady phase (8 s at 40/s)
    # The margin covers the time from a grant to the arrival at the simulator. On this shared
    # 2-core machine a process is sometimes not scheduled for 100 ms and more (seen as several
    # requests arriving in the same millisecond), longer than the default 50 ms; the limit checked
    # at the simulator stays strict.
    route = {"smpp": {"provider": "smpp_rest", "rate_limit": str(rate), "concurrency": "8",
                      "rate_limit_margin_ms": str(margin_ms)}}
    # a rebalance lets every record taken finish at the old share first: keep that short. One
    # second of the rate in flight takes 1 s at the whole rate, 3 s at a worker's third of it (the
    # scale-down waits for that: twice as many took 6 s there)
    env = {"SMS_CONNECTOR_DISPATCH__MAX_IN_FLIGHT": str(size(rate * 2, rate))}
    expected = [f"scale-{i}" for i in range(n)]
    phases = Phases()
    await stack.start_worker(env=env, routes=route)
    phases.done("worker start")
    async with Follower(stack.kafka) as f:
        await produce(stack.kafka, many(n, keys=1200, prefix="scale"))
        await until(lambda: f.tally.done(expected) >= rate * 3, 60)
        phases.done("one worker sending")
        more = list(await asyncio.gather(*(stack.start_worker(env=env, routes=route) for _ in range(2))))
        workers = stack.workers
        phases.done("two more started")

        async def spread() -> bool:   # every worker has its partitions (4 each)
            owned = [await metric_sum(w.url, "sms_kafka_partitions_assigned") for w in workers]
            return owned == [4, 4, 4]
        for _ in range(300):
            if await spread():
                break
            await asyncio.sleep(0.1)
        assert await spread()
        phases.done("partitions spread")
        steady_from = time.monotonic() + 2     # past the fence (1 s + margin)
        await asyncio.sleep(2 + size(12, 6))
        steady_end = time.monotonic()
        phases.done("three workers steady")
        assert await asyncio.gather(*(w.stop(timeout=40) for w in more)) == [0, 0]
        phases.done("two stopped")
        left = len(f.tally.missing(expected))
        assert await f.wait_for(expected, timeout=60 + n / rate * 2, settle_s=1.0)
        phases.done(f"the last {left} sent, settle")
    sends = await sim_sends(stack)
    busiest = max_in_window(sends, 1.0)
    # three workers at their shares, from the end of the last fence to the scale-down: most of
    # the account's rate is used (the margin takes margin / (1 s + margin) of it)
    steady_rate = sent_between(sends, steady_from, steady_end) / (steady_end - steady_from)
    total_s = sends[-1][0] - sends[0][0]
    print(f"\nscale 1->3->1 at {rate}/s: {sum(k for _, k in sends)} messages in {total_s:.1f} s "
          f"({sum(k for _, k in sends) / total_s:.1f}/s with the rebalances), busiest 1 s window {busiest}, "
          f"three workers steady {steady_rate:.1f}/s; {phases}")
    assert f.tally.missing(expected) == [] and f.tally.duplicates(expected) == 0
    assert busiest <= rate
    assert steady_rate >= 0.9 * rate / (1 + margin_ms / 1000)


# -- spend budgets ----------------------------------------------------------------------------------

async def both_own_partitions(workers: list, each: int) -> None:  # type: ignore[type-arg]
    async def spread() -> bool:
        return [await metric_sum(w.url, "sms_kafka_partitions_assigned") for w in workers] == [each] * len(workers)
    for _ in range(600):
        if await spread():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the workers did not share the partitions")


def by_reason(tally, ids: list[str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    found: dict[str, int] = {}
    for c in ids:
        for r in tally.records.get(c, []):
            key = r.get("reason") or r.get("outcome", "")
            found[key] = found.get(key, 0) + 1
    return found


async def test_two_workers_share_one_budget_and_a_restart_keeps_what_was_spent(stack: LocalStack) -> None:
    budget = 60          # segments per hour for the deployment (5 per partition)
    route = {"smpp": {"provider": "smpp_rest", "budget_segments_per_hour": str(budget), "over_budget": "fail"}}
    phases = Phases()
    workers = list(await asyncio.gather(*(stack.start_worker(routes=route) for _ in range(2))))
    await both_own_partitions(workers, 6)
    phases.done("two workers start")
    first = [f"budget-{i}" for i in range(200)]
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        await produce(stack.kafka, many(200, keys=200, prefix="budget"))
        assert await f.wait_for(first, timeout=120, settle_s=1.0)
        phases.done("200 sent or failed, settle")
        spent = await metric_sum(workers[0].url, "sms_budget_segments_spent") + \
            await metric_sum(workers[1].url, "sms_budget_segments_spent")
        sent = (await stack.sim_stats("smpp_rest"))["messages"]
        outcomes = by_reason(f.tally, first)
        print(f"\ntwo workers, budget {budget}/h: provider calls {sent}, outcomes {outcomes}, "
              f"sms_budget_segments_spent summed over workers {spent:g}")
        assert sent <= budget                    # together, never over
        assert sent == budget                    # and all of it used (every worker had traffic)
        assert outcomes == {"accepted": budget, "budget": 200 - budget}
        assert spent == budget
        # a restart of the whole deployment: the figures come back from sms.budget
        assert await asyncio.gather(*(w.stop(timeout=40) for w in workers)) == [0, 0]
        phases.done("both stopped")
        again = await stack.start_worker(routes=route)
        phases.done("restart")
        second = [f"again-{i}" for i in range(30)]
        await produce(stack.kafka, many(30, keys=30, prefix="again"))
        assert await f.wait_for(second, timeout=120, settle_s=1.0)
        phases.done("30 more failed, settle")
        print(phases)
        assert by_reason(f.tally, second) == {"budget": 30}
        assert (await stack.sim_stats("smpp_rest"))["messages"] == budget
        assert await metric_sum(again.url, "sms_budget_segments_spent") == budget


async def retry_records(stack: LocalStack) -> list:  # type: ignore[type-arg]
    found: list = []  # type: ignore[type-arg]
    consumer = groupless_consumer(stack.kafka)
    await consumer.start()
    try:
        name = topics.spec("retry").name
        parts = await topic_partitions(consumer, name)
        await read_to_end(consumer, {tp: None for tp in parts}, found.append)
    finally:
        await consumer.stop()
    return found


async def test_held_messages_wait_durably_for_the_next_window_and_survive_a_kill(stack: LocalStack) -> None:
    budget = 24
    next_hour = (int(time.time() // 3600) + 1) * 3600
    route = {"smpp": {"provider": "smpp_rest", "budget_segments_per_hour": str(budget), "over_budget": "hold"}}
    # the killed worker's partitions move when its session expires: the broker's least (6 s) in make test
    env = {"SMS_CONNECTOR_KAFKA__SESSION_TIMEOUT_S": str(size(10, 6))}
    phases = Phases()
    worker = await stack.start_worker(routes=route, env=env)
    phases.done("worker start")
    ids = [f"hold-{i}" for i in range(60)]
    async with Follower(stack.kafka) as f:
        f.tally.keep_records = True
        await produce(stack.kafka, many(60, keys=60, prefix="hold"))
        await until(lambda: f.tally.done(ids) >= budget, 60)
        phases.done(f"{budget} sent")
        for _ in range(200):      # the other 36 are handed off to the retry topic
            held = [r for r in await retry_records(stack)
                    if dict(r.headers).get("sms.retry.reason") == b"budget"]
            if len(held) >= 60 - budget:
                break
            await asyncio.sleep(0.2)
        phases.done(f"{60 - budget} held")
        held_metric = await metric_sum(worker.url, "sms_budget_held_total")
        worker.kill()                                  # kill -9 while they wait
        await worker.proc.wait()
        restarted = await stack.start_worker(routes=route, env=env)
        phases.done("kill, restart")
        for _ in range(300):       # the new worker re-reads them and holds them again until they are due
            if await metric_sum(restarted.url, "sms_outbound_retry_waiting") == 60 - budget:
                break
            await asyncio.sleep(0.1)
        rewaiting = await metric_sum(restarted.url, "sms_outbound_retry_waiting")
        phases.done("held again")
        await asyncio.sleep(3)
    dues = {int(dict(r.headers)["sms.retry.due-at"]) // 1000 for r in held}
    print(f"\nhold, budget {budget}/h: accepted {f.tally.done(ids)}, held {len(held)} (metric {held_metric:g}), "
          f"due at {sorted(dues)} (next hour {next_hour}), provider calls "
          f"{(await stack.sim_stats('smpp_rest'))['messages']}; {phases}")
    assert f.tally.done(ids) == budget and by_reason(f.tally, ids) == {"accepted": budget}
    assert len(held) == 60 - budget and held_metric == 60 - budget
    assert rewaiting == 60 - budget                  # none lost by the kill
    assert dues == {next_hour}                       # held until the window ends, not sooner
    assert (await stack.sim_stats("smpp_rest"))["messages"] == budget   # nothing sent early, after the kill too
