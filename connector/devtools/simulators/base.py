"""What every provider simulator shares: an aiohttp app, fault injection and counters.

A simulator is a real HTTP server on loopback that behaves like the provider's documented API.
This module gives each one the same operator surface:

- ``Faults``: latency (+ jitter), a share of 5xx, of 429 with ``Retry-After``, of timeouts (the
  server holds the request longer than any client waits), and of per-message rejections.
  Set at start (``sms-connector simulate NAME --latency-ms ...``) or live with
  ``PUT /_sim/faults`` (JSON, fields of ``Faults``).
- ``Stats`` (``GET /_sim/stats``): requests, messages, sends per client message id (duplicates
  are visible; ``GET /_sim/sent-at``: when each was first sent), and the highest messages-per-second seen in any one-second window.
- ``GET /_sim/sends``: each send request's arrival time and message count (sliding-window checks).
- ``GET /_sim/calls``: each message of each call, faulted ones included: ``[epoch, id, outcome]``
  with outcome ``accepted``, ``rejected`` or the fault injected (``error``, ``throttle``,
  ``timeout``), in arrival order (the last 100,000): which messages were called how often, when.
- ``POST /_sim/reset`` clears counters and faults; ``GET /_sim/health`` answers 200.

Recipients whose number ends in ``0666`` are rejected by every simulator as an invalid
destination, so demo traffic shows provider rejections without any fault set. The suffix is one
no sample request of the seed documents uses (Rev.io's SMS_Send sample sends to 8504700000):
each simulator answers the seed samples as the documents show (tests/unit/test_seed_samples.py).
"""

from __future__ import annotations

import asyncio
import signal
import random
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Iterable

import orjson
from aiohttp import web

REJECT_SUFFIX = "0666"
FAULT_OUTCOMES = {504: "timeout", 429: "throttle", 503: "error"}   # transient_fault's answers, for the call log


@dataclass
class Faults:
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    error_rate: float = 0.0         # share of requests answered 5xx
    throttle_rate: float = 0.0      # share answered 429 with Retry-After
    retry_after_s: float = 1.0
    timeout_rate: float = 0.0       # share held for hang_s (the client times out)
    hang_s: float = 30.0
    reject_rate: float = 0.0        # share of messages rejected permanently
    seed: int | None = None

    def update(self, values: dict[str, Any]) -> None:
        known = {f.name: f for f in fields(self)}
        for key, value in values.items():
            if key not in known:
                raise ValueError(f"unknown fault {key!r} (known: {', '.join(known)})")
            if value is None and key != "seed":
                raise ValueError(f"fault {key!r} needs a number")
            setattr(self, key, None if value is None else int(value) if key == "seed" else float(value))


@dataclass
class Stats:
    requests: int = 0
    messages: int = 0
    accepted: int = 0
    rejected: int = 0
    injected: Counter[str] = field(default_factory=Counter)
    sends_by_id: Counter[str] = field(default_factory=Counter)
    first_sent_at: dict[str, float] = field(default_factory=dict)   # id -> epoch of its first send (GET /_sim/sent-at)
    max_messages_per_s: int = 0
    # the texts of the last accepted messages, as the provider received them (contract tests)
    texts: deque[str] = field(default_factory=lambda: deque(maxlen=100))
    _window: int = 0
    _window_count: int = 0

    # (arrival time, messages) of every send request, for sliding-window checks of rate limits
    sends: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=1_000_000))
    # (epoch, message id, outcome) of every message of every call, faulted ones included
    calls: deque[tuple[float, str, str]] = field(default_factory=lambda: deque(maxlen=100_000))

    def count_messages(self, n: int) -> None:
        self.messages += n
        self.sends.append((time.monotonic(), n))
        now = int(time.monotonic())
        if now != self._window:
            self._window, self._window_count = now, 0
        self._window_count += n
        self.max_messages_per_s = max(self.max_messages_per_s, self._window_count)

    def sent(self, key: str) -> None:
        """One send of the message ``key`` (a client message id, or the simulator's own key)."""
        self.sends_by_id[key] += 1
        self.first_sent_at.setdefault(key, time.time())

    def called(self, key: str, outcome: str) -> None:
        """One call carrying the message ``key``, answered with ``outcome`` (GET /_sim/calls)."""
        self.calls.append((time.time(), key, outcome))

    def as_json(self) -> dict[str, Any]:
        dup = {k: v for k, v in self.sends_by_id.items() if v > 1}
        return {"requests": self.requests, "messages": self.messages, "accepted": self.accepted,
                "rejected": self.rejected, "injected": dict(self.injected),
                "distinct_ids": len(self.sends_by_id), "duplicate_ids": len(dup),
                "max_messages_per_s": self.max_messages_per_s, "texts": list(self.texts),
                "max_messages_any_1s": max_in_window(self.sends, 1.0)}


def max_in_window(sends: Iterable[tuple[float, int]], window_s: float) -> int:
    """The most messages that arrived in any closed interval of ``window_s`` (``sends`` in time
    order): a sliding window, not calendar seconds, so a burst across a second's edge counts."""
    best = total = 0
    window: deque[tuple[float, int]] = deque()
    for t, n in sends:
        window.append((t, n))
        total += n
        while window[0][0] < t - window_s:
            total -= window.popleft()[1]
        best = max(best, total)
    return best


class Simulator:
    """Base of provider simulators. Subclasses add routes in ``routes()``."""

    name: ClassVar[str]
    base_path: ClassVar[str] = ""   # a route's base_url is the server's URL + this

    def __init__(self, faults: Faults | None = None, credentials: dict[str, str] | None = None) -> None:
        self.faults = faults or Faults()
        self.credentials = credentials or self.default_credentials()
        self.stats = Stats()
        self.random = random.Random(self.faults.seed)

    # -- for subclasses ----------------------------------------------------------------------
    @classmethod
    def default_credentials(cls) -> dict[str, str]:
        return {}

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def should_reject(self, address: str) -> bool:
        """Per-message rejection: numbers ending in REJECT_SUFFIX, plus the reject_rate fault."""
        if address.endswith(REJECT_SUFFIX):
            return True
        return self.faults.reject_rate > 0 and self.random.random() < self.faults.reject_rate

    async def transient_fault(self) -> web.Response | None:
        """Latency, then maybe a 5xx / 429 / hang. Called by each provider endpoint first."""
        f = self.faults
        self.stats.requests += 1
        if f.latency_ms or f.latency_jitter_ms:
            await asyncio.sleep((f.latency_ms + self.random.random() * f.latency_jitter_ms) / 1000)
        if not (f.error_rate or f.throttle_rate or f.timeout_rate):
            return None
        roll = self.random.random()
        if roll < f.timeout_rate:
            self.stats.injected["timeout"] += 1
            await asyncio.sleep(f.hang_s)
            return web.Response(status=504, text="gateway timeout (simulated)")
        roll -= f.timeout_rate
        if roll < f.throttle_rate:
            self.stats.injected["throttle"] += 1
            return self.throttled_response(f.retry_after_s)
        roll -= f.throttle_rate
        if roll < f.error_rate:
            self.stats.injected["error"] += 1
            return self.server_error_response()
        return None

    def throttled_response(self, retry_after_s: float) -> web.Response:
        return web.json_response({"error": "Too Many Requests"}, status=429,
                                 headers={"Retry-After": str(int(max(retry_after_s, 0)))})

    def server_error_response(self) -> web.Response:
        return web.json_response({"error": "Internal Server Error (simulated)"}, status=503)

    # -- the app -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.add_routes(self.routes())
        app.add_routes([
            web.get("/_sim/health", self._health),
            web.get("/_sim/stats", self._stats),
            web.get("/_sim/sent-at", self._sent_at),
            web.get("/_sim/sends", self._sends),
            web.get("/_sim/calls", self._calls),
            web.put("/_sim/faults", self._set_faults),
            web.post("/_sim/reset", self._reset),
        ])
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"simulator": self.name, "ok": True})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({**self.stats.as_json(), "faults": asdict(self.faults)}),
                            content_type="application/json")

    async def _sent_at(self, request: web.Request) -> web.Response:
        """When each message was first sent (epoch seconds), by id: scheduled sends are checked against it."""
        return web.Response(body=orjson.dumps(self.stats.first_sent_at), content_type="application/json")
    async def _sends(self, request: web.Request) -> web.Response:
        """Every send request's arrival time (monotonic seconds) and message count."""
        return web.Response(body=orjson.dumps(list(self.stats.sends)), content_type="application/json")

    async def _calls(self, request: web.Request) -> web.Response:
        """Each message of each call: [epoch, id, outcome], faulted calls included."""
        return web.Response(body=orjson.dumps(list(self.stats.calls)), content_type="application/json")

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults.update(orjson.loads(await request.read()))
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if self.faults.seed is not None:
            self.random.seed(self.faults.seed)
        return web.json_response(asdict(self.faults))

    async def _reset(self, request: web.Request) -> web.Response:
        self.stats = Stats()
        self.faults = Faults()
        return web.json_response({"reset": True})


async def serve(sim: Simulator, host: str, port: int) -> web.AppRunner:
    """Start ``sim`` on host:port; returns the runner (``await runner.cleanup()`` to stop)."""
    runner = web.AppRunner(sim.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


async def run_simulator(sim: Simulator, host: str, port: int) -> None:
    """Serve ``sim`` until SIGINT/SIGTERM; prints the URL it listens on (one line, flushed)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = await serve(sim, host, port)
    bound = runner.addresses[0][1] if runner.addresses else port
    print(f"simulator {sim.name} listening on http://{host}:{bound}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
