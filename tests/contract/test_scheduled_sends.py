"""The pipeline's deferral decisions against a simulator over real HTTP: a message that must wait
(send_at ahead, the route's quiet hours) is handed off without any provider call; expiry, the
furthest allowed schedule and bypass_quiet_hours decide before any wait."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import orjson
from prometheus_client import REGISTRY

from connector.app import build_senders
from connector.config import load
from connector.pipeline import Pipeline
from connector.records import Ending, iso
from connector.retries import RetryState
from connector.routing import Router
from connector.schedule import SchedulePolicy
from tests.contract.test_route_guards import env_for, start


def quiet_now() -> str:
    """Quiet hours (UTC wall time) around the current minute."""
    now = datetime.now(timezone.utc)
    return f"{now - timedelta(hours=1):%H:%M}-{now + timedelta(hours=1):%H:%M}"


def record(cid: str, **extra: object) -> bytes:
    return orjson.dumps({"client_message_id": cid, "recipient": {"phone": "+447700900123"}, "text": "hi", **extra})


async def test_deferrals_make_no_provider_call() -> None:
    sim, runner, url = await start("smpp_rest")
    try:
        env = env_for("r", "smpp_rest", url, quiet_hours=quiet_now())
        env["SMS_CONNECTOR_DISPATCH__MAX_SCHEDULE_AHEAD_S"] = "86400"
        settings = load(environ=env)
        senders = build_senders(settings)
        p = Pipeline(senders, Router.from_settings(settings.routing, {"r": "smpp_rest"}),
                     schedule=SchedulePolicy.from_settings(settings))
        now = time.time()
        ms = int(now * 1000)
        before = REGISTRY.get_sample_value("sms_deferred_total", {"route": "r", "reason": "scheduled"}) or 0
        # bypassing the quiet hours, scheduled an hour ahead: waits, reason scheduled, due rounded up
        v = await p.outcome(record("s1", send_at=iso(now + 3600), bypass_quiet_hours=True), ms)
        assert v.ending is Ending.HANDED_OFF and v.deferral == "scheduled" and v.handoff is not None
        send_at = int((now + 3600) * 1000) / 1000       # iso() keeps milliseconds
        assert send_at <= v.handoff.due_at < send_at + 0.002
        assert REGISTRY.get_sample_value("sms_deferred_total", {"route": "r", "reason": "scheduled"}) == before + 1
        # a retry pass that must wait keeps its attempts and passes
        v = await p.outcome(record("s2", send_at=iso(now + 60), bypass_quiet_hours=True), ms,
                            retry=RetryState.new(5, 2, now))
        assert v.handoff is not None and (v.handoff.attempts, v.handoff.passes) == (5, 2)
        # in the route's quiet hours (UTC here, named by the record): waits for their end
        v = await p.outcome(record("q1", recipient_time_zone="UTC"), ms)
        assert v.ending is Ending.HANDED_OFF and v.deferral == "quiet-hours"
        assert 3500 < v.handoff.due_at - now <= 3600 + 60
        assert sim.stats.requests == 0
        # expires before it may be sent: failed now, reason expired
        v = await p.outcome(record("e1", send_at=iso(now + 600), expires_at=iso(now + 300), bypass_quiet_hours=True), ms)
        assert v.ending is Ending.FAILED and v.reason == "expired"
        # further ahead than dispatch.max_schedule_ahead_s: failed, reason invalid
        v = await p.outcome(record("f1", send_at=iso(now + 2 * 86400), bypass_quiet_hours=True), ms)
        assert v.ending is Ending.FAILED and v.reason == "invalid"
        assert orjson.loads(v.value or b"{}").get("error_field", "send_at") == "send_at"
        assert sim.stats.requests == 0
        # in the past, or bypassing the quiet hours: sent now
        v = await p.outcome(record("p1", send_at=iso(now - 60), bypass_quiet_hours=True), ms)
        assert v.ending is Ending.ACCEPTED
        v = await p.outcome(record("b1", recipient_time_zone="UTC", bypass_quiet_hours=True), ms)
        assert v.ending is Ending.ACCEPTED
        for s in senders.values():
            await s.aclose(); await s.transport.aclose()
    finally:
        await runner.cleanup()
