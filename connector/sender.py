"""Sending through one route: batching, concurrency, authentication and in-place retries.

A ``RouteSender`` owns a provider adapter (sans-IO) and the transport (I/O). ``send(prepared)``
returns the message's outcome: ``Accepted`` or the classified error that ended it, plus the
number of provider calls made. Decisions about retrying come from ``connector.policy``; this
module only carries them out (sleeps, re-sends).

Batching: providers that take several messages per request (``max_batch`` > 1) get batches of up
to the route's ``batch_max``, flushed when full or ``batch_linger_ms`` after the first message.
Authentication: login requests run under one lock (never a login storm); a refused session is
refreshed once per request; a failed login opens a breaker for ``LOGIN_COOL_DOWN_S`` during which
sends fail fast with ``LoginLocked`` instead of locking the account.
Limits (``connector.ratelimit``): every provider call runs in a ``RouteLimiter`` slot (concurrency
place, then the call's segments from the route's strict bucket); 429s slow the route down (AIMD).
The sender owns its route's limiter and every partition of the worker shares the sender; the
limiter enforces this worker's share of the route's (the account's) limit, which the dispatcher
sets from the partitions it owns. Circuit (``connector.breaker``): each send attempt asks the route's
breaker first; while it is open the attempt waits (the route pauses) or, with a failover route,
the message comes back as ``CircuitOpen`` for the pipeline to re-route. Each call's outcome is
recorded.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence, TypeVar, Union

from connector import metrics, tracing
from connector.breaker import CLOSED, CircuitBreaker, CircuitOpen, classify_call
from connector.destinations import DestinationRules
from connector.errors import AuthFailed, LoginLocked, ProviderError, SmsError, Throttled
from connector.policy import Fail, RetryPolicy, decide
from connector.http import HttpRequest, HttpResponse
from connector.providers.base import Prepared, Provider, SendResult
from connector.ratelimit import RouteLimiter
from connector.records import Accepted
from connector.streams.membership import OwnershipLost
from connector.transport import HttpTransport

LOGIN_COOL_DOWN_S = 60.0
T = TypeVar("T")


# send_many: each message's first result (None: not sent), and when its call started
Sent = tuple[list[Union[SendResult, OwnershipLost, None]], list[float]]
OnCall = Callable[[int, int, list[Union[SendResult, OwnershipLost, None]], list[float]], None]


@dataclass(slots=True)
class SendOutcome:
    result: Accepted | SmsError
    attempts: int
    submitted_at: float | None   # wall-clock start of the call that produced the result


class RouteSender:
    def __init__(self, provider: Provider, transport: HttpTransport, *, concurrency: int = 64,
                 batch_max: int = 1, batch_linger_ms: float = 2.0,
                 retry: RetryPolicy = RetryPolicy(), limiter: RouteLimiter | None = None,
                 breaker: CircuitBreaker | None = None, failover_route: str | None = None,
                 in_doubt: str = "resend", smart_encoding: bool = False,
                 destinations: DestinationRules = DestinationRules()) -> None:
        self.provider = provider
        self.transport = transport
        self.route = provider.route
        self.retry = retry
        # One limiter and one breaker per route per process: this sender is shared by every
        # partition, so they are too. (``concurrency`` only sizes the default limiter.)
        self.limiter = limiter or RouteLimiter(None, concurrency=concurrency)
        self.breaker = breaker or CircuitBreaker()
        self.failover_route = failover_route or None
        self.in_doubt = in_doubt
        # Checked by the pipeline before the message is prepared (connector.encoding, connector.destinations).
        self.smart_encoding = smart_encoding
        self.destinations = destinations
        self._batch_max = max(1, min(batch_max, provider.max_batch))
        self._linger = batch_linger_ms / 1000
        self._pending: list[tuple[Prepared, asyncio.Future[SendResult]]] = []
        self._pending_traces: list[object] = []    # the batched messages' spans (connector.tracing)
        self._pending_segments = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._login_lock = asyncio.Lock()
        self._login_blocked_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        # Awaited right before each send call (after its rate-limit and concurrency wait): the
        # dispatcher's membership check, which raises OwnershipLost when the worker may no longer
        # own the partitions the messages came from (connector.streams.membership).
        self.gate: Callable[[], Awaitable[None]] | None = None
        self.in_calls = 0      # messages inside send calls now
        labels = (self.route, provider.name)
        self._m_accepted = metrics.ACCEPTED.labels(*labels)
        self._m_segments = metrics.SEGMENTS.labels(*labels)
        self._m_rate_waited = metrics.RATE_LIMITED_SECONDS.labels(self.route)
        self._m_circuit_waited = metrics.CIRCUIT_WAIT_SECONDS.labels(self.route)
        self._m_request: dict[str, Any] = {}     # outcome -> its request-duration child (a label lookup per call)
        metrics.ROUTE_RATE_LIMIT.labels(self.route).set_function(lambda: self.limiter.rate or 0.0)
        metrics.CIRCUIT_STATE.labels(self.route).set_function(lambda: self.breaker.state_code)
        # read when scraped: no gauge update (and its lock) per call
        metrics.MESSAGES_IN_CALLS.labels(self.route).set_function(lambda: self.in_calls)

    # -- public ------------------------------------------------------------------------------
    async def send(self, p: Prepared, *, may_fail_over: bool = True, budget: int | None = None,
                   first: tuple[SendResult, float] | None = None) -> SendOutcome:
        """``may_fail_over``: with a failover route, an open circuit returns ``CircuitOpen`` at
        once (nothing sent) instead of waiting. The failover's own send passes False: one hop.
        ``budget``: at most this many calls (the message's attempts left under its cap), even if
        the in-place policy allows more. ``first``: the result and start time of a first attempt
        already made (``send_many``): the in-place retries go on from it."""
        attempt = 0
        while True:
            if first is not None:
                (result, started), first = first, None
                attempt = 1
            else:
                if not self.breaker.allow():
                    if may_fail_over and self.failover_route:
                        return SendOutcome(CircuitOpen(f"route {self.route}: circuit open; failing over to "
                                                       f"{self.failover_route}"), attempt, None)
                    self._m_circuit_waited.inc(await self.breaker.wait_until_allowed())
                attempt += 1
                started = time.time()
                if self._batch_max > 1:
                    await self.await_gate()    # this message's own check (the batch's call checks again)
                result = await (self._send_one(p) if self._batch_max == 1 else self._submit(p))
            if isinstance(result, Accepted):    # counted per call, in _send_batch
                return SendOutcome(result, attempt, started)
            action = decide(result, attempt, self.retry)
            if isinstance(action, Fail) or (budget is not None and attempt >= budget):
                return SendOutcome(result, attempt, started)
            metrics.PROVIDER_RETRIES.labels(self.route, self.provider.name, result.reason).inc()
            await asyncio.sleep(action.after_s)

    @property
    def closed(self) -> bool:
        """The circuit is closed: a call may go without asking for a probe place (``send_many``)."""
        return self.breaker.state == CLOSED

    async def send_many(self, prepared: Sequence[Prepared], on_call: OnCall | None = None) -> Sent:
        """One attempt for each message, as few calls as the provider allows: batches of up to
        ``batch_max`` (and the route's per-call segment cap), one call per message for a
        single-message provider, at most the route's concurrency of them at once. No future or
        task per message: the results come back aligned by index with each call's start time,
        and ``on_call(lo, hi, results, started)`` is told as each call's results (indices lo to hi)
        are in. Each call takes its limiter slot and passes the gate (``OwnershipLost``: the
        messages of that call get the exception as their result, nothing of them was sent);
        retries are the caller's (``send(first=...)``). For a closed circuit only (``closed``: no
        probe place is taken); the messages of calls not made because it opened meanwhile get None."""
        calls = self._cut(prepared)
        results: list[SendResult | OwnershipLost | None] = [None] * len(prepared)
        started = [0.0] * len(prepared)
        todo = iter(calls)

        async def worker() -> None:
            for lo, hi in todo:
                if self.closed:      # else opened meanwhile: these wait for it (or fail over) on their own
                    started[lo:hi] = [time.time()] * (hi - lo)
                    try:
                        results[lo:hi] = await self._send_batch(list(prepared[lo:hi]))
                    except OwnershipLost as exc:
                        results[lo:hi] = [exc] * (hi - lo)
                if on_call is not None:
                    on_call(lo, hi, results, started)

        workers = min(len(calls), self.limiter.concurrency)
        if workers == 1:
            await worker()
        elif workers:
            await asyncio.gather(*[worker() for _ in range(workers)])
        return results, started

    def _cut(self, prepared: Sequence[Prepared]) -> list[tuple[int, int]]:
        """``prepared`` as calls: (start, end) index ranges in order, as ``_submit`` would fill batches."""
        size, cap = self._batch_max, self.limiter.max_call_segments
        if size == 1:
            return [(i, i + 1) for i in range(len(prepared))]
        calls, lo, segments = [], 0, 0
        for i, p in enumerate(prepared):
            if i > lo and (i - lo >= size or (cap is not None and segments + p.segments > cap)):
                calls.append((lo, i))
                lo, segments = i, 0
            segments += p.segments
        if lo < len(prepared):
            calls.append((lo, len(prepared)))
        return calls

    async def await_gate(self) -> None:
        """Return when a send may start now; raise ``OwnershipLost`` when it must not (``gate``)."""
        if self.gate is not None:
            await self.gate()

    async def call(self, build: Callable[[], HttpRequest], parse: Callable[[HttpResponse], T]) -> T:
        """One provider operation other than a send (MO history, opt-out list, status poll...),
        with the route's login, session refresh-once and concurrency. Raises ProviderError."""
        async with self.limiter.slot(0):     # a place, no segments: not a send
            return await self._exchange(build, parse)

    async def aclose(self) -> None:
        if self._pending:
            self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- batching ----------------------------------------------------------------------------
    def _submit(self, p: Prepared) -> asyncio.Future[SendResult]:
        fut: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        cap = self.limiter.max_call_segments   # a batch must fit the route's per-second limit
        if cap is not None and self._pending and self._pending_segments + p.segments > cap:
            self._flush()
        self._pending.append((p, fut))
        tracing.collect(self._pending_traces)
        self._pending_segments += p.segments
        if len(self._pending) >= self._batch_max:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(self._linger, self._flush)
        return fut

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending = self._pending, []
        traces, self._pending_traces = self._pending_traces, []
        self._pending_segments = 0
        if batch:
            self._spawn(batch, traces)

    def _spawn(self, batch: list[tuple[Prepared, asyncio.Future[SendResult]]], traces: list[object]) -> None:
        task = asyncio.get_running_loop().create_task(self._run_batch(batch, traces))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[Prepared, asyncio.Future[SendResult]]], traces: list[object]) -> None:
        try:
            with tracing.batch(traces, len(batch)):
                results = await self._send_batch([p for p, _ in batch])
        except OwnershipLost as exc:      # each waiting message's task gets it: they are all dropped
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(batch, results):
            if not fut.done():
                fut.set_result(result)

    async def _send_one(self, p: Prepared) -> SendResult:
        """A route without batching: the call is made in the caller's task (no task, no future)."""
        return (await self._send_batch([p]))[0]

    async def _send_batch(self, prepared: list[Prepared]) -> list[SendResult]:
        try:
            # tokens are taken just before the call, after its concurrency place
            async with self.limiter.slot(sum(p.segments for p in prepared)) as waited:
                if waited:
                    self._m_rate_waited.inc(waited)
                await self.await_gate()
                self.in_calls += len(prepared)
                try:
                    results = await self._call(prepared)
                finally:
                    self.in_calls -= len(prepared)
        except Exception as exc:  # noqa: BLE001 - a bug must still end each message
            results = [ProviderError(f"internal error while sending: {type(exc).__name__}: {exc}")] * len(prepared)
        except BaseException:
            self.breaker.record(None)   # cancelled: free a half-open probe place
            raise
        self._record(results)
        accepted = [p.segments for p, r in zip(prepared, results) if isinstance(r, Accepted)]
        if accepted:     # once per call, not per message: each inc takes the metric's lock
            self._m_accepted.inc(len(accepted))
            self._m_segments.inc(sum(accepted))
        return results

    # -- one provider call -------------------------------------------------------------------
    async def _call(self, batch: Sequence[Prepared]) -> list[SendResult]:
        provider = self.provider
        try:
            return await self._exchange(lambda: provider.build_send(batch),
                                        lambda response: provider.parse_send(batch, response))
        except ProviderError as exc:
            return [exc] * len(batch)

    async def _exchange(self, build: Callable[[], HttpRequest], parse: Callable[[HttpResponse], T]) -> T:
        """The one call loop: log in if needed, build, send, parse; a refused session is
        forgotten and the call made once more. Raises ProviderError."""
        for refreshed in (False, True):
            await self._ensure_login()
            request = self.provider.auth.apply(build())
            t0 = time.perf_counter()
            try:
                response = await self.transport.send(request)
                result = parse(response)
            except AuthFailed as exc:
                self._observe(t0, "auth")
                if refreshed or isinstance(exc, LoginLocked):
                    raise
                self.provider.auth.invalidate()
                continue
            except ProviderError as exc:
                self._observe(t0, exc.reason)
                raise
            self._observe(t0, "ok")
            return result
        raise AssertionError("unreachable")

    def _record(self, results: Sequence[SendResult]) -> None:
        """Tell the breaker and the route's rate how a call went."""
        self.breaker.record(classify_call(results))
        throttled = [r.retry_after or 0.0 for r in results if isinstance(r, Throttled)]
        if throttled:
            self.limiter.on_throttled(max(throttled))
        elif any(isinstance(r, Accepted) for r in results):
            self.limiter.on_success()

    def _observe(self, t0: float, outcome: str) -> None:
        child = self._m_request.get(outcome)
        if child is None:
            child = self._m_request[outcome] = metrics.PROVIDER_REQUEST.labels(self.provider.name, outcome)
        child.observe(time.perf_counter() - t0)

    async def _ensure_login(self) -> None:
        auth = self.provider.auth
        if auth.ready:
            return
        async with self._login_lock:
            if auth.ready:
                return
            if time.monotonic() < self._login_blocked_until:
                raise LoginLocked(f"route {self.route}: login failed recently; not retrying until the "
                                  f"cool-down ends (protects the account from lock-out)")
            try:
                for request in auth.login_requests():
                    response = await self.transport.send(request)
                    auth.handle_login(request, response)
            except AuthFailed:
                metrics.PROVIDER_LOGINS.labels(self.route, self.provider.name, "refused").inc()
                self._login_blocked_until = time.monotonic() + LOGIN_COOL_DOWN_S
                raise
            except ProviderError:
                metrics.PROVIDER_LOGINS.labels(self.route, self.provider.name, "error").inc()
                raise
            metrics.PROVIDER_LOGINS.labels(self.route, self.provider.name, "ok").inc()
