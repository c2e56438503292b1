"""Spend budgets in the pipeline against a simulator over real HTTP, with the budget's clock in
the test's hand: fail, hold until the next window (then sent), and no charge for a rejection."""
from __future__ import annotations

import time
from typing import Any

from connector.app import build_senders
from connector.budget import BudgetBook, BudgetSpent, Charge, route_budget_of
from connector.config import load
from connector.pipeline import Pipeline
from connector.policy import HandOffPolicy
from connector.records import Ending, OutboundSms, Recipient, encode_outbound
from connector.routing import Router
from tests.contract.test_route_guards import env_for, start

NOON = 1_796_558_400.0     # 2026-12-06T12:00:00Z


class ClockedBudgets:
    """``streams.budgets.Budgets`` without Kafka, at the test's time (one worker owning every slot)."""

    def __init__(self, settings: Any, now: float) -> None:
        budgets = {n: b for n, r in settings.routes.items() if (b := route_budget_of(n, r.common)) is not None}
        self.book = BudgetBook(budgets, 4, owned={0, 1, 2, 3})
        self.now = now

    def applies(self, route: str) -> bool:
        return route in self.book.budgets

    async def charge(self, route: str, recipient: Any, segments: int) -> Charge | BudgetSpent | None:
        return self.book.take(route, recipient.region, segments, self.now)

    async def refund(self, charge: Charge) -> None:
        self.book.refund(charge)


def record(i: int, phone: str | None = None) -> bytes:
    return encode_outbound(OutboundSms(client_message_id=f"b{i}", recipient=Recipient(phone=phone or f"+4477009{i:05d}"),
                                       text="hello"))


async def pipeline_for(url: str, handoff: HandOffPolicy | None, **route: str) -> tuple[Pipeline, ClockedBudgets]:
    settings = load(environ=env_for("r", "smpp_rest", url, **route))
    p = Pipeline(build_senders(settings), Router.from_settings(settings.routing, {"r": "smpp_rest"}), handoff=handoff)
    budgets = ClockedBudgets(settings, NOON + 60)
    p.budgets = budgets
    return p, budgets


async def close(p: Pipeline) -> None:
    for sender in p.senders.values():
        await sender.aclose()
        await sender.transport.aclose()


async def test_over_budget_fail_ends_failed_with_reason_budget_and_no_call() -> None:
    sim, runner, url = await start("smpp_rest")
    p, _ = await pipeline_for(url, None, budget_segments_per_hour="3", over_budget="fail")
    try:
        out = [await p.outcome(record(i), int(time.time() * 1000)) for i in range(5)]
        assert [v.ending for v in out] == [Ending.ACCEPTED] * 3 + [Ending.FAILED] * 2
        assert {v.reason for v in out[3:]} == {"budget"}
        assert sim.stats.messages == 3
    finally:
        await close(p)
        await runner.cleanup()


async def test_held_messages_are_handed_off_to_the_window_end_and_sent_in_the_next_window() -> None:
    sim, runner, url = await start("smpp_rest")
    p, budgets = await pipeline_for(url, HandOffPolicy(max_attempts=12), budget_segments_per_hour="3",
                                    budget_segments_per_day="100")
    try:
        out = [await p.outcome(record(i), int(time.time() * 1000)) for i in range(5)]
        held = out[3:]
        assert [v.ending for v in out] == [Ending.ACCEPTED] * 3 + [Ending.HANDED_OFF] * 2
        assert all(v.reason == "budget" and v.handoff is not None and v.handoff.due_at == NOON + 3600 for v in held)
        assert all(v.handoff is not None and v.handoff.attempts == 0 for v in held)   # no call made: none counted
        budgets.now = NOON + 3600                              # the next hour: the retry passes go out
        again = [await p.outcome(record(i), int(time.time() * 1000), retry=v.handoff) for i, v in zip((3, 4), held)]
        assert [v.ending for v in again] == [Ending.ACCEPTED] * 2
        assert sim.stats.messages == 5
    finally:
        await close(p)
        await runner.cleanup()


async def test_a_region_budget_holds_its_region_only_and_a_rejection_costs_nothing() -> None:
    sim, runner, url = await start("smpp_rest")
    p, budgets = await pipeline_for(url, None, budget_segments_per_hour="100", budget_regions="NG=1/0",
                                    over_budget="fail")
    try:
        rejected = await p.outcome(record(0, "+447700900666"), int(time.time() * 1000))   # the simulator's reject rule
        assert rejected.ending == Ending.FAILED and rejected.reason == "rejected"
        assert sum(budgets.book.spent.values()) == 0          # refunded: the provider took nothing
        nigeria = [await p.outcome(record(i, f"+23480312345{i:02d}"), int(time.time() * 1000)) for i in range(2)]
        assert [v.reason for v in nigeria] == [None, "budget"]
        assert (await p.outcome(record(9), int(time.time() * 1000))).ending == Ending.ACCEPTED
    finally:
        await close(p)
        await runner.cleanup()


async def test_a_failover_is_charged_to_the_failover_routes_budget_not_the_first_routes() -> None:
    bad, r1, url1 = await start("smpp_rest", error_rate=1.0)
    good, r2, url2 = await start("smpp_rest")
    env = env_for("a", "smpp_rest", url1, failover_route="b", breaker_min_calls="5", breaker_open_s="60",
                  budget_segments_per_hour="1000")
    env.update(env_for("b", "smpp_rest", url2, budget_segments_per_hour="4", over_budget="fail"))
    env.update({"SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": "a", "SMS_CONNECTOR_DISPATCH__RETRY_MAX_ATTEMPTS": "1"})
    settings = load(environ=env)
    p = Pipeline(build_senders(settings), Router.from_settings(settings.routing, {"a": "smpp_rest", "b": "smpp_rest"}))
    budgets = ClockedBudgets(settings, NOON + 60)
    p.budgets = budgets
    try:
        out = [await p.outcome(record(i), int(time.time() * 1000)) for i in range(12)]   # opens a's circuit
        failed_over = [v for v in out if v.ending == Ending.ACCEPTED]
        over = [v for v in out if v.reason == "budget"]
        assert len(failed_over) == 4 == good.stats.messages            # b's budget, not more
        assert over and all(v.ending == Ending.FAILED for v in over)
        spent = {(k[0]): 0.0 for k in budgets.book.spent}
        for k, v in budgets.book.spent.items():
            spent[k[0]] += v
        assert spent.get("a", 0) == 0 and spent["b"] == 4              # a's charges were given back
    finally:
        await close(p)
        await r1.cleanup()
        await r2.cleanup()


class TimePassingBudgets(ClockedBudgets):
    """Time jumps to a spent window's end as soon as someone is told to wait for it."""

    async def charge(self, route: str, recipient: Any, segments: int) -> Charge | BudgetSpent | None:
        taken = await super().charge(route, recipient, segments)
        if isinstance(taken, BudgetSpent):
            self.now = taken.until
        return taken


async def test_without_a_retry_topic_a_held_message_waits_in_place_for_the_next_window() -> None:
    sim, runner, url = await start("smpp_rest")
    settings = load(environ=env_for("r", "smpp_rest", url, budget_segments_per_hour="1"))
    p = Pipeline(build_senders(settings), Router.from_settings(settings.routing, {"r": "smpp_rest"}), handoff=None)
    yesterday = NOON - 86400           # its windows ended long ago: the wait in place is short
    budgets = TimePassingBudgets(settings, yesterday)
    p.budgets = budgets
    try:
        out = [await p.outcome(record(i), int(time.time() * 1000)) for i in range(2)]
        assert [v.ending for v in out] == [Ending.ACCEPTED] * 2      # the second waited, then went out
        assert budgets.now == yesterday + 3600 and sim.stats.messages == 2
    finally:
        await close(p)
        await runner.cleanup()
