"""breaker: transitions, what counts as a failure, and waiting instead of spinning (fake clock)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connector import errors
from connector.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, CircuitOpen, classify, classify_call
from connector.records import Accepted
from tests.fakes import FakeTime


def breaker(clock: FakeTime, **kw: Any) -> CircuitBreaker:
    options: dict[str, Any] = {"failure_ratio": 0.5, "window_s": 30.0, "min_calls": 20, "open_s": 30.0,
                               "max_open_s": 100.0}
    options.update(kw)
    return CircuitBreaker(clock=clock, sleep=clock.sleep, **options)


def feed(b: CircuitBreaker, outcomes: str) -> None:
    """'s' success, 'f' failure, 'n' not counted: each a call that allow() let through."""
    for o in outcomes:
        assert b.allow()
        b.record({"s": True, "f": False, "n": None}[o])


# -- what counts ----------------------------------------------------------------------------------

ACCEPTED = Accepted(provider_message_id="m1")


@pytest.mark.parametrize("result, expected", [
    (ACCEPTED, True),
    (errors.Retriable("503"), False),
    (errors.Timeout("no answer"), False),
    (errors.AuthFailed("401"), False),
    (errors.LoginLocked("login breaker"), False),
    (errors.InDoubt("unreadable 200"), False),
    (errors.Throttled("429", retry_after=1.0), None),     # the rate limiter's business
    (errors.Rejected("invalid destination"), None),       # one message's fault, not the route's
    (errors.InvalidMessage("bad number"), None),
    (errors.OptedOut("stop"), None),
    (errors.BlockedDestination("premium-rate", rule="block_number_types"), None),   # no call was made
    (errors.ProviderError("internal error while sending"), None),
    (CircuitOpen("open"), None),
])
def test_classify(result: object, expected: bool | None) -> None:
    assert classify(result) is expected


@pytest.mark.parametrize("results, expected", [
    ([ACCEPTED, errors.Rejected("x"), errors.Retriable("x")], True),   # the provider took some
    ([errors.Rejected("x"), errors.Retriable("x")], False),
    ([errors.Rejected("x"), errors.Throttled("x")], None),
    ([], None),
    (None, None),
])
def test_classify_call(results: list[object] | None, expected: bool | None) -> None:
    assert classify_call(results) is expected


# -- closed -> open ---------------------------------------------------------------------------------

@pytest.mark.parametrize("outcomes, state", [
    ("f" * 19, CLOSED),                         # every call failed, but fewer than min_calls
    ("f" * 20, OPEN),
    ("s" * 10 + "f" * 10, OPEN),                # ratio 0.5 >= threshold
    ("s" * 11 + "f" * 9, CLOSED),               # 0.45
    ("s" * 11 + "f" * 10, CLOSED),              # 10/21 < 0.5
    ("s" * 11 + "f" * 11, OPEN),
    ("n" * 100 + "f" * 19, CLOSED),             # permanent rejections do not count as calls
    ("n" * 100 + "s" * 10, CLOSED),
    ("fn" * 40 + "s" * 0, OPEN),                # 40 failures among rejections: opens on the 20th
])
def test_opens_on_ratio_after_min_calls(outcomes: str, state: str) -> None:
    clock = FakeTime()
    b = breaker(clock)
    for o in outcomes:
        if b.state == OPEN:
            break
        feed(b, o)
    assert b.state == state


def test_permanent_rejections_never_open_it() -> None:
    clock = FakeTime()
    b = breaker(clock, min_calls=5)
    for _ in range(1000):
        assert b.allow()
        b.record(classify(errors.Rejected("invalid destination")))
        b.record(classify(errors.InvalidMessage("bad number")))
    assert b.state == CLOSED and b.window() == (0, 0)


def test_old_outcomes_leave_the_window() -> None:
    clock = FakeTime()
    b = breaker(clock)
    feed(b, "f" * 15)
    clock.now += 31.0                           # those failures are now older than the window
    feed(b, "f" * 15)
    assert b.state == CLOSED and b.window() == (0, 15)
    feed(b, "f" * 5)
    assert b.state == OPEN


# -- open -> half-open -> closed / open ----------------------------------------------------------------

def test_full_cycle_with_exponential_open_periods() -> None:
    clock = FakeTime()
    changes: list[tuple[str, str]] = []
    b = breaker(clock, on_change=lambda old, new: changes.append((old, new)))
    feed(b, "f" * 20)
    assert (b.state, b.state_code, b.is_open) == (OPEN, 2, True)
    clock.now += 29.0
    assert not b.allow()
    clock.now += 1.0
    assert (b.state, b.state_code, b.is_open) == (HALF_OPEN, 1, False)
    assert b.allow()                            # the probe
    assert not b.allow()                        # one probe at a time
    b.record(False)                             # the probe failed: open, twice as long
    assert b.state == OPEN and b.open_for == 60
    clock.now += 59.0
    assert not b.allow()
    clock.now += 1.0
    assert b.allow()
    b.record(False)
    assert b.open_for == 100                    # capped at max_open_s
    clock.now += 100.0
    assert b.allow()
    b.record(True)                              # the probe succeeded: closed, reset
    assert (b.state, b.state_code, b.open_for, b.window()) == (CLOSED, 0, 30, (0, 0))
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (OPEN, HALF_OPEN),
                       (HALF_OPEN, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]
    assert b.times_opened == 3


def test_half_open_with_several_probes_needs_them_all() -> None:
    clock = FakeTime()
    b = breaker(clock, probes=2)
    feed(b, "f" * 20)
    clock.now += 30
    assert b.allow() and b.allow() and not b.allow()
    b.record(True)
    assert b.state == HALF_OPEN and not b.allow()
    b.record(True)
    assert b.state == CLOSED


def test_an_uncounted_probe_frees_its_place() -> None:
    clock = FakeTime()
    b = breaker(clock)
    feed(b, "f" * 20)
    clock.now += 30
    assert b.allow()
    b.record(None)                              # e.g. the probe message was an invalid number
    assert b.state == HALF_OPEN
    assert b.allow()


def test_a_lost_probe_times_out() -> None:
    clock = FakeTime()
    b = breaker(clock, probe_timeout_s=5.0)
    feed(b, "f" * 20)
    clock.now += 30
    assert b.allow()                            # this probe never reports (cancelled)
    clock.now += 4.0
    assert not b.allow()
    clock.now += 1.0
    assert b.allow()


def test_stragglers_are_ignored() -> None:
    clock = FakeTime()
    b = breaker(clock)
    feed(b, "f" * 20)
    for _ in range(10):
        b.record(True)                          # calls that started before it opened
    assert b.state == OPEN
    clock.now += 30
    b.record(True)                              # half-open, but no probe was let through
    assert b.state == HALF_OPEN


@pytest.mark.parametrize("kwargs", [{"failure_ratio": 0}, {"failure_ratio": 1.5}, {"min_calls": 0},
                                    {"open_s": 0}, {"probes": 0}])
def test_invalid_breaker(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]


# -- waiting ----------------------------------------------------------------------------------------

async def test_senders_sleep_while_open_and_one_probes() -> None:
    clock = FakeTime()
    b = breaker(clock)
    feed(b, "f" * 20)
    opened_at = clock.now
    released: list[tuple[str, float]] = []
    checks = 0
    allow = b.allow

    def counting_allow() -> bool:
        nonlocal checks
        checks += 1
        return allow()

    b.allow = counting_allow  # type: ignore[method-assign]

    async def sender(name: str) -> None:
        await b.wait_until_allowed()
        released.append((name, clock.now - opened_at))
        if name == "a":
            await clock.sleep(2.0)              # the probe call takes 2 s, then succeeds
            b.record(True)

    await clock.run(sender("a"), sender("b"), sender("c"))
    assert released[0] == ("a", 30.0)           # the probe, when the open period ends
    assert sorted(released[1:]) == [("b", 32.0), ("c", 32.0)]   # everyone else when it closed
    assert checks <= 12                         # woken by changes, not polling


async def test_a_failed_probe_sends_the_waiters_back_to_sleep() -> None:
    clock = FakeTime()
    b = breaker(clock)
    feed(b, "f" * 20)
    opened_at = clock.now
    released: list[float] = []

    async def prober() -> None:
        await b.wait_until_allowed()
        b.record(False)                         # fails at once: open for 60 s
        await b.wait_until_allowed()
        b.record(True)

    async def waiter() -> None:
        await b.wait_until_allowed()
        released.append(clock.now - opened_at)

    await clock.run(prober(), waiter())
    assert released == [90.0]
    assert b.state == CLOSED


async def test_waiting_can_be_cancelled() -> None:
    clock = FakeTime()
    b = breaker(clock)
    feed(b, "f" * 20)
    [task] = await clock.run(b.wait_until_allowed(), until=clock.now + 10)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert b.state == OPEN
