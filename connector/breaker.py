"""A circuit breaker per route. It stops sending through a route whose provider is failing, tests
the route with a probe, and starts again when the probe succeeds.

States and ``state_code`` (the ``sms_circuit_state`` gauge)::

    closed (0) --failure ratio >= threshold over the window, with >= min_calls calls--> open (2)
    open (2)   --open_s elapsed-------------------------------------------------------> half-open (1)
    half-open  --probe succeeds--> closed        half-open --probe fails--> open, for twice as long

- **Window:** outcomes of the last ``window_s`` seconds (30 s), counted in 30 time slices. The
  breaker opens on a failure when the window holds at least ``min_calls`` counted calls (20) and
  failures make up at least ``failure_ratio`` of them (0.5). A route with less traffic does not
  open. It has no error storm to stop either, because each message's retries back off.
- **Open:** ``allow()`` is False. Senders ``await wait_until_allowed()``: they sleep until the
  state changes. They do not spin and do not fail the message, so the route pauses and its
  records wait in flight. Or, with a failover route, they hand the message over (``is_open``).
  Open lasts ``open_s`` (30 s). Each failed probe doubles it, up to ``max_open_s`` (300 s). A
  close resets it.
- **Half-open:** ``allow()`` is True for ``probes`` calls (1). Everyone else waits. If the probes
  succeed, the breaker closes with an empty window. One failure re-opens it. A probe that never
  reports (its task was cancelled) is forgotten after ``probe_timeout_s``, so the breaker cannot
  stick in half-open.

**What counts** (``classify``). A failure says the *route* is unhealthy: ``Retriable`` (5xx,
timeouts, network), ``AuthFailed`` (including ``LoginLocked``: the route cannot send, so a failover
should take over) and ``InDoubt`` (answers that cannot be read). A success is an ``Accepted``.
These outcomes are *not counted*:

- ``Rejected``, ``InvalidMessage`` and subclasses: permanent, per-message verdicts. The provider
  did its job, and a list of bad numbers must not open the breaker.
- ``Throttled``: the provider is healthy but asks us to slow down. That is the rate limiter's
  job (``connector.ratelimit``). Opening the circuit on 429s would turn a slow-down into a stop.
- any other ``ProviderError`` (an internal error in this connector) and ``CircuitOpen`` itself.

A probe that ends in an uncounted outcome frees its probe place (``record(None)``), and the next
message probes. A batch call is one outcome (``classify_call``): a success if the provider
accepted any message, a failure if any result is a failure and none was accepted.

Outcomes recorded while open are ignored. They come from calls started before the breaker opened.
No I/O. The clock and sleep are injected for tests.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Awaitable, Callable, Iterable

from connector.errors import AuthFailed, InDoubt, Retriable, Throttled
from connector.records import Accepted

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

CLOSED, HALF_OPEN, OPEN = "closed", "half-open", "open"
STATE_CODES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}
_SLICES = 30            # the window is counted in this many time slices
_MIN_WAIT_S = 1e-3


class CircuitOpen(Retriable):
    """The route's circuit is open: nothing was sent, the route's failover should take the message.
    (Belongs in ``connector.errors``' tree when integrated; it is never a provider's answer.)"""

    reason = "circuit-open"


def classify(result: object) -> bool | None:
    """The breaker's reading of one result: True success, False failure, None not counted."""
    if isinstance(result, Accepted):
        return True
    if isinstance(result, (Throttled, CircuitOpen)):
        return None
    if isinstance(result, (Retriable, AuthFailed, InDoubt)):
        return False
    return None       # Rejected, InvalidMessage, internal errors: say nothing about the route


def classify_call(results: Iterable[object] | None) -> bool | None:
    """One provider call's outcome from its per-message results (a batch is one call)."""
    verdicts = {classify(r) for r in results or ()}
    if True in verdicts:
        return True
    if False in verdicts:
        return False
    return None


class CircuitBreaker:
    def __init__(self, *, failure_ratio: float = 0.5, window_s: float = 30.0, min_calls: int = 20,
                 open_s: float = 30.0, max_open_s: float = 300.0, probes: int = 1,
                 probe_timeout_s: float | None = None,
                 on_change: Callable[[str, str], None] | None = None,
                 clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        if not 0 < failure_ratio <= 1:
            raise ValueError(f"failure_ratio must be in (0, 1], got {failure_ratio!r}")
        if window_s <= 0 or open_s <= 0 or min_calls < 1 or probes < 1:
            raise ValueError("window_s and open_s must be positive, min_calls and probes at least 1")
        self.failure_ratio = failure_ratio
        self.window_s = window_s
        self.min_calls = min_calls
        self.open_s = open_s
        self.max_open_s = max(open_s, max_open_s)
        self.probes = probes
        self.probe_timeout_s = open_s if probe_timeout_s is None else probe_timeout_s
        self.on_change = on_change           # (old state, new state), e.g. for a log line
        self._clock = clock
        self._sleep = sleep
        self._slice_s = window_s / _SLICES
        self._slices: deque[list[int]] = deque()   # [slice index, successes, failures]
        self._successes = 0
        self._failures = 0
        self._state = CLOSED
        self._open_for = open_s
        self._open_until = 0.0
        self._probes_out = 0
        self._probes_ok = 0
        self._probe_deadline = 0.0
        self._changed = asyncio.Event()
        self.times_opened = 0

    # -- reading ---------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """The state now (open turns half-open when ``open_s`` has passed). Reading never changes
        anything, so a metrics scrape can call it."""
        if self._state == OPEN and self._clock() >= self._open_until:
            return HALF_OPEN
        return self._state

    @property
    def state_code(self) -> int:
        """0 closed, 1 half-open, 2 open: the ``sms_circuit_state`` gauge."""
        return STATE_CODES[self.state]

    @property
    def is_open(self) -> bool:
        """True while open: the moment for a failover route to take the traffic."""
        return self.state == OPEN

    @property
    def open_for(self) -> float:
        """How long the next (or current) open period lasts."""
        return self._open_for

    def window(self) -> tuple[int, int]:
        """(successes, failures) counted in the current window (closed state)."""
        self._prune(self._clock())
        return self._successes, self._failures

    # -- deciding --------------------------------------------------------------------------------
    def allow(self) -> bool:
        """May a call go now? In half-open, True hands out one of the ``probes`` places. The
        caller must then ``record`` the call's outcome (None if it said nothing)."""
        now = self._clock()
        self._advance(now)
        if self._state == CLOSED:
            return True
        if self._state == OPEN:
            return False
        if self._probes_out and now >= self._probe_deadline:
            self._probes_out = 0                # lost probes: let another one go
        if self._probes_out + self._probes_ok < self.probes:
            self._probes_out += 1
            self._probe_deadline = now + self.probe_timeout_s
            return True
        return False

    async def wait_until_allowed(self) -> float:
        """Sleep until ``allow()`` is True (a closed circuit or a probe place), and take it.
        Returns the seconds waited. It never spins: it wakes when the open period ends, when a
        probe reports, or when a lost probe times out."""
        start = self._clock()
        while not self.allow():
            await self._wait_for_change(self._next_check_in())
        return self._clock() - start

    def record(self, success: bool | None) -> None:
        """The outcome of a call that ``allow()`` let through: True success, False failure, None
        not counted (see ``classify``)."""
        now = self._clock()
        self._advance(now)
        if self._state == CLOSED:
            if success is None:
                return
            self._count(now, success)
            if not success:
                total = self._successes + self._failures
                if total >= self.min_calls and self._failures >= self.failure_ratio * total:
                    self._open(now)
            return
        if self._state == OPEN or self._probes_out == 0:
            return                              # a straggler from before the circuit opened
        self._probes_out -= 1
        if success is None:
            self._notify()                      # the place is free for the next probe
        elif success:
            self._probes_ok += 1
            if self._probes_ok >= self.probes:
                self._close()
        else:
            self._open_for = min(self._open_for * 2, self.max_open_s)
            self._open(now)

    # -- transitions -----------------------------------------------------------------------------
    def _advance(self, now: float) -> None:
        if self._state == OPEN and now >= self._open_until:
            self._probes_out = self._probes_ok = 0
            self._set(HALF_OPEN)

    def _open(self, now: float) -> None:
        self._open_until = now + self._open_for
        self._probes_out = self._probes_ok = 0
        self._reset_window()
        self.times_opened += 1
        self._set(OPEN)

    def _close(self) -> None:
        self._open_for = self.open_s
        self._probes_out = self._probes_ok = 0
        self._reset_window()
        self._set(CLOSED)

    def _set(self, state: str) -> None:
        old, self._state = self._state, state
        if old != state:
            self._notify()
            if self.on_change is not None:
                self.on_change(old, state)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _next_check_in(self) -> float:
        now = self._clock()
        if self._state == OPEN:
            return max(self._open_until - now, _MIN_WAIT_S)
        return max(self._probe_deadline - now, _MIN_WAIT_S)   # half-open, probes busy

    async def _wait_for_change(self, delay: float) -> None:
        changed = self._changed.wait()
        waits = {asyncio.ensure_future(changed), asyncio.ensure_future(self._sleep(delay))}
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    # -- the window ------------------------------------------------------------------------------
    def _count(self, now: float, success: bool) -> None:
        self._prune(now)
        index = math.floor(now / self._slice_s)
        if not self._slices or self._slices[-1][0] != index:
            self._slices.append([index, 0, 0])
        if success:
            self._slices[-1][1] += 1
            self._successes += 1
        else:
            self._slices[-1][2] += 1
            self._failures += 1

    def _prune(self, now: float) -> None:
        oldest = math.floor(now / self._slice_s) - _SLICES   # slices at or before this are out
        while self._slices and self._slices[0][0] <= oldest:
            _, ok, failed = self._slices.popleft()
            self._successes -= ok
            self._failures -= failed

    def _reset_window(self) -> None:
        self._slices.clear()
        self._successes = self._failures = 0
