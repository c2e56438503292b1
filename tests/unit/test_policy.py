"""policy: every error class maps to the right action."""

from __future__ import annotations

import pytest

from connector import errors
from connector.policy import Fail, HandOffPolicy, Retry, RetryPolicy, backoff, decide, hand_off, longest_schedule_s

P = RetryPolicy(max_attempts=4, base_delay_s=0.2, max_delay_s=5.0, max_retry_after_s=30.0)


@pytest.mark.parametrize("error, attempt, expected", [
    (errors.Retriable("5xx"), 1, Retry),
    (errors.Timeout("t"), 3, Retry),
    (errors.Timeout("t"), 4, Fail("unavailable")),
    (errors.Throttled("429", retry_after=2.0), 1, Retry(2.0)),
    (errors.Throttled("429", retry_after=31.0), 1, Fail("throttled")),
    (errors.Throttled("429"), 4, Fail("throttled")),
    (errors.Rejected("bad"), 1, Fail("rejected")),
    (errors.AuthFailed("no"), 1, Fail("auth")),
    (errors.InDoubt("?"), 1, Fail("in-doubt")),
    (errors.InvalidMessage("x"), 1, Fail("invalid")),
    (errors.BlockedDestination("premium-rate", rule="block_number_types"), 1, Fail("blocked-destination")),
])
def test_decide(error: errors.SmsError, attempt: int, expected: object) -> None:
    action = decide(error, attempt, P, rand=lambda: 0.5)
    if expected is Retry:
        assert isinstance(action, Retry)
    else:
        assert action == expected


def test_full_jitter_backoff_is_capped_and_grows() -> None:
    assert backoff(1, P, rand=lambda: 1.0) == pytest.approx(0.2)
    assert backoff(3, P, rand=lambda: 1.0) == pytest.approx(0.8)
    assert backoff(20, P, rand=lambda: 1.0) == pytest.approx(5.0)
    assert backoff(3, P, rand=lambda: 0.0) == 0.0


@pytest.mark.parametrize("status, cls", [(408, errors.Retriable), (425, errors.Retriable), (429, errors.Throttled),
                                         (500, errors.Retriable), (503, errors.Retriable), (401, errors.AuthFailed),
                                         (403, errors.AuthFailed), (400, errors.Rejected), (404, errors.Rejected)])
def test_for_http_status(status: int, cls: type) -> None:
    assert type(errors.for_http_status(status, "x")) is cls


@pytest.mark.parametrize("value, expected", [("5", 5.0), (" 1.5 ", 1.5), ("-3", 0.0), ("", None), (None, None),
                                             ("soon", None), ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0)])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert errors.parse_retry_after(value, now=1445412480.0) == expected


def test_simulator_faults_keep_fractions() -> None:
    from connector.devtools.simulators.base import Faults

    f = Faults()
    f.update({"error_rate": 0.3, "seed": 3})
    assert f.error_rate == 0.3 and f.seed == 3


H = HandOffPolicy(max_attempts=12, delay_s=30.0, max_delay_s=600.0)


@pytest.mark.parametrize("error, attempts, passes, expected", [
    (errors.Retriable("5xx"), 4, 0, Retry(22.5)),                 # first hand-off: 15 + 0.5 * 15
    (errors.Timeout("t"), 8, 1, Retry(45.0)),                      # doubles per pass
    (errors.Retriable("5xx"), 11, 9, Retry(450.0)),                # capped at max_delay_s
    (errors.Retriable("5xx"), 12, 2, Fail("unavailable")),         # the attempt cap
    (errors.Throttled("429"), 12, 2, Fail("throttled")),
    (errors.Throttled("429", retry_after=120.0), 4, 0, Retry(120.0)),   # Retry-After longer than the backoff
    (errors.Throttled("429", retry_after=5000.0), 4, 0, Retry(600.0)),  # ... up to the cap
    (errors.Throttled("429", retry_after=1.0), 4, 0, Retry(22.5)),
    (errors.Rejected("bad"), 1, 0, Fail("rejected")),                 # permanent: never handed off
    (errors.InDoubt("?"), 1, 0, Fail("in-doubt")),
    (errors.AuthFailed("no"), 1, 0, Fail("auth")),
])
def test_hand_off(error: errors.SmsError, attempts: int, passes: int, expected: object) -> None:
    assert hand_off(error, attempts, passes, H, rand=lambda: 0.5) == expected


def test_hand_off_delay_is_at_least_half_its_ceiling() -> None:
    delays = [hand_off(errors.Retriable("x"), 4, 0, H, rand=lambda r=r: r) for r in (0.0, 1.0)]
    assert delays == [Retry(15.0), Retry(30.0)]


@pytest.mark.parametrize("cap, in_place, longest", [
    (12, 4, 30 + 60),            # two passes after the first: 8 calls at 4 per pass
    (13, 4, 30 + 60 + 120),      # a third, short pass
    (4, 4, 0),                   # no retry topic
    (100, 4, 30 + 60 + 120 + 240 + 480 + 600 * 19),   # capped at max_delay_s
])
def test_longest_schedule(cap: int, in_place: int, longest: float) -> None:
    assert longest_schedule_s(HandOffPolicy(cap, 30.0, 600.0), in_place) == longest
