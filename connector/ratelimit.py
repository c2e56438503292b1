"""How fast one route may send: a strict token bucket in segments per second, an AIMD rate that
backs off on 429 and recovers, and a cap on calls in flight, combined in ``RouteLimiter``.

One ``RouteLimiter`` per route per worker process, owned by the route's ``RouteSender``, which
every partition of the worker shares. The configured rate is the *account's* limit, for the whole
deployment: each worker enforces its *share* of it (``set_share``; the dispatcher sets the share
to the fraction of ``sms.outbound``'s partitions the worker owns, on every rebalance), so the
shares of all workers add up to at most 1 (see "Deployment share" below). No I/O. Time comes from an injected ``clock`` and waits from an injected
``sleep``, so every rule is a unit test with a fake clock.

**The limit is strict.** In any interval of ``window_s`` (1 s), open or closed, the bucket grants
at most ``rate * window_s`` segments. A plain token bucket cannot promise that: a full bucket of
capacity ``C`` plus one window of refill lets ``C + rate`` segments through in one second, and
starting empty only delays the problem until the first idle second. So the bucket has two parts:

- *tokens* (``capacity``, refilled at ``rate``) spread the grants out. The default capacity is
  ``max(1, 0.1 s * rate)``: a short burst, then pacing. Paced traffic still keeps under the limit
  when the network or a batch linger moves a request by a few milliseconds, and a one-second
  burst would not.
- a *ledger* of the grants made in the last ``window_s`` is the hard limit. A grant is refused
  when it would put more than ``rate * window_s`` segments into the window that ends now. The
  count in a window can only grow at a grant, and every grant checks the window that ends at
  it, so no window can ever hold more. The ledger holds one entry per grant in the window (at most
  ``rate * window_s`` entries).

Rates below one segment per window round down: at 2.5 segments/s a window holds 2 segments.

**The provider's clock.** The bucket counts grants by the worker's clock; the provider counts
requests when they arrive. The time from a grant to the arrival (the membership check, building
the request, the network, both event loops) varies by milliseconds, or tens of them on a busy
machine, and two requests granted just over a window apart can arrive just under one apart. So
the ledger's window is ``window_s + margin_s`` (``routes.<name>.rate_limit_margin_ms``): grants
in any ``window_s + margin_s`` hold at most ``rate * window_s``, and the provider sees no window
over the limit as long as the delay varies by less than the margin. Tokens refill at
``rate * window_s / (window_s + margin_s)`` so pacing, not the ledger, binds in steady traffic.
The cost is that share of the rate (50 ms: 4.8 %).

**Messages larger than the bucket.** A message is one provider request and cannot be split here.
A message of ``n > capacity`` segments is granted when the bucket is *full* and leaves the
bucket in debt (negative tokens). The refill pays the debt back before anything else is granted,
so the long-run rate holds and a big message never waits for tokens that a small bucket cannot
hold. A message larger than the whole window (``n > rate * window_s``) is granted only into an
*empty* window and is then alone in every window that contains it. So, strictly, a window holds at
most ``max(rate * window_s, the largest single message)``. Keep ``max_segments`` at or below the
rate if that matters.

**Deployment share.** ``set_share(s)`` scales the rate, its AIMD bounds and the bucket's capacity
by ``s``; ``s = 0`` closes the limiter (slots wait until a share is given again). Kafka's eager
rebalance (aiokafka has no other) revokes *every* partition of every member before any member is
given its new assignment, so the old generation's grants all happen before the new generation's
first assignment. But a worker's window knows only its own grants: right after an assignment the
other workers' grants of the last second are invisible to it, and a new share used at once could
add up with them to more than the limit in one window. So an assignment *fences* the bucket:
its window is treated as full for one ``window_s`` (``fence``), and no window at the provider
holds grants of two generations. The cost is one window without sends per rebalance.

**Fairness.** ``acquire`` is first come, first served: waiters queue on a FIFO lock and only the
head of the queue takes tokens. A 10-segment message waiting for a full bucket is not overtaken
by a stream of 1-segment messages (which would otherwise starve it forever).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

BURST_S = 0.1            # default bucket capacity, in seconds of the current rate (at least 1 segment)
MIN_WAIT_S = 1e-6        # a refusal always asks for a positive wait (0 means "granted")
_EPS = 1e-9              # float slack when comparing token and segment counts


class TokenBucket:
    """A token bucket in segments per second, with a sliding-window ledger that makes the rate a
    hard limit (see the module docstring). ``capacity=None`` makes the capacity follow the rate
    (``max(1, BURST_S * rate)``). A fixed capacity stays the same when the rate changes.
    """

    def __init__(self, rate: float, capacity: float | None = None, *, window_s: float = 1.0,
                 margin_s: float = 0.0, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r} (use no bucket for 'unlimited')")
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be at least 1 segment, got {capacity!r}")
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s!r}")
        if margin_s < 0:
            raise ValueError(f"margin_s must not be negative, got {margin_s!r}")
        self.window_s = window_s
        self.margin_s = margin_s
        self._span = window_s + margin_s       # the ledger's window: the limit holds over this
        self._pace = window_s / self._span     # tokens refill at rate * pace, so pacing binds first
        self._clock = clock
        self._sleep = sleep
        self._fixed_capacity = capacity
        self._rate = float(rate)
        self.capacity = self._capacity_for(self._rate)
        self._tokens = self.capacity          # starts full; negative while a big message is repaid
        self._stamp = clock()
        self._ledger: deque[tuple[float, float]] = deque()   # (granted at, segments), oldest first
        self._in_window = 0.0
        self._queue = asyncio.Lock()          # FIFO: only the head of the queue takes tokens

    # -- state ---------------------------------------------------------------------------------
    @property
    def rate(self) -> float:
        return self._rate

    @property
    def limit(self) -> float:
        """Segments allowed in any ``window_s`` interval at the current rate."""
        return self._rate * self.window_s

    @property
    def tokens(self) -> float:
        self._refill(self._clock())
        return self._tokens

    def set_rate(self, rate: float) -> None:
        """Change the rate from now on (tokens earned so far were earned at the old rate)."""
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self._refill(self._clock())
        self._rate = float(rate)
        self.capacity = self._capacity_for(self._rate)
        self._tokens = min(self._tokens, self.capacity)

    def fence(self) -> None:
        """Treat the window that ends now as full: nothing is granted for the next ``window_s``
        (other processes may have used it; see "Deployment share")."""
        now = self._clock()
        self._refill(now)
        self._prune(now)
        # a whole window's worth on top of what is there: even this worker's own older grants
        # ageing out leave no room before now + window_s
        filler = max(self.limit, 1.0)
        self._ledger.append((now, filler))
        self._in_window += filler

    # -- taking --------------------------------------------------------------------------------
    def try_take(self, n: float) -> float:
        """Take ``n`` segments now and return 0, or take nothing and return the seconds until
        ``n`` could be taken (always > 0). Ignores waiters: ``acquire`` is the fair way in."""
        if n <= 0:
            return 0.0
        now = self._clock()
        self._refill(now)
        self._prune(now)
        wait = 0.0
        need = min(n, self.capacity)          # n > capacity: a full bucket, then debt
        if self._tokens + _EPS < need:
            wait = (need - self._tokens) / (self._rate * self._pace)
        limit = self.limit
        if self._in_window > 0 and self._in_window + n > limit + _EPS:
            # Wait until enough of the window's grants have aged out. A message larger than the
            # whole window needs an empty one.
            excess = self._in_window if n > limit + _EPS else self._in_window + n - limit
            freed = 0.0
            for granted_at, k in self._ledger:
                freed += k
                if freed + _EPS >= excess:
                    # An entry stays in the closed window [now - W, now] until now > t + W:
                    # wake just after that, never on the boundary itself.
                    wait = max(wait, granted_at + self._span - now + MIN_WAIT_S)
                    break
        if wait > 0:
            return max(wait, MIN_WAIT_S)
        self._tokens -= n
        self._ledger.append((now, n))
        self._in_window += n
        return 0.0

    async def acquire(self, n: float) -> float:
        """Wait, first come first served, until ``n`` segments are granted. Returns the seconds
        waited (queueing behind other waiters included)."""
        if n <= 0:
            return 0.0
        start = self._clock()
        async with self._queue:
            while (wait := self.try_take(n)) > 0:
                # A rate change during the sleep is seen at the next try: a lower rate makes the
                # head wait again, a higher one is used from the next grant.
                await self._sleep(wait)
        return self._clock() - start

    # -- internals -----------------------------------------------------------------------------
    def _capacity_for(self, rate: float) -> float:
        if self._fixed_capacity is not None:
            return float(self._fixed_capacity)
        return max(1.0, rate * BURST_S)

    def _refill(self, now: float) -> None:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self._rate * self._pace)
            self._stamp = now

    def _prune(self, now: float) -> None:
        # The window is closed, [now - W, now]: an entry leaves only once now > t + W.
        ledger = self._ledger
        while ledger and ledger[0][0] + self._span < now:
            self._in_window -= ledger.popleft()[1]
        if not ledger:
            self._in_window = 0.0             # no float residue from repeated sums


class AimdRate:
    """A rate that halves on throttling and climbs back linearly while calls succeed
    (additive increase, multiplicative decrease, as TCP does with its window).

    - ``on_throttled(retry_after)``: ``rate *= beta`` (not below ``min_rate``), at most once per
      cool-down: ``cooldown_s``, or the provider's Retry-After when longer (capped at
      ``max_cooldown_s``). The many 429s from one overload, answered to the calls already in
      flight, count as one signal.
    - ``on_success()``: after the cool-down, ``rate += increase_per_s`` per second of success, up
      to ``max_rate``. One call credits at most ``max_credit_s`` seconds, so an idle route does
      not return from a long pause at full speed with a single success.

    Defaults: ``min_rate`` 10 % of ``max_rate``; ``increase_per_s`` 5 % of ``max_rate`` per
    second, so a halved rate is back at the maximum after about 10 s without 429s.
    """

    def __init__(self, max_rate: float, min_rate: float | None = None, *, beta: float = 0.5,
                 increase_per_s: float | None = None, cooldown_s: float = 1.0, max_cooldown_s: float = 60.0,
                 max_credit_s: float = 1.0, clock: Clock = time.monotonic) -> None:
        if max_rate <= 0:
            raise ValueError(f"max_rate must be positive, got {max_rate!r}")
        if not 0 < beta < 1:
            raise ValueError(f"beta must be in (0, 1), got {beta!r}")
        self.max_rate = float(max_rate)
        floor = self.max_rate * 0.1 if min_rate is None else min_rate
        self.min_rate = min(self.max_rate, max(floor, 1e-6))
        self.beta = beta
        self.increase_per_s = self.max_rate * 0.05 if increase_per_s is None else increase_per_s
        self.cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.max_credit_s = max_credit_s
        self._clock = clock
        self.rate = self.max_rate
        self._calm_from = -math.inf       # no decrease before this; growth starts here
        self._last_success = -math.inf

    def rescale(self, max_rate: float) -> None:
        """New bounds (a share of an account's rate): ``min_rate`` and the additive increase
        keep their proportion to ``max_rate``; the caller places ``rate`` within them."""
        if max_rate <= 0:
            raise ValueError(f"max_rate must be positive, got {max_rate!r}")
        factor = max_rate / self.max_rate
        self.max_rate = float(max_rate)
        self.min_rate = min(self.max_rate, max(self.min_rate * factor, 1e-6))
        self.increase_per_s *= factor
        self.rate = min(self.max_rate, max(self.min_rate, self.rate * factor))

    def on_throttled(self, retry_after: float | None = None) -> bool:
        """A 429 (or the provider's rate-limit answer). True when the rate went down."""
        now = self._clock()
        if now < self._calm_from:
            return False
        self.rate = max(self.min_rate, self.rate * self.beta)
        hold = max(self.cooldown_s, retry_after or 0.0)
        self._calm_from = now + min(hold, self.max_cooldown_s)
        return True

    def on_success(self) -> bool:
        """A call the provider took. True when the rate went up."""
        now = self._clock()
        since = max(self._calm_from, self._last_success)
        self._last_success = now
        if now <= self._calm_from or self.rate >= self.max_rate or since == -math.inf:
            return False
        credit = min(now - since, self.max_credit_s)
        if credit <= 0:
            return False
        self.rate = min(self.max_rate, self.rate + self.increase_per_s * credit)
        return True


class RouteLimiter:
    """Everything that limits one route: the concurrency cap, the strict token bucket and the
    AIMD rate it follows. ``rate`` None or 0 means unlimited: no bucket and no AIMD, only the
    concurrency cap.

    Use: ``async with limiter.slot(segments) as waited:`` around one provider call. The slot takes
    a concurrency place *first* and then the tokens, so a grant happens just before the request
    goes out. Waiting for tokens before a place was free would let granted requests pile up
    behind the semaphore and leave in a burst. ``slot(0)`` takes only a place (for calls that are
    not sends). After the call: ``on_throttled(retry_after)`` on a 429, ``on_success()`` when the
    provider took it.
    """

    def __init__(self, rate: float | None, *, min_rate: float | None = None, concurrency: int = 64,
                 capacity: float | None = None, window_s: float = 1.0, margin_s: float = 0.0, beta: float = 0.5,
                 increase_per_s: float | None = None, cooldown_s: float = 1.0,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency!r}")
        self.concurrency = concurrency
        self._sem = asyncio.Semaphore(concurrency)
        self._in_flight = 0
        self.aimd: AimdRate | None = None
        self.bucket: TokenBucket | None = None
        self.account_rate = float(rate or 0.0)      # the deployment's limit; this worker has ``share`` of it
        self.share = 1.0
        self._open = asyncio.Event()               # cleared while the share is 0
        self._open.set()
        self._clock = clock
        if rate:
            self.aimd = AimdRate(rate, min_rate, beta=beta, increase_per_s=increase_per_s,
                                 cooldown_s=cooldown_s, clock=clock)
            self.bucket = TokenBucket(rate, capacity, window_s=window_s, margin_s=margin_s, clock=clock,
                                      sleep=sleep)

    @property
    def rate(self) -> float | None:
        """The current rate in segments/s (AIMD-adjusted, this worker's share), None when unlimited,
        0 while the share is 0."""
        if self.aimd is None:
            return None
        return self.aimd.rate if self._open.is_set() else 0.0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def max_call_segments(self) -> int | None:
        """The most segments one call can carry without being alone in its window (a batch
        should stop growing here). None when unlimited."""
        if self.bucket is None:
            return None
        return max(1, math.floor(self.bucket.limit + _EPS))

    def set_share(self, share: float, *, fence: bool = True) -> None:
        """This worker's fraction of the account's rate (0..1). The rate, the AIMD bounds and the
        bucket's capacity scale with it, the AIMD position (how far below its maximum a 429 put
        it) is kept. 0 closes the limiter: sends wait for a share. ``fence``: the new share starts
        after one full window (module docstring, "Deployment share")."""
        if not 0 <= share <= 1:
            raise ValueError(f"share must be in [0, 1], got {share!r}")
        self.share = share
        if self.aimd is None or self.bucket is None:
            return      # unlimited: nothing to share
        if share == 0:
            self._open.clear()
            return
        aimd = self.aimd
        position = aimd.rate / aimd.max_rate
        aimd.rescale(self.account_rate * share)
        aimd.rate = max(aimd.min_rate, min(aimd.max_rate, aimd.max_rate * position))
        self.bucket.set_rate(aimd.rate)
        if fence:
            self.bucket.fence()
        self._open.set()

    def slot(self, segments: int = 1) -> _Slot:
        """A place for one call carrying ``segments`` segments. Yields the seconds waited for
        tokens (waits for a concurrency place are not counted)."""
        return _Slot(self, segments)

    def on_throttled(self, retry_after: float | None = None) -> bool:
        if self.aimd is None or not self.aimd.on_throttled(retry_after):
            return False
        self._follow()
        return True

    def on_success(self) -> bool:
        if self.aimd is None or not self.aimd.on_success():
            return False
        self._follow()
        return True

    def _follow(self) -> None:
        assert self.aimd is not None and self.bucket is not None
        self.bucket.set_rate(self.aimd.rate)


class _Slot:
    """``RouteLimiter.slot``: a class rather than an ``asynccontextmanager``, whose generator
    and wrapper cost several µs per provider call on the hot path."""

    __slots__ = ("limiter", "segments")

    def __init__(self, limiter: RouteLimiter, segments: int) -> None:
        self.limiter = limiter
        self.segments = segments

    async def __aenter__(self) -> float:
        limiter = self.limiter
        await limiter._sem.acquire()
        try:
            waited = 0.0
            if limiter.bucket is not None and self.segments > 0:
                if not limiter._open.is_set():       # no share of the account's rate now
                    started = limiter._clock()
                    await limiter._open.wait()
                    waited += limiter._clock() - started
                waited += await limiter.bucket.acquire(self.segments)
        except BaseException:
            limiter._sem.release()
            raise
        limiter._in_flight += 1
        return waited

    async def __aexit__(self, *exc: object) -> None:
        self.limiter._in_flight -= 1
        self.limiter._sem.release()
