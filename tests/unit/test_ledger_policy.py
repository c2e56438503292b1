"""The pipeline's ledger decisions: done -> skip; intent -> the route's in-doubt policy; new -> intent;
retrying -> only the retry record carrying the ledger's token is sent. And its hand-off decisions."""

from __future__ import annotations

import time

import orjson
import pytest

from connector.app import build_senders
from connector.config import load
from connector.http import HttpRequest, HttpResponse
from connector.pipeline import Pipeline
from connector.policy import HandOffPolicy
from connector.retries import RetryState
from connector.records import OutboundSms, Recipient, encode_outbound
from connector.routing import Router
from connector.transport import HttpTransport


class FakeLedger:
    """Stands in for a PartitionLedger (unit test of the pipeline's decisions only)."""

    def __init__(self, state: str | None, outcome: str | None = None, token: str | None = None) -> None:
        self.known = state
        self.recorded = outcome
        self.hand_off_token = token
        self.intents: list[str] = []

    def state(self, cid: str) -> str | None:
        return self.known

    def outcome(self, cid: str) -> str | None:
        return self.recorded

    def token(self, cid: str) -> str | None:
        return self.hand_off_token

    async def intent(self, cid: str, route: str | None) -> None:
        self.intents.append(cid)


def pipeline(in_doubt: str, calls: list[HttpRequest], status: int = 200,
             handoff: HandOffPolicy | None = None) -> Pipeline:
    prefix = "SMS_CONNECTOR_ROUTES__R__"
    settings = load(environ={prefix + "PROVIDER": "smpp_rest", prefix + "BASE_URL": "http://sim", prefix + "API_KEY": "k",
                             prefix + "IN_DOUBT": in_doubt, "SMS_CONNECTOR_DISPATCH__RETRY_MAX_ATTEMPTS": "2",
                             "SMS_CONNECTOR_DISPATCH__RETRY_BASE_DELAY_S": "0"})
    senders = build_senders(settings)

    async def handler(request: HttpRequest) -> HttpResponse:
        calls.append(request)
        if status != 200:
            return HttpResponse(status, b"unavailable")
        cid = orjson.loads(request.body)["Messages"][0]["clientMessageId"]
        return HttpResponse(200, orjson.dumps({"messages": [{"apiMessageId": "a1", "accepted": True,
                                                              "msg": {"clientMessageId": cid}}]}))

    for s in senders.values():
        s.transport = HttpTransport(handler=handler)
    return Pipeline(senders, Router.from_settings(settings.routing, {"r": "smpp_rest"}), handoff=handoff)


VALUE = encode_outbound(OutboundSms(client_message_id="m-1", recipient=Recipient(phone="+14155550123"), text="hi"))


@pytest.mark.parametrize("state, in_doubt, kind, reason, calls, intents", [
    ("done", "resend", "skip", None, 0, 0),
    ("intent", "resend", "accepted", None, 1, 0),
    ("intent", "fail", "failed", "in-doubt", 0, 0),
    (None, "fail", "accepted", None, 1, 1),
    (None, "resend", "accepted", None, 1, 0),      # under resend an intent would change no decision
])
async def test_ledger_decisions(state: str | None, in_doubt: str, kind: str, reason: str | None, calls: int,
                                intents: int) -> None:
    made: list[HttpRequest] = []
    ledger = FakeLedger(state)
    t = await pipeline(in_doubt, made).outcome(VALUE, int(time.time() * 1000), ledger)  # type: ignore[arg-type]
    assert (t.ending, t.reason, len(made), len(ledger.intents)) == (kind, reason, calls, intents)
    if kind in ("accepted", "failed"):
        assert t.ledger_cid == "m-1"


@pytest.mark.parametrize("outcome, replayed, kind, calls", [
    ("failed", True, "accepted", 1),     # dlq replay after a fix: sent again
    ("failed", False, "skip", 0),        # a crash replay of a failed message: no-op
    ("accepted", True, "skip", 0),       # replaying an accepted message never sends it twice
])
async def test_a_replayed_failure_is_sent_again_but_never_an_accepted_message(outcome: str, replayed: bool,
                                                                              kind: str, calls: int) -> None:
    made: list[HttpRequest] = []
    ledger = FakeLedger("done", outcome)
    t = await pipeline("resend", made).outcome(VALUE, int(time.time() * 1000), ledger, replayed)  # type: ignore[arg-type]
    assert (t.ending, len(made)) == (kind, calls)


RETRY = RetryState(attempts=4, passes=1, due_at=0.0, token="t-current")


@pytest.mark.parametrize("retry, token, kind, calls", [
    (None, "t-current", "skip", 0),                               # the input read again: its hand-off exists
    (RETRY, "t-current", "accepted", 1),                          # the pass the ledger expects: sent, not in doubt
    (RetryState(4, 1, 0, "t-older"), "t-current", "skip", 0),     # an older retry record (replayed): no-op
])
async def test_a_retrying_message_is_sent_only_from_its_current_retry_record(
        retry: RetryState | None, token: str, kind: str, calls: int) -> None:
    made: list[HttpRequest] = []
    ledger = FakeLedger("retrying", token=token)
    t = await pipeline("fail", made).outcome(VALUE, int(time.time() * 1000), ledger, retry=retry)  # type: ignore[arg-type]
    assert (t.ending, len(made)) == (kind, calls)
    if kind == "accepted":
        assert ledger.intents == ["m-1"] and orjson.loads(t.value or b"")["attempts"] == 5   # 4 earlier + this one


HANDOFF = HandOffPolicy(max_attempts=5, delay_s=10.0, max_delay_s=60.0)


async def test_spent_in_place_retries_hand_off_until_the_attempt_cap() -> None:
    made: list[HttpRequest] = []
    p = pipeline("resend", made, status=503, handoff=HANDOFF)
    now = time.time()
    first = await p.outcome(VALUE, int(now * 1000))
    assert first.ending == "retry" and first.reason == "unavailable" and first.handoff is not None
    h = first.handoff
    assert (h.attempts, h.passes, len(made)) == (2, 1, 2)
    assert now + 5 <= h.due_at <= now + 11 and len(h.token) == 16
    second = await p.outcome(VALUE, int(now * 1000), retry=RetryState(h.attempts, h.passes, 0, h.token))
    assert second.ending == "retry" and second.handoff is not None and second.handoff.passes == 2
    assert second.handoff.token != h.token and second.handoff.due_at >= now + 10
    # the cap (5) falls inside the third pass: it makes one call, not its full in-place budget (2)
    made.clear()
    last = await p.outcome(VALUE, int(now * 1000), retry=RetryState(4, 2, 0, "t"))
    body = orjson.loads(last.value or b"")
    assert (last.ending, body["reason"], body["attempts"], len(made)) == ("failed", "unavailable", 5, 1)


async def test_without_a_retry_topic_spent_retries_fail_and_permanent_errors_never_hand_off() -> None:
    made: list[HttpRequest] = []
    t = await pipeline("resend", made, status=503).outcome(VALUE, int(time.time() * 1000))
    assert (t.ending, t.reason, orjson.loads(t.value or b"")["attempts"]) == ("failed", "unavailable", 2)
    rejected = await pipeline("resend", made, status=400, handoff=HANDOFF).outcome(VALUE, int(time.time() * 1000))
    assert (rejected.ending, rejected.reason) == ("failed", "rejected")


async def test_failing_over_onto_an_at_most_once_route_records_the_intent_first() -> None:
    made: list[HttpRequest] = []
    a, b = "SMS_CONNECTOR_ROUTES__A__", "SMS_CONNECTOR_ROUTES__B__"
    env = {"SMS_CONNECTOR_ROUTING__DEFAULT_ROUTE": "a"}
    for prefix, in_doubt in ((a, "resend"), (b, "fail")):
        env.update({prefix + "PROVIDER": "smpp_rest", prefix + "BASE_URL": "http://sim", prefix + "API_KEY": "k",
                    prefix + "IN_DOUBT": in_doubt, prefix + "BREAKER_MIN_CALLS": "1"})
    env[a + "FAILOVER_ROUTE"] = "b"
    settings = load(environ=env)
    senders = build_senders(settings)

    async def handler(request: HttpRequest) -> HttpResponse:
        made.append(request)
        cid = orjson.loads(request.body)["Messages"][0]["clientMessageId"]
        return HttpResponse(200, orjson.dumps({"messages": [{"apiMessageId": "a1", "accepted": True,
                                                              "msg": {"clientMessageId": cid}}]}))

    for s in senders.values():
        s.transport = HttpTransport(handler=handler)
    senders["a"].breaker.record(False)        # one failed call with min_calls 1: route a's circuit opens
    assert senders["a"].breaker.is_open
    p = Pipeline(senders, Router.from_settings(settings.routing, {"a": "smpp_rest", "b": "smpp_rest"}))
    ledger = FakeLedger(None)
    t = await p.outcome(VALUE, int(time.time() * 1000), ledger)  # type: ignore[arg-type]
    assert (t.ending, orjson.loads(t.value or b"")["route"], ledger.intents, len(made)) == ("accepted", "b", ["m-1"], 1)
