"""Pure decisions: what to do with a message after an error, and how long to wait.

The only module that turns a classified error (``connector.errors``) into an action. Retriable
errors are retried with exponential backoff and full jitter, honouring ``Retry-After`` (capped);
everything else fails at once with the error's reason. Retries come in two tiers:

- ``decide``: in place, a short budget of quick retries (``RetryPolicy``), while the message
  holds its place in its key's order;
- ``hand_off``: once that budget is spent, the message goes to the retry topic and is sent again
  at a due time minutes away (``HandOffPolicy``), so a slow message never holds up its partition;
  after the attempt cap across all passes it fails with the last error's reason.

No I/O, no clock reads except through arguments, so every rule is a table-driven unit test.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from connector.errors import SmsError, Throttled

if TYPE_CHECKING:
    from connector.config import DispatchSettings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4          # provider calls in place, including the first
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    max_retry_after_s: float = 30.0  # a provider's Retry-After is honoured up to this


@dataclass(frozen=True, slots=True)
class Retry:
    after_s: float


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str


Action = Retry | Fail


def backoff(attempt: int, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff before attempt ``attempt + 1`` (``attempt`` >= 1)."""
    ceiling = min(policy.max_delay_s, policy.base_delay_s * (2 ** (attempt - 1)))
    return rand() * ceiling


def decide(error: SmsError, attempt: int, policy: RetryPolicy,
           rand: Callable[[], float] = random.random) -> Action:
    """The action after ``attempt`` provider calls (>= 1) ended in ``error``."""
    if not error.retriable or attempt >= policy.max_attempts:
        return Fail(error.reason)
    if isinstance(error, Throttled) and error.retry_after is not None:
        if error.retry_after > policy.max_retry_after_s:
            return Fail(error.reason)  # waiting that long in place would stall the partition
        return Retry(error.retry_after)
    return Retry(backoff(attempt, policy, rand))


@dataclass(frozen=True, slots=True)
class HandOffPolicy:
    max_attempts: int = 12          # provider calls in all, across passes; then the message fails
    delay_s: float = 30.0           # before the first pass from the retry topic; doubles per pass
    max_delay_s: float = 600.0      # cap per pass, Retry-After included


def handoff_policy(d: DispatchSettings) -> HandOffPolicy | None:
    """The retry topic's policy from the dispatch settings; None when the attempt cap leaves no
    calls beyond the in-place budget (no retry topic)."""
    if d.max_attempts <= d.retry_max_attempts:
        return None
    return HandOffPolicy(d.max_attempts, d.retry_topic_delay_s, d.retry_topic_max_delay_s)


def hand_off(error: SmsError, attempts: int, passes: int, policy: HandOffPolicy,
             rand: Callable[[], float] = random.random) -> Action:
    """After a pass ended in ``error`` with ``attempts`` provider calls made in all and
    ``passes`` hand-offs so far: ``Retry(delay)`` through the retry topic, or ``Fail``.

    The delay has equal jitter (half fixed, half random): a hand-off is meant to wait, and the
    random half spreads a burst of failures over time. A longer ``Retry-After`` wins, up to the cap."""
    if not error.retriable or attempts >= policy.max_attempts:
        return Fail(error.reason)
    ceiling = min(policy.max_delay_s, policy.delay_s * (2 ** passes))
    delay = ceiling / 2 + rand() * ceiling / 2
    if isinstance(error, Throttled) and error.retry_after is not None:
        delay = max(delay, min(error.retry_after, policy.max_delay_s))
    return Retry(delay)


def longest_schedule_s(policy: HandOffPolicy, in_place: int) -> float:
    """The longest a message can spend waiting in the retry topic: every pass but the first
    makes ``in_place`` calls, and each wait is at most its ceiling."""
    passes = max(0, -(-(policy.max_attempts - in_place) // max(1, in_place)))   # ceil
    return sum(min(policy.max_delay_s, policy.delay_s * 2 ** k) for k in range(passes))


# -- spend budgets (connector.budget) -----------------------------------------------------------
HOLD_HAND_OFF, HOLD_IN_PLACE, FAIL_BUDGET = "hand-off", "wait", "fail"


def over_budget_action(over_budget: str, has_retry_topic: bool) -> str:
    """A message over a spent budget: ``fail`` (reason budget), or hold it until the window ends:
    handed off to the retry topic (its partition goes on, the record is durable) or, without a
    retry topic, waiting in place (it keeps its key's order and its partition's commit)."""
    if over_budget == "fail":
        return FAIL_BUDGET
    return HOLD_HAND_OFF if has_retry_topic else HOLD_IN_PLACE
