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
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

from connector import metrics
from connector.errors import AuthFailed, LoginLocked, ProviderError, SmsError
from connector.policy import Fail, RetryPolicy, decide
from connector.http import HttpRequest, HttpResponse
from connector.providers.base import Prepared, Provider, SendResult
from connector.records import Accepted
from connector.transport import HttpTransport

LOGIN_COOL_DOWN_S = 60.0
T = TypeVar("T")


@dataclass(slots=True)
class SendOutcome:
    result: Accepted | SmsError
    attempts: int
    submitted_at: float | None   # wall-clock start of the call that produced the result


class RouteSender:
    def __init__(self, provider: Provider, transport: HttpTransport, *, concurrency: int = 64,
                 batch_max: int = 1, batch_linger_ms: float = 2.0,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        self.provider = provider
        self.transport = transport
        self.route = provider.route
        self.retry = retry
        self._sem = asyncio.Semaphore(concurrency)
        self._batch_max = max(1, min(batch_max, provider.max_batch))
        self._linger = batch_linger_ms / 1000
        self._pending: list[tuple[Prepared, asyncio.Future[SendResult]]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._login_lock = asyncio.Lock()
        self._login_blocked_until = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        labels = (self.route, provider.name)
        self._m_accepted = metrics.ACCEPTED.labels(*labels)
        self._m_segments = metrics.SEGMENTS.labels(*labels)

    # -- public ------------------------------------------------------------------------------
    async def send(self, p: Prepared) -> SendOutcome:
        attempt = 0
        while True:
            attempt += 1
            started = time.time()
            result = await self._submit(p)
            if isinstance(result, Accepted):
                self._m_accepted.inc()
                self._m_segments.inc(p.segments)
                return SendOutcome(result, attempt, started)
            action = decide(result, attempt, self.retry)
            if isinstance(action, Fail):
                return SendOutcome(result, attempt, started)
            metrics.PROVIDER_RETRIES.labels(self.route, self.provider.name, result.reason).inc()
            await asyncio.sleep(action.after_s)

    async def call(self, build: Callable[[], HttpRequest], parse: Callable[[HttpResponse], T]) -> T:
        """One provider operation other than a send (MO history, opt-out list, status poll...),
        with the route's login, session refresh-once and concurrency. Raises ProviderError."""
        for refreshed in (False, True):
            await self._ensure_login()
            async with self._sem:
                request = self.provider.auth.apply(build())
                t0 = time.perf_counter()
                response = await self.transport.send(request)
            try:
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

    async def aclose(self) -> None:
        if self._pending:
            self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- batching ----------------------------------------------------------------------------
    def _submit(self, p: Prepared) -> asyncio.Future[SendResult]:
        fut: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
        if self._batch_max == 1:
            self._spawn([(p, fut)])
            return fut
        self._pending.append((p, fut))
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
        if batch:
            self._spawn(batch)

    def _spawn(self, batch: list[tuple[Prepared, asyncio.Future[SendResult]]]) -> None:
        task = asyncio.get_running_loop().create_task(self._run_batch(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[Prepared, asyncio.Future[SendResult]]]) -> None:
        prepared = [p for p, _ in batch]
        try:
            async with self._sem:
                results = await self._call(prepared)
        except Exception as exc:  # noqa: BLE001 - a bug must still end each message
            results = [ProviderError(f"internal error while sending: {type(exc).__name__}: {exc}")] * len(batch)
        for (_, fut), result in zip(batch, results):
            if not fut.done():
                fut.set_result(result)

    # -- one provider call -------------------------------------------------------------------
    async def _call(self, batch: Sequence[Prepared]) -> list[SendResult]:
        provider = self.provider
        for refreshed in (False, True):
            try:
                await self._ensure_login()
                request = provider.auth.apply(provider.build_send(batch))
            except ProviderError as exc:
                return [exc] * len(batch)
            t0 = time.perf_counter()
            try:
                response = await self.transport.send(request)
                results = provider.parse_send(batch, response)
            except AuthFailed as exc:
                self._observe(t0, "auth")
                if refreshed or isinstance(exc, LoginLocked):
                    return [exc] * len(batch)
                provider.auth.invalidate()
                continue
            except ProviderError as exc:
                self._observe(t0, exc.reason)
                return [exc] * len(batch)
            self._observe(t0, "ok")
            return results
        raise AssertionError("unreachable")

    def _observe(self, t0: float, outcome: str) -> None:
        metrics.PROVIDER_REQUEST.labels(self.provider.name, outcome).observe(time.perf_counter() - t0)

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
