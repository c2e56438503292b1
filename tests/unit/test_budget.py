"""budget: slots that never add up to more than the budget, windows, regions, refunds."""

from __future__ import annotations

import random

import pytest

from connector.budget import DAY, HOUR, BudgetBook, BudgetSpent, Charge, Limit, route_budget, window_end, window_id
from connector.config import parse_region_budgets
from connector.policy import FAIL_BUDGET, HOLD_HAND_OFF, HOLD_IN_PLACE, over_budget_action

NOON = 1_796_558_400.0     # 2026-12-06T12:00:00Z


def test_windows_are_utc_hours_and_days() -> None:
    assert window_id(HOUR, NOON + 59 * 60) == "h:2026-12-06T12"
    assert window_id(DAY, NOON) == "d:2026-12-06"
    assert window_end(HOUR, NOON + 1) == NOON + 3600
    assert window_end(DAY, NOON) == NOON + 12 * 3600


def test_region_budgets_parse_and_refuse_nonsense() -> None:
    assert parse_region_budgets("ng=100/1000, GH=0/50") == {"NG": (100, 1000), "GH": (0, 50)}
    for bad in ("NG=100", "NGA=1/2", "NG=x/2", "NG=-1/2"):
        with pytest.raises(ValueError):
            parse_region_budgets(bad)
    assert route_budget("r", 0, 0) is None


def book(per_hour: int = 0, per_day: int = 0, regions: str = "", partitions: int = 4,
         owned: set[int] | None = None) -> BudgetBook:
    budget = route_budget("r", per_hour, per_day, regions)
    assert budget is not None
    return BudgetBook({"r": budget}, partitions, owned=set(range(partitions)) if owned is None else owned)


def test_a_worker_spends_its_share_across_its_own_slots_then_is_over() -> None:
    b = book(per_hour=100, owned={0, 1})       # 2 of 4 partitions: 50 segments
    charges = [b.take("r", None, 3, NOON) for _ in range(16)]
    assert all(isinstance(c, Charge) for c in charges)          # 48
    assert isinstance(b.take("r", None, 2, NOON), Charge)      # 50: split over two slots if need be
    spent = b.take("r", None, 1, NOON)
    assert isinstance(spent, BudgetSpent) and spent.until == NOON + 3600 and spent.limit.window == HOUR
    assert isinstance(b.take("r", None, 1, NOON + 3600), Charge)    # the next hour


def test_the_daily_budget_binds_too_and_a_refund_gives_room_back() -> None:
    b = book(per_hour=100, per_day=8, partitions=1)
    first = b.take("r", None, 8, NOON)
    assert isinstance(first, Charge)
    over = b.take("r", None, 1, NOON)
    assert isinstance(over, BudgetSpent) and over.limit.window == DAY and over.until == NOON + 12 * 3600
    b.refund(first)
    assert isinstance(b.take("r", None, 1, NOON), Charge)


def test_a_region_budget_applies_only_to_its_region() -> None:
    b = book(per_hour=100, regions="NG=2/0", partitions=1)
    assert isinstance(b.take("r", "NG", 2, NOON), Charge)
    assert isinstance(b.take("r", "NG", 1, NOON), BudgetSpent)
    assert isinstance(b.take("r", "US", 1, NOON), Charge)
    assert isinstance(b.take("r", None, 1, NOON), Charge)
    assert b.take("other-route", "NG", 1, NOON) is None


def test_slots_never_add_up_to_more_than_the_budget_whatever_the_rebalances() -> None:
    # Workers come and go and take partitions with their figures; each charges any slot it owns.
    rng = random.Random(7)
    budget, partitions = 97, 12
    state: dict = {}               # the state topic: slot -> figure
    for _ in range(200):
        workers = rng.randint(1, 5)
        owners = [set(range(w, partitions, workers)) for w in range(workers)]
        books = []
        for owned in owners:
            b = book(per_hour=budget, partitions=partitions, owned=owned)
            for key, spent in state.items():
                if key[3] in owned:
                    b.load(key, spent, NOON)
            books.append(b)
        for _ in range(rng.randint(0, 30)):
            rng.choice(books).take("r", None, rng.randint(1, 4), NOON)
        for b in books:
            state.update(b.spent)
        assert sum(state.values()) <= budget + 1e-6
    assert sum(state.values()) >= budget - 12 * 4     # and it was used: each slot ends within a message of full


def test_figures_of_an_earlier_window_are_ignored() -> None:
    b = book(per_hour=10, partitions=1)
    b.load(("r", "", "h:2026-12-06T11", 0), 10, NOON)
    b.load(("r", "", "h:2026-12-06T12", 0), 4, NOON)
    assert b.used("r", Limit("", HOUR, 10), NOON) == 4
    b.prune(NOON + 3600)
    assert b.spent == {}


@pytest.mark.parametrize("policy, retry_topic, action", [
    ("fail", True, FAIL_BUDGET), ("fail", False, FAIL_BUDGET),
    ("hold", True, HOLD_HAND_OFF), ("hold", False, HOLD_IN_PLACE),
])
def test_over_budget_policy(policy: str, retry_topic: bool, action: str) -> None:
    assert over_budget_action(policy, retry_topic) == action


def test_a_new_hour_forgets_the_figures_of_ended_windows() -> None:
    b = book(per_hour=100, per_day=1000, partitions=1)
    assert isinstance(b.take("r", None, 5, NOON), Charge)
    assert isinstance(b.take("r", None, 5, NOON + 3600), Charge)
    assert sorted(k[2] for k in b.spent) == ["d:2026-12-06", "h:2026-12-06T13"]
    assert b.spent[("r", "", "d:2026-12-06", 0)] == 10
