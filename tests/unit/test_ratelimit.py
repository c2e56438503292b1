"""ratelimit: the strict token bucket, AIMD and the concurrency cap, against a fake clock."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.ratelimit import AimdRate, RouteLimiter, TokenBucket
from tests.fakes import FakeTime


# -- TokenBucket: try_take ------------------------------------------------------------------------

@pytest.mark.parametrize("rate, capacity, takes, expected", [
    # starts full: capacity segments at once, then refused with the refill time
    (10, 2, [1, 1, 1], [0, 0, 0.1]),
    (10, 2, [2, 1], [0, 0.1]),
    # the capacity follows the rate by default: 10 % of a second, at least 1
    (100, None, [10, 1], [0, 0.01]),
    (5, None, [1, 1], [0, 0.2]),
    # n > capacity: granted from a full bucket, leaving debt to repay (3 - 1 = 2 segments of debt)
    (5, 1, [3, 1], [0, 0.6]),
    # n > the whole window (5/s): granted into an empty window; the debt (9) takes 2 s to repay
    (5, 1, [10, 1], [0, 2.0]),
    # the window, not the tokens, refuses: 10 segments in the last second at 10/s
    (10, 10, [10, 1], [0, 1.0]),
])
def test_try_take(rate: float, capacity: float | None, takes: list[int], expected: list[float]) -> None:
    clock = FakeTime()
    bucket = TokenBucket(rate, capacity, clock=clock)
    got = [bucket.try_take(n) for n in takes]
    assert got == pytest.approx(expected, abs=1e-5)


def test_a_full_bucket_plus_refill_cannot_exceed_the_rate_in_one_second() -> None:
    # capacity 10 at 10/s: a plain token bucket would grant 10 at t=0 and 10 more by t=1.
    clock = FakeTime(0.0)
    bucket = TokenBucket(10, 10, clock=clock)
    assert bucket.try_take(10) == 0
    clock.now = 0.99
    assert bucket.try_take(1) > 0          # tokens are back (9.9), the window is full
    clock.now = 1.0
    assert bucket.try_take(1) > 0          # the closed window [0, 1] still holds the first 10
    clock.now = 1.0 + 2e-6
    assert bucket.try_take(10) == 0


def test_refusal_wait_is_exact_and_positive() -> None:
    clock = FakeTime()
    bucket = TokenBucket(4, 1, clock=clock)
    assert bucket.try_take(1) == 0
    wait = bucket.try_take(1)
    assert wait == pytest.approx(0.25)
    clock.now += wait
    assert bucket.try_take(1) == 0


def test_rate_changes_apply_to_the_window_at_once() -> None:
    clock = FakeTime(0.0)
    bucket = TokenBucket(10, 10, clock=clock)
    assert bucket.try_take(6) == 0
    bucket.set_rate(5)                     # the window already holds 6 > 5
    clock.now = 0.5
    assert bucket.try_take(1) == pytest.approx(0.5 + 1e-6, abs=1e-5)
    assert bucket.capacity == 10           # a fixed capacity stays
    follows = TokenBucket(100, clock=clock)
    follows.set_rate(20)
    assert follows.capacity == 2


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": -1}, {"rate": 5, "capacity": 0.5},
                                    {"rate": 5, "window_s": 0}])
def test_invalid_bucket(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TokenBucket(**kwargs)  # type: ignore[arg-type]


# -- TokenBucket: the strict window, as a property -------------------------------------------------

def serve_fifo(bucket: TokenBucket, clock: FakeTime, arrivals: list[tuple[float, int]],
               rate_changes: dict[int, float] | None = None) -> list[tuple[float, int, float]]:
    """Serve arrivals (time, segments) first come first served, as ``acquire`` does: the head
    takes tokens or sleeps the time ``try_take`` asked for. Returns (time, segments, limit)."""
    pending = deque(sorted(arrivals))
    queue: deque[int] = deque()
    grants: list[tuple[float, int, float]] = []
    rate_changes = rate_changes or {}
    for _ in range(100_000):
        if not queue and not pending:
            return grants
        if not queue:
            clock.now = max(clock.now, pending[0][0])
        while pending and pending[0][0] <= clock.now:
            queue.append(pending.popleft()[1])
        wait = bucket.try_take(queue[0])
        if wait == 0:
            grants.append((clock.now, queue.popleft(), bucket.limit))
            if len(grants) in rate_changes:
                bucket.set_rate(rate_changes[len(grants)])
        else:
            assert wait > 0
            clock.now += wait
    raise AssertionError("the bucket stopped granting")


def assert_strict(grants: list[tuple[float, int, float]], window_s: float = 1.0) -> None:
    """No closed interval [s, s + window_s] holds more than the limit, unless it holds a
    single message larger than the limit and nothing else. Checking intervals that start at a
    grant is enough: the count can only change at a grant."""
    times = [g[0] for g in grants]
    for i, (start, _, _) in enumerate(grants):
        j = i
        total = 0
        while j < len(grants) and times[j] <= start + window_s:
            total += grants[j][1]
            j += 1
        inside = grants[i:j]
        limit = max(g[2] for g in inside)
        alone = len(inside) == 1
        assert total <= limit + 1e-6 or alone, (start, total, limit, inside)


arrival_patterns = st.lists(
    st.tuples(st.floats(0, 0.5, allow_nan=False),                   # gap since the previous arrival
              st.integers(1, 12)),                                   # segments
    min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(rate=st.sampled_from([0.5, 1, 2.5, 3, 5, 10, 37, 100]),
       capacity=st.one_of(st.none(), st.floats(1, 200)),
       pattern=arrival_patterns)
def test_no_window_exceeds_the_rate(rate: float, capacity: float | None,
                                    pattern: list[tuple[float, int]]) -> None:
    clock = FakeTime(0.0)
    bucket = TokenBucket(rate, capacity, clock=clock)
    t, arrivals = 0.0, []
    for gap, n in pattern:
        t += gap
        arrivals.append((t, n))
    grants = serve_fifo(bucket, clock, arrivals)
    assert [n for _, n, _ in grants] == [n for _, n in sorted(arrivals)]   # all served, in order
    assert_strict(grants)
    # and nobody starves: after the previous grant, the head waits at most for the previous
    # message's debt plus its own tokens, or for the window to empty
    total = sum(n for _, n in arrivals)
    assert grants[-1][0] <= arrivals[-1][0] + 2 * total / rate + len(arrivals) * (1.0 + 1e-3)


@settings(max_examples=100, deadline=None)
@given(pattern=arrival_patterns,
       changes=st.dictionaries(st.integers(1, 60), st.sampled_from([1, 2, 5, 7.5, 10, 20]), max_size=6))
def test_no_window_exceeds_the_rate_while_it_changes(pattern: list[tuple[float, int]],
                                                     changes: dict[int, float]) -> None:
    clock = FakeTime(0.0)
    bucket = TokenBucket(20, clock=clock)
    t, arrivals = 0.0, []
    for gap, n in pattern:
        t += gap
        arrivals.append((t, n))
    grants = serve_fifo(bucket, clock, arrivals, changes)
    assert len(grants) == len(arrivals)
    assert_strict(grants)


# -- TokenBucket: acquire --------------------------------------------------------------------------

async def test_acquire_is_first_come_first_served() -> None:
    # 1-segment messages every 0.1 s would keep the 5/s bucket from ever being full: without a
    # queue the 5-segment message (which needs a full bucket) would wait forever.
    clock = FakeTime(0.0)
    bucket = TokenBucket(5, 1, clock=clock, sleep=clock.sleep)
    order: list[str] = []

    async def send(name: str, n: int) -> None:
        await bucket.acquire(n)
        order.append(name)

    jobs = [clock.at(0.0, send("s0", 1)), clock.at(0.05, send("big", 5))]
    jobs += [clock.at(0.1 * i, send(f"s{i}", 1)) for i in range(1, 8)]
    await clock.run(*jobs)
    assert order == ["s0", "big", *(f"s{i}" for i in range(1, 8))]


async def test_acquire_returns_the_wait() -> None:
    clock = FakeTime(0.0)
    bucket = TokenBucket(2, 1, clock=clock, sleep=clock.sleep)
    waited = await clock.run(bucket.acquire(1), bucket.acquire(1), bucket.acquire(1))
    assert waited == pytest.approx([0.0, 0.5, 1.0], abs=1e-4)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    clock = FakeTime(0.0)
    bucket = TokenBucket(1, 1, clock=clock, sleep=clock.sleep)
    assert bucket.try_take(1) == 0
    stuck = asyncio.ensure_future(bucket.acquire(1))
    await asyncio.sleep(0)
    stuck.cancel()
    [waited] = await clock.run(bucket.acquire(1))
    assert waited == pytest.approx(1.0, abs=1e-4)
    assert stuck.cancelled()


# -- AimdRate --------------------------------------------------------------------------------------

def test_aimd_halves_once_per_cooldown_and_recovers_linearly() -> None:
    clock = FakeTime(0.0)
    aimd = AimdRate(100, 10, increase_per_s=5, cooldown_s=1.0, clock=clock)
    assert aimd.on_throttled() is True
    assert aimd.rate == 50
    clock.now = 0.5
    assert aimd.on_throttled() is False              # same overload: in-flight calls' 429s
    assert aimd.on_success() is False                # no growth during the cool-down
    assert aimd.rate == 50
    # successes every 0.25 s after the cool-down: +5 per second, linear
    rates = []
    for step in range(1, 13):
        clock.now = 1.0 + 0.25 * step
        aimd.on_success()
        rates.append(aimd.rate)
    assert rates == pytest.approx([50 + 1.25 * s for s in range(1, 13)])
    clock.now = 5.0
    assert aimd.on_throttled() is True
    assert aimd.rate == pytest.approx(65 * 0.5)


@pytest.mark.parametrize("throttles, expected", [
    (1, 50.0), (2, 25.0), (3, 12.5), (4, 10.0), (8, 10.0),   # floor at min_rate
])
def test_aimd_floor(throttles: int, expected: float) -> None:
    clock = FakeTime(0.0)
    aimd = AimdRate(100, 10, clock=clock)
    for i in range(throttles):
        clock.now = 2.0 * i
        aimd.on_throttled()
    assert aimd.rate == expected


def test_aimd_retry_after_lengthens_the_cooldown() -> None:
    clock = FakeTime(0.0)
    aimd = AimdRate(100, clock=clock)
    aimd.on_throttled(retry_after=5.0)
    clock.now = 4.9
    assert aimd.on_throttled() is False
    assert aimd.on_success() is False
    clock.now = 5.1
    assert aimd.on_throttled() is True
    assert aimd.rate == 25


def test_aimd_caps_at_max_and_an_idle_gap_counts_one_second() -> None:
    clock = FakeTime(0.0)
    aimd = AimdRate(100, increase_per_s=5, clock=clock)
    aimd.on_throttled()
    clock.now = 600.0                               # ten idle minutes, then one success
    aimd.on_success()
    assert aimd.rate == 55
    for step in range(1, 100):
        clock.now = 600.0 + step
        aimd.on_success()
    assert aimd.rate == 100
    assert AimdRate(100, clock=clock).min_rate == 10          # default floor: 10 %
    assert AimdRate(5, 50, clock=clock).min_rate == 5         # a floor above the max is the max


# -- RouteLimiter ----------------------------------------------------------------------------------

async def test_concurrency_cap_is_honoured() -> None:
    limiter = RouteLimiter(None, concurrency=3)
    inside = peak = 0

    async def call() -> None:
        nonlocal inside, peak
        async with limiter.slot(1):
            inside += 1
            peak = max(peak, inside)
            assert limiter.in_flight == inside
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            inside -= 1

    await asyncio.gather(*(call() for _ in range(20)))
    assert peak == 3
    assert limiter.in_flight == 0


async def test_unlimited_route_never_waits() -> None:
    limiter = RouteLimiter(0, concurrency=2)
    assert limiter.rate is None and limiter.bucket is None and limiter.max_call_segments is None
    for _ in range(1000):
        async with limiter.slot(10) as waited:
            assert waited == 0
    assert limiter.on_throttled(1.0) is False
    assert limiter.on_success() is False


async def test_limited_slots_follow_the_rate_and_aimd() -> None:
    clock = FakeTime(0.0)
    limiter = RouteLimiter(10, min_rate=2, concurrency=4, capacity=1, clock=clock, sleep=clock.sleep)
    granted: list[float] = []

    async def call(segments: int) -> None:
        async with limiter.slot(segments):
            granted.append(clock.now)

    await clock.run(*(call(1) for _ in range(10)))
    assert granted[-1] == pytest.approx(0.9, abs=1e-3)          # paced at 10/s
    assert limiter.max_call_segments == 10
    assert limiter.on_throttled(None) is True
    assert limiter.rate == 5 and limiter.bucket is not None and limiter.bucket.rate == 5
    assert limiter.max_call_segments == 5
    granted.clear()
    start = clock.now
    await clock.run(*(call(1) for _ in range(5)))
    assert granted[-1] - start >= 0.8 - 1e-3                     # paced at 5/s now
    clock.now += 1.5
    assert limiter.on_success() is True                          # +0.5/s per second of success
    assert limiter.rate == pytest.approx(5.5)
    assert limiter.bucket.rate == pytest.approx(5.5)


async def test_slot_zero_takes_only_a_place() -> None:
    clock = FakeTime(0.0)
    limiter = RouteLimiter(1, concurrency=1, clock=clock, sleep=clock.sleep)
    async with limiter.slot(1):
        pass
    async with limiter.slot(0) as waited:                        # the bucket is empty: no wait
        assert waited == 0


# -- RouteLimiter: a share of the deployment's rate ------------------------------------------------

def test_a_share_scales_the_rate_its_bounds_and_the_burst() -> None:
    clock = FakeTime()
    limiter = RouteLimiter(120, min_rate=12, clock=clock, sleep=clock.sleep)
    limiter.set_share(3 / 12, fence=False)
    assert limiter.rate == pytest.approx(30)
    assert limiter.bucket is not None and limiter.aimd is not None
    assert limiter.bucket.limit == pytest.approx(30) and limiter.bucket.capacity == pytest.approx(3)
    assert limiter.aimd.min_rate == pytest.approx(3)
    limiter.on_throttled()                       # halved within the share...
    assert limiter.rate == pytest.approx(15)
    limiter.set_share(6 / 12, fence=False)       # ...and the new share keeps the position
    assert limiter.rate == pytest.approx(30) and limiter.aimd.max_rate == pytest.approx(60)


def test_shares_of_all_workers_add_up_to_the_account_rate() -> None:
    # 12 partitions over 5 workers (range assignment: 3, 3, 2, 2, 2)
    limiters = [RouteLimiter(100) for _ in range(5)]
    for limiter, owned in zip(limiters, [3, 3, 2, 2, 2]):
        limiter.set_share(owned / 12, fence=False)
    assert sum(lim.rate or 0 for lim in limiters) == pytest.approx(100)


def test_an_assignment_fences_one_window_even_with_the_own_grants_ageing_out() -> None:
    clock = FakeTime(0.0)
    limiter = RouteLimiter(10, clock=clock, sleep=clock.sleep)
    bucket = limiter.bucket
    assert bucket is not None
    assert bucket.try_take(1) == 0               # an old-generation grant at t=0
    clock.now = 0.5
    limiter.set_share(0.5)                       # assigned at t=0.5: the others' grants are unseen
    clock.now = 1.2                              # the own grant aged out; the fence has not
    assert bucket.try_take(1) > 0
    clock.now = 1.5 + 2e-6
    assert bucket.try_take(1) == 0


async def test_share_zero_closes_the_limiter_until_a_share_comes_back() -> None:
    clock = FakeTime(0.0)
    limiter = RouteLimiter(10, clock=clock, sleep=clock.sleep)
    limiter.set_share(0)
    entered: list[float] = []

    async def send() -> None:
        async with limiter.slot(1):
            entered.append(clock.now)

    task = asyncio.ensure_future(send())
    for _ in range(20):
        await asyncio.sleep(0)
    assert entered == []                         # no share, no grant
    assert limiter.rate == 0                     # what sms_route_rate_limit shows
    clock.now = 5.0
    limiter.set_share(1.0)                       # the fence: a window before the first grant
    await clock.run(task)
    assert entered and entered[0] > 6.0


def test_an_unlimited_route_ignores_its_share() -> None:
    limiter = RouteLimiter(None)
    limiter.set_share(0)
    assert limiter.rate is None and limiter.bucket is None


def test_the_margin_widens_the_hard_window_and_paces_below_the_rate() -> None:
    clock = FakeTime(0.0)
    bucket = TokenBucket(10, 10, margin_s=0.05, clock=clock)
    assert bucket.try_take(10) == 0
    clock.now = 1.0 + 2e-6                # one second later, but inside 1 s + margin
    assert bucket.try_take(1) == pytest.approx(0.05, abs=1e-5)
    clock.now = 1.05 + 2e-6
    assert bucket.try_take(1) == 0
    # the refill is 10 * 1 / 1.05 per second: one token takes 0.105 s
    assert bucket.try_take(10) > 0
    paced = TokenBucket(10, 1, margin_s=0.05, clock=FakeTime(0.0))
    assert paced.try_take(1) == 0
    assert paced.try_take(1) == pytest.approx(0.105, abs=1e-5)
