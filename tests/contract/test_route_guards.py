"""Route guards against a simulator over real HTTP: the rate limit holds at the provider, and an
open circuit pauses a failing route (or fails over) instead of spinning on errors."""
from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from connector.app import build_senders
from connector.config import load
from connector.pipeline import Pipeline
from connector.records import OutboundSms, Recipient, encode_outbound
from connector.routing import Router
from connector.devtools.simulators import SIMULATORS, Faults, serve


async def start(name: str, **faults: float):
    sim = SIMULATORS[name](Faults(seed=1, **faults))
    runner = await serve(sim, "127.0.0.1", 0)
    return sim, runner, f"http://127.0.0.1:{runner.addresses[0][1]}{sim.base_path}"


def env_for(route: str, provider: str, url: str, **extra: str) -> dict[str, str]:
    prefix = f"SMS_CONNECTOR_ROUTES__{route.upper()}__"
    env = {prefix + "PROVIDER": provider, prefix + "BASE_URL": url}
    for k, v in SIMULATORS[provider].default_credentials().items():
        env[prefix + k.upper()] = v
    env.update({prefix + k.upper(): v for k, v in extra.items()})
    return env


async def send_many(p: Pipeline, n: int, text: str = "hello") -> list:
    async def one(i: int):
        v = encode_outbound(OutboundSms(client_message_id=f"m{i}-{time.time()}", recipient=Recipient(phone=f"+44770090{i:04d}"), text=text))
        return await p.outcome(v, int(time.time() * 1000))
    return await asyncio.gather(*(one(i) for i in range(n)))


async def test_rate_limit_holds_at_the_simulator() -> None:
    sim, runner, url = await start("smpp_rest", latency_ms=5, latency_jitter_ms=5)
    try:
        # The simulator shares this event loop: its arrival times carry the loop's scheduling
        # delay, tens of ms on a loaded machine. The margin is the setting for arrival jitter.
        env = env_for("r", "smpp_rest", url, rate_limit="20", concurrency="64", rate_limit_margin_ms="250")
        settings = load(environ=env)
        senders = build_senders(settings)
        p = Pipeline(senders, Router.from_settings(settings.routing, {"r": "smpp_rest"}))
        t0 = time.monotonic()
        out = await send_many(p, 70)
        elapsed = time.monotonic() - t0
        assert all(t.ending == "accepted" for t in out)
        print("max/s", sim.stats.max_messages_per_s, "elapsed", elapsed)
        assert sim.stats.max_messages_per_s <= 20
        assert elapsed > 2.5   # 70 messages at 20/s cannot take less (no upper bound: a noisy machine)
        assert REGISTRY.get_sample_value("sms_route_rate_limit", {"route": "r"}) == 20
        assert REGISTRY.get_sample_value("sms_rate_limited_seconds_total", {"route": "r"}) > 0
        for s in senders.values():
            await s.aclose(); await s.transport.aclose()
    finally:
        await runner.cleanup()


async def test_batched_rate_limit() -> None:
    sim, runner, url = await start("smpp_rest")
    try:
        env = env_for("r", "smpp_rest", url, rate_limit="30", batch_max="100", batch_linger_ms="20")
        settings = load(environ=env)
        senders = build_senders(settings)
        p = Pipeline(senders, Router.from_settings(settings.routing, {"r": "smpp_rest"}))
        out = await send_many(p, 100)
        assert all(t.ending == "accepted" for t in out)
        print("batched max/s", sim.stats.max_messages_per_s, "requests", sim.stats.requests)
        assert sim.stats.max_messages_per_s <= 30
        for s in senders.values():
            await s.aclose(); await s.transport.aclose()
    finally:
        await runner.cleanup()


async def test_throttles_slow_the_route_down() -> None:
    sim, runner, url = await start("smpp_rest", throttle_rate=0.3, retry_after_s=0)
    try:
        env = env_for("r", "smpp_rest", url, rate_limit="50", rate_limit_min="5")
        env["SMS_CONNECTOR_DISPATCH__RETRY_MAX_ATTEMPTS"] = "10"
        env["SMS_CONNECTOR_DISPATCH__RETRY_BASE_DELAY_S"] = "0.01"
        settings = load(environ=env)
        senders = build_senders(settings)
        p = Pipeline(senders, Router.from_settings(settings.routing, {"r": "smpp_rest"}))
        await send_many(p, 60)
        rate = REGISTRY.get_sample_value("sms_route_rate_limit", {"route": "r"})
        print("rate after throttles", rate)
        assert rate < 50
        for s in senders.values():
            await s.aclose(); await s.transport.aclose()
    finally:
        await runner.cleanup()


async def test_breaker_opens_and_fails_over() -> None:
    bad, r1, url1 = await start("smpp_rest", error_rate=1.0)
    good, r2, url2 = await start("smpp_rest")
    try:
        env = env_for("a", "smpp_rest", url1, failover_route="b", breaker_min_calls="10", breaker_open_s="1")
        env.update(env_for("b", "smpp_rest", url2))
        env["SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE"] = "a"
        env["SMS_CONNECTOR_DISPATCH__RETRY_MAX_ATTEMPTS"] = "3"
        env["SMS_CONNECTOR_DISPATCH__RETRY_BASE_DELAY_S"] = "0.05"
        settings = load(environ=env)
        senders = build_senders(settings)
        p = Pipeline(senders, Router.from_settings(settings.routing, {"a": "smpp_rest", "b": "smpp_rest"}))
        out = await send_many(p, 40)
        kinds = [t.ending for t in out]
        print("kinds", {k: kinds.count(k) for k in set(kinds)}, "bad requests", bad.stats.requests, "good", good.stats.messages)
        assert REGISTRY.get_sample_value("sms_circuit_state", {"route": "a"}) == 2
        assert good.stats.messages > 0
        assert REGISTRY.get_sample_value("sms_failover_total", {"route": "a", "failover": "b"}) > 0
        # recovery: fix the provider, wait out the open period, a probe closes it
        bad.faults.error_rate = 0.0
        await asyncio.sleep(1.1)
        out = await send_many(p, 5)
        assert all(t.ending == "accepted" for t in out)
        assert REGISTRY.get_sample_value("sms_circuit_state", {"route": "a"}) == 0
        for s in senders.values():
            await s.aclose(); await s.transport.aclose()
    finally:
        await r1.cleanup(); await r2.cleanup()


async def test_breaker_pauses_without_failover() -> None:
    bad, r1, url1 = await start("smpp_rest", error_rate=1.0)
    try:
        env = env_for("a", "smpp_rest", url1, breaker_min_calls="5", breaker_open_s="0.5")
        env["SMS_CONNECTOR_DISPATCH__RETRY_MAX_ATTEMPTS"] = "50"
        env["SMS_CONNECTOR_DISPATCH__RETRY_BASE_DELAY_S"] = "0.01"
        env["SMS_CONNECTOR_DISPATCH__RETRY_MAX_DELAY_S"] = "0.02"
        settings = load(environ=env)
        senders = build_senders(settings)
        p = Pipeline(senders, Router.from_settings(settings.routing, {"a": "smpp_rest"}))
        task = asyncio.ensure_future(send_many(p, 10))
        await asyncio.sleep(1.2)
        reqs = bad.stats.requests
        print("requests in 1.2 s with the circuit open", reqs)
        assert reqs < 30      # without the breaker: ~10 messages x 50 attempts in 1.2 s
        bad.faults.error_rate = 0.0
        out = await asyncio.wait_for(task, 10)
        assert all(t.ending == "accepted" for t in out), [t.reason for t in out]
        for s in senders.values():
            await s.aclose(); await s.transport.aclose()
    finally:
        await r1.cleanup()
