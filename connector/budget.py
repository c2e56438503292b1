"""Spend budgets: segments per hour and per day per route (and per destination region), shared by
every worker of the deployment, without a coordinator. No I/O: ``streams/budgets.py`` loads and
stores the figures in Kafka.

**Slots.** A budget of ``B`` segments in a window is cut into one slot per partition of
``sms.outbound``: slot ``p`` may hold at most ``B / P`` segments, and only the worker that owns
input partition ``p`` writes it (the state topic is written to partition ``p``, like the ledger).
A worker may charge a message to *any* slot it owns, not only its own partition's, so its
allowance is ``B * owned / P``: the same share as its rate limit. Since no slot ever holds more
than ``B / P``, all slots together never hold more than ``B``, whatever the assignments were
when each was charged: a rebalance moves slots between workers with their spent figures, and no
figure has to be reconciled. The cost: a worker cannot borrow an idle worker's allowance, so with
traffic skewed onto few partitions the deployment stops below ``B`` (those workers' slots are
spent, the others' are not). Keys spread over partitions (the recipient) keep that small.

**Charging.** A message's segments are charged to slots *before* its provider call and written
durably before the call goes out (``streams/budgets.py``), so a crash never under-counts; at
most the charges of calls in flight are counted without a call (and those of calls that failed
before reaching the provider are given back, ``refund``). Every budget that applies must have
room: the route's hourly and daily one and, if the route names one for the recipient's region,
that region's. A message too large for the room left waits for the next window.

**Windows** are UTC hours and UTC days, named ``h:2026-12-06T13`` and ``d:2026-12-06``. A figure
of an earlier window is ignored on load.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from connector.config import parse_region_budgets

HOUR, DAY = "hour", "day"
WINDOWS = {HOUR: 3600, DAY: 86400}
ROUTE_WIDE = ""                    # the scope of a route's own budget (a region's is its ISO code)
_EPS = 1e-9


def window_id(kind: str, now: float) -> str:
    """The window ``now`` falls in: ``h:YYYY-MM-DDTHH`` or ``d:YYYY-MM-DD`` (UTC)."""
    t = time.gmtime(now)
    return time.strftime("h:%Y-%m-%dT%H" if kind == HOUR else "d:%Y-%m-%d", t)


def window_end(kind: str, now: float) -> float:
    """When the window ``now`` falls in ends (the next one starts)."""
    span = WINDOWS[kind]
    return (math.floor(now / span) + 1) * span


@dataclass(frozen=True)
class Limit:
    """One budget: at most ``segments`` per ``window`` (hour or day) for ``scope`` (route-wide or a region)."""
    scope: str
    window: str
    segments: int


@dataclass(frozen=True)
class RouteBudget:
    """A route's budgets and what happens over them (``over_budget``: hold or fail)."""
    route: str
    limits: tuple[Limit, ...]
    over_budget: str = "hold"

    def applying(self, region: str | None) -> list[Limit]:
        return [lim for lim in self.limits if lim.scope == ROUTE_WIDE or lim.scope == (region or "").upper()]


def route_budget(route: str, per_hour: int, per_day: int, regions: str = "", over_budget: str = "hold") -> RouteBudget | None:
    """The route's budgets from its settings; None when it has none."""
    limits = [Limit(ROUTE_WIDE, HOUR, per_hour)] if per_hour else []
    limits += [Limit(ROUTE_WIDE, DAY, per_day)] if per_day else []
    for region, (hour, day) in parse_region_budgets(regions).items():
        limits += [Limit(region, HOUR, hour)] if hour else []
        limits += [Limit(region, DAY, day)] if day else []
    return RouteBudget(route, tuple(limits), over_budget) if limits else None


def route_budget_of(route: str, settings: object) -> RouteBudget | None:
    """The budgets a route's settings (``config.RouteSettings``) configure."""
    return route_budget(route, getattr(settings, "budget_segments_per_hour", 0),
                        getattr(settings, "budget_segments_per_day", 0), getattr(settings, "budget_regions", ""),
                        getattr(settings, "over_budget", "hold"))


SlotKey = tuple[str, str, str, int]     # (route, scope, window id, partition)


@dataclass(frozen=True)
class Charge:
    """Segments taken from slots: ((route, scope, window id, partition), segments) pairs."""
    parts: tuple[tuple[SlotKey, float], ...]


@dataclass(frozen=True)
class BudgetSpent:
    """No room left in ``limit``'s window: what the route's ``over_budget`` says, and when the window ends."""
    limit: Limit
    until: float
    over_budget: str = "hold"


@dataclass
class BudgetBook:
    """This worker's slots: the spent figures of the partitions it owns, in the current windows."""
    budgets: Mapping[str, RouteBudget]
    partitions: int = 1                                      # of sms.outbound
    spent: dict[SlotKey, float] = field(default_factory=dict)
    owned: set[int] = field(default_factory=set)
    _hour: str = ""                                          # the hour of the last charge: a new one prunes

    def allowance(self, limit: Limit) -> float:
        """What one slot may hold."""
        return limit.segments / max(1, self.partitions)

    def take(self, route: str, region: str | None, segments: int, now: float) -> Charge | BudgetSpent | None:
        """Charge ``segments`` (in memory) or say which budget is spent. None: no budget applies."""
        budget = self.budgets.get(route)
        if budget is None or segments <= 0:
            return None
        if (hour := window_id(HOUR, now)) != self._hour:
            self._hour = hour
            self.prune(now)                                  # figures of ended windows: memory stays bounded
        plans: list[tuple[SlotKey, float]] = []
        for limit in budget.applying(region):
            wid = window_id(limit.window, now)
            cap = self.allowance(limit)
            need = float(segments)
            for p in sorted(self.owned):
                key = (route, limit.scope, wid, p)
                room = cap - self.spent.get(key, 0.0)
                if room <= _EPS:
                    continue
                part = min(room, need)
                plans.append((key, part))
                need -= part
                if need <= _EPS:
                    break
            if need > _EPS:
                return BudgetSpent(limit, window_end(limit.window, now), budget.over_budget)
        for key, part in plans:
            self.spent[key] = self.spent.get(key, 0.0) + part
        return Charge(tuple(plans))

    def refund(self, charge: Charge) -> None:
        for key, part in charge.parts:
            if key in self.spent:
                self.spent[key] = max(0.0, self.spent[key] - part)

    def load(self, key: SlotKey, spent: float, now: float) -> None:
        """A figure read from the state topic: kept if its window is current (the latest wins)."""
        route, scope, wid, _ = key
        kind = HOUR if wid.startswith("h:") else DAY
        if wid == window_id(kind, now):
            self.spent[key] = spent

    def release(self, partitions: Iterable[int]) -> None:
        gone = set(partitions)
        self.owned -= gone
        for key in [k for k in self.spent if k[3] in gone]:
            del self.spent[key]

    def prune(self, now: float) -> None:
        """Forget figures of windows that ended."""
        current = {window_id(HOUR, now), window_id(DAY, now)}
        for key in [k for k in self.spent if k[2] not in current]:
            del self.spent[key]

    def used(self, route: str, limit: Limit, now: float) -> float:
        """Segments this worker's slots hold for ``limit`` now (the deployment's sum is the sum over workers)."""
        wid = window_id(limit.window, now)
        return sum(v for (r, s, w, p), v in self.spent.items() if r == route and s == limit.scope and w == wid
                   and p in self.owned)
